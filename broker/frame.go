package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Frame is one Jupyter message as it crosses the bus. Its parts are raw
// bytes exactly as the sender wrote them: nobody between the client and the
// kernel re-encodes a header or a content, and the launcher maps the parts
// to ZMQ frames one to one.
//
// On the bus a Frame is encoded in the layout of the
// v1.kernel.websocket.jupyter.org binary websocket frame, so a v1 client's
// frame passes through the front-end untouched:
//
//	u64le N | N × u64le offsets | channel | header | parent_header | metadata | content | buffers...
//
// offsets[0] = 8·(N+1) is where channel starts, offsets[k+1] is where part k
// ends, and the last offset is the frame's length. N = 6 + len(Buffers).
type Frame struct {
	Channel      string
	Header       []byte
	ParentHeader []byte
	Metadata     []byte
	Content      []byte
	Buffers      [][]byte
}

// MsgHeader holds the header fields kernelbus routes and tracks by. Date is
// kept raw because clients send strings and (nbclient) float timestamps.
type MsgHeader struct {
	MsgID    string          `json:"msg_id"`
	MsgType  string          `json:"msg_type"`
	Session  string          `json:"session"`
	Username string          `json:"username"`
	Version  string          `json:"version"`
	Date     json.RawMessage `json:"date,omitempty"`
}

// ErrMalformedFrame is wrapped by every decoding error of this file.
var ErrMalformedFrame = errors.New("malformed message frame")

// maxParts bounds the offset table we accept so that a hostile N cannot make
// us allocate or loop for long.
const maxParts = 1 << 16

// Channels a client may send on. hb is not relayed over the websocket.
var clientChannels = map[string]bool{"shell": true, "control": true, "stdin": true}

// IsClientChannel reports whether clients may send messages on channel.
func IsClientChannel(channel string) bool { return clientChannels[channel] }

// EncodeV1 appends f in the v1 layout to dst.
func (f *Frame) EncodeV1(dst []byte) []byte {
	n := 6 + len(f.Buffers)
	size := 8 * (n + 1)
	parts := f.parts()
	for _, p := range parts {
		size += len(p)
	}
	for _, b := range f.Buffers {
		size += len(b)
	}
	start := len(dst)
	dst = growBy(dst, size)
	out := dst[start:]
	binary.LittleEndian.PutUint64(out, uint64(n))
	off := 8 * (n + 1)
	pos := off
	binary.LittleEndian.PutUint64(out[8:], uint64(off))
	write := func(i int, p []byte) {
		copy(out[pos:], p)
		pos += len(p)
		binary.LittleEndian.PutUint64(out[8*(i+2):], uint64(pos))
	}
	for i, p := range parts {
		write(i, p)
	}
	for j, b := range f.Buffers {
		write(len(parts)+j, b)
	}
	return dst
}

// V1 returns f encoded in the v1 layout.
func (f *Frame) V1() []byte { return f.EncodeV1(nil) }

func (f *Frame) parts() [5][]byte {
	return [5][]byte{[]byte(f.Channel), orEmptyObject(f.Header), orEmptyObject(f.ParentHeader),
		orEmptyObject(f.Metadata), orEmptyObject(f.Content)}
}

// DecodeV1 parses a v1-layout frame. The returned parts alias b.
func DecodeV1(b []byte) (Frame, error) {
	var f Frame
	if len(b) < 8 {
		return f, fmt.Errorf("%w: %d bytes is shorter than the offset count", ErrMalformedFrame, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n < 6 || n > maxParts {
		return f, fmt.Errorf("%w: %d parts (want 6 or more)", ErrMalformedFrame, n)
	}
	table := 8 * (int(n) + 1)
	if len(b) < table {
		return f, fmt.Errorf("%w: offset table of %d bytes does not fit in %d", ErrMalformedFrame, table, len(b))
	}
	offsets := make([]int, n)
	offsets[0] = int(binary.LittleEndian.Uint64(b[8:]))
	if offsets[0] != table {
		return f, fmt.Errorf("%w: first offset %d, want %d", ErrMalformedFrame, offsets[0], table)
	}
	for i := 1; i < int(n); i++ {
		o := binary.LittleEndian.Uint64(b[8*(i+1):])
		if o < uint64(offsets[i-1]) || o > uint64(len(b)) {
			return f, fmt.Errorf("%w: offset %d = %d out of order or past the end", ErrMalformedFrame, i, o)
		}
		offsets[i] = int(o)
	}
	// n offsets delimit n-1 parts: channel, the four dictionaries, buffers.
	part := func(i int) []byte { return b[offsets[i]:offsets[i+1]:offsets[i+1]] }
	f.Channel = string(part(0))
	f.Header = part(1)
	f.ParentHeader = part(2)
	f.Metadata = part(3)
	f.Content = part(4)
	for i := 5; i < int(n)-1; i++ {
		f.Buffers = append(f.Buffers, part(i))
	}
	if len(f.Header) == 0 {
		return f, fmt.Errorf("%w: empty header", ErrMalformedFrame)
	}
	return f, nil
}

// legacyMessage is the JSON object of the legacy websocket protocol.
type legacyMessage struct {
	Header       json.RawMessage `json:"header"`
	ParentHeader json.RawMessage `json:"parent_header"`
	Metadata     json.RawMessage `json:"metadata"`
	Content      json.RawMessage `json:"content"`
	Channel      *string         `json:"channel"`
}

// DecodeLegacyJSON parses a legacy text message from a client. A missing
// channel means shell, as in jupyter_server.
func DecodeLegacyJSON(b []byte) (Frame, error) {
	var m legacyMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrMalformedFrame, err)
	}
	if len(m.Header) == 0 || m.Header[0] != '{' {
		return Frame{}, fmt.Errorf("%w: header must be a JSON object", ErrMalformedFrame)
	}
	f := Frame{Channel: "shell", Header: m.Header, ParentHeader: objectOrEmpty(m.ParentHeader),
		Metadata: objectOrEmpty(m.Metadata), Content: objectOrEmpty(m.Content)}
	if m.Channel != nil && *m.Channel != "" {
		f.Channel = *m.Channel
	}
	return f, nil
}

// DecodeLegacyBinary parses a legacy binary message (a message with
// buffers): u32be nbufs | nbufs × u32be offsets | JSON | buffers.
func DecodeLegacyBinary(b []byte) (Frame, error) {
	if len(b) < 4 {
		return Frame{}, fmt.Errorf("%w: binary message of %d bytes", ErrMalformedFrame, len(b))
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < 1 || n > maxParts || len(b) < 4*(n+1) {
		return Frame{}, fmt.Errorf("%w: bad buffer count %d", ErrMalformedFrame, n)
	}
	offs := make([]int, n+1)
	for i := 0; i < n; i++ {
		offs[i] = int(binary.BigEndian.Uint32(b[4*(i+1):]))
	}
	offs[n] = len(b)
	for i := 0; i < n; i++ {
		if offs[i] < 4*(n+1) || offs[i] > offs[i+1] {
			return Frame{}, fmt.Errorf("%w: buffer offset %d out of range", ErrMalformedFrame, i)
		}
	}
	f, err := DecodeLegacyJSON(b[offs[0]:offs[1]])
	if err != nil {
		return f, err
	}
	for i := 1; i < n; i++ {
		f.Buffers = append(f.Buffers, b[offs[i]:offs[i+1]:offs[i+1]])
	}
	return f, nil
}

// AppendLegacyJSON appends the legacy JSON text of f (without buffers) as
// jupyter_server sends it: channel, msg_id, msg_type and "buffers": [] next
// to the four dictionaries. Clients built on jupyter_client require them.
func (f *Frame) AppendLegacyJSON(dst []byte, msgID, msgType string, withBuffersField bool) []byte {
	dst = append(dst, `{"header":`...)
	dst = append(dst, orEmptyObject(f.Header)...)
	dst = append(dst, `,"msg_id":`...)
	dst = appendJSONString(dst, msgID)
	dst = append(dst, `,"msg_type":`...)
	dst = appendJSONString(dst, msgType)
	dst = append(dst, `,"parent_header":`...)
	dst = append(dst, orEmptyObject(f.ParentHeader)...)
	dst = append(dst, `,"metadata":`...)
	dst = append(dst, orEmptyObject(f.Metadata)...)
	dst = append(dst, `,"content":`...)
	dst = append(dst, orEmptyObject(f.Content)...)
	if withBuffersField {
		dst = append(dst, `,"buffers":[]`...)
	}
	dst = append(dst, `,"channel":`...)
	dst = appendJSONString(dst, f.Channel)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string. msg_id and msg_type come
// from the kernel's header (any string a JSON escape can spell), so Go
// quoting will not do: it writes \a, \x7f and \U0010ffff, which are not
// JSON, and a legacy client would fail to parse the whole message. Invalid
// UTF-8 becomes U+FFFD, as encoding/json writes it.
func appendJSONString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		// U+2028 and U+2029 are JSON but end a line in JavaScript source.
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			if r == utf8.RuneError {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendLegacyBinary appends the legacy binary form of f, used when f has
// buffers.
func (f *Frame) AppendLegacyBinary(dst []byte, msgID, msgType string) []byte {
	n := 1 + len(f.Buffers)
	head := 4 * (n + 1)
	start := len(dst)
	dst = growBy(dst, head)
	dst = f.AppendLegacyJSON(dst, msgID, msgType, false)
	binary.BigEndian.PutUint32(dst[start:], uint32(n))
	binary.BigEndian.PutUint32(dst[start+4:], uint32(head))
	for i, b := range f.Buffers {
		binary.BigEndian.PutUint32(dst[start+4*(i+2):], uint32(len(dst)-start))
		dst = append(dst, b...)
	}
	return dst
}

// ParseHeader reads the routing fields of a header.
func ParseHeader(raw []byte) (MsgHeader, error) {
	var h MsgHeader
	if err := json.Unmarshal(raw, &h); err != nil {
		return h, fmt.Errorf("%w: header: %v", ErrMalformedFrame, err)
	}
	return h, nil
}

// ParentMsgID returns parent_header.msg_id and msg_type, or empty strings
// when the parent is {} or unreadable.
func ParentMsgID(raw []byte) (id, typ string) {
	if len(raw) <= 2 {
		return "", ""
	}
	var h struct {
		MsgID   string `json:"msg_id"`
		MsgType string `json:"msg_type"`
	}
	_ = json.Unmarshal(raw, &h)
	return h.MsgID, h.MsgType
}

func orEmptyObject(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

func objectOrEmpty(b json.RawMessage) []byte {
	if len(b) == 0 || string(b) == "null" {
		return []byte("{}")
	}
	return b
}

func growBy(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, len(b)+n+n/4)
	copy(nb, b)
	return nb
}

// AppendBatch appends one v1 frame to the body of a batch: a launcher
// that has several kernel messages of one channel queued sends them as
// one bus message (HeaderBatch), which the bus stores, acknowledges and
// delivers once. Each frame is preceded by its length, u32 big-endian.
func AppendBatch(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}

// SplitBatch returns the frames of a batch body of n frames, in order,
// as slices of body.
func SplitBatch(body []byte, n int) ([][]byte, error) {
	if n <= 0 || n > len(body)/4 {
		return nil, fmt.Errorf("batch of %d frames in %d bytes", n, len(body))
	}
	out := make([][]byte, 0, n)
	for len(body) > 0 {
		if len(body) < 4 {
			return nil, errors.New("batch: truncated length")
		}
		l := binary.BigEndian.Uint32(body)
		body = body[4:]
		if uint64(l) > uint64(len(body)) {
			return nil, fmt.Errorf("batch: frame of %d bytes with %d left", l, len(body))
		}
		out = append(out, body[:l:l])
		body = body[l:]
	}
	if len(out) != n {
		return nil, fmt.Errorf("batch: %d frames, header says %d", len(out), n)
	}
	return out, nil
}
