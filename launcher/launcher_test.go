package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// ---- harness ----

func testPython(t *testing.T) string { return jstest.Python(t) }

type testBus struct {
	env *jstest.Env
	srv *embedded.Server
	nc  *nats.Conn
	bus *kbjs.Bus
}

// startBus runs a bus that trusts only an installation's credentials, as
// `kernelbus serve` does: launchers in these tests run with credentials
// scoped to their kernel.
func startBus(t *testing.T) *testBus {
	t.Helper()
	e := jstest.Start(t, jstest.Options{Auth: true})
	return &testBus{env: e, srv: e.Server, nc: e.NC, bus: e.Bus}
}

// logSink forwards launcher logs to the test log while the test runs.
type logSink struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// outMsg is one kernel message as a client sees it on the bus.
type outMsg struct {
	channel, msgType, msgID, parentID, parentType, session string
	natsSession, natsParentType                            string
	content                                                []byte
	busMsgs                                                int // bus messages it took (chunks)
}

type testKernel struct {
	t       *testing.T
	tb      *testBus
	id      string
	session string // the websocket session this test client plays
	done    chan error
	inSeq   atomic.Uint64 // the numbers of its input, as a websocket's (kbjs.Input.Seq)
	// streamOnly sends input unnumbered, which the launcher takes from
	// its input consumer only (as with --live-input=false).
	streamOnly bool

	mu   sync.Mutex
	msgs []*outMsg
	more chan struct{}
	sub  jetstream.ConsumeContext
}

func newKernelID() string { return newUUID() }

// launch creates the record and runs the launcher in-process.
func launch(t *testing.T, tb *testBus, argv []string, mutate func(*broker.LaunchConfig)) *testKernel {
	t.Helper()
	return launchRecord(t, tb, argv, mutate, nil)
}

// launchRecord is launch with the record as mutateRec leaves it (it starts
// as submitted).
func launchRecord(t *testing.T, tb *testBus, argv []string, mutate func(*broker.LaunchConfig), mutateRec func(*broker.Kernel)) *testKernel {
	t.Helper()
	id := newKernelID()
	cfg := &broker.LaunchConfig{V: 1, KernelID: id, Spec: "python3", Argv: argv,
		Env: map[string]string{"KERNEL_ID": id}, LaunchTimeout: broker.Duration(40 * time.Second),
		MaxRestarts: 5, IP: "127.0.0.1"}
	if tb.env != nil {
		tb.env.LaunchAccess(t, cfg)
	} else {
		cfg.NATSURLs = tb.srv.ClientURL()
		if err := kbjs.EnsureInput(context.Background(), tb.bus.JS, id); err != nil {
			t.Fatal(err)
		}
	}
	if mutate != nil {
		mutate(cfg)
	}
	ctx := context.Background()
	rec := &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, State: broker.StateSubmitted, Created: time.Now().UTC()}
	if mutateRec != nil {
		mutateRec(rec)
	}
	if _, err := tb.bus.CreateKernel(ctx, rec); err != nil {
		t.Fatal(err)
	}
	k := &testKernel{t: t, tb: tb, id: id, session: "client-" + newUUID(), done: make(chan error, 1), more: make(chan struct{}, 1)}
	k.subscribe()
	sink := &logSink{t: t}
	log := zerolog.New(sink).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	rctx, cancel := context.WithCancel(ctx)
	go func() { k.done <- Run(rctx, cfg, log) }()
	t.Cleanup(func() {
		// Whatever the test did, the launcher must end and take its
		// kernel with it.
		cancel()
		select {
		case err := <-k.done:
			k.done <- err
		case <-time.After(20 * time.Second):
			t.Error("launcher did not exit within 20s of cancel")
		}
		sink.mu.Lock()
		sink.done = true
		sink.mu.Unlock()
	})
	return k
}

// subscribe collects every output message of the kernel, reassembling
// chunks as a front-end would. It reads KB_IO with a flow-controlled
// consumer, as front-ends do: a core subscription is cut off by the server
// as a slow consumer when a 20 MB output meets a busy machine, losing chunks.
func (k *testKernel) subscribe() {
	var re kbjs.Reassembler
	parts := 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := k.tb.bus.JS.OrderedConsumer(ctx, broker.StreamIO, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.SubjectOutAll(k.id)},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		k.t.Fatal(err)
	}
	sub, err := cons.Consume(func(jm jetstream.Msg) {
		m := &nats.Msg{Subject: jm.Subject(), Header: jm.Headers(), Data: jm.Data()}
		parts++
		data, ok, err := re.Feed(m)
		if err != nil {
			k.t.Errorf("reassemble: %v", err)
			return
		}
		if !ok {
			return
		}
		frames := [][]byte{data}
		batched := m.Header.Get(broker.HeaderBatch) != ""
		if batched {
			n, _ := strconv.Atoi(m.Header.Get(broker.HeaderBatch))
			if frames, err = broker.SplitBatch(data, n); err != nil {
				k.t.Errorf("batch: %v", err)
				return
			}
			if ch := m.Header.Get(broker.HeaderChannel); ch != "iopub" {
				k.t.Errorf("a batch of %s messages", ch)
			}
		}
		for _, data := range frames {
			f, err := broker.DecodeV1(data)
			if err != nil {
				k.t.Errorf("decode: %v", err)
				return
			}
			h, err := broker.ParseHeader(f.Header)
			if err != nil {
				k.t.Errorf("header: %v", err)
				return
			}
			pid, ptype := broker.ParentMsgID(f.ParentHeader)
			var ph struct {
				Session string `json:"session"`
			}
			_ = json.Unmarshal(f.ParentHeader, &ph)
			om := &outMsg{channel: f.Channel, msgType: h.MsgType, msgID: h.MsgID, parentID: pid, parentType: ptype,
				session: ph.Session, natsSession: m.Header.Get(broker.HeaderSession),
				natsParentType: m.Header.Get(broker.HeaderParentType),
				content:        append([]byte(nil), f.Content...), busMsgs: parts}
			if got := m.Header.Get(broker.HeaderChannel); got != f.Channel {
				k.t.Errorf("Kb-Channel %q for a %s message", got, f.Channel)
			}
			if !batched {
				if got := m.Header.Get(broker.HeaderMsgType); got != h.MsgType {
					k.t.Errorf("Kb-Msg-Type %q for a %s message", got, h.MsgType)
				}
				if m.Header.Get(broker.HeaderVersion) != "1" || m.Header.Get(broker.HeaderMsgID) != h.MsgID {
					k.t.Errorf("envelope headers %v", m.Header)
				}
			} else {
				// A batch carries no per-message headers; its frames say it.
				om.natsSession, om.natsParentType = ph.Session, ptype
			}
			k.mu.Lock()
			k.msgs = append(k.msgs, om)
			k.mu.Unlock()
		}
		parts = 0
		select {
		case k.more <- struct{}{}:
		default:
		}
	})
	if err != nil {
		k.t.Fatal(err)
	}
	k.sub = sub
	k.t.Cleanup(sub.Stop)
}

// stopCollecting ends the collecting subscription, for measurements where
// its decoding would compete for the CPU.
func (k *testKernel) stopCollecting() { k.sub.Stop() }

// waitMsg waits for the first message that matches. match sees each
// message once, in order.
func (k *testKernel) waitMsg(timeout time.Duration, what string, match func(*outMsg) bool) *outMsg {
	k.t.Helper()
	return k.waitFrom(0, timeout, what, match)
}

// mark is where waitFrom starts to see only messages that arrive later.
func (k *testKernel) mark() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.msgs)
}

func (k *testKernel) waitFrom(from int, timeout time.Duration, what string, match func(*outMsg) bool) *outMsg {
	k.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := from
	for {
		k.mu.Lock()
		msgs := k.msgs[seen:]
		seen = len(k.msgs)
		k.mu.Unlock()
		for _, m := range msgs {
			if match(m) {
				return m
			}
		}
		select {
		case <-k.more:
		case <-deadline.C:
			k.t.Fatalf("no %s within %s", what, timeout)
		}
	}
}

// send publishes a client message to the kernel's input subject, as a
// front-end does, and returns its msg_id.
func (k *testKernel) send(channel, msgType string, content any, parent []byte) string {
	k.t.Helper()
	id := newUUID()
	hdr, _ := json.Marshal(map[string]any{"msg_id": id, "msg_type": msgType, "session": k.session,
		"username": "test", "date": time.Now().UTC().Format(jupyterDate), "version": "5.3"})
	body, _ := json.Marshal(content)
	if parent == nil {
		parent = []byte("{}")
	}
	f := broker.Frame{Channel: channel, Header: hdr, ParentHeader: parent, Metadata: []byte("{}"), Content: body}
	in := kbjs.Input{Kernel: k.id, Session: k.session, Channel: channel, MsgType: msgType, MsgID: id, Frame: f.V1()}
	if !k.streamOnly {
		in.Sender, in.Seq = "test-"+k.session, k.inSeq.Add(1)
	}
	if err := k.tb.bus.SendInput(context.Background(), in, 10*time.Second); err != nil {
		k.t.Fatal(err)
	}
	return id
}

func (k *testKernel) execute(code string, allowStdin bool) string {
	return k.send("shell", "execute_request", map[string]any{"code": code, "silent": false,
		"store_history": true, "user_expressions": map[string]any{}, "allow_stdin": allowStdin, "stop_on_error": true}, nil)
}

func (k *testKernel) ctl(op string) broker.ControlReply {
	k.t.Helper()
	data, _ := json.Marshal(broker.ControlRequest{Op: op, RequestID: "test-" + op})
	m, err := k.tb.nc.Request(broker.SubjectControl(k.id), data, 30*time.Second)
	if err != nil {
		k.t.Fatalf("control %s: %v", op, err)
	}
	var r broker.ControlReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		k.t.Fatal(err)
	}
	return r
}

func (k *testKernel) record() *broker.Kernel {
	k.t.Helper()
	rec, _, err := k.tb.bus.GetKernel(context.Background(), k.id)
	if err != nil {
		k.t.Fatal(err)
	}
	return rec
}

// waitState polls the record until it reaches one of states.
func (k *testKernel) waitState(timeout time.Duration, states ...broker.State) *broker.Kernel {
	k.t.Helper()
	var rec *broker.Kernel
	reached := func() bool {
		rec = k.record()
		return slices.Contains(states, rec.State)
	}
	ok := jstest.Eventually(timeout, func() bool {
		if reached() {
			return true
		}
		select {
		case err := <-k.done:
			k.done <- err
			if !reached() {
				k.t.Fatalf("launcher exited (%v) with record %s (%q), want %v", err, rec.State, rec.Reason, states)
			}
			return true
		default:
			return false
		}
	})
	if !ok {
		k.t.Fatalf("record state %s (reason %q), want %v within %s", rec.State, rec.Reason, states, timeout)
	}
	return rec
}

// events lists the event types of the kernel so far.
func (k *testKernel) events() []string {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := k.tb.bus.JS.OrderedConsumer(ctx, broker.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.SubjectEventsOf(k.id)}})
	if err != nil {
		k.t.Fatal(err)
	}
	var out []string
	for {
		batch, err := cons.FetchNoWait(100)
		if err != nil {
			k.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev broker.Event
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				k.t.Fatal(err)
			}
			if ev.Source != Source || ev.Kernel != k.id {
				k.t.Errorf("event %+v", ev)
			}
			out = append(out, ev.Type)
		}
		if n == 0 {
			return out
		}
	}
}

func contentField(m *outMsg, field string) string {
	var c map[string]any
	_ = json.Unmarshal(m.content, &c)
	s, _ := c[field].(string)
	return s
}

func (k *testKernel) reply(parent string) func(*outMsg) bool {
	return func(m *outMsg) bool { return m.parentID == parent && m.msgType == "execute_reply" }
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// ---- tests ----

// TestLauncherWithIPyKernel drives one real ipykernel through the whole
// life a gateway gives it: start, execute, stdin, interrupt, a 20 MB
// output, restart, a crash with automatic restart, and shutdown.
func TestLauncherWithIPyKernel(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	k := launch(t, tb, []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"}, nil)

	start := time.Now()
	rec := k.waitState(60*time.Second, broker.StateRunning)
	t.Logf("running after %s", time.Since(start))
	if rec.Host == "" || len(rec.Handle) == 0 || rec.Reason != "" {
		t.Errorf("running record: %+v", rec)
	}
	pid := k.ctl(broker.OpPing).PID
	if pid == 0 {
		t.Fatal("ping reported no pid")
	}

	t.Run("execute", func(t *testing.T) {
		id := k.execute("print(6*7)", false)
		out := k.waitMsg(20*time.Second, "stream 42", func(m *outMsg) bool {
			return m.parentID == id && m.msgType == "stream"
		})
		if got := contentField(out, "text"); got != "42\n" {
			t.Errorf("stream text %q", got)
		}
		rep := k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
		if contentField(rep, "status") != "ok" {
			t.Errorf("execute_reply %s", rep.content)
		}
		for _, m := range []*outMsg{out, rep} {
			if m.natsSession != k.session {
				t.Errorf("%s on %s: Kb-Session %q, want %q", m.msgType, m.channel, m.natsSession, k.session)
			}
			if m.natsParentType != "execute_request" {
				t.Errorf("%s: Kb-Parent-Type %q", m.msgType, m.natsParentType)
			}
		}
		if rep.channel != "shell" || out.channel != "iopub" {
			t.Errorf("channels: reply on %s, stream on %s", rep.channel, out.channel)
		}
	})

	t.Run("round trip", func(t *testing.T) {
		lat := k.roundTrips(30)
		t.Logf("execute_request → execute_reply through bus+launcher: p50 %s, p90 %s, max %s",
			lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)-1])
	})

	t.Run("activity", func(t *testing.T) {
		jstest.WaitForNil(t, 5*time.Second, func() error {
			e, err := tb.bus.Activity.Get(context.Background(), k.id)
			if err != nil {
				return fmt.Errorf("activity: %w", err)
			}
			var a broker.Activity
			_ = json.Unmarshal(e.Value(), &a)
			if a.ExecutionState != "idle" || time.Since(a.LastActivity) >= time.Minute {
				return fmt.Errorf("activity not idle and recent: %+v", a)
			}
			return nil
		})
	})

	t.Run("stdin", func(t *testing.T) {
		id := k.execute("x = input('q? ')\nprint('got', x)", true)
		req := k.waitMsg(20*time.Second, "input_request", func(m *outMsg) bool {
			return m.msgType == "input_request" && m.parentID == id
		})
		if req.channel != "stdin" || req.natsSession != k.session {
			t.Fatalf("input_request on %s with Kb-Session %q", req.channel, req.natsSession)
		}
		parent, _ := json.Marshal(map[string]any{"msg_id": req.msgID, "msg_type": "input_request", "session": req.session})
		k.send("stdin", "input_reply", map[string]any{"value": "yes"}, parent)
		out := k.waitMsg(20*time.Second, "echo of the input", func(m *outMsg) bool {
			return m.parentID == id && m.msgType == "stream" && strings.Contains(contentField(m, "text"), "got yes")
		})
		_ = out
		k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
	})

	t.Run("interrupt", func(t *testing.T) {
		id := k.execute("import time; print('sleeping', flush=True); time.sleep(60)", false)
		k.waitMsg(20*time.Second, "the code to start sleeping", func(m *outMsg) bool {
			return m.parentID == id && m.msgType == "stream" && strings.Contains(contentField(m, "text"), "sleeping")
		})
		if r := k.ctl(broker.OpInterrupt); !r.OK {
			t.Fatalf("interrupt: %+v", r)
		}
		rep := k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
		if contentField(rep, "status") != "error" || contentField(rep, "ename") != "KeyboardInterrupt" {
			t.Fatalf("execute_reply after interrupt: %s", rep.content)
		}
	})

	t.Run("20MB output", func(t *testing.T) {
		const n = 20_000_000
		id := k.execute(fmt.Sprintf("print('x'*%d)", n), false)
		total, chunked := 0, false
		k.waitMsg(3*time.Minute, "all 20 MB of stream output", func(m *outMsg) bool {
			if m.parentID == id && m.msgType == "stream" {
				text := contentField(m, "text")
				total += strings.Count(text, "x")
				if len(strings.Trim(text, "x\n")) != 0 {
					t.Fatalf("stream text corrupted")
				}
				chunked = chunked || m.busMsgs > 1
			}
			return total >= n
		})
		if total != n || !chunked {
			t.Fatalf("got %d x (want %d); chunked %v", total, n, chunked)
		}
		k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
	})

	t.Run("restart", func(t *testing.T) {
		id := k.execute("a_variable = 1", false)
		k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
		oldPID := k.ctl(broker.OpPing).PID
		t0 := time.Now()
		r := k.ctl(broker.OpRestart)
		if !r.OK || r.State != broker.StateRunning || r.PID == oldPID || r.PID == 0 {
			t.Fatalf("restart reply %+v (old pid %d)", r, oldPID)
		}
		t.Logf("restart took %s", time.Since(t0))
		if processGone(oldPID) == false {
			t.Errorf("old kernel %d still alive after restart", oldPID)
		}
		rec := k.waitState(5*time.Second, broker.StateRunning)
		if rec.ID != k.id {
			t.Fatal("id changed")
		}
		id = k.execute("print(a_variable)", false)
		rep := k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
		if contentField(rep, "ename") != "NameError" {
			t.Fatalf("state survived the restart: %s", rep.content)
		}
		evs := strings.Join(k.events(), ",")
		if !strings.Contains(evs, "restart_requested,restarted") {
			t.Errorf("events %s", evs)
		}
	})

	t.Run("crash and automatic restart", func(t *testing.T) {
		oldPID := k.ctl(broker.OpPing).PID
		mark := k.mark()
		if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st := k.waitFrom(mark, 20*time.Second, "iopub status restarting", func(m *outMsg) bool {
			return m.msgType == "status" && contentField(m, "execution_state") == "restarting"
		})
		if st.natsSession != "" || st.parentID != "" || st.channel != "iopub" {
			t.Errorf("restarting status: %+v", st)
		}
		jstest.WaitForNil(t, 60*time.Second, func() error {
			if r := k.ctl(broker.OpPing); r.State != broker.StateRunning || r.PID == oldPID {
				return fmt.Errorf("not running again after the crash: %+v", r)
			}
			return nil
		})
		if rec := k.record(); rec.State != broker.StateRunning || rec.Restarts != 1 {
			t.Errorf("record after auto restart: %s, restarts %d", rec.State, rec.Restarts)
		}
		id := k.execute("print(6*7)", false)
		k.waitMsg(20*time.Second, "execute_reply", k.reply(id))
		evs := strings.Join(k.events(), ",")
		if !strings.Contains(evs, "died,auto_restarted") {
			t.Errorf("events %s", evs)
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		pid := k.ctl(broker.OpPing).PID
		r := k.ctl(broker.OpShutdown)
		if !r.OK || r.State != broker.StateTerminated {
			t.Fatalf("shutdown reply %+v", r)
		}
		if err := k.exited(t, 10*time.Second, "launcher still running after shutdown"); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !processGone(pid) {
			t.Errorf("kernel %d still alive", pid)
		}
		if rec := k.record(); rec.State != broker.StateTerminated {
			t.Errorf("record %s", rec.State)
		}
		if evs := k.events(); evs[len(evs)-1] != broker.EvTerminated {
			t.Errorf("events %v", evs)
		}
	})
}

func TestLauncherStartFailure(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	k := launch(t, tb, []string{py, "-c", "import sys; sys.stderr.write('boom-marker\\n'); sys.exit(3)"}, nil)
	err := k.exited(t, 30*time.Second, "launcher did not give up")
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("Run returned %v, want a StartError", err)
	}
	rec := k.record()
	if rec.State != broker.StateFailed || !strings.Contains(rec.Reason, "3") || !strings.Contains(rec.Reason, "boom-marker") {
		t.Fatalf("record %s: %q", rec.State, rec.Reason)
	}
	t.Logf("reason: %s", rec.Reason)
	if evs := k.events(); len(evs) != 1 || evs[0] != broker.EvStartFailed {
		t.Errorf("events %v", evs)
	}
}

// A worker that died while starting a kernel may have started its
// launcher; the worker that takes the start over records a new attempt.
// The launcher of the old attempt stands down: before it starts its kernel
// if it reads the new attempt first, else when it would mark the kernel
// running. Either way it stops its kernel and leaves the record and the
// event log to the new attempt.
func TestLauncherSupersededBeforeStart(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	marker := filepath.Join(t.TempDir(), "ran")
	k := launchRecord(t, tb, []string{py, "-c", fmt.Sprintf("open(%q, 'w').close()", marker)},
		func(c *broker.LaunchConfig) { c.Attempt = "attempt-of-the-dead-worker" },
		func(r *broker.Kernel) { r.State, r.Worker, r.Attempt = broker.StateClaimed, "w2", "attempt-of-w2" })
	k.awaitStandDown()
	if _, err := os.Stat(marker); err == nil {
		t.Error("the superseded launcher started its kernel")
	}
	if rec := k.record(); rec.State != broker.StateClaimed || rec.Attempt != "attempt-of-w2" || len(rec.Handle) != 0 {
		t.Errorf("record changed: %+v", rec)
	}
	if evs := k.events(); len(evs) != 0 {
		t.Errorf("the superseded launcher emitted %v", evs)
	}
}

func TestLauncherSupersededWhileStarting(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	k := launchRecord(t, tb, []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		func(c *broker.LaunchConfig) { c.Attempt = "attempt-of-w1" },
		func(r *broker.Kernel) { r.State, r.Worker, r.Attempt = broker.StateClaimed, "w1", "attempt-of-w1" })
	// w1's launcher has its kernel up and waits for w1 to record the
	// submission; w1 is dead, and w2 takes over and submits its own.
	jstest.WaitFor(t, 60*time.Second, "the kernel process", func() bool { return kernelProcs(k.id) > 0 })
	ctx := context.Background()
	if _, err := tb.bus.UpdateKernel(ctx, k.id, func(r *broker.Kernel) error {
		r.Worker, r.Attempt = "w2", "attempt-of-w2"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.bus.UpdateKernel(ctx, k.id, func(r *broker.Kernel) error {
		r.State, r.Handle = broker.StateSubmitted, json.RawMessage(`{"pid":1}`)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	k.awaitStandDown()
	if n := kernelProcs(k.id); n != 0 {
		t.Errorf("%d kernel processes of the superseded launcher left", n)
	}
	if rec := k.record(); rec.State != broker.StateSubmitted || rec.Attempt != "attempt-of-w2" {
		t.Errorf("record changed: %s %s", rec.State, rec.Attempt)
	}
	if evs := k.events(); len(evs) != 0 {
		t.Errorf("the superseded launcher emitted %v", evs)
	}
}

// roundTrips times n execute_request → execute_reply round trips, one
// after the other, and returns them sorted.
func (k *testKernel) roundTrips(n int) []time.Duration {
	k.t.Helper()
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		id := k.execute("pass", false)
		k.waitMsg(10*time.Second, "execute_reply", k.reply(id))
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat
}

// exited waits up to d for Run to return and returns its error, left in
// k.done for the cleanup; t fails with "<what> within d" when it does not.
func (k *testKernel) exited(t testing.TB, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-k.done:
		k.done <- err
		return err
	case <-time.After(d):
		t.Fatalf("%s within %s", what, d)
		return nil
	}
}

// awaitStandDown waits for the launcher to return ErrSuperseded.
func (k *testKernel) awaitStandDown() {
	k.t.Helper()
	if err := k.exited(k.t, 30*time.Second, "the superseded launcher did not stand down"); !errors.Is(err, ErrSuperseded) {
		k.t.Fatalf("Run returned %v, want ErrSuperseded", err)
	}
}

// kernelProcs counts live processes whose command line names the
// connection file of kernel id.
func kernelProcs(id string) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(st, ')'); i > 0 && bytes.HasPrefix(st[i+1:], []byte(" Z")) {
			continue // a zombie
		}
		cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Contains(cl, []byte("kernel-"+id+".json")) {
			n++
		}
	}
	return n
}

// TestLauncherGivesUp checks that a kernel that starts and then keeps dying
// is restarted MaxRestarts times and then declared dead.
func TestLauncherGivesUp(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	// A "kernel" that becomes ready, then dies when the test says so
	// (a file; no timer that a slow machine outruns before the kernel is
	// ready); a flag file makes every later run exit before it is ready.
	dir := t.TempDir()
	flag, die := filepath.Join(dir, "ran"), filepath.Join(dir, "die")
	script := fmt.Sprintf(`
import os, sys, threading, time
flag, die = %q, %q
if os.path.exists(flag):
    sys.stderr.write('dies again\n'); sys.exit(7)
open(flag, 'w').close()
def watch():
    while not os.path.exists(die):
        time.sleep(0.05)
    os._exit(9)
threading.Thread(target=watch, daemon=True).start()
from ipykernel.kernelapp import IPKernelApp
IPKernelApp.launch_instance(argv=['-f', sys.argv[1]])
`, flag, die)
	k := launch(t, tb, []string{py, "-c", script, "{connection_file}"}, func(c *broker.LaunchConfig) { c.MaxRestarts = 2 })
	k.waitState(60*time.Second, broker.StateRunning)
	if err := os.WriteFile(die, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := k.waitState(60*time.Second, broker.StateDead)
	if !strings.Contains(rec.Reason, "gave up after 2 restarts") || !strings.Contains(rec.Reason, "dies again") {
		t.Errorf("reason %q", rec.Reason)
	}
	err := k.exited(t, 10*time.Second, "launcher did not exit")
	var gu *GaveUpError
	if !errors.As(err, &gu) {
		t.Fatalf("Run returned %v", err)
	}
	k.waitMsg(5*time.Second, "iopub status dead", func(m *outMsg) bool {
		return m.msgType == "status" && contentField(m, "execution_state") == "dead"
	})
	evs := strings.Join(k.events(), ",")
	if !strings.HasPrefix(evs, "started,died") || !strings.HasSuffix(evs, "died") {
		t.Errorf("events %s", evs)
	}
}

// TestLauncherTimeoutAndAbort covers kernels that never become ready: the
// launch timeout fails the record with a reason naming it, and a shutdown
// during a start ends it as terminated, answering every shutdown request.
func TestLauncherTimeoutAndAbort(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	tb := startBus(t)

	t.Run("timeout", func(t *testing.T) {
		k := launch(t, tb, []string{sleep, "60"}, func(c *broker.LaunchConfig) { c.LaunchTimeout = broker.Duration(time.Second) })
		rec := k.waitState(20*time.Second, broker.StateFailed)
		if !strings.Contains(rec.Reason, "no kernel_info_reply within 1s") {
			t.Errorf("reason %q", rec.Reason)
		}
		err := k.exited(t, 30*time.Second, "launcher did not give up")
		var se *StartError
		if !errors.As(err, &se) {
			t.Errorf("Run: %v", err)
		}
	})

	t.Run("shutdown during start", func(t *testing.T) {
		k := launch(t, tb, []string{sleep, "60"}, nil)
		var pid int
		jstest.WaitFor(t, 10*time.Second, "a pid while starting", func() bool {
			if r, err := tb.nc.Request(broker.SubjectControl(k.id), []byte(`{"op":"ping"}`), time.Second); err == nil {
				var cr broker.ControlReply
				_ = json.Unmarshal(r.Data, &cr)
				pid = cr.PID
			}
			return pid != 0
		})
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := tb.nc.Request(broker.SubjectControl(k.id), []byte(`{"op":"shutdown"}`), 20*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				var cr broker.ControlReply
				_ = json.Unmarshal(r.Data, &cr)
				if !cr.OK || cr.State != broker.StateTerminated {
					t.Errorf("shutdown reply %+v", cr)
				}
			}()
		}
		wg.Wait()
		if err := <-k.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		k.done <- nil
		if !processGone(pid) {
			t.Errorf("sleep %d still running", pid)
		}
		if rec := k.record(); rec.State != broker.StateTerminated {
			t.Errorf("record %s", rec.State)
		}
	})
}

// TestInterruptByMessage uses interrupt_mode message against the fake
// kernel, which answers interrupt_request with interrupt_reply.
func TestInterruptByMessage(t *testing.T) {
	tb := startBus(t)
	k := launch(t, tb, []string{os.Args[0], "-test.run=^$", "{connection_file}"}, func(c *broker.LaunchConfig) {
		c.Env[fakeKernelEnv] = "1"
		c.InterruptMode = "message"
	})
	k.waitState(30*time.Second, broker.StateRunning)
	if r := k.ctl(broker.OpInterrupt); !r.OK {
		t.Fatalf("interrupt: %+v", r)
	}
	if evs := k.events(); evs[len(evs)-1] != broker.EvInterrupted {
		t.Errorf("events %v", evs)
	}
	// The reply went to the launcher, not to clients.
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, m := range k.msgs {
		if m.msgType == "interrupt_reply" {
			t.Errorf("interrupt_reply of the launcher's own request was published")
		}
	}
}

// TestBusRestart restarts the NATS server under a running kernel: the
// launcher reconnects, its input consumer resumes and outputs flow again.
func TestBusRestart(t *testing.T) {
	dir := t.TempDir()
	// The first start picks its port; the restart takes the same one, as
	// the launcher reconnects to the URL it was given.
	port := -1
	start := func() *embedded.Server {
		srv, err := embedded.NewServer(embedded.Options{Port: port, StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	if u, err := url.Parse(srv.ClientURL()); err != nil {
		t.Fatal(err)
	} else if port, err = strconv.Atoi(u.Port()); err != nil {
		t.Fatal(err)
	}
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: srv.ClientURL(), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	bus, err := kbjs.Setup(context.Background(), nc, kbjs.Layout{})
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBus{srv: srv, nc: nc, bus: bus}
	k := launch(t, tb, []string{os.Args[0], "-test.run=^$", "{connection_file}"}, func(c *broker.LaunchConfig) {
		c.Env[fakeKernelEnv] = "1"
	})
	k.waitState(30*time.Second, broker.StateRunning)
	id := k.execute("pass", false)
	k.waitMsg(10*time.Second, "execute_reply before the restart", k.reply(id))

	_ = srv.Stop(context.Background())
	srv = start()
	tb.srv = srv

	// Publish as soon as the bus takes it again; the launcher may still be
	// reconnecting, and its ordered consumer must pick the message up.
	jstest.WaitForNil(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		id = newUUID()
		hdr, _ := json.Marshal(map[string]any{"msg_id": id, "msg_type": "execute_request", "session": k.session, "version": "5.3"})
		f := broker.Frame{Channel: "shell", Header: hdr, Content: []byte(`{"code":"pass"}`)}
		m := &nats.Msg{Subject: broker.SubjectIn(k.id), Data: f.V1(), Header: nats.Header{}}
		m.Header.Set(broker.HeaderSession, k.session)
		if _, err := kbjs.Publish(ctx, nc, bus.JS, m); err != nil {
			return fmt.Errorf("bus did not come back: %w", err)
		}
		return nil
	})
	rep := k.waitMsg(30*time.Second, "execute_reply after the restart", k.reply(id))
	if rep.natsSession != k.session {
		t.Errorf("Kb-Session %q after the restart", rep.natsSession)
	}
	if r := k.ctl(broker.OpShutdown); !r.OK {
		t.Fatalf("shutdown %+v", r)
	}
}

// TestLauncherPortRange: with a port range, the kernel's five ports come
// from it (the kernel here reports them on stderr and exits, which the
// record's reason carries).
func TestLauncherPortRange(t *testing.T) {
	py := testPython(t)
	tb := startBus(t)
	const lo, hi = 47100, 47139
	script := "import json,sys; c=json.load(open(sys.argv[1])); " +
		"p=[c[k] for k in ('shell_port','iopub_port','stdin_port','control_port','hb_port')]; " +
		"sys.stderr.write('ports=%s\\n' % ','.join(map(str, p))); sys.exit(3)"
	k := launch(t, tb, []string{py, "-c", script, "{connection_file}"}, func(c *broker.LaunchConfig) {
		c.PortRange = fmt.Sprintf("%d..%d", lo, hi)
	})
	k.exited(t, 30*time.Second, "launcher did not give up")
	reason := k.record().Reason
	i := strings.Index(reason, "ports=")
	if i < 0 {
		t.Fatalf("no ports in %q", reason)
	}
	seen := map[int]bool{}
	for _, f := range strings.SplitN(strings.Fields(reason[i+len("ports="):])[0], ",", 5) {
		p, err := strconv.Atoi(strings.TrimRight(f, ".;\"'"))
		if err != nil || p < lo || p > hi || seen[p] {
			t.Fatalf("port %q (of %q) not a distinct port of %d..%d", f, reason, lo, hi)
		}
		seen[p] = true
	}
	if len(seen) != 5 {
		t.Fatalf("%d ports in %q", len(seen), reason)
	}
}
