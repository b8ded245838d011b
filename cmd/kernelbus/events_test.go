package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// runCLI runs kernelbus in-process and returns its exit code and output.
func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// installation starts a bus and a data dir that points at it, as
// `kernelbus serve --data-dir` leaves one.
func installation(t *testing.T) (*jstest.Env, string) {
	t.Helper()
	env := jstest.Start(t, jstest.Options{Auth: true, TLS: true})
	dir := t.TempDir()
	authDir := filepath.Join(dir, "auth")
	if err := access.WriteFiles(authDir, env.Auth); err != nil {
		t.Fatal(err)
	}
	// With TLS on the bus, as serve runs it: the CLI finds the CA in
	// nats.conn.
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, env.CA, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeInstallation(dir, env.URL, authDir, ca); err != nil {
		t.Fatal(err)
	}
	return env, dir
}

func jsonLines(t *testing.T, out string) []broker.Event {
	t.Helper()
	var evs []broker.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e broker.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not JSON Lines: %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func TestEventsCLI(t *testing.T) {
	env, dir := installation(t)
	t0 := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	life := []struct {
		kernel, user, typ, reason string
		at                        time.Duration
	}{
		{"k1", "alice", broker.EvRequested, "", 0},
		{"k1", "alice", broker.EvStarted, "", time.Second},
		{"k2", "bob", broker.EvRequested, "", 2 * time.Second},
		{"k2", "bob", broker.EvStarted, "", 3 * time.Second},
		{"k1", "alice", broker.EvAutoRestarted, "kernel killed by signal 9", time.Minute},
		{"k1", "alice", broker.EvCulled, "culled: idle for 1h0m0s", 2 * time.Hour},
		{"k1", "alice", broker.EvTerminated, "culled: idle for 1h0m0s", 2*time.Hour + time.Second},
		{"k3", "carol", broker.EvRequested, "", 3 * time.Hour},
		{"k3", "carol", broker.EvStartFailed, "kernel exited with status 1\nTraceback", 3*time.Hour + time.Second},
	}
	for i, l := range life {
		ev := broker.Event{ID: fmt.Sprint("e", i), Time: t0.Add(l.at), Type: l.typ, Kernel: l.kernel, User: l.user,
			Spec: "python3", RM: "local", Host: "node1", Handle: json.RawMessage(`{"pid":7}`), Source: "test", Reason: l.reason}
		if err := env.Bus.Emit(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}

	code, out, errOut := runCLI("events", "--data-dir", dir, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	evs := jsonLines(t, out)
	if len(evs) != len(life) {
		t.Fatalf("%d events, want %d", len(evs), len(life))
	}
	for i, e := range evs {
		if e.ID != fmt.Sprint("e", i) || e.V != broker.EventSchemaVersion || string(e.Handle) != `{"pid":7}` {
			t.Fatalf("event %d: %+v", i, e)
		}
	}

	// Filters.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--kernel", "k2"}, []string{"e2", "e3"}},
		{[]string{"--user", "alice", "--type", "culled,terminated"}, []string{"e5", "e6"}},
		{[]string{"--since", "2026-11-25T10:00:00Z"}, []string{"e5", "e6", "e7", "e8"}},
		{[]string{"--until", "2026-11-25T09:00:02Z"}, []string{"e0", "e1", "e2"}}, // inclusive
		{[]string{"--since", "2026-11-25T09:00:01Z", "--until", "2026-11-25T09:00:03Z", "--type", "started"}, []string{"e1", "e3"}},
		{[]string{"--user", "nobody"}, nil},
	} {
		code, out, errOut := runCLI(append([]string{"events", "--data-dir", dir, "--json"}, c.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errOut)
		}
		var got []string
		for _, e := range jsonLines(t, out) {
			got = append(got, e.ID)
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%v: got %v, want %v", c.args, got, c.want)
		}
	}

	// The table: a header and one line per event, reasons on one line.
	code, out, _ = runCLI("events", "--data-dir", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != len(life)+1 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[9], "kernel exited with status 1 Traceback") {
		t.Fatalf("table (exit %d):\n%s", code, out)
	}

	// The summary: one line per kernel with its outcome.
	code, out, _ = runCLI("events", "--data-dir", dir, "--summary")
	if code != 0 {
		t.Fatal(out)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		rows[f[0]] = f
	}
	outcome := func(k string) string { f := rows[k]; return strings.Join(f[len(f)-1:], " ") }
	if len(rows) != 3 || outcome("k1") != "culled" || outcome("k2") != "running" || !strings.HasSuffix(strings.Join(rows["k3"], " "), "start failed") {
		t.Fatalf("summary:\n%s", out)
	}
	if !strings.Contains(strings.Join(rows["k1"], " "), " 2h0m1s 1 ") {
		t.Fatalf("k1's duration and restarts: %v", rows["k1"])
	}
}

func TestEventsCLIBadInput(t *testing.T) {
	_, dir := installation(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--type", "started,exploded"}, `--type: unknown event type "exploded"`},
		{[]string{"--since", "last tuesday"}, `--since: cannot read "last tuesday" as a time`},
		{[]string{"--until", "2026-02-30"}, `--until: cannot read "2026-02-30"`},
		{[]string{"--summary", "--follow"}, "--summary and --follow do not go together"},
	} {
		code, _, errOut := runCLI(append([]string{"events", "--data-dir", dir}, c.args...)...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", c.args, code, errOut, c.want)
		}
	}
	if code, _, _ := runCLI("events", "--no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
}

func TestEventsCLIMissingInstallation(t *testing.T) {
	empty := t.TempDir()
	code, _, errOut := runCLI("events", "--data-dir", empty)
	if code != 1 || !strings.Contains(errOut, "no kernelbus installation found in "+empty) || !strings.Contains(errOut, "--nats URL") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// A NATS without kernelbus's streams.
	srv, err := embedded.NewServer(embedded.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Stop(context.Background()) }()
	code, _, errOut = runCLI("events", "--nats", srv.ClientURL())
	if code != 1 || !strings.Contains(errOut, "no kernelbus installation on this NATS") {
		t.Fatalf("bare NATS: exit %d: %s", code, errOut)
	}
	// Nothing listening.
	stale := t.TempDir()
	if err := os.WriteFile(filepath.Join(stale, "nats.conn"), []byte("url=nats://127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI("events", "--data-dir", stale)
	if code != 1 || !strings.Contains(errOut, "is kernelbus running?") {
		t.Fatalf("stale installation: exit %d: %s", code, errOut)
	}
}

// --follow prints events as they happen until interrupted.
func TestEventsCLIFollow(t *testing.T) {
	env, dir := installation(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- run([]string{"events", "--data-dir", dir, "--follow", "--json", "--type", "started"}, w, &errb)
		w.Close()
	}()
	lines := make(chan string, 10)
	go func() {
		buf := make([]byte, 64<<10)
		var acc string
		for {
			n, err := r.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	// Emit until the follower shows one (it may subscribe after the first).
	var got string
	i := 0
	if !jstest.Eventually(20*time.Second, func() bool {
		_ = env.Bus.Emit(context.Background(), broker.Event{ID: fmt.Sprint("f", i), Type: broker.EvRequested, Kernel: "kf"})
		_ = env.Bus.Emit(context.Background(), broker.Event{ID: fmt.Sprint("s", i), Type: broker.EvStarted, Kernel: "kf"})
		i++
		select {
		case got = <-lines:
			return true
		default:
			return false
		}
	}) {
		t.Fatalf("--follow printed nothing; stderr %s", errb.String())
	}
	var e broker.Event
	if err := json.Unmarshal([]byte(got), &e); err != nil || e.Type != broker.EvStarted {
		t.Fatalf("followed %q", got)
	}
	// SIGINT ends it cleanly; the test sends it to itself, which
	// signal.NotifyContext in the command catches.
	p, _ := os.FindProcess(os.Getpid())
	_ = p.Signal(os.Interrupt)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("--follow did not stop on SIGINT")
	}
}
