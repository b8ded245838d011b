package broker

import "testing"

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
