package envs_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/frontend/frontendtest"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/envs"
	"github.com/kernelbus/kernelbus/workers/local"
	"github.com/nats-io/nats.go"
)

// users is an identity source for tests: "Authorization: token u-NAME"
// is user NAME, "token a-NAME" administrator NAME.
type users struct{}

func (users) Name() string { return "test-users" }

func (users) Authenticate(r auth.Request) (*auth.Identity, error) {
	h := strings.TrimPrefix(r.Header("Authorization"), "token ")
	switch {
	case strings.HasPrefix(h, "u-"):
		return &auth.Identity{Name: h[2:], Roles: []string{auth.RoleUser}, Source: "test"}, nil
	case strings.HasPrefix(h, "a-"):
		return &auth.Identity{Name: h[2:], Roles: []string{auth.RoleUser, auth.RoleAdmin}, Source: "test"}, nil
	}
	return nil, nil
}

type installation struct {
	env       *jstest.Env
	fe1, fe2  string
	cacheDir  string
	pythonVer string
}

// start runs a NATS in operator mode, two front-ends, a build worker and
// a local worker pool, each part with its own role's credentials.
func start(t *testing.T) *installation {
	t.Helper()
	pythons := envs.DetectPythons(context.Background())
	if len(pythons) == 0 {
		t.Skip("no python3 with venv on PATH")
	}
	in := &installation{env: jstest.Start(t, jstest.Options{Auth: true}), cacheDir: t.TempDir()}
	in.pythonVer = envs.Versions(pythons)[0]
	ctx := context.Background()
	roleBus := func(role, rm string) *kbjs.Bus {
		b, err := kbjs.Open(ctx, in.env.Connect(t, role, rm))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b, err := envs.NewBuilder(ctx, envs.BuilderConfig{Pythons: pythons, WorkDir: t.TempDir()}, roleBus(access.RoleWorker, broker.RMBuild), jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	wbus := roleBus(access.RoleWorker, broker.RMLocal)
	ev, err := kbjs.OpenEnvs(ctx, wbus.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := envs.NewCache(in.cacheDir, ev.Archives)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	t.Cleanup(wcancel)
	specs, err := kbjs.WatchEnvSpecs(wctx, ev.Specs, workers.SpecList{}, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	be, err := local.New(jstest.LauncherBin(t), jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := workers.NewPool(workers.PoolConfig{NATSURLs: in.env.URL, Minter: in.env.Minter, StopGrace: 3 * time.Second, Environments: cache, Specs: specs}, wbus, be, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(context.Background()) })

	cfg := frontend.Config{
		DefaultLaunchTimeout: 90 * time.Second,
		Identities:           []auth.Source{users{}},
		Environments: &frontend.EnvironmentsConfig{
			Pythons: pythons,
			Limits:  frontend.EnvLimits{MemoryMB: 4096, CPUs: 4},
		},
	}
	in.fe1 = frontendtest.Start(t, cfg, roleBus(access.RoleFrontend, ""), &frontend.StaticSpecs{})
	// The second front-end has no limits of its own: only the admin's and
	// the cluster's bind it.
	open := *cfg.Environments
	open.Limits = frontend.EnvLimits{}
	cfg.Environments = &open
	in.fe2 = frontendtest.Start(t, cfg, roleBus(access.RoleFrontend, ""), &frontend.StaticSpecs{})
	return in
}

// call makes one API call and decodes a JSON answer into out.
func call(t *testing.T, method, url, token string, body any, out any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "token "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

// TestEnvironmentRefusals: requests that must not be built are refused
// before anything is built, with messages that name what is wrong.
func TestEnvironmentRefusals(t *testing.T) {
	in := start(t)
	v := in.pythonVer
	cases := []struct {
		name   string
		body   map[string]any
		status int
		want   []string
	}{
		{"missing package", map[string]any{"name": "nope", "python": v, "pip": []string{"kernelbus-no-such-package-zq"}}, 400,
			[]string{"kernelbus-no-such-package-zq", "No matching distribution"}},
		{"over the memory limit", map[string]any{"name": "big", "python": v, "resources": map[string]any{"memory_mb": 65536}}, 400,
			[]string{"resources.memory_mb", "65536", "limit of 4096"}},
		{"over the cpu limit", map[string]any{"name": "big", "python": v, "resources": map[string]any{"cpus": 64}}, 400,
			[]string{"resources.cpus", "limit of 4"}},
		{"python not offered", map[string]any{"name": "old", "python": "3.1"}, 400, []string{"python", "not offered"}},
		{"bad name", map[string]any{"name": "../x", "python": v}, 400, []string{"name"}},
		{"conda without conda", map[string]any{"name": "c", "python": v, "conda": []string{"numpy"}}, 400, []string{"conda", "no conda"}},
		// A requirement is a name and versions only: pip options and
		// URLs would make the front-end or the builder read or run what
		// the caller chose.
		{"pip option", map[string]any{"name": "r", "python": v, "pip": []string{"-r /etc/shadow"}}, 400, []string{"pip options are not allowed"}},
		{"index option in requirements", map[string]any{"name": "r", "python": v, "requirements": "six\n--extra-index-url http://evil.example/simple"}, 400, []string{"pip options are not allowed"}},
		{"url requirement", map[string]any{"name": "r", "python": v, "pip": []string{"six @ file:///etc/passwd"}}, 400, []string{"URLs, paths and markers are not allowed"}},
		{"rm not offered", map[string]any{"name": "r", "python": v, "rm": "yarn"}, 400, []string{"rm", "local"}},
		{"user making it public", map[string]any{"name": "r", "python": v, "public": true}, 403, []string{"only administrators"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := call(t, "POST", in.fe1+"/api/environments", "u-alice", c.body, nil)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, body)
			}
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Errorf("message %s does not say %q", body, w)
				}
			}
		})
	}
	// Beyond the largest container the local resource manager has (its
	// worker's machine, from the worker's presence): refused, for
	// administrators too.
	for _, c := range []struct {
		res   map[string]any
		field string
	}{{map[string]any{"memory_mb": 1 << 30}, "resources.memory_mb"}, {map[string]any{"cpus": 1 << 16}, "resources.cpus"}} {
		status, body := call(t, "POST", in.fe2+"/api/environments", "a-root", map[string]any{"name": "huge", "python": v, "resources": c.res}, nil)
		if status != 400 || !strings.Contains(body, c.field) || !strings.Contains(body, "largest container") {
			t.Fatalf("%v beyond the machine: %d %s", c.res, status, body)
		}
	}
	// The admin panel's per-user limits (kb_limits, limit.default or
	// limit.user.<user>) bind users, not administrators' own checks.
	kv, err := in.env.Bus.JS.KeyValue(context.Background(), broker.BucketLimits)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), "limit.default", []byte(`{"driver_memory_mb":512,"gpus":1,"allowed_rms":["local"]}`)); err != nil {
		t.Fatal(err)
	}
	status, body := call(t, "POST", in.fe2+"/api/environments", "u-alice", map[string]any{"name": "mem", "python": v, "resources": map[string]any{"memory_mb": 1024}}, nil)
	if status != 400 || !strings.Contains(body, "resources.memory_mb") || !strings.Contains(body, "limit of 512") || !strings.Contains(body, "driver_memory_mb") {
		t.Fatalf("over the admin limit: %d %s", status, body)
	}
	status, body = call(t, "POST", in.fe2+"/api/environments", "u-alice", map[string]any{"name": "gpu", "python": v, "resources": map[string]any{"gpus": 2}}, nil)
	if status != 400 || !strings.Contains(body, "resources.gpus") || !strings.Contains(body, "limit of 1") {
		t.Fatalf("over the admin GPU limit: %d %s", status, body)
	}
	var list []map[string]any
	call(t, "GET", in.fe1+"/api/environments", "a-root", nil, &list)
	if len(list) != 0 {
		t.Fatalf("refused requests left environments behind: %v", list)
	}
}

// TestEnvironmentBuiltAndUsed: an environment with a real PyPI package is
// built by the build worker, its spec appears on another front-end, a
// local kernel started from it imports the package from the unpacked
// archive; other users neither see nor start it; deleting it removes the
// spec but not the running kernel.
func TestEnvironmentBuiltAndUsed(t *testing.T) {
	in := start(t)
	var env map[string]any
	status, body := call(t, "POST", in.fe1+"/api/environments", "u-alice",
		map[string]any{"name": "tab", "display_name": "Tabulate", "python": in.pythonVer, "requirements": "tabulate  # for tables\n", "resources": map[string]any{"memory_mb": 1024}}, &env)
	if status != http.StatusAccepted {
		t.Fatalf("create: %d %s", status, body)
	}
	if !strings.Contains(body, "tabulate==") {
		t.Errorf("the answer does not show what pip resolved: %s", body)
	}

	// The log streams until the build ends; it says ready.
	began := time.Now()
	lines, last := readLog(t, in.fe1+"/api/environments/tab/log", "u-alice")
	t.Logf("build took %s, %d log lines", time.Since(began).Round(time.Second), len(lines))
	if last.State != broker.EnvReady {
		t.Fatalf("build ended %q: %v", last.State, tail(lines))
	}
	if !hasLine(lines, "tabulate") {
		t.Errorf("the log never mentions tabulate: %v", tail(lines))
	}
	call(t, "GET", in.fe1+"/api/environments/tab", "u-alice", nil, &env)
	if env["state"] != broker.EnvReady || !strings.HasPrefix(fmt.Sprint(env["digest"]), "sha256-") {
		t.Fatalf("record after the build: %v", env)
	}
	t.Logf("archive %v, %v bytes", env["digest"], env["size"])

	// Bob sees neither the environment nor its spec, and cannot delete it.
	if s, b := call(t, "GET", in.fe1+"/api/environments/tab", "u-bob", nil, nil); s != 404 {
		t.Fatalf("bob reads alice's environment: %d %s", s, b)
	}
	if s, b := call(t, "DELETE", in.fe1+"/api/environments/tab", "u-bob", nil, nil); s != 404 {
		t.Fatalf("bob deletes alice's environment: %d %s", s, b)
	}
	if s, b := call(t, "GET", in.fe2+"/api/environments/tab/log", "u-bob", nil, nil); s != 404 {
		t.Fatalf("bob reads alice's build log: %d %s", s, b)
	}

	// The second front-end serves the spec.
	waitSpec(t, in.fe2, "u-alice", "tab", true)
	var specs struct {
		Kernelspecs map[string]any `json:"kernelspecs"`
	}
	call(t, "GET", in.fe2+"/api/kernelspecs", "u-bob", nil, &specs)
	if _, ok := specs.Kernelspecs["tab"]; ok {
		t.Fatal("bob is offered alice's private environment")
	}
	c := &client.Client{BaseURL: in.fe2, Token: "u-bob"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.StartKernel(ctx, "tab", nil); err == nil || !strings.Contains(err.Error(), "not authorized") {
		t.Fatalf("bob started alice's environment: %v", err)
	}

	// Alice's kernel runs in the environment and imports tabulate.
	c = &client.Client{BaseURL: in.fe2, Token: "u-alice"}
	startAt := time.Now()
	m, err := c.StartKernel(ctx, "tab", nil)
	if err != nil {
		t.Fatalf("start a kernel of the environment: %v", err)
	}
	first := time.Since(startAt)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.DeleteKernel(ctx, m.ID)
	})
	// A second kernel finds the environment unpacked (cached by digest).
	startAt = time.Now()
	m2, err := c.StartKernel(ctx, "tab", nil)
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	t.Logf("kernel start with download and unpack %s, from the cache %s", first.Round(time.Millisecond), time.Since(startAt).Round(time.Millisecond))
	_ = c.DeleteKernel(ctx, m2.ID)
	conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	code := "import sys, tabulate\nprint(sys.prefix)\nprint(tabulate.tabulate([[1, 2]], tablefmt='plain'))"
	r, err := conn.Execute(code, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	out := r.Stdout.String()
	want := filepath.Join(in.cacheDir, fmt.Sprint(env["digest"]))
	if r.Status != "ok" || !strings.Contains(out, want) || !strings.Contains(out, "1  2") {
		t.Fatalf("kernel output %q (status %s); want the prefix %s and a table", out, r.Status, want)
	}

	launcherFetchesOnlyItsEnvironment(t, in, m.ID, m2.ID, fmt.Sprint(env["digest"]))

	// Deleting the environment removes its spec everywhere, not the kernel.
	if s, b := call(t, "DELETE", in.fe1+"/api/environments/tab", "u-alice", nil, nil); s != 204 {
		t.Fatalf("delete: %d %s", s, b)
	}
	waitSpec(t, in.fe2, "u-alice", "tab", false)
	if r, err := conn.Execute("print(tabulate.__name__)", time.Minute); err != nil || !strings.Contains(r.Stdout.String(), "tabulate") {
		t.Fatalf("the running kernel did not survive the deletion: %v %v", r, err)
	}
	if _, err := c.StartKernel(ctx, "tab", nil); err == nil {
		t.Fatal("a kernel started from a deleted environment")
	}
}

func readLog(t *testing.T, url, token string) ([]broker.BuildLog, broker.BuildLog) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "token "+token)
	resp, err := (&http.Client{Timeout: 15 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("log: %d %s", resp.StatusCode, b)
	}
	var lines []broker.BuildLog
	var last broker.BuildLog
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var l broker.BuildLog
		if err := json.Unmarshal([]byte(data), &l); err != nil {
			t.Fatalf("log event %q: %v", data, err)
		}
		if l.Progress < last.Progress {
			t.Errorf("progress went back from %d to %d", last.Progress, l.Progress)
		}
		lines = append(lines, l)
		last = l
	}
	return lines, last
}

func hasLine(lines []broker.BuildLog, s string) bool {
	for _, l := range lines {
		if strings.Contains(l.Line, s) {
			return true
		}
	}
	return false
}

func tail(lines []broker.BuildLog) []string {
	var out []string
	for _, l := range lines[max(0, len(lines)-15):] {
		out = append(out, l.Line)
	}
	return out
}

func waitSpec(t *testing.T, fe, token, name string, present bool) {
	t.Helper()
	jstest.WaitFor(t, 20*time.Second, fmt.Sprintf("spec %s present=%v on %s", name, present, fe), func() bool {
		var specs struct {
			Kernelspecs map[string]any `json:"kernelspecs"`
		}
		call(t, "GET", fe+"/api/kernelspecs", token, nil, &specs)
		_, ok := specs.Kernelspecs[name]
		return ok == present
	})
}

// launcherFetchesOnlyItsEnvironment: what a Kubernetes pod's launcher does
// (launcher/env.go), with a kernel's own scoped credentials: it gets the
// archive its kernel's trusted handle names, byte for byte, from the
// workers over its renewal subject; it cannot ask on another kernel's
// subject, and a kernel with no trusted handle gets no archive at all.
func launcherFetchesOnlyItsEnvironment(t *testing.T, in *installation, id, other, digest string) {
	t.Helper()
	creds, err := in.env.Minter.LauncherCreds(id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: in.env.URL, Creds: []byte(creds), InboxPrefix: broker.InboxPrefix(id), Name: "test launcher " + id})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ask := func(subject string, off int64) (*nats.Msg, error) {
		req := nats.NewMsg(subject)
		req.Header.Set(broker.HeaderType, broker.TypeEnvRequest)
		req.Data, _ = json.Marshal(broker.EnvChunkRequest{Offset: off})
		return nc.RequestMsg(req, 5*time.Second)
	}
	h := sha256.New()
	var off, size int64 = 0, -1
	for size < 0 || off < size {
		m, err := ask(access.SubjectRenew(id), off)
		if err != nil {
			t.Fatalf("environment request at %d: %v", off, err)
		}
		if why := m.Header.Get(broker.HeaderEnvError); why != "" {
			t.Fatalf("environment refused: %s", why)
		}
		size, _ = strconv.ParseInt(m.Header.Get(broker.HeaderEnvSize), 10, 64)
		h.Write(m.Data)
		off += int64(len(m.Data))
		if len(m.Data) == 0 {
			t.Fatalf("empty part at %d of %d", off, size)
		}
	}
	if got := "sha256-" + hex.EncodeToString(h.Sum(nil)); got != digest {
		t.Fatalf("the archive fetched over the bus hashes to %s, not %s", got, digest)
	}
	// Another kernel's subject: refused by the server.
	if _, err := ask(access.SubjectRenew(other), 0); err == nil {
		t.Fatalf("kernel %s's launcher got an answer on kernel %s's subject", id, other)
	}
	// A kernel no worker started (no trusted handle): nobody answers.
	ghost := "00000000-0000-4000-8000-000000000000"
	gcreds, err := in.env.Minter.LauncherCreds(ghost, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	gnc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: in.env.URL, Creds: []byte(gcreds), InboxPrefix: broker.InboxPrefix(ghost), Name: "test ghost"})
	if err != nil {
		t.Fatal(err)
	}
	defer gnc.Close()
	req := nats.NewMsg(access.SubjectRenew(ghost))
	req.Header.Set(broker.HeaderType, broker.TypeEnvRequest)
	req.Data = []byte(`{"offset":0}`)
	if m, err := gnc.RequestMsg(req, 3*time.Second); err == nil && len(m.Data) > 0 {
		t.Fatalf("a kernel without a trusted handle got %d bytes of an archive", len(m.Data))
	}
}
