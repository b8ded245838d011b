package auth

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// req is a Request built by hand.
type req struct {
	hdr   map[string]string
	query map[string]string
}

func (r req) Header(n string) string     { return r.hdr[n] }
func (r req) Query(n string) string      { return r.query[n] }
func (r req) RemoteIP() string           { return "192.0.2.1" }
func (r req) PeerCertificates() [][]byte { return nil }
func withAuth(v string) req              { return req{hdr: map[string]string{"Authorization": v}} }
func basic(u, p string) req {
	return withAuth("Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)))
}
func tokenQuery(t string) req                                { return req{query: map[string]string{"token": t}} }
func check(t *testing.T, s Source, r req) (*Identity, error) { t.Helper(); return s.Authenticate(r) }

func TestTokenSource(t *testing.T) {
	s, err := NewTokenSource("s3cret", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		r    req
		ok   bool
		err  bool
	}{
		{"none", req{}, false, false},
		{"jupyter_server's empty token header", withAuth("token "), false, false},
		{"token", withAuth("token s3cret"), true, false},
		{"bearer", withAuth("Bearer s3cret"), true, false},
		{"query", tokenQuery("s3cret"), true, false},
		{"basic password", basic("anyone", "s3cret"), true, false},
		{"wrong", withAuth("token nope"), false, true},
		{"wrong prefix of it", withAuth("token s3cre"), false, true},
		{"basic empty password", basic("anyone", ""), false, false},
	} {
		id, err := check(t, s, c.r)
		if (id != nil) != c.ok || (err != nil) != c.err {
			t.Errorf("%s: %+v %v", c.name, id, err)
		}
		if err != nil && !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: %v is not ErrUnauthorized", c.name, err)
		}
		if id != nil && (id.Name != "admin" || !id.IsAdmin() || !id.Has(RoleImpersonate) || id.Source != "token") {
			t.Errorf("%s: identity %+v", c.name, id)
		}
	}
	if _, err := NewTokenSource("", "x"); err == nil {
		t.Error("empty token accepted")
	}
}

func writeDB(t *testing.T) (string, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.json")
	db, err := ReadUsersFile(path) // missing: empty
	if err != nil || len(db.Users) != 0 {
		t.Fatalf("missing file: %v %+v", err, db)
	}
	toks := map[string]string{}
	for _, n := range []string{"alice", "bob"} {
		if err := db.Add(n, nil); err != nil {
			t.Fatal(err)
		}
		toks[n], _ = db.NewToken(n)
	}
	if err := db.Add("root@example.org", []string{RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	if err := db.SetPassword("alice", "alice-password"); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(path); err != nil {
		t.Fatal(err)
	}
	return path, toks
}

func TestUsersDB(t *testing.T) {
	path, toks := writeDB(t)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", err, st.Mode())
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), toks["alice"]) || strings.Contains(string(data), "alice-password") {
		t.Fatal("a secret is stored in clear")
	}
	db, err := ReadUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		name  string
		roles []string
	}{{"alice", nil}, {"", nil}, {"a:b", nil}, {"-x", nil}, {"x y", nil}, {"ok", []string{"root"}}} {
		if err := db.Add(bad.name, bad.roles); err == nil {
			t.Errorf("Add(%q, %v) accepted", bad.name, bad.roles)
		}
	}
	if err := db.SetPassword("bob", "short"); err == nil {
		t.Error("short password accepted")
	}
	if _, err := db.NewToken("nobody"); err == nil {
		t.Error("token for a missing user")
	}
	if err := db.Remove("nobody"); err == nil {
		t.Error("removed a missing user")
	}
	for _, bad := range []string{`{`, `{"users":[{"name":"a b"}]}`, `{"users":[{"name":"a"},{"name":"a"}]}`,
		`{"users":[{"name":"a","roles":["god"]}]}`, `{"users":[{"name":"a","tokens":[{"sha256":"xyz"}]}]}`, `{"version":99}`} {
		if _, err := parseUsers("f", []byte(bad)); err == nil {
			t.Errorf("parsed %s", bad)
		}
	}
}

func TestUsersSource(t *testing.T) {
	path, toks := writeDB(t)
	s, err := NewUsersSource(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		r    req
		user string
		err  bool
	}{
		{"none", req{}, "", false},
		{"empty token header", withAuth("token "), "", false},
		{"token", withAuth("token " + toks["alice"]), "alice", false},
		{"bearer", withAuth("Bearer " + toks["bob"]), "bob", false},
		{"query", tokenQuery(toks["bob"]), "bob", false},
		{"unknown token", withAuth("token kbu_x"), "", true},
		{"password", basic("alice", "alice-password"), "alice", false},
		{"password again (cached)", basic("alice", "alice-password"), "alice", false},
		{"wrong password", basic("alice", "alice-passwort"), "", true},
		{"own token as password", basic("bob", toks["bob"]), "bob", false},
		{"someone else's token as password", basic("bob", toks["alice"]), "", true},
		{"no password set", basic("root@example.org", "anything-at-all"), "", true},
		{"unknown user", basic("mallory", "alice-password"), "", true},
	} {
		id, err := s.Authenticate(c.r)
		got := ""
		if id != nil {
			got = id.Name
		}
		if got != c.user || (err != nil) != c.err {
			t.Errorf("%s: %q %v", c.name, got, err)
		}
		if err != nil && (!errors.Is(err, ErrUnauthorized) || strings.Contains(err.Error(), "mallory") || strings.Contains(err.Error(), "alice")) {
			t.Errorf("%s: error %v", c.name, err)
		}
	}
	// The same message whether or not the user exists.
	_, e1 := s.Authenticate(basic("mallory", "x-password"))
	_, e2 := s.Authenticate(basic("alice", "x-password"))
	if e1.Error() != e2.Error() {
		t.Errorf("messages differ: %q / %q", e1, e2)
	}

	// A changed password invalidates the cache with the reload.
	db, _ := ReadUsersFile(path)
	if err := db.SetPassword("alice", "new-password"); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(path); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.checked = time.Time{} // as if UsersReloadEvery had passed
	s.mu.Unlock()
	if id, _ := s.Authenticate(basic("alice", "alice-password")); id != nil {
		t.Error("the old password still works after the file changed")
	}
	if id, _ := s.Authenticate(basic("alice", "new-password")); id == nil || id.Name != "alice" {
		t.Error("the new password does not work")
	}
	// A broken edit keeps the last good contents.
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.checked = time.Time{}
	s.mu.Unlock()
	if id, _ := s.Authenticate(withAuth("token " + toks["bob"])); id == nil {
		t.Error("a broken edit locked everyone out")
	}
	if s.LoadError() == nil {
		t.Error("no load error reported")
	}
	// Readable by others: refused at start.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	db.Write(path + "2")
	_ = os.Chmod(path+"2", 0o644)
	if _, err := NewUsersSource(path + "2"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable file: %v", err)
	}
	if _, err := NewUsersSource(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}

// BenchmarkUsersSource: a token, basic auth when bcrypt runs (the first
// request of a user, then once per BasicCacheTTL) and when it is cached.
func BenchmarkUsersSource(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "u.json")
	db := &UsersDB{}
	_ = db.Add("alice", nil)
	tok, _ := db.NewToken("alice")
	_ = db.SetPassword("alice", "alice-password")
	_ = db.Write(path)
	s, err := NewUsersSource(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("token", func(b *testing.B) {
		r := withAuth("token " + tok)
		for b.Loop() {
			if id, _ := s.Authenticate(r); id == nil {
				b.Fatal("rejected")
			}
		}
	})
	b.Run("basic-bcrypt", func(b *testing.B) {
		r := basic("alice", "alice-password")
		for b.Loop() {
			s.mu.Lock()
			clear(s.cache)
			s.mu.Unlock()
			if id, _ := s.Authenticate(r); id == nil {
				b.Fatal("rejected")
			}
		}
	})
	b.Run("basic-cached", func(b *testing.B) {
		r := basic("alice", "alice-password")
		for b.Loop() {
			if id, _ := s.Authenticate(r); id == nil {
				b.Fatal("rejected")
			}
		}
	})
}
