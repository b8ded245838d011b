package wire

import (
	"bytes"
	"errors"
	"testing"
)

// frames cuts b into ZMQ frames at every 0xff byte, so that the fuzzer
// can make any multipart message, delimiters included.
func frames(b []byte) [][]byte {
	return bytes.Split(b, []byte{0xff})
}

// FuzzSplit: any multipart message a kernel (or anything that reaches its
// sockets) sends. A refusal is ErrNoDelimiter or ErrShortMsg; an accepted
// message's parts are the five frames after the first delimiter and its
// buffers the rest; the frames a Signer builds split back to what went in.
func FuzzSplit(f *testing.F) {
	sep := []byte{0xff}
	f.Add(bytes.Join([][]byte{[]byte("id"), Delimiter, []byte("sig"), []byte("{}"), {}, {}, []byte("{}"), []byte("buf")}, sep))
	f.Add(bytes.Join([][]byte{Delimiter, Delimiter, {}, {}, {}, {}}, sep))
	f.Add(bytes.Join([][]byte{Delimiter, {}, {}}, sep))
	f.Add([]byte("no delimiter"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs := frames(b)
		m, err := Split(fs)
		if err != nil {
			if !errors.Is(err, ErrNoDelimiter) && !errors.Is(err, ErrShortMsg) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		i := 0
		for !bytes.Equal(fs[i], Delimiter) {
			i++
		}
		rest := fs[i+1:]
		got := append([][]byte{m.Sig, m.Header, m.ParentHeader, m.Metadata, m.Content}, m.Buffers...)
		if len(got) != len(rest) {
			t.Fatalf("%d parts, %d frames after the delimiter", len(got), len(rest))
		}
		for j := range got {
			if !bytes.Equal(got[j], rest[j]) {
				t.Fatalf("part %d changed", j)
			}
		}
		// What a signer makes of these parts splits back to them.
		s := NewSigner("key")
		back, err := Split(s.Frames(m.Header, m.ParentHeader, m.Metadata, m.Content, m.Buffers))
		if err != nil || !bytes.Equal(back.Content, m.Content) || len(back.Buffers) != len(m.Buffers) ||
			!s.Verify(back.Sig, back.Header, back.ParentHeader, back.Metadata, back.Content) {
			t.Fatalf("signed frames do not split back: %v", err)
		}
	})
}

// FuzzVerify: a signature a kernel or a client sends is checked without
// panicking, and it passes only when it is the HMAC of these parts under
// the key. A changed part or another key fails it.
func FuzzVerify(f *testing.F) {
	s := NewSigner("k")
	good := s.Sign([]byte(`{"msg_id":"a"}`), []byte("{}"), []byte("{}"), []byte("{}"))
	f.Add("k", good, []byte(`{"msg_id":"a"}`), []byte("{}"), []byte("{}"), []byte("{}"))
	f.Add("k", bytes.ToUpper(good), []byte(`{"msg_id":"a"}`), []byte("{}"), []byte("{}"), []byte("{}"))
	f.Add("k", good[:63], []byte(`{"msg_id":"a"}`), []byte("{}"), []byte("{}"), []byte("{}"))
	f.Add("", []byte("anything"), []byte{}, []byte{}, []byte{}, []byte{})
	f.Add("k", bytes.Repeat([]byte("zz"), 32), []byte{}, []byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, key string, sig, h, p, m, c []byte) {
		s := NewSigner(key)
		ok := s.Verify(sig, h, p, m, c)
		if key == "" {
			if !ok || len(s.Sign(h, p, m, c)) != 0 {
				t.Fatal("an empty key must sign nothing and pass everything, as jupyter_client does")
			}
			return
		}
		want := s.Sign(h, p, m, c)
		if ok != bytes.EqualFold(sig, want) {
			t.Fatalf("Verify(%q) = %v, the signature is %q", sig, ok, want)
		}
		if !s.Verify(want, h, p, m, c) {
			t.Fatal("a signer does not accept its own signature")
		}
		// Moving a byte between parts changes what is signed only if the
		// parts' boundaries are not part of the MAC: jupyter_client signs
		// the concatenation, so this is the protocol's, not a bug. A
		// changed byte must fail.
		if len(c) > 0 {
			c2 := append([]byte(nil), c...)
			c2[0] ^= 1
			if s.Verify(want, h, p, m, c2) {
				t.Fatal("a changed content passed the signature")
			}
		}
		if other := NewSigner(key + "x"); other.Verify(want, h, p, m, c) {
			t.Fatal("another key accepted the signature")
		}
	})
}
