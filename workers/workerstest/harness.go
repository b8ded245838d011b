// Package workerstest checks that a resource manager keeps the contract of
// workers.Backend, the same way for every backend: the local backend runs
// it in `go test`, the others in their own suites against their real
// resource managers.
package workerstest

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
)

// Harness is one backend under test.
type Harness struct {
	Backend workers.Backend
	// Launch returns a launch config whose launcher runs until it is
	// stopped (a stand-in launcher is fine). Nil: the suite starts its
	// launchers itself and passes their handles to Running.
	Launch func(t *testing.T) *broker.LaunchConfig
	// Grace is what Stop is given (default 5s).
	Grace time.Duration
	// Within bounds each wait for the resource manager (default 30s).
	Within time.Duration
}

func (h Harness) defaults() Harness {
	if h.Grace <= 0 {
		h.Grace = 5 * time.Second
	}
	if h.Within <= 0 {
		h.Within = 30 * time.Second
	}
	return h
}

// Run checks the whole contract: handles that are not the backend's, then
// a launcher from Launch through Start, Poll, Signal, Stop.
func (h Harness) Run(t *testing.T) {
	t.Run("name", func(t *testing.T) {
		if h.Backend.Name() == "" {
			t.Fatal("Name is empty: the pool's consumer and its records are named after it")
		}
	})
	t.Run("bad handles", h.BadHandles)
	if h.Launch == nil {
		return
	}
	t.Run("lifecycle", func(t *testing.T) {
		h := h.defaults()
		ctx, cancel := context.WithTimeout(context.Background(), h.Within)
		defer cancel()
		hd, err := h.Backend.Start(ctx, h.Launch(t))
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		if len(hd.Data) == 0 || !json.Valid(hd.Data) {
			t.Fatalf("Start's handle holds no JSON the record can keep: %q", hd.Data)
		}
		t.Cleanup(func() { _ = h.Backend.Stop(context.Background(), hd, time.Second) })
		h.Running(t, hd)
	})
}

// BadHandles checks that Poll and Stop refuse handles the backend did not
// make (a record's handle is kernel-writable data in the worst case): an
// error, neither a panic nor a hang, and nothing signalled.
func (h Harness) BadHandles(t *testing.T) {
	h = h.defaults()
	for _, data := range []string{``, `null`, `{}`, `"x"`, `{"pid":0}`, `{"pid":-1,"pgid":-1}`, `[1,2]`} {
		hd := workers.Handle{Host: "nowhere", Data: json.RawMessage(data)}
		ctx, cancel := context.WithTimeout(context.Background(), h.Within)
		if _, err := h.Backend.Poll(ctx, hd); err == nil {
			t.Errorf("Poll(%q): no error", data)
		}
		if err := h.Backend.Stop(ctx, hd, time.Second); err == nil {
			t.Errorf("Stop(%q): no error", data)
		}
		if s, ok := h.Backend.(workers.Signaler); ok {
			if err := s.Signal(ctx, hd, syscall.SIGCONT); err == nil {
				t.Errorf("Signal(%q): no error", data)
			}
		}
		cancel()
	}
}

// Running checks the contract on the handle of a running launcher, as a
// worker that restarted (a fresh backend) finds it in the record: Poll
// says running; a Signaler delivers SIGCONT; Stop ends it; Poll then says
// it exited; stopping what is gone is not an error.
func (h Harness) Running(t *testing.T, hd workers.Handle) {
	t.Helper()
	h = h.defaults()
	ctx := context.Background()
	jstest.WaitForNil(t, h.Within, func() error {
		st, err := h.Backend.Poll(ctx, hd)
		if err != nil || !st.Running || st.Exited {
			return fmt.Errorf("Poll of a running launcher: %+v, %v", st, err)
		}
		return nil
	})
	if s, ok := h.Backend.(workers.Signaler); ok {
		if err := s.Signal(ctx, hd, syscall.SIGCONT); err != nil {
			t.Fatalf("Signal: %v", err)
		}
	}
	if err := h.Backend.Stop(ctx, hd, h.Grace); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	jstest.WaitForNil(t, h.Within, func() error {
		st, err := h.Backend.Poll(ctx, hd)
		if err != nil || st.Running || !st.Exited {
			return fmt.Errorf("Poll after Stop: %+v, %v", st, err)
		}
		return nil
	})
	if err := h.Backend.Stop(ctx, hd, time.Second); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
}
