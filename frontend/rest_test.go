package frontend

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

var (
	uuidRe         = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	lastActivityRe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)
)

type errBody struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func TestAPIAndKernelspecs(t *testing.T) {
	e := newEnv(t, Config{Version: "1.2.3"})
	var api map[string]string
	resp, _ := e.do("GET", "api", nil, nil, &api)
	if resp.StatusCode != 200 || api["version"] == "" || api["gateway_version"] != "1.2.3" {
		t.Fatalf("GET /api: %d %v", resp.StatusCode, api)
	}

	var list struct {
		Default     string                    `json:"default"`
		Kernelspecs map[string]map[string]any `json:"kernelspecs"`
	}
	resp, _ = e.do("GET", "api/kernelspecs?user=alice", nil, nil, &list)
	if resp.StatusCode != 200 || list.Default != "python3" || len(list.Kernelspecs) != 5 {
		t.Fatalf("kernelspecs: %d %+v", resp.StatusCode, list)
	}
	py := list.Kernelspecs["python3"]
	spec := py["spec"].(map[string]any)
	for _, k := range []string{"argv", "display_name", "language", "interrupt_mode", "env", "metadata"} {
		if _, ok := spec[k]; !ok {
			t.Errorf("spec lacks %s: %v", k, spec)
		}
	}
	if _, ok := spec["argv"].([]any); !ok {
		t.Errorf("argv is not an array: %v", spec["argv"])
	}
	if _, ok := spec["metadata"].(map[string]any); !ok {
		t.Errorf("metadata is not an object: %v", spec["metadata"])
	}
	res := py["resources"].(map[string]any)
	logo, _ := res["logo-64x64"].(string)
	if logo != "/kernelspecs/python3/logo-64x64.png" {
		t.Fatalf("resources: %v", res)
	}

	var one map[string]any
	resp, _ = e.do("GET", "api/kernelspecs/python3", nil, nil, &one)
	if resp.StatusCode != 200 || one["name"] != "python3" {
		t.Fatalf("one spec: %d %v", resp.StatusCode, one)
	}
	// jupyter_server's KERNEL_USERNAME quirk.
	resp, _ = e.do("GET", "api/kernelspecs?user=alice/python3", nil, nil, &one)
	if resp.StatusCode != 200 || one["name"] != "python3" {
		t.Fatalf("quirk: %d %v", resp.StatusCode, one)
	}
	var eb errBody
	resp, _ = e.do("GET", "api/kernelspecs/nope", nil, nil, &eb)
	if resp.StatusCode != 404 || eb.Message != "Kernel spec nope not found" || eb.Reason != "Not Found" {
		t.Fatalf("missing spec: %d %+v", resp.StatusCode, eb)
	}

	resp, body := e.do("GET", strings.TrimPrefix(logo, "/"), nil, nil, nil)
	if resp.StatusCode != 200 || string(body) != "\x89PNG fake" || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("logo: %d %q %s", resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
	resp, body = e.do("HEAD", strings.TrimPrefix(logo, "/"), nil, nil, nil)
	if resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("HEAD logo: %d", resp.StatusCode)
	}
	for _, p := range []string{"kernelspecs/python3/../secret.txt", "kernelspecs/python3/%2e%2e/secret.txt", "kernelspecs/python3/nope.png", "kernelspecs/python3/..%2fsecret.txt"} {
		resp, body = e.do("GET", p, nil, nil, nil)
		if resp.StatusCode == 200 || strings.Contains(string(body), "outside") {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}

	// Ids that cannot be kernels are 404s, not bus errors.
	for _, id := range []string{"a.b", "*", "%20x", "x>"} {
		resp, _ = e.do("GET", "api/kernels/"+id, nil, nil, &eb)
		if resp.StatusCode != 404 {
			t.Errorf("GET kernel %q: %d %+v", id, resp.StatusCode, eb)
		}
		resp, _ = e.do("GET", "api/sessions/"+id, nil, nil, &eb)
		if resp.StatusCode != 404 {
			t.Errorf("GET session %q: %d %+v", id, resp.StatusCode, eb)
		}
	}

	// Unknown routes and methods are JSON errors too.
	resp, _ = e.do("GET", "api/nothing", nil, nil, &eb)
	if resp.StatusCode != 404 || eb.Reason != "Not Found" || eb.Message == "" {
		t.Fatalf("unknown route: %d %+v", resp.StatusCode, eb)
	}
	resp, _ = e.do("PUT", "api/kernels", nil, nil, &eb)
	if resp.StatusCode/100 != 4 || eb.Message == "" {
		t.Fatalf("bad method: %d %+v", resp.StatusCode, eb)
	}
}

func TestKernelLifecycle(t *testing.T) {
	e := newEnv(t, Config{})
	// An empty body starts the default spec.
	var m KernelModel
	resp, data := e.do("POST", "api/kernels", "", nil, &m)
	if resp.StatusCode != 201 {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	if !uuidRe.MatchString(m.ID) || m.Name != "python3" || !lastActivityRe.MatchString(m.LastActivity) {
		t.Fatalf("model: %s", data)
	}
	if loc := resp.Header.Get("Location"); loc != "/api/kernels/"+m.ID {
		t.Fatalf("Location %q", loc)
	}
	if !strings.Contains(string(data), `"connections":0`) {
		t.Fatalf("connections is not the integer 0: %s", data)
	}
	resp, _ = e.do("POST", "api/kernels", "{}", nil, &m)
	if resp.StatusCode != 201 {
		t.Fatalf("start with {}: %d", resp.StatusCode)
	}
	second := m.ID

	var ks []KernelModel
	resp, _ = e.do("GET", "api/kernels?1718000000", nil, nil, &ks)
	if resp.StatusCode != 200 || len(ks) != 2 {
		t.Fatalf("list: %d %+v", resp.StatusCode, ks)
	}
	resp, data = e.do("GET", "api/kernels/"+second, nil, nil, &m)
	if resp.StatusCode != 200 || m.ID != second || m.ExecutionState != "idle" {
		t.Fatalf("get: %d %s", resp.StatusCode, data)
	}

	// The launcher's activity shows in the model.
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	act := `{"execution_state":"busy","last_activity":"` + at.Format(time.RFC3339Nano) + `"}`
	if _, err := e.bus.Activity.Put(context.Background(), second, []byte(act)); err != nil {
		t.Fatal(err)
	}
	jstest.WaitForNil(t, 5*time.Second, func() error {
		e.do("GET", "api/kernels/"+second, nil, nil, &m)
		if m.ExecutionState != "busy" || m.LastActivity != "2026-01-02T03:04:05.123456Z" {
			return errString("model " + m.ExecutionState + " " + m.LastActivity)
		}
		return nil
	})

	resp, data = e.do("POST", "api/kernels/"+second+"/interrupt", "{}", nil, nil)
	if resp.StatusCode != 204 || len(data) != 0 {
		t.Fatalf("interrupt: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("POST", "api/kernels/"+second+"/restart", "{}", nil, &m)
	if resp.StatusCode != 200 || m.ID != second {
		t.Fatalf("restart: %d %s", resp.StatusCode, data)
	}
	ops := e.worker.launcher(second).controlOps()
	if strings.Join(ops, ",") != "interrupt,restart" {
		t.Fatalf("launcher saw %v", ops)
	}

	resp, data = e.do("DELETE", "api/kernels/"+second, nil, nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, data)
	}
	var eb errBody
	resp, _ = e.do("DELETE", "api/kernels/"+second, nil, nil, &eb)
	if resp.StatusCode != 404 {
		t.Fatalf("second delete: %d", resp.StatusCode)
	}
	resp, _ = e.do("GET", "api/kernels/"+second, nil, nil, &eb)
	if resp.StatusCode != 404 || eb.Message != "Kernel does not exist: "+second {
		t.Fatalf("get deleted: %d %+v", resp.StatusCode, eb)
	}
	if _, err := e.bus.Kernels.Get(context.Background(), second); err != jetstream.ErrKeyNotFound {
		t.Fatalf("record still there: %v", err)
	}
	if _, err := e.bus.Activity.Get(context.Background(), second); err != jetstream.ErrKeyNotFound {
		t.Fatalf("activity still there: %v", err)
	}
	jstest.WaitForNil(t, 5*time.Second, func() error {
		e.do("GET", "api/kernels", nil, nil, &ks)
		if len(ks) != 1 {
			return errString("list not updated")
		}
		return nil
	})
	// A launcher that is gone: DELETE asks the pool to stop the kernel.
	e.worker.launcher(ks[0].ID).stop()
	resp, _ = e.do("DELETE", "api/kernels/"+ks[0].ID, nil, nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("delete without launcher: %d", resp.StatusCode)
	}
	jstest.WaitForNil(t, 5*time.Second, func() error {
		for _, r := range e.worker.stopRequests() {
			if r.KernelID == ks[0].ID && string(r.Handle) == `{"pid":1}` {
				return nil
			}
		}
		return errString("no stop request with the handle")
	})

	// Events were recorded.
	jstest.WaitForNil(t, 5*time.Second, func() error {
		info, err := e.bus.JS.Stream(context.Background(), broker.StreamEvents)
		if err != nil {
			return err
		}
		for _, typ := range []string{broker.EvRequested, broker.EvShutdownRequest, broker.EvRestartRequested} {
			if _, err := info.GetLastMsgForSubject(context.Background(), broker.SubjectEvent(second, typ)); err != nil {
				return errString("no " + typ + " event")
			}
		}
		return nil
	})
}

type errString string

func (e errString) Error() string { return string(e) }

func TestStartErrors(t *testing.T) {
	e := newEnv(t, Config{AllowedEnv: []string{"EXTRA"}, MaxKernels: 3, MaxKernelsPerUser: 1})
	var eb errBody
	resp, _ := e.do("POST", "api/kernels", `{"name":`, nil, &eb)
	if resp.StatusCode != 400 || eb.Message == "" {
		t.Fatalf("bad JSON: %d %+v", resp.StatusCode, eb)
	}
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "nope"}, nil, &eb)
	if resp.StatusCode != 404 || eb.Message != "Kernel spec nope not found" {
		t.Fatalf("unknown spec: %d %+v", resp.StatusCode, eb)
	}
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_EVIL": "$(rm -rf /)"}}, nil, &eb)
	if resp.StatusCode != 400 || !strings.Contains(eb.Message, "KERNEL_EVIL") {
		t.Fatalf("bad env: %d %+v", resp.StatusCode, eb)
	}
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "failing"}, nil, &eb)
	if resp.StatusCode != 500 || !strings.Contains(eb.Message, "No module named 'ipykernel'") {
		t.Fatalf("failing: %d %+v", resp.StatusCode, eb)
	}

	// The env the launcher gets: spec env filled from the client's env
	// only, the allowed client env, the KERNEL_* facts; a client-chosen id.
	want := "5f0e8a1c-3b7d-4c2e-9a6f-0d1e2f3a4b5c"
	var m KernelModel
	resp, data := e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{
		"KERNEL_USERNAME": "alice", "KERNEL_SUFFIX": "Z", "EXTRA": "1", "PATH": "/evil", "KERNEL_ID": want,
	}}, nil, &m)
	if resp.StatusCode != 201 || m.ID != want {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	e.worker.mu.Lock()
	lc := e.worker.configs[want]
	e.worker.mu.Unlock()
	env := lc.Env
	if env["FROM_SPEC"] != "xZy" || env["SECRET"] != "${HOME}" || env["EXTRA"] != "1" || env["PATH"] != "" ||
		env["KERNEL_ID"] != want || env["KERNEL_USERNAME"] != "alice" || env["KERNEL_LANGUAGE"] != "python" || env["KERNEL_GATEWAY"] != "1" {
		t.Fatalf("kernel env: %v", env)
	}
	if lc.User != "alice" || lc.Spec != "python3" || time.Duration(lc.LaunchTimeout) != 40*time.Second || lc.InterruptMode != "signal" {
		t.Fatalf("launch config: %+v", lc)
	}
	// Per-user limit.
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_USERNAME": "alice"}}, nil, &eb)
	if resp.StatusCode != 403 || eb.Reason != "Resource Limit" {
		t.Fatalf("user limit: %d %+v", resp.StatusCode, eb)
	}
	// The taken id is not reused.
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_ID": want}}, nil, &m)
	if resp.StatusCode != 201 || m.ID == want {
		t.Fatalf("taken KERNEL_ID: %d %s", resp.StatusCode, m.ID)
	}
	e.startKernel()
	resp, _ = e.do("POST", "api/kernels", map[string]any{"name": "python3"}, nil, &eb)
	if resp.StatusCode != 403 {
		t.Fatalf("global limit: %d %+v", resp.StatusCode, eb)
	}
}

func TestStartTimeout(t *testing.T) {
	e := newEnv(t, Config{})
	var eb errBody
	start := time.Now()
	resp, _ := e.do("POST", "api/kernels", map[string]any{"name": "slow", "env": map[string]string{"KERNEL_LAUNCH_TIMEOUT": "0.5"}}, nil, &eb)
	if resp.StatusCode != 504 || !strings.Contains(eb.Message, "did not start within 0.5s (KERNEL_LAUNCH_TIMEOUT)") {
		t.Fatalf("timeout: %d %+v", resp.StatusCode, eb)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
	id := strings.Fields(eb.Message)[1]
	k, _, err := e.bus.GetKernel(context.Background(), id)
	if err != nil || k.State != broker.StateFailed || !strings.Contains(k.Reason, "timeout") {
		t.Fatalf("record after timeout: %+v %v", k, err)
	}
	jstest.WaitForNil(t, 5*time.Second, func() error {
		for _, r := range e.worker.stopRequests() {
			if r.KernelID == id {
				return nil
			}
		}
		return errString("no stop request")
	})
	resp, _ = e.do("GET", "api/kernels/"+id, nil, nil, &eb)
	if resp.StatusCode != 404 {
		t.Fatalf("failed kernel visible: %d", resp.StatusCode)
	}
	var ks []KernelModel
	e.do("GET", "api/kernels", nil, nil, &ks)
	if len(ks) != 0 {
		t.Fatalf("failed kernel listed: %+v", ks)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, Config{Token: "s3cret", BaseURL: "/gw"})
	var eb errBody
	for _, c := range []struct {
		path string
		hdr  http.Header
		code int
	}{
		{"api/kernels", nil, 401},
		{"api/kernels", http.Header{"Authorization": {"token "}}, 401}, // jupyter_server's "no token"
		{"api/kernels", http.Header{"Authorization": {"token wrong"}}, 401},
		{"api", nil, 401},
		{"api/kernels", http.Header{"Authorization": {"token s3cret"}}, 200},
		{"api/kernels", http.Header{"Authorization": {"Bearer s3cret"}}, 200},
		{"api/kernels?token=s3cret", nil, 200},
		{"api/kernels?token=s3cret&1718", http.Header{"Authorization": {"token "}}, 200},
		{"api/kernels", http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("user:s3cret"))}}, 200},
		{"api/kernelspecs", http.Header{"Authorization": {"token s3cret"}}, 200},
	} {
		resp, body := e.do("GET", c.path, nil, c.hdr, nil)
		if resp.StatusCode != c.code {
			t.Errorf("%s %v: %d %s", c.path, c.hdr, resp.StatusCode, body)
		}
		if c.code == 401 {
			e.do("GET", c.path, nil, c.hdr, &eb)
			if eb.Reason != "Unauthorized" || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("401 body %+v %s", eb, resp.Header.Get("Content-Type"))
			}
		}
	}
	// The websocket needs the token too.
	if _, resp, err := dialWS(e.base, "00000000-0000-4000-8000-000000000000", "s", false, nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("ws without token: %v %v", err, resp)
	}
}

func TestOriginAndCORS(t *testing.T) {
	e := newEnv(t, Config{AllowOrigin: "https://*.example.com"})
	k := e.startKernel()
	// A foreign browser origin cannot open a kernel websocket.
	_, resp, err := dialWS(e.base, k.ID, "s1", false, http.Header{"Origin": {"https://evil.test"}})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("foreign origin: %v %v", err, resp)
	}
	// Same origin and allowed origins can; no Origin (non-browser) can.
	host := strings.TrimSuffix(strings.TrimPrefix(e.base, "http://"), "/")
	for _, o := range []string{"http://" + host, "https://lab.example.com", ""} {
		h := http.Header{}
		if o != "" {
			h.Set("Origin", o)
		}
		c, _, err := dialWS(e.base, k.ID, "s-"+o, false, h)
		if err != nil {
			t.Fatalf("origin %q: %v", o, err)
		}
		_ = c.c.Close()
	}
	resp, _ = e.do("OPTIONS", "api/kernels", nil, http.Header{"Origin": {"https://lab.example.com"}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"authorization"}}, nil)
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://lab.example.com" || resp.Header.Get("Access-Control-Allow-Headers") != "authorization" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = e.do("GET", "api/kernels", nil, http.Header{"Origin": {"https://evil.test"}}, nil)
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("CORS for a foreign origin: %v", resp.Header)
	}
}

func TestSessionsAPI(t *testing.T) {
	e := newEnv(t, Config{})
	var s SessionModel
	resp, data := e.do("POST", "api/sessions", map[string]any{"path": "work/a.ipynb", "name": "a.ipynb", "type": "notebook", "kernel": map[string]any{"name": "python3"}}, nil, &s)
	if resp.StatusCode != 201 || !uuidRe.MatchString(s.ID) || s.Kernel == nil || !uuidRe.MatchString(s.Kernel.ID) || s.Notebook == nil || s.Notebook.Path != "work/a.ipynb" {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	if resp.Header.Get("Location") != "/api/sessions/"+s.ID {
		t.Fatalf("Location %q", resp.Header.Get("Location"))
	}
	// The same path gets the same session.
	var again SessionModel
	e.do("POST", "api/sessions", map[string]any{"path": "work/a.ipynb", "type": "notebook"}, nil, &again)
	if again.ID != s.ID {
		t.Fatalf("second create made %s", again.ID)
	}
	// Attach a second session to the same kernel.
	var s2 SessionModel
	resp, data = e.do("POST", "api/sessions", map[string]any{"path": "b.py", "type": "console", "kernel": map[string]any{"id": s.Kernel.ID}}, nil, &s2)
	if resp.StatusCode != 201 || s2.Kernel.ID != s.Kernel.ID || s2.Notebook != nil {
		t.Fatalf("attach: %d %s", resp.StatusCode, data)
	}
	var list []SessionModel
	e.do("GET", "api/sessions", nil, nil, &list)
	if len(list) != 2 {
		t.Fatalf("list: %+v", list)
	}
	resp, data = e.do("PATCH", "api/sessions/"+s.ID, map[string]any{"path": "work/renamed.ipynb"}, nil, &s)
	if resp.StatusCode != 200 || s.Path != "work/renamed.ipynb" || s.Kernel.ID != s2.Kernel.ID {
		t.Fatalf("patch: %d %s", resp.StatusCode, data)
	}
	// Moving s2 to a new kernel keeps the old one, which s still uses.
	resp, data = e.do("PATCH", "api/sessions/"+s2.ID, map[string]any{"kernel": map[string]any{"name": "python3"}}, nil, &s2)
	if resp.StatusCode != 200 || s2.Kernel.ID == s.Kernel.ID {
		t.Fatalf("patch kernel: %d %s", resp.StatusCode, data)
	}
	resp, _ = e.do("GET", "api/kernels/"+s.Kernel.ID, nil, nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("shared kernel was shut down")
	}
	resp, _ = e.do("DELETE", "api/sessions/"+s.ID, nil, nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, _ = e.do("GET", "api/kernels/"+s.Kernel.ID, nil, nil, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("session's kernel survives its deletion: %d", resp.StatusCode)
	}
	resp, _ = e.do("GET", "api/sessions/"+s.ID, nil, nil, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("deleted session: %d", resp.StatusCode)
	}
	resp, _ = e.do("POST", "api/sessions", map[string]any{"type": "notebook"}, nil, nil)
	if resp.StatusCode != 400 {
		t.Fatalf("no path: %d", resp.StatusCode)
	}
}

func TestCatalog(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	prefix := t.TempDir()
	venvKernels := filepath.Join(prefix, "share", "jupyter", "kernels")
	write := func(dir, name, body string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "kernel.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(first, "ir", `{"argv":["R","--slave","-f","{connection_file}"],"display_name":"R first","language":"R"}`)
	if err := os.WriteFile(filepath.Join(first, "logo-svg.svg"), []byte("<svg/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	write(second, "ir", `{"argv":["R"],"display_name":"R second","language":"R"}`)
	write(second, "broken", `{"argv":[]}`)
	write(venvKernels, "venv", `{"argv":["python","-m","ipykernel_launcher","-f","{connection_file}"],"display_name":"venv","language":"python"}`)
	if err := os.MkdirAll(filepath.Join(prefix, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prefix, "bin", "python"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Catalog{dirs: []string{first, second, venvKernels, filepath.Join(first, "missing")}, log: zerolog.Nop(),
		probe: func() (string, string, bool) { return "/opt/py/bin/python3", first, true }}
	c.Reload()
	if s, ok := c.Spec("ir"); !ok || s.DisplayName != "R first" {
		t.Fatalf("first dir must win: %+v", s)
	}
	if _, ok := c.Spec("broken"); ok {
		t.Fatal("broken spec offered")
	}
	if s, _ := c.Spec("venv"); s == nil || s.Argv[0] != filepath.Join(prefix, "bin", "python") {
		t.Fatalf("venv python not used: %+v", s)
	}
	py, ok := c.Spec("python3")
	if !ok || py.Argv[0] != "/opt/py/bin/python3" || py.DisplayName != "Python 3 (ipykernel)" || py.Language != "python" || c.Default() != "python3" {
		t.Fatalf("synthesized python3: %+v", py)
	}
	if n := len(c.Specs()); n != 3 {
		t.Fatalf("%d specs", n)
	}
	if py.Dir != first || py.Resources["logo-svg"] != "logo-svg.svg" {
		t.Fatalf("synthesized python3 resources: %s %v", py.Dir, py.Resources)
	}
	c.probe = func() (string, string, bool) { return "", "", false }
	c.Reload()
	if _, ok := c.Spec("python3"); ok || c.Default() != "ir" {
		t.Fatalf("python3 offered without ipykernel")
	}
	if len(DefaultKernelDirs()) < 3 {
		t.Fatal("default dirs")
	}
}

func TestOriginPatterns(t *testing.T) {
	o, err := parseOrigins("https://*.example.com, http://localhost:8888")
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{
		"https://lab.example.com": true, "https://a.b.example.com": true, "https://example.com": false,
		"https://evil.com/.example.com": false, "http://localhost:8888": true, "http://localhost:8889": false,
		"https://x:1@example.com": false,
	} {
		if got := o.match(origin); got != want {
			t.Errorf("%s: %v", origin, got)
		}
	}
	if _, err := parseOrigins("example.com"); err == nil {
		t.Error("origin without scheme accepted")
	}
}
