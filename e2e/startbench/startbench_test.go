package startbench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 5}, {0.9, 9}, {1, 10}, {0, 1}} {
		if got := Percentile(ds, c.p); got != c.want {
			t.Errorf("p%.0f of 1..10 = %d, want %d", c.p*100, got, c.want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing")
	}
}

// TestWriteSection: a suite rewrites only its own section; the prose and
// the other suites' sections stay, and a missing section is appended.
func TestWriteSection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "doc.md")
	doc := "# Title\n\nprose\n\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n\nend\n"
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{"a", "new a $1"}, {"c", "new c"}, {"a", "newer a"}} {
		if err := WriteSection(p, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(p)
	want := "# Title\n\nprose\n\n<!-- bench:a -->\nnewer a\n<!-- /bench:a -->\n\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n\nend\n\n<!-- bench:c -->\nnew c\n<!-- /bench:c -->\n"
	if string(got) != want {
		t.Errorf("document:\n%s\nwant:\n%s", got, want)
	}
	if err := WriteSection(filepath.Join(t.TempDir(), "new.md"), "x", "x"); err != nil || strings.Contains(string(got), "bench:x") {
		t.Errorf("a new document: %v", err)
	}
}
