package broker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

// What a client sends on the kernel websocket and a kernel sends back goes
// through the decoders of frame.go. These targets assert their properties:
// a refusal is ErrMalformedFrame, what decodes re-encodes to the same parts
// in either protocol, and the legacy JSON we write for clients is JSON.

// sameParts reports whether two frames carry the same parts, an empty
// dictionary counting as {} (the encoders write {} for it).
func sameParts(a, b Frame) bool {
	if a.Channel != b.Channel || len(a.Buffers) != len(b.Buffers) {
		return false
	}
	for _, p := range [][2][]byte{{a.Header, b.Header}, {a.ParentHeader, b.ParentHeader}, {a.Metadata, b.Metadata}, {a.Content, b.Content}} {
		if !bytes.Equal(orEmptyObject(p[0]), orEmptyObject(p[1])) {
			return false
		}
	}
	for i := range a.Buffers {
		if !bytes.Equal(a.Buffers[i], b.Buffers[i]) {
			return false
		}
	}
	return true
}

// FuzzV1Frame: any bytes as a v1 websocket frame. A refusal wraps
// ErrMalformedFrame; an accepted frame has a header, its parts lie inside
// the input, and it encodes back to bytes that decode to the same parts
// (byte for byte the input up to its last offset, when no part was
// empty). Bytes after the last offset are ignored, as jupyter_server's
// v1 decoder ignores them.
func FuzzV1Frame(f *testing.F) {
	s := sample()
	f.Add(s.V1())
	f.Add((&Frame{Channel: "iopub", Header: []byte(`{}`)}).V1())
	f.Add([]byte{6, 0, 0, 0, 0, 0, 0, 0})
	short := s.V1()
	binary.LittleEndian.PutUint64(short[16:], 1<<63) // an offset past the end
	f.Add(short)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, ok := decoded(t, DecodeV1, b)
		if !ok {
			return
		}
		if len(fr.Header) == 0 {
			t.Fatal("accepted a frame without a header")
		}
		total := len(fr.Channel) + len(fr.Header) + len(fr.ParentHeader) + len(fr.Metadata) + len(fr.Content)
		for _, p := range fr.Buffers {
			total += len(p)
		}
		if total > len(b) {
			t.Fatalf("parts of %d bytes out of a %d-byte frame", total, len(b))
		}
		enc := fr.V1()
		g, err := DecodeV1(enc)
		if err != nil || !sameParts(fr, g) {
			t.Fatalf("re-encoded frame decodes differently: %v", err)
		}
		if len(fr.ParentHeader) > 0 && len(fr.Metadata) > 0 && len(fr.Content) > 0 && !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("re-encoding changed the frame:\n in %x\nout %x", b, enc)
		}
		// Appending to a non-empty buffer writes the same bytes.
		if got := fr.EncodeV1([]byte("prefix")); !bytes.Equal(got[6:], enc) {
			t.Fatal("EncodeV1 depends on what dst holds")
		}
	})
}

// FuzzLegacyJSON: any bytes as a legacy text message from a client. A
// refusal wraps ErrMalformedFrame; what is accepted has a JSON object as
// header and dictionaries that are JSON, and survives legacy -> v1 ->
// legacy unchanged.
func FuzzLegacyJSON(f *testing.F) {
	f.Add([]byte(`{"header":{"msg_id":"m","msg_type":"kernel_info_request"},"parent_header":{},"metadata":{},"content":{},"channel":"shell"}`))
	f.Add([]byte(`{"header":{"msg_id":"m","date":1718000000.5},"parent_header":null,"content":{}}`))
	f.Add([]byte(`{"header":{},"channel":"control","buffers":[]}`))
	f.Add([]byte(`{"header":"x"}`))
	f.Add([]byte(`{"header":{},"channel":"\u0007\u2028"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, ok := decoded(t, DecodeLegacyJSON, b)
		if !ok {
			return
		}
		if len(fr.Header) == 0 || fr.Header[0] != '{' || fr.Channel == "" {
			t.Fatalf("accepted header %q channel %q", fr.Header, fr.Channel)
		}
		for _, p := range [][]byte{fr.Header, fr.ParentHeader, fr.Metadata, fr.Content} {
			if !json.Valid(p) {
				t.Fatalf("accepted a part that is not JSON: %q", p)
			}
		}
		checkLegacyOut(t, viaV1(t, fr))
	})
}

// FuzzLegacyBinary: any bytes as a legacy binary message (a message with
// buffers). A refusal wraps ErrMalformedFrame; buffers lie inside the
// input, and the message survives legacy -> v1 -> legacy binary.
func FuzzLegacyBinary(f *testing.F) {
	s := sample()
	f.Add(s.AppendLegacyBinary(nil, "a", "execute_request"))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 8, '{', '}'})
	f.Add([]byte{0, 0, 0, 2, 0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, ok := decoded(t, DecodeLegacyBinary, b)
		if !ok {
			return
		}
		total := 0
		for _, p := range fr.Buffers {
			total += len(p)
		}
		if total > len(b) {
			t.Fatalf("buffers of %d bytes out of %d", total, len(b))
		}
		checkLegacyOut(t, viaV1(t, fr))
	})
}

// decoded decodes b with decode and reports whether it was accepted; a
// refusal must wrap ErrMalformedFrame.
func decoded(t *testing.T, decode func([]byte) (Frame, error), b []byte) (Frame, bool) {
	t.Helper()
	fr, err := decode(b)
	if err != nil && !errors.Is(err, ErrMalformedFrame) {
		t.Fatalf("refusal without ErrMalformedFrame: %v", err)
	}
	return fr, err == nil
}

// viaV1 is fr encoded as v1 and decoded again, which must keep its parts.
func viaV1(t *testing.T, fr Frame) Frame {
	t.Helper()
	g, err := DecodeV1(fr.V1())
	if err != nil || !sameParts(fr, g) {
		t.Fatalf("legacy -> v1 changed the message: %v", err)
	}
	return g
}

// checkLegacyOut asserts what the front-end writes to a legacy client for
// fr (as it does for kernel output): valid JSON that decodes back to fr,
// whatever the msg_id and msg_type strings hold.
func checkLegacyOut(t *testing.T, fr Frame) {
	t.Helper()
	id, typ := "", ""
	if h, err := ParseHeader(fr.Header); err == nil {
		id, typ = h.MsgID, h.MsgType
	}
	if len(fr.Buffers) == 0 {
		out := fr.AppendLegacyJSON(nil, id, typ, true)
		if !json.Valid(out) {
			t.Fatalf("legacy JSON for a client is not JSON: %q", out)
		}
		var m struct {
			MsgID   string `json:"msg_id"`
			MsgType string `json:"msg_type"`
		}
		if err := json.Unmarshal(out, &m); err != nil || (m.MsgID != id || m.MsgType != typ) && utf8.ValidString(id+typ) {
			t.Fatalf("msg_id/msg_type do not come back: %v %q %q", err, m.MsgID, m.MsgType)
		}
		g, err := DecodeLegacyJSON(out)
		if err != nil || !sameParts(fr, g) && fr.Channel != "" {
			t.Fatalf("v1 -> legacy JSON changed the message: %v\n%q", err, out)
		}
		return
	}
	out := fr.AppendLegacyBinary(nil, id, typ)
	g, err := DecodeLegacyBinary(out)
	if err != nil || !sameParts(fr, g) && fr.Channel != "" {
		t.Fatalf("v1 -> legacy binary changed the message: %v", err)
	}
}

// FuzzJSONString: every string becomes a JSON string that reads back as
// encoding/json reads its own encoding of it.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "a", "\a\x7f\U000e0001", "\"\\/", "\xff\xfe", "\u2028\u2029", "\x00\n\r\t", "é€😀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString([]byte("x"), s)[1:]
		var got, want string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q -> %q: %v", s, out, err)
		}
		std, _ := json.Marshal(s)
		if err := json.Unmarshal(std, &want); err != nil || got != want {
			t.Fatalf("%q -> %q, encoding/json has %q", s, got, want)
		}
	})
}

// FuzzLegacyOut: what a kernel puts in a message (any parts that are
// JSON, any msg_id and msg_type, any channel) reaches a legacy client as
// one JSON text that decodes to the same parts.
func FuzzLegacyOut(f *testing.F) {
	f.Add("iopub", `{"msg_id":"a"}`, `{}`, `{}`, `{"name":"stdout","text":"x"}`, "a", "stream", 0)
	f.Add("shell", `{"msg_id":"\u0007"}`, `{"msg_id":"p"}`, `{}`, `{}`, "\a\x7f", "\U000e0001", 2)
	f.Add("iopub\u2028", `{}`, ``, ``, ``, "\xff", "\"", 1)
	f.Fuzz(func(t *testing.T, ch, h, p, m, c, id, typ string, nbuf int) {
		for _, part := range []string{h, p, m, c} {
			if part != "" && (!json.Valid([]byte(part)) || part[0] != '{' || part[len(part)-1] != '}') {
				return // a kernel's parts that are not JSON objects are its own problem
			}
		}
		if h == "" {
			h = "{}"
		}
		fr := Frame{Channel: ch, Header: []byte(h), ParentHeader: []byte(p), Metadata: []byte(m), Content: []byte(c)}
		for i := 0; i < nbuf%4; i++ {
			fr.Buffers = append(fr.Buffers, []byte(c+id))
		}
		if len(fr.Buffers) == 0 {
			out := fr.AppendLegacyJSON(nil, id, typ, true)
			if !json.Valid(out) {
				t.Fatalf("not JSON: %q", out)
			}
			g, err := DecodeLegacyJSON(out)
			if err != nil {
				t.Fatal(err)
			}
			if ch != "" && utf8.ValidString(ch) && !sameParts(fr, g) {
				t.Fatalf("changed: %+v", g)
			}
			return
		}
		out := fr.AppendLegacyBinary(nil, id, typ)
		g, err := DecodeLegacyBinary(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Buffers) != len(fr.Buffers) {
			t.Fatalf("%d buffers, want %d", len(g.Buffers), len(fr.Buffers))
		}
	})
}

// FuzzParseHeader: a header's routing fields never panic the parser, and
// a refusal wraps ErrMalformedFrame.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(sample().Header))
	f.Add([]byte(`{"msg_id":1}`))
	f.Add([]byte(`{"date":1718000000.5,"msg_id":"\ud800"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseHeader(b); err != nil && !errors.Is(err, ErrMalformedFrame) {
			t.Fatalf("refusal without ErrMalformedFrame: %v", err)
		}
		_, _ = ParentMsgID(b)
	})
}
