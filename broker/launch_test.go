package broker

import (
	"strings"
	"testing"
)

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"A": "1", "B_2": "two"}
	for in, want := range map[string]string{
		"${A}": "1", "$A-$B_2": "1-two", "${C}": "${C}", "$C": "$C", "$$A": "$A", "x$": "x$", "${A": "${A", "plain": "plain",
	} {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string]PortRange{"": {}, "0..0": {}, "40000..41000": {40000, 41000}, "2000..2004": {2000, 2004}} {
		got, err := ParsePortRange(in)
		if err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"40000", "40000-41000", "a..b", "80..90", "40000..40003", "41000..40000", "60000..70000"} {
		if _, err := ParsePortRange(in); err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("%q: error %v", in, err)
		}
	}
}
