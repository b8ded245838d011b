package workers

import (
	"strings"
	"testing"
	"time"
)

func TestParseWarmPool(t *testing.T) {
	w, err := ParseWarmPool("python3=2,ceiling=10,idle=30m,timeout=1m,accept=KERNEL_WORKING_DIR:KERNEL_X")
	if err != nil || w.Spec != "python3" || w.Count != 2 || w.Ceiling != 10 || w.Idle != 30*time.Minute ||
		w.LaunchTimeout != time.Minute || len(w.Accept) != 2 || w.Accept[1] != "KERNEL_X" {
		t.Fatalf("%+v %v", w, err)
	}
	if w, err := ParseWarmPool("spark_python_yarn_cluster=0"); err != nil || w.Count != 0 {
		t.Fatalf("%+v %v", w, err)
	}
	for in, says := range map[string]string{
		"python3":                 "SPEC=COUNT",
		"=2":                      "SPEC=COUNT",
		"Py Thon=2":               "SPEC=COUNT",
		"python3=two":             "COUNT must be a number",
		"python3=-1":              "COUNT must be a number",
		"python3=5000":            "COUNT must be a number",
		"python3=1,ceiling=x":     "ceiling must be",
		"python3=1,idle=0s":       "idle must be a positive duration",
		"python3=1,timeout=soon":  "timeout must be a positive duration",
		"python3=1,accept=A B":    "accept wants env names",
		"python3=1,accept=":       "accept wants env names",
		"python3=1,colour=blue":   `unknown setting "colour"`,
		"python3=1,ceiling=2,x=y": `unknown setting "x"`,
	} {
		if _, err := ParseWarmPool(in); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseWarmPool(%q) = %v, want an error saying %q", in, err, says)
		}
	}
}
