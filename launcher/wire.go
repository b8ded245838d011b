package launcher

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"
)

// delimiter separates routing frames from the signed message on every
// Jupyter ZMQ socket.
var delimiter = []byte("<IDS|MSG>")

// jupyterDate is the header date layout jupyter_client writes: UTC with
// microseconds and a literal Z.
const jupyterDate = "2006-01-02T15:04:05.000000Z"

// protocolVersion is stamped on messages the launcher writes itself.
const protocolVersion = "5.3"

var (
	errNoDelimiter = errors.New("no <IDS|MSG> delimiter")
	errShortMsg    = errors.New("fewer than 5 frames after the delimiter")
	errBadSig      = errors.New("bad signature")
)

// wireMsg is a kernel message split into its parts. The slices alias the
// ZMQ frames they came from.
type wireMsg struct {
	Sig          []byte
	Header       []byte
	ParentHeader []byte
	Metadata     []byte
	Content      []byte
	Buffers      [][]byte
}

// splitWire finds the first frame that is exactly the delimiter and returns
// what follows it. Frames before it (router identities, the iopub topic)
// are ignored, as jupyter_client's feed_identities does.
func splitWire(frames [][]byte) (wireMsg, error) {
	for i, f := range frames {
		if !bytes.Equal(f, delimiter) {
			continue
		}
		rest := frames[i+1:]
		if len(rest) < 5 {
			return wireMsg{}, errShortMsg
		}
		m := wireMsg{Sig: rest[0], Header: rest[1], ParentHeader: rest[2], Metadata: rest[3], Content: rest[4]}
		if len(rest) > 5 {
			m.Buffers = rest[5:]
		}
		return m, nil
	}
	return wireMsg{}, errNoDelimiter
}

// signer computes Jupyter message signatures: lowercase hex HMAC-SHA256
// over header, parent_header, metadata and content (buffers are not
// signed). The key is the UTF-8 bytes of the connection file's key string.
// A signer is not safe for concurrent use: each goroutine keeps its own so
// that the hot path does not allocate a new HMAC per message.
type signer struct {
	mac hash.Hash
	sum [sha256.Size]byte
}

func newSigner(key string) *signer {
	if key == "" {
		return &signer{}
	}
	return &signer{mac: hmac.New(sha256.New, []byte(key))}
}

// digest returns the raw MAC of the four signed parts, valid until the next
// call.
func (s *signer) digest(h, p, m, c []byte) []byte {
	s.mac.Reset()
	s.mac.Write(h)
	s.mac.Write(p)
	s.mac.Write(m)
	s.mac.Write(c)
	return s.mac.Sum(s.sum[:0])
}

// sign returns the hex signature frame; empty when there is no key.
func (s *signer) sign(h, p, m, c []byte) []byte {
	if s.mac == nil {
		return []byte{}
	}
	d := s.digest(h, p, m, c)
	out := make([]byte, hex.EncodedLen(len(d)))
	hex.Encode(out, d)
	return out
}

// verify checks sig in constant time. With no key every message passes, as
// in jupyter_client.
func (s *signer) verify(sig, h, p, m, c []byte) bool {
	if s.mac == nil {
		return true
	}
	var want [sha256.Size]byte
	if len(sig) != hex.EncodedLen(len(want)) {
		return false
	}
	if _, err := hex.Decode(want[:], sig); err != nil {
		return false
	}
	return hmac.Equal(want[:], s.digest(h, p, m, c))
}

// wireFrames returns the ZMQ frames of a message for a DEALER socket:
// delimiter, signature, the four dictionaries, buffers.
func (s *signer) wireFrames(h, p, m, c []byte, buffers [][]byte) [][]byte {
	frames := make([][]byte, 0, 6+len(buffers))
	frames = append(frames, delimiter, s.sign(h, p, m, c), h, p, m, c)
	return append(frames, buffers...)
}

// newUUID returns a random (version 4) UUID string.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

// msgHeader is the header of a message the launcher writes itself.
type msgHeader struct {
	MsgID    string `json:"msg_id"`
	MsgType  string `json:"msg_type"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	Version  string `json:"version"`
}

// newHeader builds the header JSON of a launcher-made message.
func newHeader(msgType, session, username string) (id string, raw []byte) {
	h := msgHeader{
		MsgID:    newUUID(),
		MsgType:  msgType,
		Session:  session,
		Username: username,
		Date:     time.Now().UTC().Format(jupyterDate),
		Version:  protocolVersion,
	}
	raw, _ = json.Marshal(h) // cannot fail: strings only
	return h.MsgID, raw
}

// scanStrings reads top-level string members of the JSON object raw
// without decoding the rest: out[i] receives the value of keys[i] (nil when
// absent or not a string). Values alias raw unless they contain escapes.
// It exists because the relay only needs two or three header fields per
// message, and a full json.Unmarshal of every header would dominate the
// cost of forwarding small iopub messages.
func scanStrings(raw []byte, keys []string, out [][]byte) error {
	for i := range out {
		out[i] = nil
	}
	missing := len(keys)
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return fmt.Errorf("not a JSON object")
	}
	i++
	for {
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return fmt.Errorf("unterminated object")
		}
		if raw[i] == '}' {
			return nil
		}
		if raw[i] != '"' {
			return fmt.Errorf("expected a member name at %d", i)
		}
		kStart := i
		kEnd, kEsc, err := scanString(raw, i)
		if err != nil {
			return err
		}
		i = skipSpace(raw, kEnd)
		if i >= len(raw) || raw[i] != ':' {
			return fmt.Errorf("expected ':' at %d", i)
		}
		i = skipSpace(raw, i+1)
		if i >= len(raw) {
			return fmt.Errorf("missing value")
		}
		want := -1
		if missing > 0 {
			key := raw[kStart+1 : kEnd-1]
			if kEsc {
				key = unquote(raw[kStart:kEnd])
			}
			for j, k := range keys {
				if out[j] == nil && string(key) == k {
					want = j
					break
				}
			}
		}
		vStart := i
		if raw[i] == '"' {
			vEnd, vEsc, err := scanString(raw, i)
			if err != nil {
				return err
			}
			if want >= 0 {
				if vEsc {
					out[want] = unquote(raw[vStart:vEnd])
				} else {
					out[want] = raw[vStart+1 : vEnd-1]
				}
				missing--
			}
			i = vEnd
		} else {
			i, err = skipValue(raw, i)
			if err != nil {
				return err
			}
		}
		if missing == 0 {
			return nil // everything asked for is found; the rest is not read
		}
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return fmt.Errorf("unterminated object")
		}
		switch raw[i] {
		case ',':
			i++
		case '}':
			return nil
		default:
			return fmt.Errorf("expected ',' or '}' at %d", i)
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString returns the index just past the string starting at b[i]
// (which is '"') and whether it contains escapes.
func scanString(b []byte, i int) (end int, escaped bool, err error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return j + 1, escaped, nil
		}
	}
	return 0, false, fmt.Errorf("unterminated string at %d", i)
}

// skipValue returns the index just past the non-string value at b[i]:
// an object, an array, or a literal or number.
func skipValue(b []byte, i int) (int, error) {
	switch b[i] {
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, _, err := scanString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unterminated value at %d", i)
	default:
		j := i
		for j < len(b) {
			switch b[j] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return j, nil
			}
			j++
		}
		return j, nil
	}
}

// unquote decodes a JSON string literal with escapes; nil if invalid.
func unquote(lit []byte) []byte {
	var s string
	if err := json.Unmarshal(lit, &s); err != nil {
		return nil
	}
	return []byte(s)
}
