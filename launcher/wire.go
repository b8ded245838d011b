package launcher

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// jupyterDate is the header date layout jupyter_client writes: UTC with
// microseconds and a literal Z.
const jupyterDate = "2006-01-02T15:04:05.000000Z"

// protocolVersion is stamped on messages the launcher writes itself.
const protocolVersion = "5.3"

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
