package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// Issue 14, "workers trust nothing they did not check", against a real
// `kernelbus serve`: with the installation's admin credentials (the most a
// leaked credential could give), a record is written past the front-end
// with an evil launch configuration and a start request is published for
// it. The worker runs the python3 spec's own argv (a real ipykernel that
// answers), never the forged command; a forged record naming a spec the
// worker does not have fails with a reason that says so.
func TestForgedStartRunsTheSpec(t *testing.T) {
	se := newServeEnv(t)
	data := se.data
	srv := startServe(t, se.bin, data, se.logPath, se.args...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	nc := servedBus(t, data).admin(t, "forger")
	bus, err := kbjs.Open(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	pwned := filepath.Join(t.TempDir(), "pwned")
	forge := func(spec string) string {
		t.Helper()
		id := uuid.NewString()
		now := time.Now().UTC()
		k := &broker.Kernel{ID: id, Spec: spec, RM: broker.RMLocal, User: "mallory", State: broker.StateRequested,
			Created: now, Deadline: now.Add(90 * time.Second), Env: map[string]string{"LD_PRELOAD": "/nonexistent/evil.so"},
			Launch: &broker.LaunchConfig{V: 1, KernelID: id, Spec: spec, Argv: []string{"/bin/sh", "-c", "touch " + pwned + "; sleep 600"},
				Env: map[string]string{"LD_PRELOAD": "/nonexistent/evil.so"}, LaunchTimeout: broker.Duration(90 * time.Second)}}
		if _, err := bus.CreateKernel(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := bus.Request(ctx, broker.VerbStart, broker.RMLocal, id, broker.StartRequest{KernelID: id}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	waitState := func(id string, done func(broker.State) bool) *broker.Kernel {
		t.Helper()
		var k *broker.Kernel
		jstest.WaitFor(t, 90*time.Second, "the forged kernel to settle", func() bool {
			k, _, err = bus.GetKernel(ctx, id)
			return err == nil && done(k.State)
		})
		return k
	}

	id := forge("python3")
	k := waitState(id, func(s broker.State) bool { return s == broker.StateRunning || s.Terminal() })
	if k.State != broker.StateRunning {
		t.Fatalf("the forged start of the python3 spec did not run: %s %q", k.State, k.Reason)
	}
	c := &client.Client{BaseURL: srv.url}
	conn, err := c.Connect(ctx, id, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := conn.Execute("import os, sys; print(os.path.basename(sys.argv[0]), os.environ.get('LD_PRELOAD', 'none'), os.environ.get('KERNEL_USERNAME'))", 60*time.Second)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(r.Stdout.String()); !strings.Contains(got, "ipykernel_launcher") || !strings.HasSuffix(got, "none mallory") {
		t.Fatalf("the kernel is not the spec's ipykernel with the filtered env: %q", got)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Fatal("the forged argv ran")
	}
	if err := c.DeleteKernel(ctx, id); err != nil {
		t.Fatal(err)
	}

	id = forge("no-such-spec")
	k = waitState(id, func(s broker.State) bool { return s.Terminal() })
	if k.State != broker.StateFailed || !strings.Contains(k.Reason, `no kernelspec "no-such-spec"`) || len(k.Handle) > 0 {
		t.Fatalf("want failed naming the missing spec, nothing started; got %s %q handle %s", k.State, k.Reason, k.Handle)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Fatal("the forged argv ran")
	}
}
