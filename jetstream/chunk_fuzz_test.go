package jetstream

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
)

// FuzzReassembler feeds a Reassembler a hostile sequence of chunks (any
// Kb-Chunk header, any id, any size): a kernel holding its launcher's
// credentials can publish exactly that on its output subjects. It never
// panics, never holds more than its bounds, and every message it returns
// is the concatenation, in order, of the chunks 0..count-1 of one id.
func FuzzReassembler(f *testing.F) {
	// A script is a sequence of: id byte, header length, header, data
	// length, data.
	op := func(id byte, hdr, data string) string {
		return string([]byte{id, byte(len(hdr))}) + hdr + string([]byte{byte(len(data))}) + data
	}
	f.Add([]byte(op(0, "0/2", "abc") + op(0, "1/2", "de")))
	f.Add([]byte(op(1, "0/3", "x") + op(0, "0/2", "y") + op(1, "1/3", "z") + op(1, "2/3", "w") + op(0, "1/2", "")))
	f.Add([]byte(op(0, "0/4611686018427387904", "ab"))) // count*len overflows
	f.Add([]byte(op(0, "0/9223372036854775807", "a")))  // the largest count
	f.Add([]byte(op(0, "-1/2", "a") + op(0, "0/0", "a") + op(0, "/", "") + op(0, "1/2", "late") + op(2, "", "plain")))
	f.Fuzz(func(t *testing.T, script []byte) {
		var r Reassembler
		// what each id has sent in order since its chunk 0, to check
		// what comes out
		sent := map[string][]byte{}
		for len(script) >= 2 {
			id := "id" + strconv.Itoa(int(script[0]%8))
			hl := min(int(script[1]), len(script)-2)
			hdr := string(script[2 : 2+hl])
			script = script[2+hl:]
			dl := 0
			if len(script) > 0 {
				dl = min(int(script[0]), len(script)-1)
				script = script[1:]
			}
			data := script[:dl]
			script = script[dl:]
			h := nats.Header{}
			if hdr != "" {
				h.Set(broker.HeaderChunk, hdr)
				h.Set(broker.HeaderChunkID, id)
			}
			idx, _, okHdr := parseChunk(hdr)
			if okHdr && idx == 0 {
				sent[id] = nil
			}
			if okHdr {
				sent[id] = append(sent[id], data...)
			}
			out, whole, err := r.Feed(&nats.Msg{Subject: "s", Header: h, Data: data})
			if whole && err != nil {
				t.Fatal("a whole message and an error")
			}
			if whole && hdr == "" && !bytes.Equal(out, data) {
				t.Fatal("an unchunked message changed")
			}
			if whole && hdr != "" && !bytes.Equal(out, sent[id]) {
				t.Fatalf("reassembled %q, the chunks of %s were %q", out, id, sent[id])
			}
			if len(r.partial) > maxPartials || r.pending > maxPending || r.pending < 0 {
				t.Fatalf("holds %d partial messages, %d bytes", len(r.partial), r.pending)
			}
			held := 0
			for _, p := range r.partial {
				held += len(p.data)
				if cap(p.data) > maxPrealloc && cap(p.data) > 2*len(p.data) {
					t.Fatalf("reserved %d bytes for %d", cap(p.data), len(p.data))
				}
			}
			if held != r.pending {
				t.Fatalf("pending %d, held %d", r.pending, held)
			}
		}
	})
}

// FuzzSplitReassemble: any message split at any chunk size comes back
// whole and unchanged, also when the chunks of two messages interleave.
func FuzzSplitReassemble(f *testing.F) {
	f.Add([]byte("hello, world"), []byte("second"), 3)
	f.Add(bytes.Repeat([]byte{7}, 1000), []byte{}, 1)
	f.Fuzz(func(t *testing.T, a, b []byte, size int) {
		size = 1 + abs(size)%64
		ca := splitBy(&nats.Msg{Subject: "a", Data: a, Header: nats.Header{}}, size)
		cb := splitBy(&nats.Msg{Subject: "b", Data: b, Header: nats.Header{}}, size)
		if want := max(1, (len(a)+size-1)/size); len(a) > size && len(ca) != want {
			t.Fatalf("%d bytes in %d chunks of %d", len(a), len(ca), size)
		}
		var r Reassembler
		var got [][]byte
		for i := 0; i < max(len(ca), len(cb)); i++ {
			for _, c := range [][]*nats.Msg{ca, cb} {
				if i >= len(c) {
					continue
				}
				out, whole, err := r.Feed(c[i])
				if err != nil {
					t.Fatal(err)
				}
				if whole {
					got = append(got, out)
				}
			}
		}
		if len(got) != 2 || !(bytes.Equal(got[0], a) && bytes.Equal(got[1], b) || bytes.Equal(got[0], b) && bytes.Equal(got[1], a)) {
			t.Fatalf("got %d messages back", len(got))
		}
		if len(r.partial) != 0 || r.pending != 0 {
			t.Fatal("a finished message is still held")
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
