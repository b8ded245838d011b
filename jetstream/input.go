package jetstream

// The launcher's side of the kernel relay: client input pulled from the
// kernel's input consumer, which a worker created.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
)

// Input pulls: a pull waits up to inputPullWait for a message, and the
// server sends a heartbeat every inputPullHeartbeat while it waits, so a
// pull lost to a bus restart or a leader change is noticed and made again
// within about two heartbeats. A pull before the consumer exists (the
// worker creates it while the launcher starts) is tried again after
// inputRetryMin, doubling up to inputRetryMax.
var (
	inputPullWait      = 20 * time.Second
	inputPullHeartbeat = 5 * time.Second
	inputRetryMin      = 10 * time.Millisecond
	inputRetryMax      = time.Second
	// inputQuiet is how long a missing consumer is not reported: the
	// worker may still be creating it.
	inputQuiet = 30 * time.Second
)

// Consumption is a running pull of a kernel's input.
type Consumption struct {
	stop   context.CancelFunc
	closed chan struct{}
}

// Stop ends the pull; a delivery in progress may still finish.
func (c *Consumption) Stop() { c.stop() }

// Closed is closed once the pull has ended.
func (c *Consumption) Closed() <-chan struct{} { return c.closed }

// ConsumeInput delivers the kernel's client messages to fn, each once, in
// order, from two copies of each: the live one, a core NATS subscription
// on kb.io.<id>.in that sees a front-end's publish as the stream stores
// it, and the stored one, from the input consumer. The live copy is
// delivered when it is the next number (broker.HeaderInSeq) of a sender
// whose previous message was delivered, and whose msg_id was not among
// the last ones delivered; anything else (a sender's first message, a
// gap, a chunk, an unnumbered message) waits for its stored copy, and a
// stored copy that was delivered live is only acked. A sender's first
// message therefore comes in stream order, after everything stored before
// it, which keeps a client's order across a reconnect to another
// front-end. The consumer has one message in flight at a time and
// redelivers one whose ack was lost, so a stream sequence seen before is
// acked and dropped. A message is acked once fn returns. Malformed
// messages, and messages on channels clients may not use, are dropped and
// reported to drop, and so are the pull errors it recovers from. fn is
// never called concurrently.
//
// It binds the consumer by name without asking the server about it (a
// lookup is one more JetStream API call per start, which queues behind
// every other start's consumer creation): the worker creates it with
// EnsureInput, a pull consumer of all of kb.io.<id>.in, and until it
// exists pulls are tried again. Input sent before then is not lost: the
// consumer delivers everything the stream holds for the kernel.
func (l *KernelLink) ConsumeInput(ctx context.Context, fn func(InputMsg), drop func(error)) (*Consumption, error) {
	js, err := l.NC.JetStream()
	if err != nil {
		return nil, err
	}
	sub, err := js.PullSubscribe(broker.SubjectIn(l.ID), "", nats.Bind(broker.StreamIO, broker.InputConsumer(l.ID)),
		nats.SkipConsumerLookup(), nats.ManualAck())
	if err != nil {
		return nil, fmt.Errorf("input of %s: %w", l.ID, err)
	}
	o := &inputOrder{l: l, fn: fn, drop: drop}
	// Credentials minted before live input cannot subscribe: the server
	// refuses it asynchronously and the stream delivers all. Unnumbered
	// input (a front-end with live input off) takes the stream too.
	live, err := l.NC.Subscribe(broker.SubjectIn(l.ID), o.live)
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("live input of %s: %w", l.ID, err)
	}
	pctx, stop := context.WithCancel(context.Background())
	c := &Consumption{stop: stop, closed: make(chan struct{})}
	go func() {
		defer close(c.closed)
		defer func() { _ = sub.Unsubscribe() }()
		defer func() { _ = live.Unsubscribe() }()
		l.pullInput(pctx, sub, o)
	}()
	return c, nil
}

func (l *KernelLink) pullInput(ctx context.Context, sub *nats.Subscription, o *inputOrder) {
	began := time.Now()
	wait := inputRetryMin
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, inputPullWait)
		msgs, err := sub.Fetch(1, nats.Context(fctx), nats.PullHeartbeat(inputPullHeartbeat))
		cancel()
		switch {
		case ctx.Err() != nil || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription):
			return
		case err == nil:
			wait = inputRetryMin
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
			// An empty pull: pull again.
			wait = inputRetryMin
			continue
		default:
			// No consumer yet (no responders, not found), a bus outage or
			// a pull the server ended (leader change, heartbeats missed).
			missing := errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConsumerNotFound)
			if !missing || time.Since(began) > inputQuiet {
				o.drop(fmt.Errorf("input consumer: %w", err))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, inputRetryMax)
			continue
		}
		for _, m := range msgs {
			o.stored(m)
			_ = m.Ack()
		}
	}
}

// Live input's bounds: the senders (websocket connections) whose numbers
// are kept, and the msg_ids remembered to drop a live copy of a message
// sent again (the stream drops its stored copy as a duplicate).
const (
	maxInputSenders = 256
	recentInputIDs  = 1024
)

// inputOrder merges the live and stored copies of a kernel's input (see
// ConsumeInput). Both paths hold mu while they decide and deliver.
type inputOrder struct {
	l    *KernelLink
	fn   func(InputMsg)
	drop func(error)

	mu      sync.Mutex
	last    uint64 // stream sequence of the last stored copy handled
	re      Reassembler
	senders map[string]*inputSender
	recent  map[string]struct{}
	ring    [recentInputIDs]string
	pos     int
	tick    uint64
}

// inputSender is one sender's numbers: the last handled (live or stored)
// and the last whose stored copy came; used orders evictions.
type inputSender struct {
	last, stored, used uint64
}

// parseInSeq reads broker.HeaderInSeq.
func parseInSeq(h nats.Header) (string, uint64, bool) {
	v := h.Get(broker.HeaderInSeq)
	i := strings.LastIndexByte(v, '.')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(v[i+1:], 10, 64)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return v[:i], n, true
}

// live is the core subscription's handler.
func (o *inputOrder) live(m *nats.Msg) {
	if m.Header.Get(broker.HeaderChunk) != "" {
		return
	}
	sender, n, ok := parseInSeq(m.Header)
	if !ok {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.senders[sender]
	if s == nil || n != s.last+1 {
		return
	}
	id := m.Header.Get(broker.HeaderMsgID)
	if _, again := o.recent[id]; again && id != "" {
		return
	}
	s.last = n
	o.tick++
	s.used = o.tick
	o.deliver(m, id, true)
}

// stored handles a message from the input consumer.
func (o *inputOrder) stored(m *nats.Msg) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if md, err := m.Metadata(); err == nil {
		if md.Sequence.Stream <= o.last {
			return
		}
		o.last = md.Sequence.Stream
	}
	sender, n, numbered := parseInSeq(m.Header)
	var s *inputSender
	if numbered {
		s = o.sender(sender)
		if s != nil {
			s.stored = max(s.stored, n)
			if n <= s.last {
				return // delivered live
			}
		}
	}
	if o.deliver(m, m.Header.Get(broker.HeaderMsgID), false) && s != nil {
		s.last = n
	}
}

// sender returns the numbers of sender, adding them if there is room: a
// sender whose every live delivery has had its stored copy can be
// forgotten (its next message then waits for the stream), the least
// recently used first. With no room, nil: that sender's input comes from
// the stream only.
func (o *inputOrder) sender(name string) *inputSender {
	if s := o.senders[name]; s != nil {
		o.tick++
		s.used = o.tick
		return s
	}
	if o.senders == nil {
		o.senders = make(map[string]*inputSender)
	}
	if len(o.senders) >= maxInputSenders {
		victim, oldest := "", uint64(0)
		for k, s := range o.senders {
			if s.stored >= s.last && (victim == "" || s.used < oldest) {
				victim, oldest = k, s.used
			}
		}
		if victim == "" {
			return nil
		}
		delete(o.senders, victim)
	}
	o.tick++
	s := &inputSender{used: o.tick}
	o.senders[name] = s
	return s
}

// deliver reassembles, decodes and checks one input message and hands it
// to fn; it reports whether m ended a message (delivered or dropped).
func (o *inputOrder) deliver(m *nats.Msg, msgID string, live bool) bool {
	hdr := m.Header
	data, ok, err := o.re.Feed(m)
	if err != nil {
		o.drop(fmt.Errorf("bad chunk: %w", err))
		return false
	}
	if !ok {
		return false
	}
	if msgID != "" {
		if o.recent == nil {
			o.recent = make(map[string]struct{}, recentInputIDs)
		}
		delete(o.recent, o.ring[o.pos])
		o.ring[o.pos] = msgID
		o.recent[msgID] = struct{}{}
		o.pos = (o.pos + 1) % recentInputIDs
	}
	f, err := broker.DecodeV1(data)
	if err != nil {
		o.drop(err)
		return true
	}
	ch := f.Channel
	if ch == "" {
		ch = hdr.Get(broker.HeaderChannel)
	}
	if !broker.IsClientChannel(ch) {
		o.drop(fmt.Errorf("a message on channel %q, which clients may not use", ch))
		return true
	}
	o.fn(InputMsg{Channel: ch, Session: hdr.Get(broker.HeaderSession), MsgID: hdr.Get(broker.HeaderMsgID), Frame: f, Live: live})
	return true
}
