package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

// streamLast is KB_IO's last sequence now.
func streamLast(t *testing.T, e *testEnv) uint64 {
	t.Helper()
	info, err := e.fe.ioStream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// skipStreamOnly skips a test of live output when the suite runs with it
// off (KB_TEST_LIVE_OUTPUT=0).
func skipStreamOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("KB_TEST_LIVE_OUTPUT") == "0" {
		t.Skip("KB_TEST_LIVE_OUTPUT=0: front-ends deliver from the stream only")
	}
}

// TestWSStreamOnlyOutput: with live output off (--live-output=false) a
// socket holds no live subscription and every message, small and large,
// comes from the stream, each once and in order.
func TestWSStreamOnlyOutput(t *testing.T) {
	e := newEnv(t, Config{NoLiveOutput: true})
	k := e.startKernel()
	l := e.worker.launcher(k.ID)
	c := e.dial(k.ID, "S", true)
	sent, _, _ := publishStreamsNumbered(l, "a", 100)
	cont, _ := json.Marshal(map[string]string{"name": "stdout", "text": "large|" + strings.Repeat("x", 2<<20)})
	m, _ := l.message("iopub", "stream", "", nil, string(cont), nil)
	l.publishBus(m)
	more, _, _ := publishStreamsNumbered(l, "b", 10)
	got := readTexts(t, c, more[len(more)-1])
	for i := range got {
		got[i], _, _ = strings.Cut(got[i], "|")
	}
	sameTexts(t, "stream only", got, append(append(sent, "large"), more...))
	if n := e.fe.liveWrites.Load(); n != 0 {
		t.Fatalf("%d bus messages went out live with live output off", n)
	}
	for _, conn := range e.fe.hub.ofKernel(k.ID) {
		conn.mu.Lock()
		live := conn.live
		conn.mu.Unlock()
		if live != nil {
			t.Fatal("a socket holds a live subscription with live output off")
		}
	}
}

// publishStreamsNumbered publishes n iopub stream messages named prefix-i
// as the launcher, returning their texts, msg_ids and launcher numbers.
func publishStreamsNumbered(l *fakeLauncher, prefix string, n int) (texts, ids []string, nums []uint64) {
	for i := range n {
		text := fmt.Sprintf("%s-%d", prefix, i)
		c, _ := json.Marshal(map[string]string{"name": "stdout", "text": text})
		m, id := l.message("iopub", "stream", "", nil, string(c), nil)
		l.publishBus(m)
		l.pubMu.Lock()
		nums = append(nums, l.next)
		l.pubMu.Unlock()
		texts, ids = append(texts, text), append(ids, id)
	}
	return texts, ids, nums
}

// liveSocket starts a front-end with live output (set up further by
// setup, when not nil), a kernel and a socket to it, and makes one round
// trip: the connection is set up and has seen the launcher's numbering.
func liveSocket(t *testing.T, setup func(e *testEnv)) (*testEnv, KernelModel, *fakeLauncher, *wsClient) {
	t.Helper()
	skipStreamOnly(t)
	e := newEnv(t, Config{FrontendID: "fe1"})
	if setup != nil {
		setup(e)
	}
	k := e.startKernel()
	l := e.worker.launcher(k.ID)
	c := e.dial(k.ID, "S", true)
	id := c.send("shell", "execute_request", map[string]any{"code": "hello"})
	c.until(isIdleOf(id))
	return e, k, l, c
}

// TestWSLiveOutput: with live output, kernel messages reach the socket
// from the live path, each once and in the launcher's order, while the
// stream's copies carry the cursor to the stream's end, and the session
// record names the last message written live.
func TestWSLiveOutput(t *testing.T) {
	e, k, l, c := liveSocket(t, nil)
	sent, _, nums := publishStreamsNumbered(l, "a", 300)
	sameTexts(t, "live", readTexts(t, c, sent[len(sent)-1]), sent)
	if n := e.fe.liveWrites.Load(); n == 0 {
		t.Fatal("no message went out from the live path")
	}
	last := streamLast(t, e)
	jstest.WaitForNil(t, 10*time.Second, func() error {
		cs := sessionRecord(t, e, k.ID, "S")
		if cs.Cursor != last {
			return fmt.Errorf("cursor %d, want the stream's last %d", cs.Cursor, last)
		}
		if cs.LiveRun != l.run || cs.LiveThrough == 0 || cs.LiveThrough > nums[len(nums)-1] {
			return fmt.Errorf("live mark %s.%d, want %s.<= %d", cs.LiveRun, cs.LiveThrough, l.run, nums[len(nums)-1])
		}
		return nil
	})
	// Nothing more comes: the stream's copies were not written again.
	next, _, _ := publishStreamsNumbered(l, "b", 1)
	sameTexts(t, "then", readTexts(t, c, next[0]), next)
}

// TestWSLiveRepeatAndGap: a retried publish reaches the live path twice
// (the stream keeps one), and a message that lands on the bus after the
// one numbered behind it leaves a gap the live path does not fill; the
// client gets each message once, and live delivery resumes after.
func TestWSLiveRepeatAndGap(t *testing.T) {
	_, _, l, c := liveSocket(t, nil)
	first, _, _ := publishStreamsNumbered(l, "a", 3)

	msg := func(text string) *nats.Msg {
		cont, _ := json.Marshal(map[string]string{"name": "stdout", "text": text})
		m, _ := l.message("iopub", "stream", "", nil, string(cont), nil)
		return m
	}
	l.pubMu.Lock()
	// The last one again, as nats.go or the launcher resends it.
	again := msg("a-2")
	l.publishAs(again, l.next)
	// Then two, the second landing first.
	n := l.next
	l.publishAs(msg("gap-2"), n+2)
	l.publishAs(msg("gap-1"), n+1)
	l.next = n + 2
	l.pubMu.Unlock()
	after, _, _ := publishStreamsNumbered(l, "b", 20)

	got := readTexts(t, c, after[len(after)-1])
	want := append(append(first, "gap-1", "gap-2"), after...)
	if len(got) != len(want) {
		t.Fatalf("got %d messages %v, want %d %v", len(got), got, len(want), want)
	}
	seen := map[string]int{}
	for _, s := range got {
		seen[s]++
	}
	for _, s := range want {
		if seen[s] != 1 {
			t.Fatalf("%s came %d times: %v", s, seen[s], got)
		}
	}
	// a-*, then the gap pair in either order, then b-* in order.
	sameTexts(t, "before the gap", got[:3], first)
	sameTexts(t, "after the gap", got[5:], after)
}

// TestWSLiveResume: a record whose cursor is behind messages written live
// (a front-end killed before their stream copies came) resumes after the
// live mark without resume_after, and with resume_after from right after
// the client's last message, whether that lies at or before the live mark
// or inside a live write under way.
func TestWSLiveResume(t *testing.T) {
	skipStreamOnly(t)
	e := newEnv(t, Config{FrontendID: "fe1"})
	k := e.startKernel()
	l := e.worker.launcher(k.ID)
	sessions := []string{"stock", "behind", "inflight"}
	var clients []*wsClient
	for _, s := range sessions {
		clients = append(clients, e.dial(k.ID, s, true))
	}
	before := streamLast(t, e)
	sent, ids, nums := publishStreamsNumbered(l, "a", 8)
	for _, c := range clients {
		sameTexts(t, c.session, readTexts(t, c, sent[7]), sent)
		closeWS(t, e, c, k.ID)
	}
	// The records as a front-end killed after writing a-0..a-5 live
	// leaves them: no stream copy came, the live mark is at a-5 (and, for
	// "inflight", a write of a-6 and a-7 was under way).
	rewrite := func(session string, inFlight uint64) {
		cs := sessionRecord(t, e, k.ID, session)
		cs.Cursor, cs.ReplayFrom, cs.InFlight = before, 0, 0
		cs.LiveRun, cs.LiveThrough, cs.LiveInFlight = l.run, nums[5], inFlight
		data, _ := json.Marshal(cs)
		if _, err := e.bus.Sessions.Put(context.Background(), sessionKVKey(k.ID, session), data); err != nil {
			t.Fatal(err)
		}
	}
	rewrite("stock", 0)
	rewrite("behind", 0)
	rewrite("inflight", nums[7])
	more, _, _ := publishStreamsNumbered(l, "b", 2)

	c := e.dial(k.ID, "stock", true)
	sameTexts(t, "stock client", readTexts(t, c, more[1]), append(sent[6:], more...))
	// The client received up to a-3 only: a-4 and on again.
	c = e.dialResume(k.ID, "behind", ids[3], true)
	sameTexts(t, "resume_after at or before the live mark", readTexts(t, c, more[1]), append(sent[4:], more...))
	// The write of a-6, a-7 reached the client: neither again.
	c = e.dialResume(k.ID, "inflight", ids[7], true)
	sameTexts(t, "resume_after inside the live write under way", readTexts(t, c, more[1]), more)
	for _, s := range sessions {
		if cs := sessionRecord(t, e, k.ID, s); cs.LiveRun == "" {
			t.Fatalf("%s: the record lost its live mark: %+v", s, cs)
		}
	}
}

// TestWSLiveSlowClient: a client that stops reading while a kernel floods
// output fills its socket and queue; the live subscription then drops
// what it cannot hold (its queue is bounded, not nats.go's 64 MiB), and
// the stream delivers those. The client still gets every message once and
// in order.
func TestWSLiveSlowClient(t *testing.T) {
	e, _, l, c := liveSocket(t, func(e *testEnv) { e.fe.livePending = [2]int{16, 256 << 10} })
	// 400 × 64 KiB: more than the socket buffers, the writer's queue
	// and the subscription's queue hold while the client reads nothing.
	const n = 400
	pad := strings.Repeat("x", 64<<10)
	var want []string
	for i := range n {
		text := fmt.Sprintf("m-%d", i)
		cont, _ := json.Marshal(map[string]string{"name": "stdout", "text": text + "|" + pad})
		m, _ := l.message("iopub", "stream", "", nil, string(cont), nil)
		l.publishBus(m)
		want = append(want, text)
	}
	var got []string
	for len(got) < n {
		m := c.mustRead()
		if m.MsgType != "stream" {
			continue
		}
		var s struct{ Text string }
		_ = json.Unmarshal(m.Content, &s)
		text, _, _ := strings.Cut(s.Text, "|")
		got = append(got, text)
	}
	sameTexts(t, "slow client", got, want)
	c.c.Close()
	jstest.WaitForNil(t, 10*time.Second, func() error {
		if e.fe.liveDropped.Load() == 0 {
			return errors.New("the live subscription dropped nothing: its queue is not bounded")
		}
		return nil
	})
	t.Logf("live writes %d, dropped %d", e.fe.liveWrites.Load(), e.fe.liveDropped.Load())
}

// TestWSLiveLargeOutput: output larger than broker.LiveMax (whole, or in
// chunks over max_payload) goes on the kernel's large-output subject,
// which live subscriptions do not see: the stream delivers it, in its
// place among the small messages around it, each once.
func TestWSLiveLargeOutput(t *testing.T) {
	e, k, l, c := liveSocket(t, nil)
	// What a live subscription receives: the small messages only.
	var liveMu sync.Mutex
	var liveSeen, liveLargest int
	var liveChunked bool
	obs, err := e.bus.NC.Subscribe(broker.SubjectOutLive(k.ID), func(m *nats.Msg) {
		liveMu.Lock()
		defer liveMu.Unlock()
		liveSeen++
		liveLargest = max(liveLargest, len(m.Data))
		liveChunked = liveChunked || m.Header.Get(broker.HeaderChunk) != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = obs.Unsubscribe() }()
	if err := e.bus.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	var want []string
	small := func(prefix string) {
		sent, _, _ := publishStreamsNumbered(l, prefix, 5)
		want = append(want, sent...)
	}
	large := func(text string, size int) {
		cont, _ := json.Marshal(map[string]string{"name": "stdout", "text": text + "|" + strings.Repeat("x", size)})
		m, _ := l.message("iopub", "stream", "", nil, string(cont), nil)
		l.publishBus(m)
		want = append(want, text)
	}
	small("a")
	large("whole", 2<<20) // over LiveMax, under max_payload
	small("b")
	large("chunked", int(e.bus.NC.MaxPayload())+(1<<20))
	small("c")
	got := readTexts(t, c, want[len(want)-1])
	for i := range got {
		got[i], _, _ = strings.Cut(got[i], "|")
	}
	sameTexts(t, "small and large output", got, want)
	for _, subj := range []string{broker.SubjectOutLarge(k.ID, "iopub"), broker.SubjectOut(k.ID, "iopub")} {
		if _, err := e.fe.ioStream.GetLastMsgForSubject(context.Background(), subj); err != nil {
			t.Fatalf("nothing stored on %s: %v", subj, err)
		}
	}
	jstest.WaitForNil(t, 10*time.Second, func() error {
		liveMu.Lock()
		defer liveMu.Unlock()
		if liveChunked || liveLargest > broker.LiveMax {
			return fmt.Errorf("the live subject carried large output: largest %d bytes, chunked %v", liveLargest, liveChunked)
		}
		if liveSeen < 15 {
			return fmt.Errorf("the live subject carried %d messages, want the 15 small ones", liveSeen)
		}
		return nil
	})
	// Which path writes a message after the large ones is a race the
	// live path may lose; either way each comes once, in order.
	after, _, _ := publishStreamsNumbered(l, "d", 20)
	sameTexts(t, "after the large output", readTexts(t, c, after[len(after)-1]), after)
}

// TestWSLiveConnCut: live subscriptions use a NATS connection of their
// own, not the bus's. When that connection is gone (the server cut it
// off as a slow consumer, say) while two kernels send output, only live
// delivery stops: the bus's connection stays up, and both sockets get
// every message from the stream, once and in order; a socket opened
// after it still works, from the stream only.
func TestWSLiveConnCut(t *testing.T) {
	e, _, la, ca := liveSocket(t, nil)
	kb := e.startKernel()
	lb := e.worker.launcher(kb.ID)
	cb := e.dial(kb.ID, "S", true)
	if e.fe.liveNC == nil || e.fe.liveNC == e.bus.NC {
		t.Fatal("live output does not have a connection of its own")
	}
	jstest.WaitFor(t, 10*time.Second, "both sockets on a live subscription", func() bool {
		return e.fe.hub.liveSubs() == 2
	})
	before, _, _ := publishStreamsNumbered(la, "before", 20)
	sameTexts(t, "A before the cut", readTexts(t, ca, before[len(before)-1]), before)

	e.fe.liveNC.Close()
	writes, gets := e.fe.liveWrites.Load(), e.fe.bodyGets.Load()
	var wantA, wantB []string
	for i := range 10 {
		a, _, _ := publishStreamsNumbered(la, fmt.Sprintf("a%d", i), 30)
		b, _, _ := publishStreamsNumbered(lb, fmt.Sprintf("b%d", i), 3)
		wantA, wantB = append(wantA, a...), append(wantB, b...)
	}
	sameTexts(t, "B after the cut", readTexts(t, cb, wantB[len(wantB)-1]), wantB)
	sameTexts(t, "A after the cut", readTexts(t, ca, wantA[len(wantA)-1]), wantA)
	if !e.bus.NC.IsConnected() {
		t.Fatal("the bus's connection went down with the live one")
	}
	if n := e.fe.liveWrites.Load(); n != writes {
		t.Fatalf("%d messages went out live on a closed connection", n-writes)
	}
	// Sockets whose consumers read headers only: with live output gone,
	// every body came from the stream by sequence.
	if n := e.fe.bodyGets.Load() - gets; e.fe.cfg.HeadersOnlyOutput && n < int64(len(wantA)+len(wantB)) {
		t.Fatalf("%d bodies fetched for %d messages delivered from the stream", n, len(wantA)+len(wantB))
	}
	c2 := e.dial(kb.ID, "S2", true)
	more, _, _ := publishStreamsNumbered(lb, "more", 5)
	sameTexts(t, "a socket opened after the cut", readTexts(t, c2, more[len(more)-1]), more)
}

// TestWSLiveShared: a kernel's live sockets on one front-end share one
// live subscription, so the server sends the front-end one copy of each
// message however many sockets show it; every socket still gets every
// message once and in order, and the subscription ends with the last
// socket.
func TestWSLiveShared(t *testing.T) {
	e, k, l, c0 := liveSocket(t, nil)
	clients := []*wsClient{c0}
	for i := range 4 {
		clients = append(clients, e.dial(k.ID, fmt.Sprintf("S%d", i), true))
	}
	jstest.WaitForNil(t, 10*time.Second, func() error {
		e.fe.hub.liveMu.Lock()
		kl := e.fe.hub.live[k.ID]
		e.fe.hub.liveMu.Unlock()
		if n := e.fe.hub.liveSubs(); n != 1 || kl == nil {
			return fmt.Errorf("%d live subscriptions for one kernel's sockets, want 1", n)
		}
		kl.mu.RLock()
		defer kl.mu.RUnlock()
		if len(kl.conns) != len(clients) {
			return fmt.Errorf("%d sockets on the live subscription, want %d", len(kl.conns), len(clients))
		}
		return nil
	})
	in := e.fe.liveNC.Stats().InMsgs
	const n = 200
	sent, _, _ := publishStreamsNumbered(l, "a", n)
	for _, c := range clients {
		sameTexts(t, c.session, readTexts(t, c, sent[n-1]), sent)
	}
	if got := e.fe.liveNC.Stats().InMsgs - in; got != n {
		t.Fatalf("the live connection received %d messages for %d published to 5 sockets, want %d", got, n, n)
	}
	if e.fe.liveWrites.Load() <= n {
		t.Fatalf("only %d live writes for %d messages to 5 sockets", e.fe.liveWrites.Load(), n)
	}
	for _, c := range clients[1:] {
		closeWS(t, e, c, k.ID)
	}
	if n := e.fe.hub.liveSubs(); n != 1 {
		t.Fatalf("%d live subscriptions with one socket left, want 1", n)
	}
	more, _, _ := publishStreamsNumbered(l, "b", 10)
	sameTexts(t, "the last socket", readTexts(t, c0, more[len(more)-1]), more)
	closeWS(t, e, c0, k.ID)
	jstest.WaitFor(t, 10*time.Second, "the live subscription ends with the last socket", func() bool { return e.fe.hub.liveSubs() == 0 })
}
