package broker

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzEnvFilter: whatever a client sends as env, Filter answers without
// panicking, and what it lets through holds no character a shell, a YAML
// document or a log line could take for syntax or a line break.
func FuzzEnvFilter(f *testing.F) {
	for _, s := range [][2]string{{"KERNEL_USERNAME", "alice"}, {"KERNEL_X", "a$(id)"}, {"SPARK_OPTS", "--conf a=b"},
		{"KERNEL_X", "a\u0085b"}, {"1BAD", "x"}, {"KERNEL_X", "a\tb é"}, {"PATH", "/evil"}, {"KERNEL_X", "\xff"}} {
		f.Add(s[0], s[1])
	}
	p := EnvPolicy{Allowed: []string{"SPARK_OPTS"}, MaxTotalBytes: 1 << 12}
	f.Fuzz(func(t *testing.T, k, v string) {
		out, err := p.Filter(map[string]string{k: v, "KERNEL_USERNAME": "alice"})
		if err != nil {
			if !strings.Contains(err.Error(), "env") {
				t.Fatalf("a refusal that does not say it is about the env: %v", err)
			}
			return
		}
		for name, val := range out {
			if !validEnvName(name) || len(val) > MaxEnvValue || !utf8.ValidString(val) {
				t.Fatalf("let through %q=%q", name, val)
			}
			for _, r := range val {
				if r == '$' || r == '`' || r != '\t' && (unicode.IsControl(r) || r == '\u2028' || r == '\u2029') {
					t.Fatalf("let through %q=%q", name, val)
				}
			}
		}
	})
}

// FuzzParseKernelSpec: a kernel.json never panics the parser; what parses
// has an argv and a resource manager.
func FuzzParseKernelSpec(f *testing.F) {
	f.Add([]byte(`{"argv":["python3","-m","ipykernel_launcher","-f","{connection_file}"],"display_name":"P","language":"python"}`))
	f.Add([]byte(`{"argv":["x"],"metadata":{"process_proxy":{"class_name":"a.b.KubernetesProcessProxy","config":{"image_name":"i"}}}}`))
	f.Add([]byte(`{"argv":["x"],"metadata":{"kernelbus":{"rm":"ssh","config":{"remote_hosts":["h1"]}}},"interrupt_mode":"message"}`))
	f.Add([]byte(`{"argv":[],"metadata":{"process_proxy":"x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseKernelSpec("fuzz", b)
		if err != nil {
			return
		}
		if len(s.Argv) == 0 {
			t.Fatal("a spec without argv parsed")
		}
		if _, err := s.RM(); err != nil {
			t.Fatalf("a parsed spec has no resource manager: %v", err)
		}
		_ = s.RMConfig()
		// The launch built from it keeps the spec's argv as is.
		lc := NewLaunchConfig(s, "k1", "alice", map[string]string{"KERNEL_X": "y"}, 0)
		if strings.Join(lc.Argv, "\x00") != strings.Join(s.Argv, "\x00") {
			t.Fatal("the launch changed the spec's argv")
		}
	})
}

// FuzzExpandVars: ${NAME} expansion of a spec's env never panics, and a
// value without $ comes out as it went in.
func FuzzExpandVars(f *testing.F) {
	for _, s := range []string{"x${KERNEL_SUFFIX}y", "$$", "${", "${}", "$HOME", "${A:-b}", "$1", "a$"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := expandVars(s, map[string]string{"KERNEL_SUFFIX": "S"})
		if !strings.Contains(s, "$") && got != s {
			t.Fatalf("%q expanded to %q", s, got)
		}
	})
}
