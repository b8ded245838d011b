package broker

import (
	"strconv"
	"testing"
)

// BenchmarkAppendLegacyJSON: the re-encoding of every kernel output for a
// legacy client, with the usual UUID msg_id and short msg_type.
func BenchmarkAppendLegacyJSON(b *testing.B) {
	f := Frame{Channel: "iopub", Header: []byte(`{"msg_id":"0f4cbd2c-8a3f-4c36-9d0e-5c3c9b1f6a21_1_2","msg_type":"stream"}`),
		ParentHeader: []byte(`{}`), Metadata: []byte(`{}`), Content: []byte(`{"name":"stdout","text":"hello\n"}`)}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = f.AppendLegacyJSON(buf[:0], "0f4cbd2c-8a3f-4c36-9d0e-5c3c9b1f6a21_1_2", "stream", true)
	}
}

// BenchmarkJSONString: the msg_id and msg_type of a kernel message as
// JSON strings (what AppendLegacyJSON writes twice per message); the
// Go-quoting sub-benchmark is what it used before, for comparison.
func BenchmarkJSONString(b *testing.B) {
	const id = "0f4cbd2c-8a3f-4c36-9d0e-5c3c9b1f6a21_1_2"
	buf := make([]byte, 0, 128)
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			buf = appendJSONString(buf[:0], id)
		}
	})
	b.Run("go-quote", func(b *testing.B) {
		for b.Loop() {
			buf = strconv.AppendQuote(buf[:0], id)
		}
	})
}
