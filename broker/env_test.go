package broker

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestEnvFilter(t *testing.T) {
	p := EnvPolicy{Allowed: []string{"SPARK_OPTS"}}
	got, err := p.Filter(map[string]string{"KERNEL_USERNAME": "alice", "SPARK_OPTS": "--x", "PATH": "/evil", "JPY_SESSION_NAME": "n"})
	if err != nil {
		t.Fatal(err)
	}
	if got["KERNEL_USERNAME"] != "alice" || got["SPARK_OPTS"] != "--x" || len(got) != 2 {
		t.Fatalf("filter kept %v", got)
	}
	for _, v := range []string{"a$b", "a`b", "a\rb", "a\nb", "a\x00b", strings.Repeat("x", MaxEnvValue+1)} {
		_, err := p.Filter(map[string]string{"KERNEL_EXTRA": v})
		if !errors.Is(err, ErrBadEnv) || !strings.Contains(err.Error(), "KERNEL_EXTRA") {
			t.Errorf("value %q: want a bad-env error naming the key, got %v", v[:min(len(v), 10)], err)
		}
	}
	if _, err := p.Filter(map[string]string{"KERNEL_X": strings.Repeat("x", MaxEnvValue)}); err != nil {
		t.Errorf("a value of exactly %d characters is allowed: %v", MaxEnvValue, err)
	}
}

func TestLaunchTimeout(t *testing.T) {
	p := EnvPolicy{}
	if d, _ := p.LaunchTimeout(nil); d != 40*time.Second {
		t.Fatalf("default %s", d)
	}
	if d, _ := p.LaunchTimeout(map[string]string{EnvLaunchTimeout: "2.5"}); d != 2500*time.Millisecond {
		t.Fatalf("2.5 -> %s", d)
	}
	if _, err := p.LaunchTimeout(map[string]string{EnvLaunchTimeout: "soon"}); !errors.Is(err, ErrBadEnv) {
		t.Fatalf("want bad env, got %v", err)
	}
}

// Control characters and Unicode line breaks end lines in YAML, logs and
// some shells: refused, naming the key and the character. Tabs pass.
func TestEnvControlCharacters(t *testing.T) {
	p := EnvPolicy{}
	for _, v := range []string{"a\u0085b", "a\u2028b", "a\u2029b", "a\x1bb", "a\x7fb", "a\x0bb", "a\x0cb", "a\xffb"} {
		_, err := p.Filter(map[string]string{"KERNEL_EXTRA": v})
		if !errors.Is(err, ErrBadEnv) || !strings.Contains(err.Error(), "KERNEL_EXTRA") {
			t.Errorf("value %q: want a bad-env error naming the key, got %v", v, err)
		}
	}
	if _, err := p.Filter(map[string]string{"KERNEL_EXTRA": "a\tb é ✓"}); err != nil {
		t.Errorf("tabs and non-ASCII letters are allowed: %v", err)
	}
}

// The total env cap counts every variable sent, dropped ones included.
func TestEnvTotalBytes(t *testing.T) {
	p := EnvPolicy{MaxTotalBytes: 100}
	if _, err := p.Filter(map[string]string{"DROPPED": strings.Repeat("x", 100)}); !errors.Is(err, ErrBadEnv) || !strings.Contains(err.Error(), "limit is 100") {
		t.Fatalf("want a bad-env error naming the limit, got %v", err)
	}
	if _, err := p.Filter(map[string]string{"KERNEL_X": strings.Repeat("x", 90)}); err != nil {
		t.Fatal(err)
	}
	big := map[string]string{}
	for i := range 20 {
		big[fmt.Sprintf("KERNEL_V%d", i)] = strings.Repeat("x", 4000)
	}
	if _, err := (EnvPolicy{}).Filter(big); !errors.Is(err, ErrBadEnv) {
		t.Fatalf("80 kB of env passes the default cap: %v", err)
	}
	if _, err := (EnvPolicy{MaxTotalBytes: -1}).Filter(big); err != nil {
		t.Fatalf("no cap: %v", err)
	}
}
