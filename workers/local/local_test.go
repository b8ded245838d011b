package local_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/local"
	"github.com/kernelbus/kernelbus/workers/workerstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The test binary doubles as a stand-in launcher: the local backend runs it
// with KB_LAUNCH_CONFIG set, and TestMain then behaves as cfg.Env["FAKE"]
// says. It exercises the worker pool and the backend with real processes
// and a real NATS; the real launcher has its own tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "--config=-" {
		// Run as the launcher: the config comes on stdin, as the local
		// backend passes it.
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(fakeLauncher(strings.TrimSpace(line)))
	}
	if len(os.Args) == 3 && strings.HasPrefix(os.Args[1], "--probe-") {
		// Run as another OS user by the run-as tests: what can it do?
		os.Exit(probe(os.Args[1], os.Args[2]))
	}
	os.Exit(m.Run())
}

func fakeLauncher(enc string) int {
	cfg, err := broker.DecodeLaunchConfig(enc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch cfg.Env["FAKE"] {
	case "exit3":
		fmt.Fprintln(os.Stderr, "boom-marker")
		return 3
	case "hang":
		time.Sleep(time.Hour)
		return 0
	}
	if cfg.Env["FAKE"] == "connfile" {
		// As the real launcher: a connection file in a private folder of
		// the temp dir, 0600 in a 0700 folder, owned by whoever runs it.
		dir, err := os.MkdirTemp("", "kernelbus-"+cfg.KernelID+"-")
		if err == nil {
			err = os.Chmod(dir, 0o700)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "kernel-"+cfg.KernelID+".json"), []byte(`{"key":"secret-of-`+cfg.KernelID+`"}`), 0o600)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if f := cfg.Env["ARGVFILE"]; f != "" {
		// What the worker asked the launcher to run, for the tests of
		// forged records.
		b, _ := json.Marshal(map[string]any{"argv": cfg.Argv, "env": cfg.Env})
		if err := os.WriteFile(f, b, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if f := cfg.Env["PIDFILE"]; f != "" {
		// Every launcher started for the kernel leaves its pid here, so
		// tests can count them.
		pf, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			fmt.Fprintln(pf, os.Getpid())
			pf.Close()
		}
	}
	// The kernel's own credentials, as the real launcher uses them.
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: cfg.NATSURLs, Creds: []byte(cfg.NATSCreds), CA: []byte(cfg.NATSCA), InboxPrefix: broker.InboxPrefix(cfg.KernelID)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	link, err := kbjs.OpenKernel(nc, cfg.KernelID)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// As the real launcher, report running only once the worker has
	// recorded the submission.
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = link.WatchKernel(wctx, func(k *broker.Kernel) bool { return k != nil && k.State != broker.StateSubmitted })
	cancel()
	if _, err := link.UpdateKernel(context.Background(), func(k *broker.Kernel) error {
		k.State = broker.StateRunning
		return nil
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	return 0
}

// testSpecs are the worker's kernelspecs: the fake launcher ignores argv,
// the forged-record tests read it back.
var testSpecs = workers.SpecList{
	{Name: "fake", Argv: []string{"fake-kernel", "-f", "{connection_file}"}, Language: "python", Env: map[string]string{"FROM_SPEC": "yes"}},
	// closed's interpreter sits in a folder only root may enter
	// (TestRunAsDefaultAccount).
	{Name: "closed", Argv: []string{closedInterpreter, "-f", "{connection_file}"}, Language: "python"},
	{Name: "remote", Argv: []string{"python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"}, Language: "python",
		Metadata: map[string]any{"kernelbus": map[string]any{"rm": broker.RMSSH}}},
}

// testPolicy lets through the variables the stand-in launcher obeys.
var testPolicy = broker.EnvPolicy{Allowed: []string{"FAKE", "PIDFILE", "ARGVFILE"}}

type env struct {
	bus  *kbjs.Bus
	pool *workers.Pool
	be   *local.Backend
	reg  *prometheus.Registry
}

func setup(t *testing.T) *env {
	t.Helper()
	return setupWith(t, testBackend(t))
}

// testBackend is a local backend with this test binary as its launcher.
func testBackend(t testing.TB) *local.Backend {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	be, err := local.New(exe, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func setupWith(t *testing.T, be *local.Backend) *env {
	t.Helper()
	js := jstest.Start(t, jstest.Options{Auth: true})
	reg := prometheus.NewRegistry()
	e := startPool(t, js, be, workers.PoolConfig{Minter: js.Minter, Metrics: reg})
	e.reg = reg
	return e
}

// startPool runs a pool of be on js with a worker's role credentials, as
// under `kernelbus serve`, and cfg; by default its launchers reach js.URL,
// get 2s to stop, and it knows testSpecs under testPolicy.
func startPool(t testing.TB, js *jstest.Env, be *local.Backend, cfg workers.PoolConfig) *env {
	t.Helper()
	wbus, err := kbjs.Open(context.Background(), js.Connect(t, access.RoleWorker, broker.RMLocal))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATSURLs == "" {
		cfg.NATSURLs = js.URL
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 2 * time.Second
	}
	if cfg.Specs == nil {
		cfg.Specs, cfg.Env = testSpecs, testPolicy
	}
	pool, err := workers.NewPool(cfg, wbus, be, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Stop(context.Background()) })
	return &env{bus: js.Bus, pool: pool, be: be}
}

// waitStarts polls the pool's kernelbus_kernel_starts_total for outcome
// until it reaches want.
func (e *env) waitStarts(t *testing.T, outcome string, want float64) {
	t.Helper()
	jstest.WaitForNil(t, 10*time.Second, func() error {
		mfs, err := e.reg.Gather()
		if err != nil {
			return err
		}
		f := metrics.Families{}
		for _, mf := range mfs {
			f[mf.GetName()] = mf
		}
		if v, _ := f.Value("kernelbus_kernel_starts_total", map[string]string{"rm": "local", "outcome": outcome}); v != want {
			return fmt.Errorf("starts %s = %v, want %v", outcome, v, want)
		}
		if outcome == workers.OutcomeStarted {
			if v, _ := f.Value("kernelbus_kernel_start_duration_seconds", map[string]string{"rm": "local"}); v != want {
				return fmt.Errorf("start duration samples = %v, want %v", v, want)
			}
		}
		return nil
	})
}

func (e *env) request(t *testing.T, id, mode string, timeout time.Duration) string {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pids")
	t.Cleanup(func() {
		// Whatever the test's outcome, no launcher outlives it.
		data, _ := os.ReadFile(pidfile)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	now := time.Now().UTC()
	e.submit(t, &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, State: broker.StateRequested,
		Created: now, Deadline: now.Add(timeout), Env: map[string]string{"FAKE": mode, "PIDFILE": pidfile}})
	return pidfile
}

// killAtCleanup kills what the worker started for kernel id when the test
// ends, whatever its outcome: no launcher outlives a test.
func (e *env) killAtCleanup(t *testing.T, id string) {
	t.Cleanup(func() {
		k, _, err := e.bus.GetKernel(context.Background(), id)
		var h struct{ PGID int }
		if err == nil && json.Unmarshal(k.Handle, &h) == nil && h.PGID > 0 {
			_ = syscall.Kill(-h.PGID, syscall.SIGKILL)
		}
	})
}

// submit writes record k and a start request for it, as a front-end does;
// the tests of forged records write what no front-end would.
func (e *env) submit(t *testing.T, k *broker.Kernel) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.bus.CreateKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := e.bus.Request(ctx, broker.VerbStart, broker.RMLocal, k.ID, broker.StartRequest{KernelID: k.ID}); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls the record until cond holds.
func (e *env) waitFor(t *testing.T, id string, within time.Duration, cond func(*broker.Kernel) bool) *broker.Kernel {
	t.Helper()
	var last *broker.Kernel
	jstest.WaitForNil(t, within, func() error {
		k, _, err := e.bus.GetKernel(context.Background(), id)
		if err == nil {
			last = k
			if cond(k) {
				return nil
			}
		}
		return fmt.Errorf("kernel %s: condition not met; last record: %+v", id, last)
	})
	return last
}

func (e *env) events(t *testing.T, id string) []broker.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.bus.JS.OrderedConsumer(ctx, broker.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.SubjectEventsOf(id)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []broker.Event
	for {
		m, err := c.Next(jetstream.FetchMaxWait(300 * time.Millisecond))
		if err != nil {
			return out
		}
		var ev broker.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func count(evs []broker.Event, typ string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

func TestStartRunsLauncherOnceEvenWhenRedelivered(t *testing.T) {
	e := setup(t)
	id := "00000000-0000-4000-8000-000000000001"
	pidfile := e.request(t, id, "ok", 20*time.Second)
	// A second request for the same kernel (as after a redelivery) must
	// not start a second launcher.
	if err := e.bus.Request(context.Background(), broker.VerbStart, broker.RMLocal, id+"-again", broker.StartRequest{KernelID: id}); err != nil {
		t.Fatal(err)
	}
	k := e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning })
	pid := jstest.HandlePID(t, k)
	if k.Worker != e.pool.ID() || k.Host == "" {
		t.Fatalf("record lacks worker or host: %+v", k)
	}
	e.waitStarts(t, workers.OutcomeStarted, 1)
	if data, _ := os.ReadFile(pidfile); strings.Count(string(data), "\n") != 1 {
		t.Fatalf("want exactly one launcher started, got pids %q", data)
	}
	evs := e.events(t, id)
	if count(evs, broker.EvClaimed) != 1 || count(evs, broker.EvSubmitted) != 1 {
		t.Fatalf("want one claimed and one submitted event, got %+v", evs)
	}
	// Stop through the pool: the process group is gone afterwards.
	if err := e.bus.Request(context.Background(), broker.VerbStop, broker.RMLocal, id+":stop", broker.StopRequest{KernelID: id, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	e.waitFor(t, id, 10*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateTerminated })
	jstest.WaitFor(t, 5*time.Second, fmt.Sprintf("launcher %d to end after stop", pid), func() bool { return syscall.Kill(pid, 0) != nil })
}

func TestLauncherExitFailsStartWithReason(t *testing.T) {
	e := setup(t)
	id := "00000000-0000-4000-8000-000000000002"
	e.request(t, id, "exit3", 20*time.Second)
	k := e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State.Terminal() })
	if k.State != broker.StateFailed || !strings.Contains(k.Reason, "exit code 3") || !strings.Contains(k.Reason, "boom-marker") {
		t.Fatalf("want failed with exit code 3 and boom-marker, got %s: %q", k.State, k.Reason)
	}
	if n := count(e.events(t, id), broker.EvStartFailed); n != 1 {
		t.Fatalf("want one start_failed event, got %d", n)
	}
	e.waitStarts(t, workers.OutcomeFailed, 1)
}

func TestLaunchTimeoutStopsLauncher(t *testing.T) {
	e := setup(t)
	id := "00000000-0000-4000-8000-000000000003"
	e.request(t, id, "hang", 1*time.Second)
	k := e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State.Terminal() })
	if k.State != broker.StateFailed || !strings.Contains(k.Reason, "did not start within") {
		t.Fatalf("want a timeout failure, got %s: %q", k.State, k.Reason)
	}
	e.waitStarts(t, workers.OutcomeTimeout, 1)
	pid := jstest.HandlePID(t, k)
	jstest.WaitFor(t, 10*time.Second, fmt.Sprintf("launcher %d to end after the timeout", pid), func() bool {
		st, err := e.be.Poll(context.Background(), workers.Handle{Data: k.Handle})
		return err == nil && st.Exited
	})
}

func TestReadableLogLine(t *testing.T) {
	got := local.ReadableLogLine(`{"level":"error","error":"open the bus: timeout","kernel_id":"k","message":"launcher failed"}`)
	if got != "error: launcher failed: open the bus: timeout" {
		t.Fatalf("got %q", got)
	}
	if got := local.ReadableLogLine("plain text"); got != "plain text" {
		t.Fatalf("got %q", got)
	}
}

// A record written past the front-ends (here with the admin credentials
// the bus test environment connects with) names a spec, but carries an
// evil launch configuration and env: the worker runs the spec's argv with
// the env filtered again, never what the record says.
func TestForgedRecordRunsTheSpecNotItsArgv(t *testing.T) {
	e := setup(t)
	id := "00000000-0000-4000-8000-000000000010"
	dir := t.TempDir()
	argvFile, pwned := filepath.Join(dir, "argv.json"), filepath.Join(dir, "pwned")
	now := time.Now().UTC()
	evil := []string{"/bin/sh", "-c", "touch " + pwned}
	e.submit(t, &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, State: broker.StateRequested, User: "alice",
		Created: now, Deadline: now.Add(20 * time.Second),
		Env: map[string]string{"FAKE": "ok", "ARGVFILE": argvFile, "PIDFILE": filepath.Join(dir, "pids"),
			"LD_PRELOAD": "/tmp/evil.so", "PATH": dir, "KERNEL_USERNAME": "mallory"},
		Launch: &broker.LaunchConfig{V: 1, KernelID: id, Argv: evil, Env: map[string]string{"LD_PRELOAD": "/tmp/evil.so"},
			LaunchTimeout: broker.Duration(time.Hour)}})
	e.killAtCleanup(t, id)
	e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning })
	data, err := os.ReadFile(argvFile)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Argv []string
		Env  map[string]string
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Argv, " ") != strings.Join(testSpecs[0].Argv, " ") {
		t.Fatalf("launcher was given argv %q, want the spec's %q", got.Argv, testSpecs[0].Argv)
	}
	if _, bad := got.Env["LD_PRELOAD"]; bad || got.Env["PATH"] != "" {
		t.Fatalf("env the worker's policy does not allow reached the kernel: %v", got.Env)
	}
	if got.Env["FROM_SPEC"] != "yes" || got.Env["KERNEL_USERNAME"] != "alice" || got.Env["KERNEL_ID"] != id {
		t.Fatalf("want the spec's env and the record's owner, got %v", got.Env)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Fatal("the forged argv ran")
	}
}

// A forged start of a spec that is not the worker's resource manager's, of
// a spec the worker does not know, or with env no front-end would pass,
// fails with a reason that says so, and nothing is started.
func TestForgedRecordRefused(t *testing.T) {
	e := setup(t)
	for i, c := range []struct {
		spec   string
		env    map[string]string
		status int
		reason string
	}{
		{"remote", nil, 400, "is for the ssh resource manager"},
		{"nosuch", nil, 0, `has no kernelspec "nosuch"`},
		{"fake", map[string]string{"KERNEL_EXTRA": "a\nb"}, 400, "line feed"},
	} {
		id := fmt.Sprintf("00000000-0000-4000-8000-00000000002%d", i)
		argvFile := filepath.Join(t.TempDir(), "argv.json")
		env := map[string]string{"ARGVFILE": argvFile}
		for k, v := range c.env {
			env[k] = v
		}
		now := time.Now().UTC()
		e.submit(t, &broker.Kernel{ID: id, Spec: c.spec, RM: broker.RMLocal, State: broker.StateRequested,
			Created: now, Deadline: now.Add(20 * time.Second), Env: env,
			Launch: &broker.LaunchConfig{V: 1, KernelID: id, Argv: []string{"/bin/true"}}})
		e.killAtCleanup(t, id)
		k := e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State.Terminal() })
		if k.State != broker.StateFailed || !strings.Contains(k.Reason, c.reason) || k.FailStatus != c.status {
			t.Errorf("spec %s env %v: want failed (%d) with %q, got %s (%d): %q", c.spec, c.env, c.status, c.reason, k.State, k.FailStatus, k.Reason)
		}
		if len(k.Handle) > 0 {
			t.Errorf("spec %s: something was started: %s", c.spec, k.Handle)
		}
		if _, err := os.Stat(argvFile); err == nil {
			t.Errorf("spec %s: a launcher ran", c.spec)
		}
		if n := count(e.events(t, id), broker.EvStartFailed); n != 1 {
			t.Errorf("spec %s: want one start_failed event, got %d", c.spec, n)
		}
	}
}

// The local backend keeps the contract every backend keeps.
func TestBackendContract(t *testing.T) {
	workerstest.Harness{Backend: testBackend(t), Grace: 2 * time.Second, Launch: func(t *testing.T) *broker.LaunchConfig {
		// A stand-in launcher that runs until it is signalled.
		return &broker.LaunchConfig{V: 1, KernelID: uuid.NewString(), Argv: []string{"unused"}, Env: map[string]string{"FAKE": "hang"}, LaunchTimeout: broker.Duration(time.Minute)}
	}}.Run(t)
}
