// Package wire is the Jupyter ZMQ wire format as the launcher speaks it:
// message signing and splitting, connection files, and the buffered TCP
// transport the launcher dials kernels with. It is its own package so that
// tools that talk to a kernel directly (the benchmark's direct-ZMQ client,
// the synthetic kernel) use the launcher's code rather than a copy.
package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
)

// Delimiter separates routing frames from the signed message on every
// Jupyter ZMQ socket.
var Delimiter = []byte("<IDS|MSG>")

var (
	// ErrNoDelimiter: a message without the <IDS|MSG> frame.
	ErrNoDelimiter = errors.New("no <IDS|MSG> delimiter")
	// ErrShortMsg: fewer than the five frames every message has.
	ErrShortMsg = errors.New("fewer than 5 frames after the delimiter")
	// ErrBadSig: the signature does not match the key.
	ErrBadSig = errors.New("bad signature")
)

// Msg is a kernel message split into its parts. The slices alias the ZMQ
// frames they came from.
type Msg struct {
	Sig          []byte
	Header       []byte
	ParentHeader []byte
	Metadata     []byte
	Content      []byte
	Buffers      [][]byte
}

// Split finds the first frame that is exactly the delimiter and returns
// what follows it. Frames before it (router identities, the iopub topic)
// are ignored, as jupyter_client's feed_identities does.
func Split(frames [][]byte) (Msg, error) {
	for i, f := range frames {
		if !bytes.Equal(f, Delimiter) {
			continue
		}
		rest := frames[i+1:]
		if len(rest) < 5 {
			return Msg{}, ErrShortMsg
		}
		m := Msg{Sig: rest[0], Header: rest[1], ParentHeader: rest[2], Metadata: rest[3], Content: rest[4]}
		if len(rest) > 5 {
			m.Buffers = rest[5:]
		}
		return m, nil
	}
	return Msg{}, ErrNoDelimiter
}

// Signer computes Jupyter message signatures: lowercase hex HMAC-SHA256
// over header, parent_header, metadata and content (buffers are not
// signed). The key is the UTF-8 bytes of the connection file's key string.
// A Signer is not safe for concurrent use: each goroutine keeps its own so
// that the hot path does not allocate a new HMAC per message.
type Signer struct {
	mac hash.Hash
	sum [sha256.Size]byte
}

// NewSigner returns a signer for key; an empty key signs nothing.
func NewSigner(key string) *Signer {
	if key == "" {
		return &Signer{}
	}
	return &Signer{mac: hmac.New(sha256.New, []byte(key))}
}

// digest returns the raw MAC of the four signed parts, valid until the next
// call.
func (s *Signer) digest(h, p, m, c []byte) []byte {
	s.mac.Reset()
	s.mac.Write(h)
	s.mac.Write(p)
	s.mac.Write(m)
	s.mac.Write(c)
	return s.mac.Sum(s.sum[:0])
}

// Sign returns the hex signature frame; empty when there is no key.
func (s *Signer) Sign(h, p, m, c []byte) []byte {
	if s.mac == nil {
		return []byte{}
	}
	d := s.digest(h, p, m, c)
	out := make([]byte, hex.EncodedLen(len(d)))
	hex.Encode(out, d)
	return out
}

// Verify checks sig in constant time. With no key every message passes, as
// in jupyter_client.
func (s *Signer) Verify(sig, h, p, m, c []byte) bool {
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

// Frames returns the ZMQ frames of a message for a DEALER socket:
// delimiter, signature, the four dictionaries, buffers.
func (s *Signer) Frames(h, p, m, c []byte, buffers [][]byte) [][]byte {
	frames := make([][]byte, 0, 6+len(buffers))
	frames = append(frames, Delimiter, s.Sign(h, p, m, c), h, p, m, c)
	return append(frames, buffers...)
}
