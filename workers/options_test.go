package workers_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/workers"
)

func TestOptions(t *testing.T) {
	read := func(m map[string]string) (string, []string, bool, time.Duration, error) {
		s, l, b, d := "def", []string{"x"}, true, time.Minute
		o := workers.ReadOptions("rm", m)
		o.String("s", &s)
		o.List("l", &l)
		o.Bool("b", &b)
		o.Duration("d", &d)
		return s, l, b, d, o.Err()
	}
	s, l, b, d, err := read(map[string]string{"s": "v", "l": "a, ,b", "b": "false", "d": "2s"})
	if err != nil || s != "v" || len(l) != 2 || l[1] != "b" || b || d != 2*time.Second {
		t.Fatalf("got %q %q %v %v %v", s, l, b, d, err)
	}
	// Absent and empty keys keep the defaults.
	s, l, b, d, err = read(map[string]string{"s": "", "b": ""})
	if err != nil || s != "def" || l[0] != "x" || !b || d != time.Minute {
		t.Fatalf("defaults: got %q %q %v %v %v", s, l, b, d, err)
	}
	for m, want := range map[string]string{
		"b=yes":  `rm: option b="yes" is not true or false`,
		"d=-1s":  `rm: option d="-1s" is not a positive duration`,
		"d=10":   `option d="10"`,
		"bb=1":   "rm: unknown options [bb] (known: [b d l s])",
		"s.x=on": "unknown options [s.x]",
	} {
		k, v, _ := strings.Cut(m, "=")
		if _, _, _, _, err := read(map[string]string{k: v}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error with %q, got %v", m, want, err)
		}
	}
}
