package jetstream_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

// startBus runs an embedded NATS with kernelbus's streams and buckets.
func startBus(t *testing.T, l kbjs.Layout) (*embedded.Server, *kbjs.Bus) {
	t.Helper()
	srv, err := embedded.NewServer(embedded.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	bus := connectBus(t, srv, l)
	return srv, bus
}

func connectBus(t *testing.T, srv *embedded.Server, l kbjs.Layout) *kbjs.Bus {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	bus, err := kbjs.Setup(context.Background(), nc, l)
	if err != nil {
		t.Fatal(err)
	}
	return bus
}

func openLeases(t *testing.T, bus *kbjs.Bus) *kbjs.Leases {
	t.Helper()
	ls, err := kbjs.OpenLeases(context.Background(), bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func TestLeaseAcquireRenewRelease(t *testing.T) {
	_, bus := startBus(t, kbjs.Layout{LeaseTTL: 2 * time.Second})
	ls := openLeases(t, bus)
	if ls.TTL() != 2*time.Second {
		t.Fatalf("TTL %s, want the bucket's 2s", ls.TTL())
	}
	ctx := context.Background()
	a, err := ls.Acquire(ctx, "duties", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Acquire(ctx, "duties", "b"); !errors.Is(err, kbjs.ErrLeaseHeld) {
		t.Fatalf("second acquire: %v, want ErrLeaseHeld", err)
	}
	if info, err := ls.Holder(ctx, "duties"); err != nil || info.Holder != "a" {
		t.Fatalf("holder %+v %v", info, err)
	}
	before := a.ValidUntil()
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.ValidUntil().After(before) {
		t.Fatal("renewal did not extend the validity")
	}
	// Other leases are independent.
	if _, err := ls.Acquire(ctx, "other", "b"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := ls.Acquire(ctx, "duties", "b")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	// The released holder cannot renew, nor release b's lease.
	if err := a.Renew(ctx); !errors.Is(err, kbjs.ErrLeaseLost) {
		t.Fatalf("renew after release: %v", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := ls.Holder(ctx, "duties"); info.Holder != "b" {
		t.Fatalf("holder after a's late release: %q", info.Holder)
	}
	_ = b
}

// A holder that stops renewing loses the lease once the TTL passes on the
// server, and learns it on its next renewal.
func TestLeaseExpiresWithoutRenewal(t *testing.T) {
	_, bus := startBus(t, kbjs.Layout{LeaseTTL: time.Second})
	ls := openLeases(t, bus)
	ctx := context.Background()
	a, err := ls.Acquire(ctx, "duties", "a")
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(a.ValidUntil()); until > time.Second || until <= 0 {
		t.Fatalf("validity %s should be below the TTL", until)
	}
	var b *kbjs.Lease
	jstest.WaitFor(t, 15*time.Second, "the lease to expire", func() bool {
		b, err = ls.Acquire(ctx, "duties", "b")
		return err == nil
	})
	if time.Now().Before(a.ValidUntil()) {
		t.Fatal("b acquired the lease while a still believed it held it")
	}
	if err := a.Renew(ctx); !errors.Is(err, kbjs.ErrLeaseLost) {
		t.Fatalf("late renewal: %v, want ErrLeaseLost", err)
	}
	if err := b.Renew(ctx); err != nil {
		t.Fatal(err)
	}
}

// Several campaigners: at any time at most one runs its duty; when the
// holder leaves, another takes over; when the holder's bus goes away, it
// stops its duty before another starts.
func TestCampaignExactlyOne(t *testing.T) {
	srv, bus := startBus(t, kbjs.Layout{LeaseTTL: 1500 * time.Millisecond})
	var running atomic.Int32
	var overlap atomic.Bool
	var mu sync.Mutex
	leaders := map[string]int{}
	active := map[string]bool{}
	duty := func(name string) func(context.Context) {
		return func(ctx context.Context) {
			if running.Add(1) > 1 {
				overlap.Store(true)
			}
			mu.Lock()
			leaders[name]++
			active[name] = true
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			active[name] = false
			mu.Unlock()
			running.Add(-1)
		}
	}
	type member struct {
		cancel context.CancelFunc
		done   chan struct{}
		nc     *nats.Conn
	}
	start := func(name string) *member {
		nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		b, err := kbjs.Open(context.Background(), nc)
		if err != nil {
			t.Fatal(err)
		}
		ls := openLeases(t, b)
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{cancel: cancel, done: make(chan struct{}), nc: nc}
		go func() {
			defer close(m.done)
			_ = ls.Campaign(ctx, "duties", name, duty(name), nil)
		}()
		t.Cleanup(func() { cancel(); <-m.done; nc.Close() })
		return m
	}
	_ = bus
	members := map[string]*member{"a": start("a"), "b": start("b"), "c": start("c")}
	leader := func() string {
		mu.Lock()
		defer mu.Unlock()
		for n, on := range active {
			if on {
				return n
			}
		}
		return ""
	}
	jstest.WaitFor(t, 10*time.Second, "a leader", func() bool { return leader() != "" })
	first := leader()

	// A clean exit hands over at once (release), without waiting a TTL.
	m := members[first]
	m.cancel()
	<-m.done
	jstest.WaitFor(t, 10*time.Second, "a second leader", func() bool { l := leader(); return l != "" && l != first })
	second := leader()

	// The second leader's connection breaks for good: it must stop its duty
	// by itself, and the third member takes over after the TTL.
	members[second].nc.Close()
	jstest.WaitFor(t, 15*time.Second, "the cut-off leader to stop", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !active[second]
	})
	jstest.WaitFor(t, 15*time.Second, "the third leader", func() bool { l := leader(); return l != "" && l != first && l != second })
	if overlap.Load() {
		t.Fatal("two members ran the duty at the same time")
	}
	mu.Lock()
	defer mu.Unlock()
	for n, c := range leaders {
		if c != 1 {
			t.Errorf("%s led %d times, want once", n, c)
		}
	}
}

// Setup keeps retention an operator chose when a part starts without it.
func TestSetupKeepsRetention(t *testing.T) {
	srv, bus := startBus(t, kbjs.Layout{EventsMaxAge: 48 * time.Hour, EventsMaxBytes: 1 << 20, LeaseTTL: 3 * time.Second})
	_ = bus
	b2 := connectBus(t, srv, kbjs.Layout{})
	st, err := b2.JS.Stream(context.Background(), "KB_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.MaxAge != 48*time.Hour || cfg.MaxBytes != 1<<20 {
		t.Fatalf("retention reset to %s / %d", cfg.MaxAge, cfg.MaxBytes)
	}
	if ls := openLeases(t, b2); ls.TTL() != 3*time.Second {
		t.Fatalf("lease TTL reset to %s", ls.TTL())
	}
	b3 := connectBus(t, srv, kbjs.Layout{EventsMaxAge: 24 * time.Hour})
	st, _ = b3.JS.Stream(context.Background(), "KB_EVENTS")
	if cfg := st.CachedInfo().Config; cfg.MaxAge != 24*time.Hour || cfg.MaxBytes != 1<<20 {
		t.Fatalf("explicit retention not applied: %s / %d", cfg.MaxAge, cfg.MaxBytes)
	}
}
