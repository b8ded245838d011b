package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// warmWorker is a `kernelbus worker --warm` child process.
type warmWorker struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startWarmWorker(t *testing.T, bin, natsConn, logPath string, args ...string) *warmWorker {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args = withLauncher(append([]string{"worker", "--nats-conn", natsConn, "--rm", "local", "--setup=false", "--log-level", "debug"}, args...))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &warmWorker{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(w.done) }()
	t.Cleanup(func() { jstest.Stop(cmd.Process.Pid, w.done, 30*time.Second) })
	return w
}

// warmView is what the audit log says of the warm pools: the warm kernels
// nobody took yet (started, not claimed or reaped) with their launchers'
// pids, and who got which.
type warmView struct {
	idle    map[string]int // kernel id -> launcher pid, once started
	claimed map[string]string
	reaped  map[string]string
	started map[string]bool
}

func readWarm(evs []broker.Event) warmView {
	v := warmView{idle: map[string]int{}, claimed: map[string]string{}, reaped: map[string]string{}, started: map[string]bool{}}
	warm := map[string]bool{}
	pids := map[string]int{}
	for _, e := range evs {
		switch e.Type {
		case broker.EvWarmStarted:
			warm[e.Kernel] = true
		case broker.EvSubmitted:
			var h struct {
				PID int `json:"pid"`
			}
			if json.Unmarshal(e.Handle, &h) == nil {
				pids[e.Kernel] = h.PID
			}
		case broker.EvStarted:
			v.started[e.Kernel] = true
		case broker.EvWarmClaimed:
			v.claimed[e.Kernel] = e.Reason
		case broker.EvWarmReaped:
			v.reaped[e.Kernel] = e.Reason
		}
	}
	for id := range warm {
		if _, ok := v.claimed[id]; ok {
			continue
		}
		if _, ok := v.reaped[id]; ok {
			continue
		}
		if v.started[id] {
			v.idle[id] = pids[id]
		}
	}
	return v
}

// processGroupAlive reports whether any live (not zombie) process is in
// process group pgid: a local launcher leads its own group, its kernel is
// in it.
func processGroupAlive(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid && pid > 0 {
			return true
		}
	}
	return false
}

// TestWarmPool keeps two warm ipykernel kernels in a worker process beside
// a real `kernelbus serve`: a start request takes one (a real client then
// runs code in it) and the pool refills; a request with env a warm kernel
// cannot have gets a cold start with that env; warm kernels are hidden
// from the Jupyter API; killing the worker that holds the warm kernels
// leaves no process behind once another worker keeps the pool; a changed
// kernelspec has its warm kernels reaped and replaced.
func TestWarmPool(t *testing.T) {
	se := newServeEnv(t)
	bin, data, specs := se.bin, se.data, se.specs
	dir := filepath.Dir(data)
	w1Log, w2Log := filepath.Join(dir, "w1.log"), filepath.Join(dir, "w2.log")
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{w1Log, w2Log} {
				log, _ := os.ReadFile(p)
				t.Logf("%s:\n%s", filepath.Base(p), log)
			}
		}
	})
	srv := startServe(t, bin, data, se.logPath, se.args...)
	natsConn := filepath.Join(data, "nats.conn")
	w1 := startWarmWorker(t, bin, natsConn, w1Log, "--id", "warm-w1", "--warm", "python3=2,idle=10m", "--kernelspec-dir", specs)
	c := &client.Client{BaseURL: srv.url}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var v warmView
	waitIdle := func(what string, n int, ok func(warmView) bool) {
		t.Helper()
		jstest.WaitFor(t, 90*time.Second, what, func() bool {
			v = readWarm(history(t, data))
			return len(v.idle) == n && (ok == nil || ok(v))
		})
	}
	waitIdle("two warm kernels running", 2, nil)
	first := v.idle

	// Warm kernels are nobody's: not listed, not reachable by id.
	if ks, err := c.Kernels(ctx); err != nil || len(ks) != 0 {
		t.Fatalf("warm kernels are listed to clients: %v %v", ks, err)
	}
	for id := range first {
		var apiErr *client.APIError
		if _, err := c.Kernel(ctx, id); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
			t.Fatalf("GET a warm kernel by id: %v, want 404", err)
		}
		if _, err := c.Connect(ctx, id, client.NewID(), true); err == nil {
			t.Fatal("a client connected to a warm kernel nobody took")
		}
	}

	// The operator sees them (serve without a token: everyone is).
	var warm []struct{ ID, Pool, Keeper string }
	if err := getJSON(srv.url+"/api/warm", &warm); err != nil || len(warm) != 2 || warm[0].Pool != "local/python3" || warm[0].Keeper != "warm-w1" {
		t.Fatalf("GET /api/warm: %+v %v", warm, err)
	}
	for _, w := range warm {
		if _, ok := first[w.ID]; !ok {
			t.Fatalf("GET /api/warm shows %s, not one of %v", w.ID, first)
		}
	}

	// A request a warm kernel can serve takes one, and a real client
	// uses it.
	m, err := c.StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := first[m.ID]; !ok {
		t.Fatalf("start got %s, not one of the warm kernels %v", m.ID, first)
	}
	conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := conn.Execute("print(6*7)", 60*time.Second)
	if err != nil || r.Status != "ok" || strings.TrimSpace(r.Stdout.String()) != "42" {
		t.Fatalf("execute in the warm kernel: %+v %v", r, err)
	}
	conn.Close()
	// The pool refills, and the audit log says who got the kernel.
	waitIdle("the warm pool to refill", 2, func(v warmView) bool { _, gone := v.idle[m.ID]; return !gone })
	if why := v.claimed[m.ID]; why != "warm kernel handed to alice" {
		t.Fatalf("warm_claimed reason %q", why)
	}
	if ks, err := c.Kernels(ctx); err != nil || len(ks) != 1 || ks[0].ID != m.ID {
		t.Fatalf("clients see %v (%v), want only alice's kernel", ks, err)
	}

	// Env a running kernel cannot be given: a cold start, with it.
	cold, err := c.StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "bob", "KERNEL_FAVOURITE": "tea"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.idle[cold.ID]; ok || cold.ID == m.ID {
		t.Fatalf("a request with env got warm kernel %s", cold.ID)
	}
	conn, err = c.Connect(ctx, cold.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err = conn.Execute("import os; print(os.environ['KERNEL_FAVOURITE'], os.environ['KERNEL_USERNAME'])", 60*time.Second)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "tea bob" {
		t.Fatalf("cold start env: %+v %v", r, err)
	}
	conn.Close()

	// Kill the worker holding the warm pool: a worker that takes the pool
	// over reaps what the dead one left, processes included, and
	// starts its own.
	held := v.idle
	if err := w1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w1.done
	// The new worker reads its own copy of the kernelspec (found before
	// the venv's), which the test changes below.
	own := filepath.Join(dir, "specs")
	if err := os.MkdirAll(filepath.Join(own, "python3"), 0o755); err != nil {
		t.Fatal(err)
	}
	specJSON, err := os.ReadFile(filepath.Join(specs, "python3", "kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(specJSON, &spec); err != nil {
		t.Fatal(err)
	}
	// The same kernel as the venv's spec, whose "python" the catalog
	// resolves to the venv's own: the same digest, until it changes.
	argv, _ := spec["argv"].([]any)
	if len(argv) == 0 {
		t.Fatalf("kernelspec argv: %s", specJSON)
	}
	argv[0] = filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(specs))), "bin", "python")
	specJSON, _ = json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(own, "python3", "kernel.json"), specJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	startWarmWorker(t, bin, natsConn, w2Log, "--id", "warm-w2", "--warm", "python3=2,idle=10m", "--kernelspec-dir", own, "--kernelspec-dir", specs)
	waitIdle("the new worker's warm kernels", 2, func(v warmView) bool {
		for id := range held {
			if _, ok := v.reaped[id]; !ok {
				return false
			}
		}
		return true
	})
	for id, pid := range held {
		if pid <= 0 {
			t.Fatalf("no launcher pid for warm kernel %s", id)
		}
		jstest.WaitFor(t, 30*time.Second, "the dead worker's warm kernel processes to end", func() bool { return !processGroupAlive(pid) })
		if !strings.Contains(v.reaped[id], "warm-w1") {
			t.Fatalf("reap reason %q", v.reaped[id])
		}
	}
	// The users' kernels live on.
	for _, id := range []string{m.ID, cold.ID} {
		if k, err := c.Kernel(ctx, id); err != nil || k.ExecutionState == "dead" {
			t.Fatalf("kernel %s after the worker died: %+v %v", id, k, err)
		}
	}

	// A changed kernelspec: the warm kernels of the old one are reaped
	// and replaced (the worker reads its folders again within 10 s).
	waitIdle("the new worker's warm kernels", 2, nil)
	old := v.idle
	env, _ := spec["env"].(map[string]any)
	if env == nil {
		env = map[string]any{}
	}
	env["KB_WARM_TEST"] = "changed"
	spec["env"] = env
	changed, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(own, "python3", "kernel.json"), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 60*time.Second, "the old spec's warm kernels to be reaped", func() bool {
		v = readWarm(history(t, data))
		for id := range old {
			if !strings.Contains(v.reaped[id], "kernelspec python3 changed") {
				return false
			}
		}
		return true
	})
}
