package launcher

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/rs/zerolog"
)

// A kernel that is ready before its worker has recorded the submission
// (a fast kernel, a slow worker) must not report started before the
// worker's submitted is in the audit log: the launcher waits for the
// record, which the worker writes only after it emitted submitted.
func TestStartedWaitsForSubmitted(t *testing.T) {
	tb := startBus(t)
	ctx := context.Background()
	id := newKernelID()
	if _, err := tb.bus.CreateKernel(ctx, &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, User: "alice",
		State: broker.StateClaimed, Worker: "w1", Created: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	cfg := &broker.LaunchConfig{V: 1, KernelID: id, Spec: "python3", Argv: []string{os.Args[0], "-test.run=^$", "{connection_file}"},
		Env: map[string]string{"KERNEL_ID": id, fakeKernelEnv: "1"}, LaunchTimeout: broker.Duration(40 * time.Second),
		MaxRestarts: 1, IP: "127.0.0.1"}
	tb.env.LaunchAccess(t, cfg)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(rctx, cfg, zerolog.Nop()) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("launcher did not stop")
		}
	}()

	// The fake kernel is ready in milliseconds; the launcher must hold
	// started back while the record says claimed. Wait until the kernel
	// is demonstrably up (activity written), then check nothing leaked.
	jstest.WaitFor(t, 30*time.Second, "the kernel ready (activity written)", func() bool {
		e, err := tb.bus.Activity.Get(ctx, id)
		return err == nil && !strings.Contains(string(e.Value()), "starting")
	})
	var evs []broker.Event
	read := func() {
		evs = nil
		_ = kbjs.ReadEvents(ctx, tb.bus.JS, broker.EventFilter{Kernel: id}, false, func(e broker.Event) error { evs = append(evs, e); return nil })
	}
	read()
	if len(evs) != 0 {
		t.Fatalf("events before the worker recorded the submission: %+v", evs)
	}
	if k, _, _ := tb.bus.GetKernel(ctx, id); k.State != broker.StateClaimed {
		t.Fatalf("record became %s before submission", k.State)
	}

	// The worker: submitted first, then the record.
	k, _, _ := tb.bus.GetKernel(ctx, id)
	ev := broker.NewEvent(broker.EvSubmitted, k)
	ev.ID, ev.Host, ev.Handle = broker.EventID(id, broker.EvSubmitted, "w1"), "node1", json.RawMessage(`{"pid":1}`)
	if err := tb.bus.Emit(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		k.State, k.Host, k.Handle = broker.StateSubmitted, "node1", json.RawMessage(`{"pid":1}`)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 30*time.Second, "started after submission", func() bool {
		read()
		return len(evs) >= 2
	})
	if evs[0].Type != broker.EvSubmitted || evs[1].Type != broker.EvStarted {
		t.Fatalf("order %s, %s", evs[0].Type, evs[1].Type)
	}
	if s := evs[1]; s.ID != id+":started" || s.Host != "node1" || string(s.Handle) != `{"pid":1}` || s.User != "alice" || s.Source != Source {
		t.Fatalf("started %+v", s)
	}
}
