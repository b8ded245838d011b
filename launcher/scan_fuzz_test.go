package launcher

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzScanStrings: scanStrings reads msg_id, msg_type and session out of
// every kernel message header without a full JSON decode. Against
// encoding/json on the same bytes: it never panics, and on a valid JSON
// object with distinct member names it finds each string member that
// encoding/json finds, with the same value, and nothing for a member that
// is absent or not a string.
func FuzzScanStrings(f *testing.F) {
	for _, s := range []string{
		`{"msg_id":"a","msg_type":"status","session":"s"}`,
		`{"date":{"x":["}",1]},"msg_id":"a\"b\u00e9","msg_type":"x"}`,
		` { "msg_id" : "a" , "n" : [1, {"msg_id":"inner"}] , "msg_type" : null }`,
		`{"msg_\u0069d":"escaped-name","msg_type":"t\ud800"}`,
		`{"msg_id":"a"`, `{"msg_id":`, `{"a":"\`, `[1]`, `{"a":1 "msg_id":"x"}`,
	} {
		f.Add([]byte(s))
	}
	keys := []string{"msg_id", "msg_type", "session"}
	f.Fuzz(func(t *testing.T, raw []byte) {
		out := make([][]byte, len(keys))
		err := scanStrings(raw, keys, out)
		var obj map[string]json.RawMessage
		if !utf8.Valid(raw) || json.Unmarshal(raw, &obj) != nil || obj == nil || hasDuplicateNames(raw) {
			return // only the error-free path has a reference
		}
		if err != nil {
			t.Fatalf("valid object refused: %v", err)
		}
		for i, k := range keys {
			var want string
			v, present := obj[k]
			isString := present && json.Unmarshal(v, &want) == nil && len(v) > 0 && v[0] == '"'
			switch {
			case isString && !bytes.Equal(out[i], []byte(want)):
				t.Fatalf("%s = %q, encoding/json reads %q", k, out[i], want)
			case !isString && out[i] != nil:
				t.Fatalf("%s = %q for a member that is %s", k, out[i], v)
			}
		}
	})
}

// hasDuplicateNames reports whether the top-level object names a member
// twice: encoding/json keeps the last, scanStrings the first.
func hasDuplicateNames(raw []byte) bool {
	d := json.NewDecoder(bytes.NewReader(raw))
	if _, err := d.Token(); err != nil {
		return true
	}
	seen := map[string]bool{}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return true
		}
		name, _ := tok.(string)
		if seen[name] {
			return true
		}
		seen[name] = true
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			return true
		}
	}
	return false
}
