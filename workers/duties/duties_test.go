package duties_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/duties"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// kernel writes a running kernel record with the given activity.
func kernel(t *testing.T, bus *kbjs.Bus, user string, idle time.Duration, state string) *broker.Kernel {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	k := &broker.Kernel{ID: uuid.NewString(), Spec: "python3", RM: "local", User: user, State: broker.StateRunning,
		Created: now.Add(-2 * time.Hour), Worker: "local-w1", Host: "node1", Handle: json.RawMessage(`{"pid":42}`)}
	if _, err := bus.CreateKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(broker.Activity{ExecutionState: state, LastActivity: now.Add(-idle)})
	if _, err := bus.Activity.Put(ctx, k.ID, a); err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeLauncher answers kb.ctl.<id> as a launcher does and records what it
// was asked.
type fakeLauncher struct {
	mu   sync.Mutex
	reqs []broker.ControlRequest
	sub  *nats.Subscription
}

func launcherFor(t *testing.T, nc *nats.Conn, id string) *fakeLauncher {
	t.Helper()
	f := &fakeLauncher{}
	sub, err := nc.Subscribe(broker.SubjectControl(id), func(m *nats.Msg) {
		var r broker.ControlRequest
		_ = json.Unmarshal(m.Data, &r)
		f.mu.Lock()
		f.reqs = append(f.reqs, r)
		f.mu.Unlock()
		_ = m.Respond([]byte(`{"ok":true,"state":"running"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	f.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return f
}

func (f *fakeLauncher) ops(op string) []broker.ControlRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []broker.ControlRequest
	for _, r := range f.reqs {
		if r.Op == op {
			out = append(out, r)
		}
	}
	return out
}

func events(t *testing.T, bus *kbjs.Bus, f broker.EventFilter) []broker.Event {
	t.Helper()
	var out []broker.Event
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := kbjs.ReadEvents(ctx, bus.JS, f, false, func(e broker.Event) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func gone(bus *kbjs.Bus, id string) bool {
	_, _, err := bus.GetKernel(context.Background(), id)
	return err != nil
}

func TestCullerFollowsJupyterRules(t *testing.T) {
	env := jstest.Start(t, jstest.Options{})
	bus := env.Bus
	ctx := context.Background()
	idle := kernel(t, bus, "alice", time.Hour, "idle")
	busy := kernel(t, bus, "bob", time.Hour, "busy")
	connected := kernel(t, bus, "carol", time.Hour, "idle")
	fresh := kernel(t, bus, "dave", time.Second, "idle")
	cs, _ := json.Marshal(broker.ClientSession{Kernel: connected.ID, Session: "s1", Connected: true})
	if _, err := bus.Sessions.Put(ctx, broker.SessionKey(connected.ID, "s1"), cs); err != nil {
		t.Fatal(err)
	}
	nbs, _ := json.Marshal(broker.NotebookSession{ID: "nb1", KernelID: idle.ID, Path: "a.ipynb"})
	if _, err := bus.NotebookSessions.Put(ctx, "nb1", nbs); err != nil {
		t.Fatal(err)
	}
	fl := launcherFor(t, env.NC, idle.ID)
	for _, k := range []*broker.Kernel{busy, connected, fresh} {
		launcherFor(t, env.NC, k.ID)
	}

	d := cullOnce(t, ctx, bus, duties.Config{CullIdleTimeout: time.Minute})
	if !gone(bus, idle.ID) {
		t.Fatal("the idle kernel's record is still there")
	}
	if _, err := bus.NotebookSessions.Get(ctx, "nb1"); err == nil {
		t.Fatal("the culled kernel's notebook session is still there")
	}
	for _, k := range []*broker.Kernel{busy, connected, fresh} {
		if gone(bus, k.ID) {
			t.Fatalf("kernel of %s was culled", k.User)
		}
	}
	shut := fl.ops(broker.OpShutdown)
	if len(shut) != 1 || !strings.HasPrefix(shut[0].Reason, "culled: idle for 1h") || shut[0].RequestID == "" {
		t.Fatalf("shutdown requests %+v", shut)
	}
	evs := events(t, bus, broker.EventFilter{Types: []string{broker.EvCulled}})
	if len(evs) != 1 {
		t.Fatalf("culled events: %+v", evs)
	}
	if d.Culled() != 1 {
		t.Fatalf("Culled() = %d, want 1 (kernelbus_kernels_culled_total)", d.Culled())
	}
	e := evs[0]
	if e.Kernel != idle.ID || e.User != "alice" || e.Spec != "python3" || e.Host != "node1" || string(e.Handle) != `{"pid":42}` ||
		e.Source != duties.SourceCuller || e.RequestID != shut[0].RequestID || e.Reason != shut[0].Reason {
		t.Fatalf("culled event %+v", e)
	}

	// cull_busy and cull_connected widen the rules; a second round never
	// culls twice.
	d2 := cullOnce(t, ctx, bus, duties.Config{CullIdleTimeout: time.Minute, CullBusy: true, CullConnected: true})
	if !gone(bus, busy.ID) || !gone(bus, connected.ID) || gone(bus, fresh.ID) {
		t.Fatal("cull_busy / cull_connected not applied")
	}
	if n := len(events(t, bus, broker.EventFilter{Types: []string{broker.EvCulled}})); n != 3 {
		t.Fatalf("%d culled events, want 3", n)
	}
	if d2.Culled() != 2 {
		t.Fatalf("second culler's Culled() = %d, want 2", d2.Culled())
	}
}

// A kernel whose launcher is not on the bus is marked dead and lost once
// the launcher has been silent for LostAfter; one that answers is left
// alone.
func TestLostDetector(t *testing.T) {
	env := jstest.Start(t, jstest.Options{})
	bus := env.Bus
	ctx := context.Background()
	silent := kernel(t, bus, "erin", 0, "idle")
	alive := kernel(t, bus, "frank", 0, "idle")
	launcherFor(t, env.NC, alive.ID)
	d, err := duties.New(ctx, duties.Config{LostAfter: 300 * time.Millisecond, PingTimeout: 200 * time.Millisecond}, bus, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	jstest.WaitFor(t, 20*time.Second, "the silent kernel to be lost", func() bool {
		if err := d.CheckLostOnce(ctx); err != nil {
			t.Fatal(err)
		}
		k, _, err := bus.GetKernel(ctx, silent.ID)
		return err == nil && k.State == broker.StateDead
	})
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("declared lost before LostAfter passed")
	}
	k, _, _ := bus.GetKernel(ctx, silent.ID)
	if !strings.HasPrefix(k.Reason, "lost: its launcher has not answered on kb.ctl."+silent.ID) {
		t.Fatalf("reason %q", k.Reason)
	}
	if a, _, _ := bus.GetKernel(ctx, alive.ID); a.State != broker.StateRunning {
		t.Fatalf("the answering kernel became %s", a.State)
	}
	// Later rounds do not emit twice.
	_ = d.CheckLostOnce(ctx)
	evs := events(t, bus, broker.EventFilter{Types: []string{broker.EvLost}})
	if len(evs) != 1 || evs[0].Kernel != silent.ID || evs[0].User != "erin" || evs[0].Host != "node1" || evs[0].Source != duties.SourceWatchdog {
		t.Fatalf("lost events %+v", evs)
	}
	if d.Lost() != 1 {
		t.Fatalf("Lost() = %d, want 1 (kernelbus_kernels_lost_total)", d.Lost())
	}
	// The kernel's pool is asked to stop what is left.
	st, err := bus.JS.Stream(ctx, broker.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, broker.SubjectRequest(broker.VerbStop, "local"))
	if err != nil {
		t.Fatal(err)
	}
	var sr broker.StopRequest
	_ = json.Unmarshal(m.Data, &sr)
	if sr.KernelID != silent.ID || string(sr.Handle) != `{"pid":42}` {
		t.Fatalf("stop request %+v", sr)
	}
}

// Three processes run the duties; one idle kernel is culled exactly once,
// and after the leader stops another one takes over and culls the next.
func TestDutiesRunOnce(t *testing.T) {
	env := jstest.Start(t, jstest.Options{Layout: kbjs.Layout{LeaseTTL: time.Second}})
	bus := env.Bus
	ctx := context.Background()
	var ds []*duties.Duties
	for i := 0; i < 3; i++ {
		nc, err := nats.Connect(env.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		b, err := kbjs.Open(ctx, nc)
		if err != nil {
			t.Fatal(err)
		}
		d, err := duties.New(ctx, duties.Config{CullIdleTimeout: time.Minute, CullInterval: 50 * time.Millisecond, LostAfter: -1}, b, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Stop(context.Background()) })
		ds = append(ds, d)
	}
	var shutdowns atomic.Int32
	count := func(id string) {
		sub, err := env.NC.Subscribe(broker.SubjectControl(id), func(m *nats.Msg) {
			shutdowns.Add(1)
			_ = m.Respond([]byte(`{"ok":true}`))
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	leaders := func() (n int, who int) {
		for i, d := range ds {
			if d.Leader() {
				n, who = n+1, i
			}
		}
		return
	}
	jstest.WaitFor(t, 10*time.Second, "a leader", func() bool { n, _ := leaders(); return n == 1 })
	k1 := kernel(t, bus, "gina", time.Hour, "idle")
	count(k1.ID)
	jstest.WaitFor(t, 10*time.Second, "k1 culled", func() bool { return gone(bus, k1.ID) })
	_, first := leaders()
	if err := ds[first].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 10*time.Second, "a new leader", func() bool { n, who := leaders(); return n == 1 && who != first })
	k2 := kernel(t, bus, "hank", time.Hour, "idle")
	count(k2.ID)
	jstest.WaitFor(t, 10*time.Second, "k2 culled", func() bool { return gone(bus, k2.ID) })
	if n := len(events(t, bus, broker.EventFilter{Types: []string{broker.EvCulled}})); n != 2 {
		t.Fatalf("%d culled events, want 2", n)
	}
	if n := shutdowns.Load(); n != 2 {
		t.Fatalf("%d shutdown requests, want 2", n)
	}
}

// The culler leaves warm kernels that wait for a request alone (their
// pool's keeper replaces them), and counts a warm kernel's idle time from
// when a request took it, not from when it started waiting.
func TestCullerAndWarmKernels(t *testing.T) {
	env := jstest.Start(t, jstest.Options{})
	bus := env.Bus
	ctx := context.Background()
	mark := func(k *broker.Kernel, claimed time.Time, user string) {
		t.Helper()
		if _, err := bus.UpdateKernel(ctx, k.ID, func(r *broker.Kernel) error {
			r.User, r.Owner = user, user
			r.Warm = &broker.Warm{Pool: "local/python3", Keeper: "w1", Since: r.Created, Claimed: claimed}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waiting := kernel(t, bus, "", time.Hour, "idle")
	mark(waiting, time.Time{}, "")
	justTaken := kernel(t, bus, "", time.Hour, "idle")
	mark(justTaken, time.Now().UTC(), "alice")
	takenLongAgo := kernel(t, bus, "", time.Hour, "idle")
	mark(takenLongAgo, time.Now().UTC().Add(-30*time.Minute), "bob")
	for _, k := range []*broker.Kernel{waiting, justTaken, takenLongAgo} {
		launcherFor(t, env.NC, k.ID)
	}
	cullOnce(t, ctx, bus, duties.Config{CullIdleTimeout: time.Minute})
	if gone(bus, waiting.ID) || gone(bus, justTaken.ID) {
		t.Fatal("the culler ended a waiting warm kernel or one a request just took")
	}
	if !gone(bus, takenLongAgo.ID) {
		t.Fatal("a warm kernel taken 30 minutes ago and idle since was not culled")
	}
}

// cullOnce runs one culling round of new duties with cfg.
func cullOnce(t *testing.T, ctx context.Context, bus *kbjs.Bus, cfg duties.Config) *duties.Duties {
	t.Helper()
	d, err := duties.New(ctx, cfg, bus, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CullOnce(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}
