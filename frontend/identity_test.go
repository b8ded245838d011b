package frontend

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// testUsers writes a users file: alice, bob and erin are users (carol has
// a password too), hub may impersonate. It returns each one's token.
func testUsers(t testing.TB) (string, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.json")
	db := &auth.UsersDB{}
	toks := map[string]string{}
	for _, u := range []struct {
		name  string
		roles []string
	}{{"alice", nil}, {"bob", nil}, {"carol", nil}, {"erin", nil}, {"hub", []string{auth.RoleImpersonate}}} {
		if err := db.Add(u.name, u.roles); err != nil {
			t.Fatal(err)
		}
		tok, err := db.NewToken(u.name)
		if err != nil {
			t.Fatal(err)
		}
		toks[u.name] = tok
	}
	if err := db.SetPassword("carol", "carol-password"); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(path); err != nil {
		t.Fatal(err)
	}
	return path, toks
}

const adminToken = "admin-token"

// newAuthEnv is a front-end with the shared admin token and a users file.
func newAuthEnv(t *testing.T, cfg Config) (*testEnv, map[string]string, string) {
	t.Helper()
	path, toks := testUsers(t)
	src, err := auth.NewUsersSource(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Token = adminToken
	cfg.Identities = []auth.Source{src}
	return newEnv(t, cfg), toks, path
}

func tokenHdr(tok string) http.Header { return http.Header{"Authorization": {"token " + tok}} }

func basicHdr(user, pwd string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pwd))}}
}

func (e *testEnv) startAs(hdr http.Header, spec string, env map[string]string) (KernelModel, int, errBody) {
	e.t.Helper()
	var m KernelModel
	var eb errBody
	resp, data := e.do("POST", "api/kernels", map[string]any{"name": spec, "env": env}, hdr, nil)
	if resp.StatusCode == 201 {
		_ = json.Unmarshal(data, &m)
	} else {
		_ = json.Unmarshal(data, &eb)
	}
	return m, resp.StatusCode, eb
}

func (e *testEnv) kernelIDs(hdr http.Header) []string {
	e.t.Helper()
	var ks []KernelModel
	if resp, data := e.do("GET", "api/kernels", nil, hdr, &ks); resp.StatusCode != 200 {
		e.t.Fatalf("list: %d %s", resp.StatusCode, data)
	}
	var ids []string
	for _, k := range ks {
		ids = append(ids, k.ID)
	}
	return ids
}

// TestOwnership plays bob, who knows the id of alice's kernel and session
// and tries everything on them: each answers as if they did not exist.
func TestOwnership(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{})
	alice, bob, admin := tokenHdr(toks["alice"]), tokenHdr(toks["bob"]), tokenHdr(adminToken)
	k, code, eb := e.startAs(alice, "python3", nil)
	if code != 201 {
		t.Fatalf("alice start: %d %+v", code, eb)
	}
	e.worker.mu.Lock()
	lc := e.worker.configs[k.ID]
	e.worker.mu.Unlock()
	if lc.User != "alice" || lc.Env[broker.EnvUsername] != "alice" {
		t.Fatalf("KERNEL_USERNAME not taken from the identity: %q %v", lc.User, lc.Env)
	}
	rec, _, err := e.bus.GetKernel(t.Context(), k.ID)
	if err != nil || rec.Owner != "alice" {
		t.Fatalf("owner: %v %+v", err, rec)
	}

	for _, c := range []struct{ method, path string }{
		{"GET", "api/kernels/" + k.ID},
		{"DELETE", "api/kernels/" + k.ID},
		{"POST", "api/kernels/" + k.ID + "/interrupt"},
		{"POST", "api/kernels/" + k.ID + "/restart"},
	} {
		var eb errBody
		resp, _ := e.do(c.method, c.path, nil, bob, &eb)
		if resp.StatusCode != 404 || eb.Message != "Kernel does not exist: "+k.ID {
			t.Errorf("bob %s %s: %d %+v", c.method, c.path, resp.StatusCode, eb)
		}
	}
	if _, resp, err := dialWS(e.base, k.ID, "bob-s", true, bob); err == nil || resp == nil || resp.StatusCode != 404 {
		t.Errorf("bob's websocket to alice's kernel: %v %v", err, resp)
	}
	if ids := e.kernelIDs(bob); len(ids) != 0 {
		t.Errorf("bob lists %v", ids)
	}
	if ids := e.kernelIDs(alice); len(ids) != 1 || ids[0] != k.ID {
		t.Errorf("alice lists %v", ids)
	}
	if ids := e.kernelIDs(admin); len(ids) != 1 || ids[0] != k.ID {
		t.Errorf("admin lists %v", ids)
	}
	// Alice's own websocket works.
	ws, _, err := dialWS(e.base, k.ID, "alice-s", true, alice)
	if err != nil {
		t.Fatalf("alice's websocket: %v", err)
	}
	ws.c.Close()

	// Sessions: alice's is invisible to bob, and bob's own path is his.
	var as SessionModel
	if resp, data := e.do("POST", "api/sessions", map[string]any{"path": "nb.ipynb", "kernel": map[string]string{"id": k.ID}}, alice, &as); resp.StatusCode != 201 {
		t.Fatalf("alice session: %d %s", resp.StatusCode, data)
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "api/sessions/" + as.ID, nil},
		{"PATCH", "api/sessions/" + as.ID, map[string]any{"path": "stolen.ipynb"}},
		{"DELETE", "api/sessions/" + as.ID, nil},
	} {
		if resp, data := e.do(c.method, c.path, c.body, bob, nil); resp.StatusCode != 404 {
			t.Errorf("bob %s %s: %d %s", c.method, c.path, resp.StatusCode, data)
		}
	}
	var list []SessionModel
	if e.do("GET", "api/sessions", nil, bob, &list); len(list) != 0 {
		t.Errorf("bob lists sessions %+v", list)
	}
	if resp, data := e.do("POST", "api/sessions", map[string]any{"path": "x.ipynb", "kernel": map[string]string{"id": k.ID}}, bob, nil); resp.StatusCode != 400 {
		t.Errorf("bob attaches alice's kernel: %d %s", resp.StatusCode, data)
	}
	var bs SessionModel
	if resp, data := e.do("POST", "api/sessions", map[string]any{"path": "nb.ipynb"}, bob, &bs); resp.StatusCode != 201 || bs.ID == as.ID || bs.Kernel.ID == k.ID {
		t.Fatalf("bob's own nb.ipynb: %d %s", resp.StatusCode, data)
	}
	if e.do("GET", "api/sessions", nil, admin, &list); len(list) != 2 {
		t.Errorf("admin lists sessions %+v", list)
	}

	// Events: bob reads his own kernel's only, alice hers, admin all;
	// each carries who acted.
	var page eventPage
	jstest.WaitFor(t, 20*time.Second, "alice's requested event", func() bool {
		e.do("GET", "api/events?type=requested", nil, admin, &page)
		return len(page.Events) == 2
	})
	for _, ev := range page.Events {
		if ev.Actor != ev.User || (ev.User != "alice" && ev.User != "bob") {
			t.Errorf("event user/actor: %+v", ev.Event)
		}
	}
	e.do("GET", "api/events", nil, bob, &page)
	for _, ev := range page.Events {
		if ev.User != "bob" || ev.Kernel == k.ID {
			t.Errorf("bob reads %+v", ev.Event)
		}
	}
	var eb2 errBody
	if resp, _ := e.do("GET", "api/events?user=alice", nil, bob, &eb2); resp.StatusCode != 403 {
		t.Errorf("bob asks for alice's events: %d %+v", resp.StatusCode, eb2)
	}
	if resp, _ := e.do("GET", "api/events?kernel="+k.ID, nil, bob, &page); resp.StatusCode != 200 || len(page.Events) != 0 {
		t.Errorf("bob filters on alice's kernel: %d %+v", resp.StatusCode, page.Events)
	}
	sse, stop := readSSE(t, e.base+"api/events/stream?since=1h", bob)
	defer stop()
	if ev := nextSSE(t, sse); ev.User != "bob" {
		t.Errorf("bob's feed shows %+v", ev.Event)
	}

	// Alice may shut her kernel down; the admin may shut anyone's.
	if resp, data := e.do("DELETE", "api/kernels/"+k.ID, nil, alice, nil); resp.StatusCode != 204 {
		t.Fatalf("alice deletes her kernel: %d %s", resp.StatusCode, data)
	}
	if resp, data := e.do("DELETE", "api/kernels/"+bs.Kernel.ID, nil, admin, nil); resp.StatusCode != 204 {
		t.Fatalf("admin deletes bob's kernel: %d %s", resp.StatusCode, data)
	}
}

// TestKernelUsername: a user cannot start a kernel as someone else; an
// identity with the impersonate role can, and the kernel is that user's.
func TestKernelUsername(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{})
	alice, hub := tokenHdr(toks["alice"]), tokenHdr(toks["hub"])
	if _, code, eb := e.startAs(alice, "python3", map[string]string{"KERNEL_USERNAME": "bob"}); code != 403 || !strings.Contains(eb.Message, "KERNEL_USERNAME") {
		t.Fatalf("alice as bob: %d %+v", code, eb)
	}
	if _, code, eb := e.startAs(alice, "python3", map[string]string{"KERNEL_USERNAME": "alice"}); code != 201 {
		t.Fatalf("alice as alice: %d %+v", code, eb)
	}
	k, code, eb := e.startAs(hub, "python3", map[string]string{"KERNEL_USERNAME": "bob"})
	if code != 201 {
		t.Fatalf("hub for bob: %d %+v", code, eb)
	}
	if ids := e.kernelIDs(tokenHdr(toks["bob"])); len(ids) != 1 || ids[0] != k.ID {
		t.Fatalf("bob does not own the kernel the hub started for him: %v", ids)
	}
	if ids := e.kernelIDs(hub); len(ids) != 0 {
		t.Fatalf("the hub sees %v", ids)
	}
}

// TestBadCredentials: each scheme's wrong credentials get 401 with a
// message naming what to send, never whether the user exists; basic
// auth takes a password or a token; too many failures get 429.
func TestBadCredentials(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{AuthFailLimit: 8, AuthFailWindow: time.Minute})
	for _, c := range []struct {
		name string
		hdr  http.Header
		code int
	}{
		{"no credentials", nil, 401},
		{"jupyter_server's empty token", http.Header{"Authorization": {"token "}}, 401},
		{"unknown token", tokenHdr("kbu_nope"), 401},
		{"wrong password", basicHdr("carol", "wrong-password"), 401},
		{"unknown user", basicHdr("mallory", "carol-password"), 401},
		{"password", basicHdr("carol", "carol-password"), 200},
		{"password, cached", basicHdr("carol", "carol-password"), 200},
		{"token as password", basicHdr("alice", toks["alice"]), 200},
		{"someone else's token as password", basicHdr("bob", toks["alice"]), 401},
		{"admin token as password", basicHdr("x", adminToken), 200},
		{"bearer", http.Header{"Authorization": {"Bearer " + toks["bob"]}}, 200},
	} {
		var eb errBody
		resp, data := e.do("GET", "api/kernels", nil, c.hdr, nil)
		if resp.StatusCode != 200 {
			_ = json.Unmarshal(data, &eb)
		}
		if resp.StatusCode != c.code {
			t.Errorf("%s: %d %+v", c.name, resp.StatusCode, eb)
		}
		if c.code == 401 && (!strings.Contains(eb.Message, "Authorization: token") || strings.Contains(eb.Message, "mallory") || strings.Contains(eb.Message, "carol")) {
			t.Errorf("%s: message %q", c.name, eb.Message)
		}
	}
	if resp, _ := e.do("GET", "api/kernels?token="+toks["erin"], nil, nil, nil); resp.StatusCode != 200 {
		t.Errorf("?token=: %d", resp.StatusCode)
	}
	// Five failures so far: three more reach the limit, then even good
	// credentials wait.
	for range 3 {
		e.do("GET", "api/kernels", nil, tokenHdr("guess"), nil)
	}
	var eb errBody
	resp, _ := e.do("GET", "api/kernels", nil, tokenHdr(toks["alice"]), &eb)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(eb.Message, "too many failed") {
		t.Fatalf("after the limit: %d %q %+v", resp.StatusCode, resp.Header.Get("Retry-After"), eb)
	}
}

// TestUsersFileReload: a token added while the gateway runs works without
// a restart, and a removed user is out.
func TestUsersFileReload(t *testing.T) {
	e, toks, path := newAuthEnv(t, Config{})
	db, err := auth.ReadUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Add("frank", nil); err != nil {
		t.Fatal(err)
	}
	tok, _ := db.NewToken("frank")
	if err := db.Remove("bob"); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(path); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 20*time.Second, "the new token to work", func() bool {
		resp, _ := e.do("GET", "api/kernels", nil, tokenHdr(tok), nil)
		return resp.StatusCode == 200
	})
	if resp, _ := e.do("GET", "api/kernels", nil, tokenHdr(toks["bob"]), nil); resp.StatusCode != 401 {
		t.Fatalf("removed user: %d", resp.StatusCode)
	}
}

// TestAuthorizationStanzas: JEG's authorized_users / unauthorized_users,
// in the spec and global.
func TestAuthorizationStanzas(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{UnauthorizedUsers: []string{"erin"}, AuthorizedUsers: []string{"alice", "erin", "hub"}})
	admin := tokenHdr(adminToken)
	for _, c := range []struct {
		who  http.Header
		spec string
		user string
		code int
	}{
		{admin, "authz", "bad_guy", 403},                // refused by the spec, though also allowed
		{admin, "authz", "bob", 201},                    // the spec's list replaces the global one
		{admin, "authz", "carol", 403},                  // not in the spec's list
		{tokenHdr(toks["erin"]), "python3", "", 403},    // globally refused
		{tokenHdr(toks["bob"]), "python3", "", 403},     // not globally allowed
		{tokenHdr(toks["alice"]), "python3", "", 201},   // globally allowed
		{tokenHdr(toks["hub"]), "python3", "erin", 403}, // impersonation checks the user named
	} {
		env := map[string]string{}
		if c.user != "" {
			env["KERNEL_USERNAME"] = c.user
		}
		_, code, eb := e.startAs(c.who, c.spec, env)
		if code != c.code {
			t.Errorf("%s as %q: %d %+v", c.spec, c.user, code, eb)
		}
		if code == 403 && !strings.Contains(eb.Message, "is not authorized to start kernel") {
			t.Errorf("%s as %q: message %q", c.spec, c.user, eb.Message)
		}
	}
	_, _, eb := e.startAs(admin, "authz", map[string]string{"KERNEL_USERNAME": "bad_guy"})
	if want := "User 'bad_guy' is not authorized to start kernel 'Test authz'. Ensure KERNEL_USERNAME is set to an appropriate value and retry the request."; eb.Message != want {
		t.Errorf("message %q, want JEG's %q", eb.Message, want)
	}
}

// TestPerUserLimitAcrossFrontends: one user starts 20 kernels at once
// through two front-ends on one bus against a limit of 3; exactly 3
// start, and naming another KERNEL_USERNAME (refused) or none does not
// get past it.
func TestPerUserLimitAcrossFrontends(t *testing.T) {
	path, toks := testUsers(t)
	src, err := auth.NewUsersSource(path)
	if err != nil {
		t.Fatal(err)
	}
	bus := testBus(t)
	startFakeWorker(t, bus)
	cfg := Config{Identities: []auth.Source{src}, MaxKernelsPerUser: 3}
	_, base1 := startFrontend(t, bus, cfg)
	_, base2 := startFrontend(t, bus, cfg)
	alice := tokenHdr(toks["alice"])
	codes := make(chan int, 20)
	for i := range 20 {
		base := base1
		if i%2 == 1 {
			base = base2
		}
		env := map[string]string{}
		switch i % 3 {
		case 1:
			env["KERNEL_USERNAME"] = "alice"
		case 2:
			env["KERNEL_USERNAME"] = fmt.Sprintf("alice%d", i)
		}
		go func() {
			resp, _ := doHTTP(t, "POST", base+"api/kernels", map[string]any{"name": "python3", "env": env}, alice, nil)
			codes <- resp.StatusCode
		}()
	}
	n := map[int]int{}
	for range 20 {
		n[<-codes]++
	}
	if n[201] != 3 || n[201]+n[403] != 20 {
		t.Fatalf("answers: %v", n)
	}
	// Another user is not held up by alice's kernels.
	if resp, data := doHTTP(t, "POST", base2+"api/kernels", map[string]any{"name": "python3"}, tokenHdr(toks["bob"]), nil); resp.StatusCode != 201 {
		t.Fatalf("bob: %d %s", resp.StatusCode, data)
	}
	// A slot comes free when a kernel ends, on any front-end.
	var ks []KernelModel
	doHTTP(t, "GET", base1+"api/kernels", nil, alice, &ks)
	if len(ks) != 3 {
		t.Fatalf("alice has %d kernels", len(ks))
	}
	if resp, _ := doHTTP(t, "DELETE", base1+"api/kernels/"+ks[0].ID, nil, alice, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	if resp, data := doHTTP(t, "POST", base2+"api/kernels", map[string]any{"name": "python3"}, alice, nil); resp.StatusCode != 201 {
		t.Fatalf("after a delete: %d %s", resp.StatusCode, data)
	}
}

// TestSpecsFilteredByAuthorization: users see the specs they may start;
// an administrator sees all, or those of the ?user= it names.
func TestSpecsFilteredByAuthorization(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{})
	var list struct {
		Kernelspecs map[string]any `json:"kernelspecs"`
	}
	specs := func(hdr http.Header, q string) int {
		list.Kernelspecs = nil
		if resp, data := e.do("GET", "api/kernelspecs"+q, nil, hdr, &list); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, data)
		}
		return len(list.Kernelspecs)
	}
	if n := specs(tokenHdr(adminToken), ""); n != 5 {
		t.Errorf("admin sees %d specs", n)
	}
	if n := specs(tokenHdr(adminToken), "?user=carol"); n != 4 || list.Kernelspecs["authz"] != nil {
		t.Errorf("admin for carol sees %d specs", n)
	}
	if n := specs(tokenHdr(toks["carol"]), "?user=alice"); n != 4 {
		t.Errorf("carol (naming alice) sees %d specs", n)
	}
	if n := specs(tokenHdr(toks["alice"]), ""); n != 5 {
		t.Errorf("alice sees %d specs", n)
	}
	if resp, _ := e.do("GET", "api/kernelspecs/authz", nil, tokenHdr(toks["carol"]), nil); resp.StatusCode != 403 {
		t.Errorf("carol gets authz: %d", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "api/kernelspecs?user=carol/authz", nil, tokenHdr(adminToken), nil); resp.StatusCode != 403 {
		t.Errorf("jupyter_server's form for carol: %d", resp.StatusCode)
	}
}

// stubSource recognises "Authorization: stub <name>"; "stub down" is a
// source that cannot decide now.
type stubSource struct{}

func (stubSource) Name() string { return "stub" }
func (stubSource) Authenticate(r auth.Request) (*auth.Identity, error) {
	scheme, name, _ := strings.Cut(r.Header("Authorization"), " ")
	switch {
	case scheme != "stub":
		return nil, nil
	case name == "down":
		return nil, fmt.Errorf("%w: the stub service at stub.example does not answer", auth.ErrUnavailable)
	}
	return &auth.Identity{Name: name, Roles: []string{auth.RoleUser}}, nil
}

// TestSourceOrder: sources are asked in order, a rejection by one does not
// stop the next from accepting, and an unavailable source answers 503
// naming it.
func TestSourceOrder(t *testing.T) {
	path, toks := testUsers(t)
	users, err := auth.NewUsersSource(path)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, Config{Token: adminToken, Identities: []auth.Source{stubSource{}, users}})
	var eb errBody
	resp, _ := e.do("GET", "api/kernels", nil, http.Header{"Authorization": {"stub down"}}, &eb)
	if resp.StatusCode != 503 || !strings.Contains(eb.Message, "stub.example") {
		t.Fatalf("unavailable source: %d %+v", resp.StatusCode, eb)
	}
	// The token source rejects alice's token, the stub ignores it, the
	// users file accepts it.
	if resp, data := e.do("GET", "api/kernels", nil, tokenHdr(toks["alice"]), nil); resp.StatusCode != 200 {
		t.Fatalf("users token behind the token source: %d %s", resp.StatusCode, data)
	}
	k, code, eb := e.startAs(http.Header{"Authorization": {"stub dora"}}, "python3", nil)
	if code != 201 {
		t.Fatalf("stub identity: %d %+v", code, eb)
	}
	if ids := e.kernelIDs(tokenHdr(toks["alice"])); len(ids) != 0 {
		t.Fatalf("alice sees dora's kernel %s: %v", k.ID, ids)
	}
}

// TestPerUserLimitReclaims: a kernel that ended without a front-end's
// shutdown (it died) frees its slot for the next start; a slot whose
// record vanished counts until its grace ends.
func TestPerUserLimitReclaims(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{MaxKernelsPerUser: 1})
	alice := tokenHdr(toks["alice"])
	k, code, eb := e.startAs(alice, "python3", nil)
	if code != 201 {
		t.Fatalf("first: %d %+v", code, eb)
	}
	if _, code, _ := e.startAs(alice, "python3", nil); code != 403 {
		t.Fatalf("second while the first runs: %d", code)
	}
	if _, err := e.bus.UpdateKernel(t.Context(), k.ID, func(k *broker.Kernel) error {
		k.State, k.Reason = broker.StateDead, "killed by the test"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	k2, code, eb := e.startAs(alice, "python3", nil)
	if code != 201 {
		t.Fatalf("after the first died: %d %+v", code, eb)
	}
	// The record disappears behind the front-ends' back: within the
	// grace the slot still counts, after it the slot is taken back.
	if err := e.bus.Kernels.Delete(t.Context(), k2.ID); err != nil {
		t.Fatal(err)
	}
	if _, code, _ := e.startAs(alice, "python3", nil); code != 403 {
		t.Fatalf("within the grace: %d", code)
	}
	e.fe.slots.grace = 0
	if _, code, eb := e.startAs(alice, "python3", nil); code != 201 {
		t.Fatalf("after the grace: %d %+v", code, eb)
	}
}
