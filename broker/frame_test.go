package broker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
)

func sample() Frame {
	return Frame{Channel: "shell", Header: []byte(`{"msg_id":"a","msg_type":"execute_request","session":"s","username":"u","version":"5.3","date":"2026-01-01T00:00:00.000Z"}`),
		ParentHeader: []byte(`{}`), Metadata: []byte(`{}`), Content: []byte(`{"code":"print(1)"}`),
		Buffers: [][]byte{[]byte("buf0"), {}, []byte("buffer-two")}}
}

func TestV1RoundTrip(t *testing.T) {
	for _, f := range []Frame{sample(), {Channel: "iopub", Header: []byte(`{"msg_id":"x"}`)}} {
		b := f.V1()
		// The layout is the one jupyter_server and JupyterLab use: N, then
		// N offsets, the first being 8*(N+1), the last the frame length.
		n := binary.LittleEndian.Uint64(b)
		if want := uint64(6 + len(f.Buffers)); n != want {
			t.Fatalf("N = %d, want %d", n, want)
		}
		if first := binary.LittleEndian.Uint64(b[8:]); first != 8*(n+1) {
			t.Fatalf("first offset %d", first)
		}
		if last := binary.LittleEndian.Uint64(b[8*n:]); last != uint64(len(b)) {
			t.Fatalf("last offset %d, len %d", last, len(b))
		}
		g, err := DecodeV1(b)
		if err != nil {
			t.Fatal(err)
		}
		if g.Channel != f.Channel || !bytes.Equal(g.Header, f.Header) || !bytes.Equal(g.Content, orEmptyObject(f.Content)) || len(g.Buffers) != len(f.Buffers) {
			t.Fatalf("round trip changed the frame: %+v", g)
		}
		for i := range f.Buffers {
			if !bytes.Equal(g.Buffers[i], f.Buffers[i]) {
				t.Fatalf("buffer %d: %q != %q", i, g.Buffers[i], f.Buffers[i])
			}
		}
	}
}

func TestDecodeV1RejectsGarbage(t *testing.T) {
	s := sample()
	good := s.V1()
	bad := map[string][]byte{
		"empty":       nil,
		"short":       good[:7],
		"huge N":      append([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, good[8:]...),
		"truncated":   good[:40],
		"bad offsets": func() []byte { b := bytes.Clone(good); binary.LittleEndian.PutUint64(b[16:], 1<<40); return b }(),
	}
	for name, b := range bad {
		if _, err := DecodeV1(b); !errors.Is(err, ErrMalformedFrame) {
			t.Errorf("%s: want ErrMalformedFrame, got %v", name, err)
		}
	}
}

func TestLegacyJSONOut(t *testing.T) {
	f := sample()
	f.Buffers = nil
	b := f.AppendLegacyJSON(nil, "a", "execute_request", true)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	for _, k := range []string{"header", "parent_header", "metadata", "content", "channel", "msg_id", "msg_type", "buffers"} {
		if _, ok := m[k]; !ok {
			t.Errorf("legacy message lacks %q", k)
		}
	}
	back, err := DecodeLegacyJSON(b)
	if err != nil || back.Channel != "shell" || !bytes.Equal(back.Content, f.Content) {
		t.Fatalf("decode: %v %+v", err, back)
	}
}

func TestLegacyBinaryRoundTrip(t *testing.T) {
	f := sample()
	b := f.AppendLegacyBinary(nil, "a", "execute_request")
	if n := binary.BigEndian.Uint32(b); n != uint32(1+len(f.Buffers)) {
		t.Fatalf("nbufs %d", n)
	}
	g, err := DecodeLegacyBinary(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Buffers) != 3 || string(g.Buffers[2]) != "buffer-two" || len(g.Buffers[1]) != 0 {
		t.Fatalf("buffers: %q", g.Buffers)
	}
}

func TestLegacyDefaults(t *testing.T) {
	// nbclient sends no channel and a float date; jupyter_server treats a
	// missing channel as shell.
	f, err := DecodeLegacyJSON([]byte(`{"header":{"msg_id":"m","msg_type":"kernel_info_request","date":1718000000.5},"parent_header":null,"content":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Channel != "shell" || string(f.ParentHeader) != "{}" || string(f.Metadata) != "{}" {
		t.Fatalf("defaults: %+v", f)
	}
	for _, s := range []string{`not json`, `{"header":"x"}`, `{"content":{}}`, `[]`} {
		if _, err := DecodeLegacyJSON([]byte(s)); !errors.Is(err, ErrMalformedFrame) {
			t.Errorf("%s: want ErrMalformedFrame, got %v", s, err)
		}
	}
}

func FuzzDecodeV1(f *testing.F) {
	s := sample()
	f.Add(s.V1())
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeV1(b)
		if err == nil {
			// Whatever decodes must encode back to something that decodes
			// to the same parts.
			g, err := DecodeV1(fr.V1())
			if err != nil || g.Channel != fr.Channel || !bytes.Equal(g.Header, fr.Header) {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func TestBatchRoundTrip(t *testing.T) {
	frames := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte("x"), 70000)}
	var body []byte
	for _, f := range frames {
		body = AppendBatch(body, f)
	}
	got, err := SplitBatch(body, len(frames))
	if err != nil {
		t.Fatal(err)
	}
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d: %d bytes, want %d", i, len(got[i]), len(frames[i]))
		}
	}
	// What a hostile launcher could publish: every one is refused, none
	// panics or reads past the body.
	huge := binary.BigEndian.AppendUint32(nil, 1<<31)
	for name, c := range map[string]struct {
		body []byte
		n    int
	}{
		"count too high":  {body, 4},
		"count too low":   {body, 2},
		"count zero":      {body, 0},
		"count negative":  {body, -1},
		"truncated":       {body[:len(body)-1], 3},
		"length too long": {append(huge, 'x'), 1},
		"short length":    {[]byte{0, 0}, 1},
		"count absurd":    {body, 1 << 30},
	} {
		if _, err := SplitBatch(c.body, c.n); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
