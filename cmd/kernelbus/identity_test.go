package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func parseFrontendFlags(t *testing.T, args ...string) *frontendFlags {
	t.Helper()
	fs := newFlagSet("test", io.Discard)
	var ff frontendFlags
	ff.register(fs)
	if err := parse(fs.FlagSet, args); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return &ff
}

func TestIdentitySources(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "hub-token")
	if err := os.WriteFile(tokFile, []byte("  secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	names := func(args ...string) (string, error) {
		srcs, err := identitySources(parseFrontendFlags(t, args...), zerolog.Nop())
		var n []string
		for _, s := range srcs {
			n = append(n, s.Name())
		}
		return strings.Join(n, ","), err
	}
	if got, err := names(); got != "" || err != nil {
		t.Errorf("no flags: %q %v", got, err)
	}
	// All three, in order; the Hub is not running (only a warning).
	got, err := names("--hub-api-url", "http://127.0.0.1:1/hub/api", "--hub-api-token-file", tokFile,
		"--trusted-proxy-cidrs", "10.0.0.0/8,127.0.0.1", "--trusted-groups-header", "X-Forwarded-Groups",
		"--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--tls-client-cert-user-field", "email")
	if got != "jupyterhub,proxy-header,tls-client-cert" || err != nil {
		t.Errorf("all sources: %q %v", got, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--hub-api-token", "x"}, "--hub-api-url"},
		{[]string{"--hub-api-url", "hub:8081"}, "http(s)://"},
		{[]string{"--hub-api-url", "http://127.0.0.1:1/hub/api", "--hub-api-token", "a", "--hub-api-token-file", tokFile}, "not both"},
		{[]string{"--hub-api-url", "http://127.0.0.1:1/hub/api", "--hub-api-token-file", filepath.Join(dir, "none")}, "--hub-api-token-file"},
		{[]string{"--trusted-proxy-cidrs", "10.0.0.0/40"}, "not an address or CIDR"},
		{[]string{"--trusted-groups-header", "X-G"}, "--trusted-proxy-cidrs"},
		{[]string{"--tls-client-ca", "ca", "--tls-client-cert-user-field", "serial"}, "cn, email, dns or uri"},
		{[]string{"--tls-client-cert-admins", "alice"}, "--tls-client-ca"},
	} {
		if _, err := names(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error mentioning %q", c.args, err, c.want)
		}
	}
}

func TestListenFlags(t *testing.T) {
	ff := parseFrontendFlags(t, "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key")
	if _, _, err := listen("127.0.0.1:0", ff.tls, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "nonexistent.crt") {
		t.Errorf("missing certificate file: %v", err)
	}
	ln, scheme, err := listen("127.0.0.1:0", parseFrontendFlags(t).tls, zerolog.Nop())
	if err != nil || scheme != "http" {
		t.Fatalf("plain: %s %v", scheme, err)
	}
	ln.Close()
}
