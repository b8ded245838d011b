package access_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// probe is a connection that records the permission violations the server
// reports for it.
type probe struct {
	nc *nats.Conn
	mu sync.Mutex
	// violations the server reported, in order.
	errs []string
}

func (p *probe) denied(t *testing.T, what string) {
	t.Helper()
	jstest.WaitFor(t, 5*time.Second, "a permissions violation for "+what, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.errs {
			if strings.Contains(e, what) {
				return true
			}
		}
		return false
	})
}

func connect(t *testing.T, e *jstest.Env, creds string, inbox string) *probe {
	t.Helper()
	p := &probe{}
	opts := []nats.Option{
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			p.mu.Lock()
			p.errs = append(p.errs, err.Error())
			p.mu.Unlock()
		}),
		nats.MaxReconnects(0),
	}
	if creds != "" {
		userJWT, seed, err := access.SplitCreds([]byte(creds))
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, nats.UserJWTAndSeed(userJWT, seed))
	}
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	nc, err := nats.Connect(e.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p.nc = nc
	return p
}

// kernel makes a record and an input consumer for a new kernel.
func kernel(t *testing.T, e *jstest.Env) string {
	t.Helper()
	id := uuid.NewString()
	ctx := context.Background()
	if _, err := e.Bus.CreateKernel(ctx, &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, State: broker.StateRunning, User: "u-" + id[:4]}); err != nil {
		t.Fatal(err)
	}
	if err := kbjs.EnsureInput(ctx, e.Bus.JS, id); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestLauncherCredentialsReachOnlyTheirKernel plays a kernel's code that
// found its launcher's credentials and tries every way it could reach
// kernel B; each attempt must be refused by the server, and what the
// launcher needs must still work.
func TestLauncherCredentialsReachOnlyTheirKernel(t *testing.T) {
	e := jstest.Start(t, jstest.Options{Auth: true})
	a, b := kernel(t, e), kernel(t, e)
	credsA, err := e.Minter.LauncherCreds(a, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("allowed: what a launcher needs", func(t *testing.T) {
		p := connect(t, e, credsA, broker.InboxPrefix(a))
		link, err := kbjs.OpenKernel(p.nc, a)
		if err != nil {
			t.Fatal(err)
		}
		k, _, err := link.GetKernel(ctx)
		if err != nil || k.ID != a {
			t.Fatalf("own record: %v %+v", err, k)
		}
		if _, err := link.UpdateKernel(ctx, func(k *broker.Kernel) error { k.Restarts = 1; return nil }); err != nil {
			t.Fatalf("update own record: %v", err)
		}
		if err := link.PutActivity(ctx, []byte(`{"execution_state":"idle"}`)); err != nil {
			t.Fatalf("own activity: %v", err)
		}
		ev := broker.NewEvent(broker.EvStarted, k)
		if err := link.Emit(ctx, ev); err != nil {
			t.Fatalf("own event: %v", err)
		}
		if _, err := link.JS.Publish(ctx, broker.SubjectOut(a, "iopub"), []byte("x")); err != nil {
			t.Fatalf("own output: %v", err)
		}
		if _, err := link.JS.Publish(ctx, broker.SubjectOutLarge(a, "iopub"), []byte("x")); err != nil {
			t.Fatalf("own large output: %v", err)
		}
		// Input a front-end sent reaches the launcher live and through
		// its consumer.
		liveIn, err := p.nc.SubscribeSync(broker.SubjectIn(a))
		if err != nil {
			t.Fatal(err)
		}
		defer liveIn.Unsubscribe()
		if err := p.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Bus.JS.Publish(ctx, broker.SubjectIn(a), []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if m, err := liveIn.NextMsg(5 * time.Second); err != nil || string(m.Data) != "hello" {
			t.Fatalf("live input: %v", err)
		}
		cons, err := link.Input(ctx)
		if err != nil {
			t.Fatalf("bind own input: %v", err)
		}
		msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range msgs.Messages() {
			if string(m.Data()) != "hello" {
				t.Fatalf("input %q", m.Data())
			}
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
			got++
		}
		if got != 1 {
			t.Fatalf("got %d input messages, want 1 (%v)", got, msgs.Error())
		}
		// Control requests reach it and it may answer.
		sub, err := p.nc.Subscribe(broker.SubjectControl(a), func(m *nats.Msg) { _ = m.Respond([]byte("pong")) })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		_ = p.nc.Flush()
		if r, err := e.NC.Request(broker.SubjectControl(a), []byte("ping"), 5*time.Second); err != nil || string(r.Data) != "pong" {
			t.Fatalf("control reply: %v", err)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.errs) > 0 {
			t.Fatalf("violations on allowed calls: %v", p.errs)
		}
	})

	attacks := []struct {
		name string
		// try makes the attempt on p; the server must report a violation
		// naming what.
		try  func(p *probe) error
		what string
	}{
		{"subscribe to B's output", func(p *probe) error {
			_, err := p.nc.Subscribe(broker.SubjectOutAll(b), func(*nats.Msg) {})
			return err
		}, "Subscription to \"" + broker.SubjectOutAll(b)},
		{"subscribe to B's input (live)", func(p *probe) error {
			_, err := p.nc.Subscribe(broker.SubjectIn(b), func(*nats.Msg) {})
			return err
		}, "Subscription to \"" + broker.SubjectIn(b)},
		{"subscribe to every kernel's input", func(p *probe) error {
			_, err := p.nc.Subscribe(broker.SubjectIn("*"), func(*nats.Msg) {})
			return err
		}, "Subscription to \"" + broker.SubjectIn("*")},
		{"subscribe to everything", func(p *probe) error { _, err := p.nc.Subscribe(">", func(*nats.Msg) {}); return err }, "Subscription to \">\""},
		{"subscribe to front-ends' inboxes", func(p *probe) error { _, err := p.nc.Subscribe("_INBOX.>", func(*nats.Msg) {}); return err }, "Subscription to \"_INBOX.>\""},
		{"subscribe to B's control", func(p *probe) error {
			_, err := p.nc.Subscribe(broker.SubjectControl(b), func(*nats.Msg) {})
			return err
		}, "Subscription to \"" + broker.SubjectControl(b)},
		{"publish into B's input", func(p *probe) error { return p.nc.Publish(broker.SubjectIn(b), []byte(`execute`)) }, "Publish to \"" + broker.SubjectIn(b)},
		{"publish into its own input", func(p *probe) error { return p.nc.Publish(broker.SubjectIn(a), []byte(`execute`)) }, "Publish to \"" + broker.SubjectIn(a)},
		{"publish as B's kernel output", func(p *probe) error { return p.nc.Publish(broker.SubjectOut(b, "iopub"), []byte(`x`)) }, "Publish to \"" + broker.SubjectOut(b, "iopub")},
		{"publish as B's large kernel output", func(p *probe) error {
			return p.nc.Publish(broker.SubjectOutLarge(b, "iopub"), []byte(`x`))
		}, "Publish to \"" + broker.SubjectOutLarge(b, "iopub")},
		{"interrupt or shut down B", func(p *probe) error {
			return p.nc.PublishRequest(broker.SubjectControl(b), broker.InboxPrefix(a)+".x", []byte(`{"op":"shutdown"}`))
		}, "Publish to \"" + broker.SubjectControl(b)},
		{"read B's record (direct get by subject)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.DIRECT.GET.KV_kb_kernels.$KV.kb_kernels."+b, broker.InboxPrefix(a)+".x", nil)
		}, "$JS.API.DIRECT.GET.KV_kb_kernels.$KV.kb_kernels." + b},
		{"read B's record (direct get, subject in the body)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.DIRECT.GET.KV_kb_kernels", broker.InboxPrefix(a)+".x", []byte(`{"last_by_subj":"$KV.kb_kernels.`+b+`"}`))
		}, "Publish to \"$JS.API.DIRECT.GET.KV_kb_kernels\""},
		{"read B's record (stream msg get)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.MSG.GET.KV_kb_kernels", broker.InboxPrefix(a)+".x", []byte(`{"last_by_subj":"$KV.kb_kernels.`+b+`"}`))
		}, "$JS.API.STREAM.MSG.GET.KV_kb_kernels"},
		{"plant a record for B", func(p *probe) error { return p.nc.Publish("$KV.kb_kernels."+b, []byte(`{}`)) }, "Publish to \"$KV.kb_kernels." + b},
		{"write a session key", func(p *probe) error { return p.nc.Publish("$KV.kb_sessions."+b+".s", []byte(`{}`)) }, "$KV.kb_sessions"},
		{"delete a notebook session", func(p *probe) error { return p.nc.Publish("$KV.kb_nbsessions.x", nil) }, "$KV.kb_nbsessions"},
		{"forge a trusted handle", func(p *probe) error { return p.nc.Publish("$KV.kb_handles."+a, []byte(`{"rm":"local"}`)) }, "$KV.kb_handles"},
		{"list the keys of kb_kernels", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.INFO.KV_kb_kernels", broker.InboxPrefix(a)+".x", []byte(`{"subjects_filter":">"}`))
		}, "$JS.API.STREAM.INFO.KV_kb_kernels"},
		{"create a consumer on B's output", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.CREATE.KB_IO.evil.kb.io."+b+".out.>", broker.InboxPrefix(a)+".x", []byte(`{}`))
		}, "$JS.API.CONSUMER.CREATE.KB_IO.evil"},
		{"create a push consumer on its own input delivering elsewhere", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.CREATE.KB_IO."+broker.InputConsumer(a)+".kb.io."+a+".in", broker.InboxPrefix(a)+".x",
				[]byte(`{"config":{"deliver_subject":"kb.ctl.`+b+`"}}`))
		}, "$JS.API.CONSUMER.CREATE.KB_IO." + broker.InputConsumer(a)},
		// Output bodies by sequence are the front-ends' (a headers-only
		// output consumer fetches the bodies live output missed).
		{"read KB_IO by sequence (direct get)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.DIRECT.GET."+broker.StreamIO, broker.InboxPrefix(a)+".x", []byte(`{"seq":1}`))
		}, "Publish to \"$JS.API.DIRECT.GET." + broker.StreamIO + "\""},
		{"read B's output (direct get by subject)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.DIRECT.GET."+broker.StreamIO+"."+broker.SubjectOut(b, "iopub"), broker.InboxPrefix(a)+".x", nil)
		}, "$JS.API.DIRECT.GET." + broker.StreamIO + "." + broker.SubjectOut(b, "iopub")},
		{"read KB_IO by sequence (stream msg get)", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.MSG.GET."+broker.StreamIO, broker.InboxPrefix(a)+".x", []byte(`{"seq":1}`))
		}, "$JS.API.STREAM.MSG.GET." + broker.StreamIO},
		{"pull B's input", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_IO."+broker.InputConsumer(b), broker.InboxPrefix(a)+".x", []byte(`{"batch":1}`))
		}, "$JS.API.CONSUMER.MSG.NEXT.KB_IO." + broker.InputConsumer(b)},
		{"delete the audit log", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.DELETE."+broker.StreamEvents, broker.InboxPrefix(a)+".x", nil)
		}, "$JS.API.STREAM.DELETE." + broker.StreamEvents},
		{"purge KB_IO", func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.PURGE."+broker.StreamIO, broker.InboxPrefix(a)+".x", nil)
		}, "$JS.API.STREAM.PURGE." + broker.StreamIO},
		{"forge a start request", func(p *probe) error {
			return p.nc.Publish(broker.SubjectRequest(broker.VerbStart, broker.RMLocal), []byte(`{"kernel_id":"x"}`))
		}, "Publish to \"kb.req.start.local\""},
		{"forge a stop request", func(p *probe) error {
			return p.nc.Publish(broker.SubjectRequest(broker.VerbStop, broker.RMLocal), []byte(`{"kernel_id":"`+b+`"}`))
		}, "Publish to \"kb.req.stop.local\""},
		{"emit an event for B", func(p *probe) error { return p.nc.Publish(broker.SubjectEvent(b, "terminated"), []byte(`{}`)) }, "Publish to \"kb.evt." + b},
		{"write B's activity", func(p *probe) error { return p.nc.Publish("$KV.kb_activity."+b, []byte(`{}`)) }, "$KV.kb_activity." + b},
		{"ask a front-end to hand over a session", func(p *probe) error { return p.nc.Publish("kb.fe.any", []byte(`{}`)) }, "Publish to \"kb.fe.any\""},
		{"renew B's credentials", func(p *probe) error { return p.nc.Publish(access.SubjectRenew(b), []byte(`{}`)) }, "Publish to \"" + access.SubjectRenew(b)},
	}
	for _, at := range attacks {
		t.Run("denied: "+at.name, func(t *testing.T) {
			p := connect(t, e, credsA, broker.InboxPrefix(a))
			if err := at.try(p); err != nil {
				t.Fatalf("client-side error, not a server denial: %v", err)
			}
			_ = p.nc.Flush()
			p.denied(t, at.what)
		})
	}

	t.Run("B saw nothing", func(t *testing.T) {
		info, err := e.Bus.JS.Consumer(ctx, broker.StreamIO, broker.InputConsumer(b))
		if err != nil {
			t.Fatal(err)
		}
		ci, err := info.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumPending != 0 || ci.Delivered.Consumer != 0 {
			t.Fatalf("B's input consumer has pending %d, delivered %d: something reached B", ci.NumPending, ci.Delivered.Consumer)
		}
		k, _, err := e.Bus.GetKernel(ctx, b)
		if err != nil || k.State != broker.StateRunning || k.ID != b {
			t.Fatalf("B's record changed: %v %+v", err, k)
		}
		for _, s := range []string{broker.StreamEvents, broker.StreamIO, broker.StreamRequests} {
			if _, err := e.Bus.JS.Stream(ctx, s); err != nil {
				t.Fatalf("stream %s: %v", s, err)
			}
		}
		if st, err := e.Bus.JS.Stream(ctx, broker.StreamRequests); err == nil && st.CachedInfo().State.Msgs != 0 {
			t.Fatalf("a forged request reached KB_REQUESTS: %d messages", st.CachedInfo().State.Msgs)
		}
	})

	t.Run("a credential for a bad kernel id is never minted", func(t *testing.T) {
		for _, id := range []string{"*", ">", "a.b", "", "kin-x", strings.ToUpper(uuid.NewString())} {
			if _, err := e.Minter.LauncherCreds(id, time.Hour); err == nil {
				t.Errorf("minted for %q", id)
			}
		}
	})

	t.Run("expired credentials are refused", func(t *testing.T) {
		userJWT, seed, err := e.Minter.Launcher(a, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// Wait for the expiry (a second, JWT times are in whole seconds)
		// by polling the clock rather than sleeping blind.
		jstest.WaitFor(t, 5*time.Second, "the credential's expiry", func() bool {
			nc, err := nats.Connect(e.URL, nats.UserJWTAndSeed(userJWT, seed), nats.MaxReconnects(0))
			if err == nil {
				nc.Close()
				return false
			}
			return errors.Is(err, nats.ErrAuthExpired) || strings.Contains(strings.ToLower(err.Error()), "authorization")
		})
	})
}

// TestRoleCredentials checks the rows of the threat model for the parts:
// a front-end cannot claim requests, a worker of one resource manager
// cannot claim another's, nor forge starts; neither can delete streams.
func TestRoleCredentials(t *testing.T) {
	e := jstest.Start(t, jstest.Options{Auth: true})
	ctx := context.Background()
	// The pools' consumers, as workers create them.
	for _, rm := range []string{broker.RMLocal, broker.RMYarn} {
		if _, err := e.Bus.JS.CreateOrUpdateConsumer(ctx, broker.StreamRequests, jetstream.ConsumerConfig{
			Durable: broker.WorkerConsumer(rm), FilterSubject: broker.SubjectRequestsFor(rm), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	credsOf := func(role, rm string) string {
		c, err := e.Auth.Creds(role, rm, "t", 0)
		if err != nil {
			t.Fatal(err)
		}
		return string(c)
	}
	fe, local := credsOf(access.RoleFrontend, ""), credsOf(access.RoleWorker, broker.RMLocal)
	cases := []struct {
		name, creds string
		try         func(p *probe) error
		what        string
	}{
		{"front-end claims local requests", fe, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_REQUESTS."+broker.WorkerConsumer(broker.RMLocal), "_INBOX.x", []byte(`{"batch":1}`))
		}, "MSG.NEXT.KB_REQUESTS"},
		{"front-end creates a request consumer", fe, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.CREATE.KB_REQUESTS.evil.kb.req.*.yarn", "_INBOX.x", []byte(`{}`))
		}, "CONSUMER.CREATE.KB_REQUESTS"},
		{"front-end writes a trusted handle", fe, func(p *probe) error { return p.nc.Publish("$KV.kb_handles.x", []byte(`{}`)) }, "$KV.kb_handles"},
		{"front-end deletes the audit log", fe, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.DELETE.KB_EVENTS", "_INBOX.x", nil)
		}, "STREAM.DELETE"},
		{"local worker claims yarn's requests", local, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_REQUESTS."+broker.WorkerConsumer(broker.RMYarn), "_INBOX.x", []byte(`{"batch":1}`))
		}, "MSG.NEXT.KB_REQUESTS." + broker.WorkerConsumer(broker.RMYarn)},
		{"local worker makes a consumer of yarn's requests", local, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.CREATE.KB_REQUESTS.evil.kb.req.*.yarn", "_INBOX.x", []byte(`{}`))
		}, "CONSUMER.CREATE.KB_REQUESTS.evil"},
		{"local worker makes a consumer with its filter in the body", local, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.CREATE.KB_REQUESTS", "_INBOX.x", []byte(`{"config":{"filter_subject":"kb.req.>"}}`))
		}, "CONSUMER.CREATE.KB_REQUESTS"},
		{"local worker forges a start", local, func(p *probe) error {
			return p.nc.Publish(broker.SubjectRequest(broker.VerbStart, broker.RMLocal), []byte(`{}`))
		}, "kb.req.start.local"},
		// Environments: only front-ends ask for builds, only the build
		// pool claims them, and no worker is the build pool but it.
		{"local worker forges a build request", local, func(p *probe) error {
			return p.nc.Publish(broker.SubjectRequest(broker.VerbBuild, broker.RMBuild), []byte(`{}`))
		}, "kb.req.build.build"},
		{"local worker claims builds", local, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_REQUESTS."+broker.WorkerConsumer(broker.RMBuild), "_INBOX.x", []byte(`{"batch":1}`))
		}, "MSG.NEXT.KB_REQUESTS." + broker.WorkerConsumer(broker.RMBuild)},
		{"build worker claims local starts", credsOf(access.RoleWorker, broker.RMBuild), func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_REQUESTS."+broker.WorkerConsumer(broker.RMLocal), "_INBOX.x", []byte(`{"batch":1}`))
		}, "MSG.NEXT.KB_REQUESTS." + broker.WorkerConsumer(broker.RMLocal)},
		{"front-end claims builds", fe, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT.KB_REQUESTS."+broker.WorkerConsumer(broker.RMBuild), "_INBOX.x", []byte(`{"batch":1}`))
		}, "MSG.NEXT.KB_REQUESTS"},
		{"front-end purges environment archives", fe, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.PURGE.OBJ_"+broker.ObjectEnvArchives, "_INBOX.x", nil)
		}, "STREAM.PURGE"},
		// Live output (core NATS) is the front-ends' alone.
		{"local worker reads a kernel's live output", local, func(p *probe) error {
			_, err := p.nc.Subscribe(broker.SubjectOutAll("k1"), func(*nats.Msg) {})
			return err
		}, "Subscription to \"" + broker.SubjectOutAll("k1")},
		{"local worker purges KB_IO", local, func(p *probe) error {
			return p.nc.PublishRequest("$JS.API.STREAM.PURGE.KB_IO", "_INBOX.x", nil)
		}, "STREAM.PURGE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := connect(t, e, c.creds, "")
			if err := c.try(p); err != nil {
				t.Fatal(err)
			}
			_ = p.nc.Flush()
			p.denied(t, c.what)
		})
	}
	t.Run("front-end reads live output", func(t *testing.T) {
		p := connect(t, e, fe, "")
		got := make(chan string, 1)
		if _, err := p.nc.Subscribe(broker.SubjectOutLive("k1"), func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
			t.Fatal(err)
		}
		if err := p.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := e.Bus.NC.Publish(broker.SubjectOut("k1", "iopub"), []byte("out")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != "out" {
				t.Fatalf("got %q", m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no live output reached the front-end (violations %v)", p.errs)
		}
	})
	t.Run("front-end reads an output body by sequence", func(t *testing.T) {
		p := connect(t, e, fe, "")
		bus, err := kbjs.Open(ctx, p.nc)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := e.Bus.JS.Publish(ctx, broker.SubjectOut("k1", "iopub"), []byte("body"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := bus.OutputBody(ctx, ack.Sequence, 10*time.Second)
		if err != nil || string(got) != "body" {
			t.Fatalf("OutputBody = %q, %v (violations %v)", got, err, p.errs)
		}
		// The last output of a kernel, as a front-end drains an ended
		// kernel's sockets: with AllowDirect a direct get by a wildcard
		// subject.
		js, _ := jetstream.New(p.nc)
		st, err := js.Stream(ctx, broker.StreamIO)
		if err != nil || !st.CachedInfo().Config.AllowDirect {
			t.Fatalf("stream %s: %v (AllowDirect not set?)", broker.StreamIO, err)
		}
		last, err := st.GetLastMsgForSubject(ctx, broker.SubjectOutAll("k1"))
		if err != nil || string(last.Data) != "body" {
			t.Fatalf("last output: %v, %v", last, err)
		}
		// A sequence the stream does not hold: the direct get's "not
		// found" is checked with the leader, then believed.
		if _, err := bus.OutputBody(ctx, ack.Sequence+1000, 10*time.Second); !errors.Is(err, kbjs.ErrBodyGone) {
			t.Fatalf("OutputBody past the end = %v, want ErrBodyGone", err)
		}
	})
	t.Run("local worker claims its own", func(t *testing.T) {
		p := connect(t, e, local, "")
		js, _ := jetstream.New(p.nc)
		if _, err := e.Bus.JS.Publish(ctx, broker.SubjectRequest(broker.VerbStart, broker.RMLocal), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		cons, err := js.Consumer(ctx, broker.StreamRequests, broker.WorkerConsumer(broker.RMLocal))
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range msgs.Messages() {
			_ = m.Ack()
			n++
		}
		if n != 1 {
			t.Fatalf("claimed %d, want 1 (%v; violations %v)", n, msgs.Error(), p.errs)
		}
	})
}

// TestServerConfigLoads checks the configuration include a cluster's
// nats-server uses: it names the operator and preloads both accounts.
func TestServerConfigLoads(t *testing.T) {
	in := generate(t)
	conf, err := in.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	j, _ := in.JWTs()
	for _, want := range []string{"operator:", "resolver: MEMORY", j.AccountKey, j.SystemKey} {
		if !strings.Contains(conf, want) {
			t.Fatalf("config lacks %q:\n%s", want, conf)
		}
	}
	var mf access.MinterFile
	b, _ := in.MinterFile()
	if err := json.Unmarshal(b, &mf); err != nil || mf.Account != j.AccountKey {
		t.Fatalf("minter file: %v %+v", err, mf)
	}
}

// generate is a new installation (operator, accounts); the test stops if
// one cannot be made.
func generate(tb testing.TB) *access.Installation {
	tb.Helper()
	in, err := access.Generate()
	if err != nil {
		tb.Fatal(err)
	}
	return in
}

// newMinter is the credential minter of a new installation.
func newMinter(tb testing.TB) *access.Minter {
	tb.Helper()
	m, err := generate(tb).Minter()
	if err != nil {
		tb.Fatal(err)
	}
	return m
}
