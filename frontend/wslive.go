package frontend

// Live output (the default; Config.NoLiveOutput turns it off): a core NATS
// subscription on the kernel's output subjects (all but large output,
// broker.SubjectOutLarge) sees each message as the launcher publishes it,
// before the stream has stored it and a consumer has pulled it. The
// launcher numbers its bus messages (Nats-Msg-Id "<run>.<n>"), so the
// connection writes a live message only when it is the next of the run it
// last handled; anything else (a gap after a dropped core message or a
// reconnect, a repeat of a retried publish, large output, a new launcher run) is
// left to the stream consumer, which still delivers everything: a stream
// copy of a message already written live only moves the cursor, any other
// is written as before. Whichever path handles a number first writes it,
// so each message is written once and in the launcher's order, and after
// a gap delivery switches back to live by itself once the stream has
// caught up. The session record carries the last number written live
// (LiveThrough), so a front-end that takes over skips those too.

import (
	"strconv"
	"strings"
	"sync"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The live subscription's queue of messages not yet handled: beyond it
// nats.go drops (a slow consumer), and the stream consumer delivers them.
const (
	livePendingMsgs  = 1024
	livePendingBytes = 4 << 20
)

// liveKey names one bus message of a launcher run.
type liveKey struct {
	run string
	n   uint64
}

// launchID reads the launcher's number of a bus message from its
// Nats-Msg-Id: "<run>.<n>", or "<run>.<n>/<i>" for chunk i (chunk true).
func launchID(h nats.Header) (run string, n uint64, chunk, ok bool) {
	id := h.Get(jetstream.MsgIDHeader)
	if slash := strings.IndexByte(id, '/'); slash >= 0 {
		id, chunk = id[:slash], true
	}
	dot := strings.LastIndexByte(id, '.')
	if dot <= 0 {
		return "", 0, false, false
	}
	n, err := strconv.ParseUint(id[dot+1:], 10, 64)
	if err != nil || n == 0 {
		return "", 0, false, false
	}
	return id[:dot], n, chunk, true
}

// deliverLive is the live subscription's handler: a message that is the
// next of the current run is written now; any other is dropped here and
// comes from the stream.
func (c *conn) deliverLive(m *nats.Msg) {
	run, n, chunk, ok := launchID(m.Header)
	c.omu.Lock()
	defer c.omu.Unlock()
	c.mu.Lock()
	if !ok || chunk || m.Header.Get(broker.HeaderChunk) != "" {
		// Not one the live path writes (a chunk, or a message the
		// launcher did not number): what follows it waits until the
		// stream has delivered it.
		c.liveRun, c.liveNext = "", 0
		c.mu.Unlock()
		return
	}
	if c.finished || c.broken || c.seekID != "" || c.liveRun == "" || run != c.liveRun || n != c.liveNext || len(c.liveHoles) > 0 ||
		run == c.recRun && n <= c.recThrough { // a resend of one written before a reconnect
		c.mu.Unlock()
		return
	}
	frames := [][]byte{m.Data}
	if nb := m.Header.Get(broker.HeaderBatch); nb != "" {
		k, _ := strconv.Atoi(nb)
		var err error
		if frames, err = broker.SplitBatch(m.Data, k); err != nil {
			c.mu.Unlock()
			return // the stream copy is dropped the same way
		}
	}
	c.liveNext = n + 1
	c.s.liveWrites.Add(1)
	if c.liveWritten == nil {
		c.liveWritten = map[liveKey]struct{}{}
	}
	c.liveWritten[liveKey{run, n}] = struct{}{}
	items := make([]outItem, 0, len(frames))
	for i, f := range frames {
		it := outItem{data: f, h: m.Header, subject: m.Subject, last: i == len(frames)-1, run: run, num: n, live: true}
		it.write = c.routed(m.Header, m.Subject)
		items = append(items, it)
	}
	c.qmu.Lock()
	c.pending += len(items)
	c.qmu.Unlock()
	c.mu.Unlock()
	c.enqueue(items)
}

// placeStream is the stream side of live delivery, for the items of one
// whole bus message: a copy of a message written live only moves the
// cursor; otherwise the run's next expected number moves past it. mu is
// held.
func (c *conn) placeStream(h nats.Header, items []outItem) {
	run, n, _, ok := launchID(h)
	if !ok {
		// Unnumbered: nothing goes live until a numbered message came.
		c.liveRun, c.liveNext = "", 0
		return
	}
	k := liveKey{run, n}
	if _, done := c.liveWritten[k]; done {
		delete(c.liveWritten, k)
		for i := range items {
			items[i].write = false
		}
	}
	switch {
	case run != c.liveRun && run != c.holesRun:
		// A new run (or the first message): it starts here.
		c.liveRun, c.liveNext = run, n+1
		clear(c.liveHoles)
		c.holesRun = run
	case run != c.liveRun:
		// The live path let go of the run (a chunk came live); the
		// numbers still missing stay missing.
		c.liveRun, c.liveNext = run, max(n+1, c.liveNext)
	case n > c.liveNext:
		// The stream holds this number before lower ones neither path
		// has handled (a retried publish landed late): they are holes,
		// and live delivery waits until the stream has filled them, or
		// a later number would be written before them. A jump wider
		// than maxLiveHoles is a loss (messages discarded, a publish
		// given up), not a reordering.
		if n-c.liveNext <= maxLiveHoles {
			if c.liveHoles == nil {
				c.liveHoles = map[uint64]struct{}{}
			}
			for m := c.liveNext; m < n; m++ {
				c.liveHoles[m] = struct{}{}
			}
		}
		c.liveNext = n + 1
	case n == c.liveNext:
		c.liveNext = n + 1
	default:
		delete(c.liveHoles, n)
	}
	// Holes the stream has moved far past are losses too.
	if len(c.liveHoles) > 0 && c.liveNext > maxLiveHoles {
		for m := range c.liveHoles {
			if m < c.liveNext-maxLiveHoles {
				delete(c.liveHoles, m)
			}
		}
	}
}

// maxLiveHoles bounds how far the stream may hold a launcher's numbers
// out of order (retried publishes in flight together) for live delivery
// to wait for the missing ones.
const maxLiveHoles = 1024

// writtenLive reports whether the record this connection resumed from
// says the message was written from the live path. mu is held.
func (c *conn) writtenLive(it outItem) bool {
	return it.run != "" && it.run == c.recRun && it.num > 0 && it.num <= c.recThrough
}

// kernelLive is this front-end's one live subscription to a kernel's
// output, shared by the kernel's live sockets here: the server sends the
// front-end one copy of each message however many sockets show it. The
// subscription's handler hands each message to every socket's own
// bounded queue without waiting (offerLive), so a slow socket drops its
// share (the stream delivers it) and holds up neither the others nor the
// connection.
type kernelLive struct {
	sub   *nats.Subscription
	mu    sync.RWMutex
	conns map[*conn]struct{}
}

// joinLive adds c to its kernel's live subscription, subscribing on the
// live connection for the kernel's first socket.
func (h *hub) joinLive(c *conn) (*kernelLive, error) {
	h.liveMu.Lock()
	defer h.liveMu.Unlock()
	kl := h.live[c.kernel]
	if kl == nil {
		kl = &kernelLive{conns: map[*conn]struct{}{}}
		sub, err := h.s.liveNC.Subscribe(broker.SubjectOutLive(c.kernel), kl.fanOut)
		if err != nil {
			return nil, err
		}
		// Bounded like one socket's queue: nats.go's default holds up to
		// 64 MiB. The handler never waits, so this fills only when the
		// front-end itself falls behind.
		if err := sub.SetPendingLimits(h.s.livePending[0], h.s.livePending[1]); err != nil {
			_ = sub.Unsubscribe()
			return nil, err
		}
		kl.sub = sub
		h.live[c.kernel] = kl
	}
	kl.mu.Lock()
	kl.conns[c] = struct{}{}
	kl.mu.Unlock()
	return kl, nil
}

// leaveLive removes c from its kernel's live subscription and drops the
// subscription with the kernel's last socket.
func (h *hub) leaveLive(c *conn, kl *kernelLive) {
	h.liveMu.Lock()
	defer h.liveMu.Unlock()
	kl.mu.Lock()
	delete(kl.conns, c)
	left := len(kl.conns)
	kl.mu.Unlock()
	if left > 0 || h.live[c.kernel] != kl {
		return
	}
	delete(h.live, c.kernel)
	if n, err := kl.sub.Dropped(); err == nil {
		h.s.liveDropped.Add(int64(n))
	}
	_ = kl.sub.Unsubscribe()
}

// liveSubs is how many live subscriptions this front-end holds.
func (h *hub) liveSubs() int {
	h.liveMu.Lock()
	defer h.liveMu.Unlock()
	return len(h.live)
}

// fanOut is the shared subscription's handler.
func (kl *kernelLive) fanOut(m *nats.Msg) {
	kl.mu.RLock()
	defer kl.mu.RUnlock()
	for c := range kl.conns {
		c.offerLive(m)
	}
}

// offerLive queues m for c's live loop, unless c's live queue is full
// (livePending): then it is dropped here and the stream delivers it.
func (c *conn) offerLive(m *nats.Msg) {
	n := int64(len(m.Data))
	if c.liveBytes.Add(n) > int64(c.s.livePending[1]) {
		c.liveBytes.Add(-n)
		c.s.liveDropped.Add(1)
		return
	}
	select {
	case c.liveIn <- m:
	default:
		c.liveBytes.Add(-n)
		c.s.liveDropped.Add(1)
	}
}

// liveLoop hands c's queued live messages to deliverLive until c ends.
func (c *conn) liveLoop() {
	for {
		select {
		case <-c.quit:
			return
		case m := <-c.liveIn:
			c.liveBytes.Add(-int64(len(m.Data)))
			c.deliverLive(m)
		}
	}
}
