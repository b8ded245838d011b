package auth_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// fakeHub answers GET /hub/api/user as JupyterHub does, from a token
// table, and counts the lookups. (The real Hub is tested in
// hub_real_test.go.)
type fakeHub struct {
	srv     *httptest.Server
	lookups atomic.Int64
	mu      sync.Mutex
	models  map[string]map[string]any
	status  int // forced answer, if set
}

func newFakeHub(t testing.TB) *fakeHub {
	h := &fakeHub{models: map[string]map[string]any{
		"tok-alice": {"kind": "user", "name": "alice", "admin": false, "groups": []string{"ds"}, "scopes": []string{"access:servers!user=alice"}},
		"tok-root":  {"kind": "user", "name": "root", "admin": true, "groups": []string{}, "scopes": []string{"admin:users"}},
		"tok-svc":   {"kind": "service", "name": "launcher", "scopes": []string{"custom:kernelbus:impersonate", "read:users"}},
		"tok-svc2":  {"kind": "service", "name": "dashboards", "scopes": []string{"read:users"}},
		"tok-ops":   {"kind": "user", "name": "olga", "admin": false, "groups": []string{"ops"}},
	}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hub/api/user" {
			http.NotFound(w, r)
			return
		}
		h.lookups.Add(1)
		h.mu.Lock()
		st := h.status
		h.mu.Unlock()
		if st != 0 {
			w.WriteHeader(st)
			return
		}
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		h.mu.Lock()
		m, ok := h.models[tok]
		h.mu.Unlock()
		if scheme != "token" || !ok {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"status":403,"message":"Missing or invalid credentials."}`))
			return
		}
		_ = json.NewEncoder(w).Encode(m)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *fakeHub) api() string { return h.srv.URL + "/hub/api" }

func TestHubSource(t *testing.T) {
	h := newFakeHub(t)
	s, err := auth.NewHubSource(auth.HubConfig{APIURL: h.api() + "/", AdminGroups: []string{"ops"}})
	if err != nil {
		t.Fatal(err)
	}
	withToken := func(tok string) *srcReq { return newSrcReq("10.0.0.1", "Authorization", "token "+tok) }

	id, err := s.Authenticate(withToken("tok-alice"))
	if err != nil || id.Name != "alice" || id.Source != "jupyterhub" || !slices.Equal(id.Roles, []string{auth.RoleUser}) || !slices.Equal(id.Groups, []string{"ds"}) {
		t.Fatalf("alice: %+v %v", id, err)
	}
	// Bearer and ?token= work as well.
	if id, err := s.Authenticate(newSrcReq("", "Authorization", "Bearer tok-root")); err != nil || !id.IsAdmin() {
		t.Errorf("hub admin via Bearer: %+v %v", id, err)
	}
	q := newSrcReq("")
	q.query["token"] = "tok-ops"
	if id, err := s.Authenticate(q); err != nil || id.Name != "olga" || !id.IsAdmin() {
		t.Errorf("admin group via ?token=: %+v %v", id, err)
	}
	// A service with the impersonation scope may act for users; one
	// without may not.
	if id, err := s.Authenticate(withToken("tok-svc")); err != nil || !id.Has(auth.RoleImpersonate) || id.IsAdmin() {
		t.Errorf("service with scope: %+v %v", id, err)
	}
	if id, err := s.Authenticate(withToken("tok-svc2")); err != nil || id.Has(auth.RoleImpersonate) {
		t.Errorf("service without scope: %+v %v", id, err)
	}
	// A token from alice's model with that scope written into her name
	// or groups does not count: only scopes.
	if id, _ := s.Authenticate(withToken("tok-alice")); id.Has(auth.RoleImpersonate) {
		t.Errorf("alice impersonates: %+v", id)
	}

	// jupyter_server's empty "token " header with ?token= beside it.
	q = newSrcReq("", "Authorization", "token ")
	q.query["token"] = "tok-alice"
	if id, err := s.Authenticate(q); err != nil || id.Name != "alice" {
		t.Errorf("empty header token, ?token=: %+v %v", id, err)
	}
	// Not this scheme: no token, or basic auth.
	for _, r := range []*srcReq{newSrcReq(""), newSrcReq("", "Authorization", "Basic YWxpY2U6cHc=")} {
		if id, err := s.Authenticate(r); id != nil || err != nil {
			t.Errorf("no token: %+v %v", id, err)
		}
	}

	// A bogus token: 401, cached (the Hub is asked once).
	before := h.lookups.Load()
	for range 5 {
		_, err := s.Authenticate(withToken("bogus"))
		if !errors.Is(err, auth.ErrUnauthorized) || auth.Status(err) != 401 || !strings.Contains(err.Error(), "jupyterhub") {
			t.Fatalf("bogus token: %v", err)
		}
	}
	if n := h.lookups.Load() - before; n != 1 {
		t.Errorf("bogus token looked up %d times, want 1 (cached)", n)
	}
	// A good token is cached too, and callers get their own copy.
	before = h.lookups.Load()
	a1, _ := s.Authenticate(withToken("tok-alice"))
	a1.Roles[0] = auth.RoleAdmin
	a2, _ := s.Authenticate(withToken("tok-alice"))
	if h.lookups.Load() != before || a2.IsAdmin() {
		t.Errorf("cached identity: lookups %d, %+v", h.lookups.Load()-before, a2)
	}
}

// The Hub that does not answer, or answers an error, is 503 naming the
// Hub, never 401; and that is not cached, so the next request retries.
func TestHubSourceUnavailable(t *testing.T) {
	h := newFakeHub(t)
	s, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api()})
	r := newSrcReq("", "Authorization", "token tok-alice")

	h.mu.Lock()
	h.status = http.StatusBadGateway
	h.mu.Unlock()
	_, err := s.Authenticate(r)
	if !errors.Is(err, auth.ErrUnavailable) || auth.Status(err) != 503 || !strings.Contains(err.Error(), h.srv.URL) {
		t.Fatalf("Hub answering 502: %v", err)
	}
	h.mu.Lock()
	h.status = 0
	h.mu.Unlock()
	if id, err := s.Authenticate(r); err != nil || id.Name != "alice" {
		t.Fatalf("Hub back: %+v %v", id, err)
	}

	// Wrong URL (404) or not JSON: misconfiguration, 503 too.
	s404, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.srv.URL + "/wrong"})
	if _, err := s404.Authenticate(r); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("404: %v", err)
	}

	// The Hub process gone.
	url := h.api()
	h.srv.Close()
	down, _ := auth.NewHubSource(auth.HubConfig{APIURL: url, Client: &http.Client{Timeout: 2 * time.Second}})
	_, err = down.Authenticate(r)
	if !errors.Is(err, auth.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("Hub down: %v", err)
	}
	if err := down.Check(t.Context()); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("Check with the Hub down: %v", err)
	}
	if _, err := auth.NewHubSource(auth.HubConfig{APIURL: "hub:8081"}); err == nil {
		t.Error("URL without scheme accepted")
	}
}

// Concurrent requests with one token make one Hub request; entries
// expire; a flood of distinct bogus tokens does not grow the cache past
// its bound (seen as: old entries were evicted and are asked again).
func TestHubSourceCache(t *testing.T) {
	h := newFakeHub(t)
	s, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api(), TTL: time.Hour, FailTTL: time.Hour, MaxEntries: 8})
	r := newSrcReq("", "Authorization", "token tok-alice")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := s.Authenticate(r); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := h.lookups.Load(); n != 1 {
		t.Errorf("20 concurrent requests made %d Hub lookups, want 1", n)
	}
	for i := range 100 {
		_, _ = s.Authenticate(newSrcReq("", "Authorization", fmt.Sprintf("token bogus-%d", i)))
	}
	before := h.lookups.Load()
	_, _ = s.Authenticate(r)
	if h.lookups.Load() == before {
		t.Error("alice's entry survived 100 newer entries in a cache of 8")
	}

	short, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api(), TTL: 20 * time.Millisecond})
	_, _ = short.Authenticate(r)
	before = h.lookups.Load()
	jstest.WaitFor(t, 5*time.Second, "the cached entry to expire", func() bool {
		_, _ = short.Authenticate(r)
		return h.lookups.Load() != before
	})
}
