package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

// A write that WatchKernel's subscription never delivers still reaches
// fn: under concurrent starts, a write routed just before the subscription
// was in place and stored just after the first read was missed, and the
// launcher waited out its whole submitWait. NoEcho stands in for that
// race: the server does not deliver the link's own writes to its own
// subscription, so only the watch's re-reads can see this one.
func TestWatchKernelSeesAWriteItsSubscriptionMissed(t *testing.T) {
	e := jstest.Start(t, jstest.Options{})
	ctx := context.Background()
	id := uuid.NewString()
	if _, err := e.Bus.CreateKernel(ctx, &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, State: broker.StateClaimed}); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(e.URL, nats.Token(e.Token), nats.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	link, err := kbjs.OpenKernel(nc, id)
	if err != nil {
		t.Fatal(err)
	}
	watching := make(chan struct{})
	done := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		first := true
		done <- link.WatchKernel(wctx, func(k *broker.Kernel) bool {
			if first {
				first = false
				close(watching)
			}
			return k == nil || k.State != broker.StateSubmitted
		})
	}()
	<-watching
	if _, err := link.UpdateKernel(ctx, func(k *broker.Kernel) error { k.State = broker.StateSubmitted; return nil }); err != nil {
		t.Fatal(err)
	}
	// The watch re-reads at most a second apart; 30 s is only the bound
	// of a test that would otherwise hang.
	if err := <-done; err != nil {
		t.Fatalf("the watch did not see submitted: %v", err)
	}
}
