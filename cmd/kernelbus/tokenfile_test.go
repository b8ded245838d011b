package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenFile: --token-file gives the shared token out of the command
// line (which every local user, kernels included, reads in
// /proc/<pid>/cmdline); it goes alone, and an empty or missing file is
// refused with a message naming the flag.
func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "token"), filepath.Join(dir, "empty")
	if err := os.WriteFile(good, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := frontendFlags{tokenFile: good}
	if !f.authConfigured() {
		t.Fatal("--token-file does not count as authentication (serve would generate a token)")
	}
	if err := f.checkAuth("serve"); err != nil || f.token != "s3cret" {
		t.Fatalf("--token-file: token %q, %v", f.token, err)
	}
	for _, c := range []struct {
		f    frontendFlags
		want string
	}{
		{frontendFlags{token: "x", tokenFile: good}, "not both"},
		{frontendFlags{tokenFile: empty}, "is empty"},
		{frontendFlags{tokenFile: filepath.Join(dir, "none")}, "--token-file"},
		{frontendFlags{tokenFile: good, noAuth: true}, "cannot go with"},
	} {
		if err := c.f.checkAuth("serve"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error with %q", c.f, err, c.want)
		}
	}
}
