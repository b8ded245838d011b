package main

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// TestUsersCommand manages a users file with `kernelbus users` and checks
// that what it wrote authenticates as it should.
func TestUsersCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users.json")
	code, tok, errOut := runCLI("users", "add", "--file", file, "alice")
	tok = strings.TrimSpace(tok)
	if code != 0 || !strings.HasPrefix(tok, "kbu_") {
		t.Fatalf("add: %d %q %s", code, tok, errOut)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode: %v %v", err, st)
	}
	if code, _, errOut := runCLI("users", "add", "bob", "--file", file, "--role", "admin,impersonate"); code != 0 {
		t.Fatalf("add bob: %s", errOut)
	}
	stdin = strings.NewReader("bob-password\n")
	defer func() { stdin = os.Stdin }()
	if code, _, errOut := runCLI("users", "passwd", "--file", file, "bob"); code != 0 {
		t.Fatalf("passwd: %s", errOut)
	}
	code, tok2, _ := runCLI("users", "token", "--file", file, "alice")
	tok2 = strings.TrimSpace(tok2)
	if code != 0 || tok2 == tok {
		t.Fatalf("token: %d %q", code, tok2)
	}
	code, list, _ := runCLI("users", "list", "--file", file)
	if code != 0 || !regexp.MustCompile(`(?m)^alice\s+user\s+\w{8},\w{8}\s+false$`).MatchString(list) ||
		!regexp.MustCompile(`(?m)^bob\s+admin,impersonate\s+\w{8}\s+true$`).MatchString(list) {
		t.Fatalf("list:\n%s", list)
	}
	data, _ := os.ReadFile(file)
	if strings.Contains(string(data), tok) || strings.Contains(string(data), "bob-password") {
		t.Fatal("a secret is stored in clear")
	}
	src, err := auth.NewUsersSource(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range []string{tok, tok2} {
		if id, err := src.Authenticate(fakeReq{"Authorization": "token " + tk}); err != nil || id.Name != "alice" {
			t.Fatalf("token: %+v %v", id, err)
		}
	}
	for _, bad := range [][]string{
		{"users", "add", "--file", file, "alice"}, // exists
		{"users", "add", "--file", file, "a:b"},   // bad name
		{"users", "add", "--file", file, "x", "--role", "god"},
		{"users", "token", "--file", file, "nobody"},
		{"users", "remove", "--file", file}, // no name
		{"users", "list", "--file", file, "extra"},
		{"users", "frobnicate", "--file", file},
		{"users", "add", "carol"}, // no --file
	} {
		if code, _, _ := runCLI(bad...); code == 0 {
			t.Errorf("%v succeeded", bad)
		}
	}
	if code, _, errOut := runCLI("users", "remove", "--file", file, "alice"); code != 0 {
		t.Fatalf("remove: %s", errOut)
	}
	if _, list, _ := runCLI("users", "list", "--file", file); strings.Contains(list, "alice") {
		t.Fatalf("alice still listed:\n%s", list)
	}
}

type fakeReq map[string]string

func (r fakeReq) Header(n string) string     { return r[n] }
func (r fakeReq) Query(string) string        { return "" }
func (r fakeReq) RemoteIP() string           { return "127.0.0.1" }
func (r fakeReq) PeerCertificates() [][]byte { return nil }

// TestServeAuthDefaults: serve with no authentication configured makes a
// token and prints it once; without it a request gets 401, with it 200.
// The part commands refuse to run open unless told.
func TestServeAuthDefaults(t *testing.T) {
	if code, _, errOut := runCLI("frontend", "--nats", "nats://127.0.0.1:1"); code == 0 || !strings.Contains(errOut, "--insecure-no-auth") {
		t.Fatalf("frontend without authentication: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI("serve", "--token", "x", "--insecure-no-auth"); code == 0 || !strings.Contains(errOut, "cannot go with") {
		t.Fatalf("token and no-auth: %d %s", code, errOut)
	}
	bin := jstest.KernelbusBin(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "serve.log")
	srv := launchServe(t, bin, filepath.Join(dir, "data"), logPath, withLauncher(nil)...)
	var token string
	jstest.WaitFor(t, 30*time.Second, "serve to print its token", func() bool {
		log, _ := os.ReadFile(logPath)
		m := regexp.MustCompile(`auth_token=([0-9a-f]{48})`).FindSubmatch(log)
		if m != nil {
			token = string(m[1])
		}
		return m != nil
	})
	get := func(hdr string) int {
		req, _ := http.NewRequest("GET", srv.url+"/api/kernels", nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if c := get(""); c != 401 {
		t.Errorf("no token: %d", c)
	}
	if c := get("token " + token); c != 200 {
		t.Errorf("printed token: %d", c)
	}
}
