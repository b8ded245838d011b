package launcher

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/launcher/wire"
)

// The expected digest was computed with Python's hmac/hashlib, as
// jupyter_client signs.
func TestSignMatchesJupyterClient(t *testing.T) {
	sg := wire.NewSigner("5f2d-key")
	h := []byte(`{"msg_id":"a","msg_type":"execute_request"}`)
	p, m, c := []byte(`{}`), []byte(`{}`), []byte(`{"code":"1+1"}`)
	const want = "a15580fd3ddea77e3c831124177c1893d7f066639fdc699ea99e7a15ed839096"
	if got := string(sg.Sign(h, p, m, c)); got != want {
		t.Fatalf("sign = %s, want %s", got, want)
	}
	// A signer is reused across messages: a second call must not depend on
	// the first.
	if got := string(sg.Sign(h, p, m, c)); got != want {
		t.Fatalf("second sign = %s, want %s", got, want)
	}
	if !sg.Verify([]byte(want), h, p, m, c) {
		t.Fatal("verify rejected a good signature")
	}
	if !sg.Verify([]byte(strings.ToUpper(want)), h, p, m, c) {
		t.Fatal("verify rejected an upper-case hex signature")
	}
	for name, bad := range map[string][]byte{
		"tampered content": []byte(`{"code":"1+2"}`),
	} {
		if sg.Verify([]byte(want), h, p, m, bad) {
			t.Errorf("%s: verify accepted", name)
		}
	}
	for name, sig := range map[string]string{
		"empty":     "",
		"short":     want[:62],
		"not hex":   "zz" + want[2:],
		"other key": string(wire.NewSigner("other").Sign(h, p, m, c)),
	} {
		if sg.Verify([]byte(sig), h, p, m, c) {
			t.Errorf("%s signature accepted", name)
		}
	}
	// Buffers are not signed.
	f1 := sg.Frames(h, p, m, c, nil)
	f2 := sg.Frames(h, p, m, c, [][]byte{[]byte("buf")})
	if !bytes.Equal(f1[1], f2[1]) || len(f2) != 7 || string(f2[6]) != "buf" || string(f1[0]) != "<IDS|MSG>" {
		t.Fatalf("wireFrames: %q / %q", f1, f2)
	}
}

func TestEmptyKeyDisablesSigning(t *testing.T) {
	sg := wire.NewSigner("")
	if s := sg.Sign([]byte("{}"), nil, nil, nil); len(s) != 0 {
		t.Fatalf("sign with no key = %q, want empty", s)
	}
	if !sg.Verify([]byte("anything"), []byte("{}"), nil, nil, nil) {
		t.Fatal("no key: every message passes, as in jupyter_client")
	}
}

func frames(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, x := range s {
		out[i] = []byte(x)
	}
	return out
}

func TestSplitWire(t *testing.T) {
	cases := []struct {
		name    string
		in      [][]byte
		wantErr error
		header  string
		nbuf    int
	}{
		{"dealer", frames("<IDS|MSG>", "sig", "{h}", "{p}", "{m}", "{c}"), nil, "{h}", 0},
		{"iopub topic", frames("kernel.x.status", "<IDS|MSG>", "sig", "{h}", "{p}", "{m}", "{c}"), nil, "{h}", 0},
		{"router identities and buffers", frames("id1", "id2", "<IDS|MSG>", "sig", "{h}", "{p}", "{m}", "{c}", "b1", "b2"), nil, "{h}", 2},
		{"first exact wire.Delimiter wins", frames("<IDS|MSG>x", "<IDS|MSG>", "sig", "{h}", "{p}", "{m}", "{c}", "<IDS|MSG>"), nil, "{h}", 1},
		{"no wire.Delimiter", frames("sig", "{h}", "{p}", "{m}", "{c}"), wire.ErrNoDelimiter, "", 0},
		{"too short", frames("<IDS|MSG>", "sig", "{h}", "{p}", "{m}"), wire.ErrShortMsg, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := wire.Split(tc.in)
			if err != tc.wantErr {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if string(w.Header) != tc.header || string(w.Sig) != "sig" || string(w.Content) != "{c}" || len(w.Buffers) != tc.nbuf {
				t.Fatalf("got %+v", w)
			}
		})
	}
}

func TestScanStringsAgreesWithEncodingJSON(t *testing.T) {
	keys := []string{"msg_id", "msg_type", "session"}
	inputs := []string{
		`{"msg_id":"1","msg_type":"status","session":"s"}`,
		` { "msg_id" : "1" , "session":"s" }`,
		`{"date":"2024-01-01T00:00:00Z","msg_id":"a\"b\\c\u00e9","msg_type":"stream","version":"5.3"}`,
		`{"nested":{"msg_id":"inner","x":[1,{"msg_type":"no"}]},"msg_id":"outer"}`,
		`{"msg_id":12,"msg_type":null,"session":true}`,
		`{"a":[],"b":{},"c":-1.5e3,"msg_type":"x","s":"}{]["}`,
		`{"subshell_id":null,"msg_type":"execute_request","msg_id":"m","session":""}`,
		`{"ms\u0067_id":"escaped key"}`,
		`{}`,
	}
	for _, in := range inputs {
		var ref map[string]any
		if err := json.Unmarshal([]byte(in), &ref); err != nil {
			t.Fatalf("bad test input %s: %v", in, err)
		}
		out := make([][]byte, len(keys))
		if err := scanStrings([]byte(in), keys, out); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		for i, k := range keys {
			want, isString := ref[k].(string)
			if !isString {
				if out[i] != nil {
					t.Errorf("%s: %s = %q, want absent", in, k, out[i])
				}
				continue
			}
			if out[i] == nil || string(out[i]) != want {
				t.Errorf("%s: %s = %q, want %q", in, k, out[i], want)
			}
		}
	}
	for _, bad := range []string{``, `[]`, `{"a":`, `{"a":"x"`, `{"a" "x"}`, `{"msg_id":"unterminated}`} {
		out := make([][]byte, len(keys))
		if err := scanStrings([]byte(bad), keys, out); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestSessionRoutesBounded(t *testing.T) {
	r := newSessionRoutes(3)
	for _, id := range []string{"a", "b", "c", "d"} {
		r.put(id, "s-"+id)
	}
	if got := r.get([]byte("a")); got != "" {
		t.Errorf("oldest entry kept: %q", got)
	}
	for _, id := range []string{"b", "c", "d"} {
		if got := r.get([]byte(id)); got != "s-"+id {
			t.Errorf("%s → %q", id, got)
		}
	}
	r.put("", "x")
	r.put("e", "")
	if r.get([]byte("e")) != "" || len(r.m) != 3 {
		t.Errorf("empty ids or sessions stored: %v", r.m)
	}
}

func TestKernelEnvStripsKB(t *testing.T) {
	t.Setenv("KB_LAUNCH_CONFIG", "secret")
	t.Setenv("HOME", "/home/x")
	t.Setenv("UNRELATED", "no")
	env := kernelEnv(map[string]string{"KERNEL_ID": "k", "KB_NATS_TOKEN": "secret", "HOME": "/override"})
	joined := "\n" + strings.Join(env, "\n") + "\n"
	for _, bad := range []string{"KB_", "UNRELATED", "HOME=/home/x"} {
		if strings.Contains(joined, "\n"+bad) {
			t.Errorf("kernel env has %s: %v", bad, env)
		}
	}
	for _, good := range []string{"\nKERNEL_ID=k\n", "\nHOME=/override\n"} {
		if !strings.Contains(joined, good) {
			t.Errorf("kernel env lacks %q: %v", good, env)
		}
	}
}

func BenchmarkRelayParse(b *testing.B) {
	sg := wire.NewSigner("0123456789abcdef0123456789abcdef")
	h := []byte(`{"msg_id":"7c6f1a9e-1f0c4c3e9d1e_1234_56","msg_type":"stream","username":"u","session":"7c6f1a9e-1f0c4c3e9d1e","date":"2024-05-01T10:00:00.123456Z","version":"5.3"}`)
	p := []byte(`{"msg_id":"3c1e0b5a-aaaa-bbbb-cccc-1234567890ab","msg_type":"execute_request","username":"u","session":"11111111-2222-3333-4444-555555555555","date":"2024-05-01T10:00:00.000Z","version":"5.2"}`)
	m, c := []byte(`{}`), []byte(`{"name":"stdout","text":"hello\n"}`)
	fr := sg.Frames(h, p, m, c, nil)
	fr = append([][]byte{[]byte("stream.stdout")}, fr...)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		w, err := wire.Split(fr)
		if err != nil || !sg.Verify(w.Sig, w.Header, w.ParentHeader, w.Metadata, w.Content) {
			b.Fatal("bad")
		}
		var hv [2][]byte
		var pv [3][]byte
		_ = scanStrings(w.Header, headerKeys, hv[:])
		_ = scanStrings(w.ParentHeader, parentKeys, pv[:])
	}
}
