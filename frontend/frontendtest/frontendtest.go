// Package frontendtest serves a real front-end for the tests of the parts
// around it (the worker pools' and the environments' suites): the
// frontend.Server started on a port-0 loopback listener and stopped when
// the test ends. The front-end's own tests have their own harness, which
// also wraps the listener (TLS) and reaches the server's internals.
package frontendtest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// Start starts a front-end with cfg and specs on bus and returns its base
// URL (http://127.0.0.1:port).
func Start(t testing.TB, cfg frontend.Config, bus *kbjs.Bus, specs frontend.SpecSource) string {
	t.Helper()
	fe, err := frontend.New(cfg, bus, specs, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := fe.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = fe.Stop(context.Background())
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fe.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = fe.Stop(ctx)
		<-done
	})
	return "http://" + ln.Addr().String()
}
