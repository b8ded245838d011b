package yarn

import (
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// A misspelt or mistyped option fails the worker's start: it compared
// strings once, so "impersonation=yes" quietly meant false.
func TestOptionsRefused(t *testing.T) {
	var r workers.Registry
	Register(&r, zerolog.Nop())
	for opts, want := range map[string]string{
		"impersonation=yes": `impersonation="yes"`,
		"queue-check=1x":    `queue-check="1x"`,
		"impersonaton=true": "unknown options [impersonaton]",
	} {
		k, v, _ := strings.Cut(opts, "=")
		_, err := r.New(Name, workers.BackendConfig{LauncherPath: "/nonexistent", Options: map[string]string{k: v}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error with %q, got %v", opts, want, err)
		}
	}
}
