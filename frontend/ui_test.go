package frontend

import (
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/broker"
)

// TestAdminLimits: only administrators read and set limits (users who try
// to raise their own are refused), and every front-end enforces them on
// kernel start with a 403 naming the limit.
func TestAdminLimits(t *testing.T) {
	env, toks, _ := newAuthEnv(t, Config{})
	alice, admin := tokenHdr(toks["alice"]), tokenHdr(adminToken)

	// The attack: a user reads or raises limits.
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "api/admin/limits", nil},
		{"PUT", "api/admin/limits/users/alice", map[string]any{"max_kernels": 100}},
		{"PUT", "api/admin/limits/default", map[string]any{}},
		{"DELETE", "api/admin/limits/users/bob", nil},
	} {
		var eb errBody
		resp, _ := env.do(c.method, c.path, c.body, alice, &eb)
		if resp.StatusCode != 403 || !strings.Contains(eb.Message, "administrators only") {
			t.Errorf("alice %s %s: %d %q, want 403", c.method, c.path, resp.StatusCode, eb.Message)
		}
	}

	// Bad input names the field.
	for body, want := range map[string]string{
		`{"max_kernels": -1}`:         "max_kernels",
		`{"allowed_rms": ["mesos"]}`:  "allowed_rms",
		`{"max_kernel": 1}`:           "max_kernel",
		`not json`:                    "limits object",
		`{"driver_memory_mb": "lot"}`: "driver_memory_mb",
	} {
		var eb errBody
		resp, _ := env.do("PUT", "api/admin/limits/users/alice", body, admin, &eb)
		if resp.StatusCode != 400 || !strings.Contains(eb.Message, want) {
			t.Errorf("PUT %s: %d %q, want 400 naming %s", body, resp.StatusCode, eb.Message, want)
		}
	}
	if resp, _ := env.do("PUT", "api/admin/limits/users/a:b", map[string]any{}, admin, nil); resp.StatusCode != 400 {
		t.Errorf("a bad user name: %d, want 400", resp.StatusCode)
	}

	// max_kernels, on this front-end and on a second one.
	var l Limits
	if resp, data := env.do("PUT", "api/admin/limits/users/alice", map[string]any{"max_kernels": 1}, admin, &l); resp.StatusCode != 200 || l.MaxKernels != 1 {
		t.Fatalf("set alice's limits: %d %s", resp.StatusCode, data)
	}
	var mine struct {
		User   string `json:"user"`
		Limits Limits `json:"limits"`
	}
	env.do("GET", "api/limits", nil, alice, &mine)
	if mine.User != "alice" || mine.Limits.MaxKernels != 1 {
		t.Errorf("GET /api/limits as alice: %+v", mine)
	}
	if _, code, eb := env.startAs(alice, "python3", nil); code != 201 {
		t.Fatalf("alice's first kernel: %d %s", code, eb.Message)
	}
	_, base2 := startFrontend(t, env.bus, Config{Token: adminToken, Identities: env.fe.cfg.Identities})
	for _, b := range []string{env.base, base2} {
		var eb errBody
		resp, _ := doHTTP(t, "POST", b+"api/kernels", map[string]any{"name": "python3"}, alice, &eb)
		if resp.StatusCode != 403 || !strings.Contains(eb.Message, "max_kernels") || eb.Reason != "Resource Limit" {
			t.Errorf("alice's second kernel via %s: %d %+v, want 403 naming max_kernels", b, resp.StatusCode, eb)
		}
	}
	// Bob has no limits of his own: the default applies.
	env.do("PUT", "api/admin/limits/default", map[string]any{"allowed_rms": []string{"yarn"}}, admin, nil)
	if _, code, eb := env.startAs(tokenHdr(toks["bob"]), "python3", nil); code != 403 || !strings.Contains(eb.Message, "allowed_rms") {
		t.Errorf("bob on local with allowed_rms yarn: %d %q", code, eb.Message)
	}

	// Resources read from the launch: KERNEL_MEMORY over driver_memory_mb.
	env.do("PUT", "api/admin/limits/users/erin", map[string]any{"driver_memory_mb": 1024, "gpus": 1}, admin, nil)
	erin := tokenHdr(toks["erin"])
	if _, code, eb := env.startAs(erin, "python3", map[string]string{"KERNEL_MEMORY": "2g"}); code != 403 || !strings.Contains(eb.Message, "driver_memory_mb is 1024 MB") {
		t.Errorf("erin asking 2g: %d %q", code, eb.Message)
	}
	if _, code, eb := env.startAs(erin, "python3", map[string]string{"KERNEL_GPUS": "2"}); code != 403 || !strings.Contains(eb.Message, "gpus") {
		t.Errorf("erin asking 2 GPUs: %d %q", code, eb.Message)
	}
	if _, code, eb := env.startAs(erin, "python3", map[string]string{"KERNEL_MEMORY": "lots"}); code != 400 || !strings.Contains(eb.Message, "KERNEL_MEMORY") {
		t.Errorf("erin asking 'lots': %d %q", code, eb.Message)
	}
	if _, code, eb := env.startAs(erin, "python3", map[string]string{"KERNEL_MEMORY": "512m"}); code != 201 {
		t.Errorf("erin asking 512m: %d %q", code, eb.Message)
	}

	var page adminLimitsPage
	env.do("GET", "api/admin/limits", nil, admin, &page)
	if page.Users["alice"].MaxKernels != 1 || page.Users["erin"].DriverMemoryMB != 1024 || len(page.Default.AllowedRMs) != 1 {
		t.Errorf("GET /api/admin/limits: %+v", page)
	}
	if resp, _ := env.do("DELETE", "api/admin/limits/users/erin", nil, admin, nil); resp.StatusCode != 204 {
		t.Errorf("DELETE erin's limits: %d", resp.StatusCode)
	}
	env.do("GET", "api/limits", nil, erin, &mine)
	if mine.Limits.DriverMemoryMB != 0 || len(mine.Limits.AllowedRMs) != 1 {
		t.Errorf("erin after DELETE gets the default: %+v", mine.Limits)
	}
}

func TestAskedOf(t *testing.T) {
	lc := &broker.LaunchConfig{
		Argv: []string{"spark-submit", "--driver-memory", "2g", "--conf", "spark.executor.instances=4", "--queue=analytics"},
		Env: map[string]string{
			"SPARK_OPTS":  "--executor-memory 3072 --executor-cores 2 --conf spark.executor.resource.gpu.amount=1",
			"KERNEL_CPUS": "0.5",
		},
	}
	a, err := askedOf(lc)
	if err != nil {
		t.Fatal(err)
	}
	want := Asked{DriverMemoryMB: 2048, ExecutorMemoryMB: 3072, Cores: 2, Executors: 4, GPUs: 1, Queue: "analytics"}
	if a != want {
		t.Errorf("askedOf: %+v, want %+v", a, want)
	}
	l := Limits{AllowedQueues: []string{"default"}}
	if err := l.check("u", "yarn", lc); err == nil || !strings.Contains(err.Error(), "allowed_queues") {
		t.Errorf("queue check: %v", err)
	}
	for v, mb := range map[string]int{"512m": 512, "1Gi": 1024, "1.5g": 1536, "100": 100, "2048k": 2} {
		if got, err := parseMemMB(v); err != nil || got != mb {
			t.Errorf("parseMemMB(%q) = %d, %v; want %d", v, got, err, mb)
		}
	}
}

// sessionOf signs in through POST /ui/login and returns the cookie.
func sessionOf(t *testing.T, base string, body any) (*http.Cookie, int) {
	t.Helper()
	resp, _ := doHTTP(t, "POST", base+"ui/login", body, http.Header{"Content-Type": {"application/json"}}, nil)
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			return c, resp.StatusCode
		}
	}
	return nil, resp.StatusCode
}

// TestUISession: the browser session cookie, its CSRF token, forgeries,
// and a second front-end accepting it.
func TestUISession(t *testing.T) {
	env, toks, _ := newAuthEnv(t, Config{})

	if c, code := sessionOf(t, env.base, map[string]string{"user": "carol", "password": "wrong"}); code != 401 || c != nil {
		t.Errorf("a wrong password: %d, cookie %v", code, c)
	}
	if _, code := sessionOf(t, env.base, map[string]string{}); code != 400 {
		t.Errorf("no credentials: %d, want 400", code)
	}
	resp, _ := doHTTP(t, "POST", env.base+"ui/login", map[string]string{"token": toks["alice"]},
		http.Header{"Content-Type": {"application/json"}, "Origin": {"https://evil.example"}}, nil)
	if resp.StatusCode != 403 {
		t.Errorf("sign-in from another origin: %d, want 403", resp.StatusCode)
	}

	c, code := sessionOf(t, env.base, map[string]string{"user": "carol", "password": "carol-password"})
	if code != 200 || c == nil {
		t.Fatalf("carol's sign-in: %d", code)
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie flags: HttpOnly %v SameSite %v", c.HttpOnly, c.SameSite)
	}
	cookie := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	var me struct {
		Name, CSRF string
		Admin      bool
	}
	if resp, data := env.do("GET", "api/me", nil, cookie, &me); resp.StatusCode != 200 || me.Name != "carol" || me.Admin || me.CSRF == "" {
		t.Fatalf("GET /api/me with the cookie: %d %s", resp.StatusCode, data)
	}

	// A change without the CSRF header is refused; with it, it works.
	var eb errBody
	if resp, _ := env.do("POST", "api/kernels", map[string]any{"name": "python3"}, cookie, &eb); resp.StatusCode != 403 || !strings.Contains(eb.Message, csrfHeader) {
		t.Errorf("start without CSRF: %d %q", resp.StatusCode, eb.Message)
	}
	withCSRF := http.Header{"Cookie": cookie["Cookie"], csrfHeader: {me.CSRF}}
	var m KernelModel
	if resp, data := env.do("POST", "api/kernels", map[string]any{"name": "python3"}, withCSRF, &m); resp.StatusCode != 201 {
		t.Fatalf("start with CSRF: %d %s", resp.StatusCode, data)
	}
	// Carol's CSRF token does not pass with another session's cookie.
	ca, _ := sessionOf(t, env.base, map[string]string{"token": toks["alice"]})
	if resp, _ := env.do("DELETE", "api/kernels/"+m.ID, nil, http.Header{"Cookie": {ca.Name + "=" + ca.Value}, csrfHeader: {me.CSRF}}, nil); resp.StatusCode != 403 {
		t.Errorf("carol's CSRF token with alice's cookie: %d, want 403", resp.StatusCode)
	}

	// Forgeries: another name under carol's signature, a truncated MAC,
	// garbage. None authenticates.
	body, sig, _ := strings.Cut(c.Value, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(body)
	forged := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), `"carol"`, `"admin"`, 1)))
	forged = strings.Replace(forged, `"r":["user"]`, `"r":["admin"]`, 1)
	for _, v := range []string{forged + "." + sig, body + "." + sig[:10], "garbage", body} {
		resp, _ := env.do("GET", "api/kernel-records", nil, http.Header{"Cookie": {sessionCookie + "=" + v}}, nil)
		if resp.StatusCode != 401 {
			t.Errorf("forged cookie %q: %d, want 401", v, resp.StatusCode)
		}
	}

	// Another front-end of the installation accepts the cookie.
	_, base2 := startFrontend(t, env.bus, Config{Token: adminToken, Identities: env.fe.cfg.Identities})
	var recs []KernelRecord
	if resp, data := doHTTP(t, "GET", base2+"api/kernel-records", nil, cookie, &recs); resp.StatusCode != 200 || len(recs) != 1 || recs[0].Owner != "carol" {
		t.Errorf("second front-end with carol's cookie: %d %s", resp.StatusCode, data)
	}
	// Alice sees none of carol's kernels or records.
	doHTTP(t, "GET", base2+"api/kernel-records", nil, tokenHdr(toks["alice"]), &recs)
	if len(recs) != 0 {
		t.Errorf("alice sees %d records of others", len(recs))
	}
	if resp, _ := env.do("GET", "api/kernel-records/"+m.ID, nil, tokenHdr(toks["alice"]), nil); resp.StatusCode != 404 {
		t.Errorf("alice reads carol's record: %d, want 404", resp.StatusCode)
	}
	var cl struct {
		KernelsByState map[string]int `json:"kernels_by_state"`
	}
	env.do("GET", "api/cluster", nil, tokenHdr(adminToken), &cl)
	if cl.KernelsByState["running"] != 1 {
		t.Errorf("cluster as admin: %+v", cl)
	}
	cl.KernelsByState = nil
	env.do("GET", "api/cluster", nil, tokenHdr(toks["alice"]), &cl)
	if len(cl.KernelsByState) != 0 {
		t.Errorf("cluster as alice counts others' kernels: %+v", cl)
	}

	// The pages: served to anyone, with a strict CSP; no way out of ui/.
	page := func(p string) (*http.Response, []byte) {
		resp, err := http.Get(env.base + p) // pages, not API: no OpenAPI check
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp, data
	}
	resp, data := page("ui/")
	if resp.StatusCode != 200 || !strings.Contains(string(data), "app.js") || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("GET /ui/: %d %s", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	for _, p := range []string{"ui/%2e%2e/ui.go", "ui/..%2fui.go", "ui/nope.js"} {
		if resp, _ := page(p); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}
