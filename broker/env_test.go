package broker

import (
	"errors"
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
