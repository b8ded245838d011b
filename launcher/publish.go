package launcher

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"
)

// publisher is the one goroutine that publishes kernel output. One
// goroutine keeps the order of each subject and the chunks of a large
// message contiguous. Publishes are asynchronous, but none is forgotten
// until the stream has acknowledged it: every bus message stays in an
// ordered window until its ack, and when one fails (the stream's leader
// died with it in flight, no leader yet, the connection dropped) nothing
// new is sent until every publish in flight has resolved; then the ones
// that did not land are sent again, in their order, with the same
// Nats-Msg-Id, so the stream's duplicate window (KB_IO keeps 2 min) drops
// any that had landed after all. Retries go on, with backoff, until they
// land or the launcher leaves.
//
// Order: a resend lands after whatever was published behind the failed
// message and did land. To keep that from happening, nothing new is sent
// while the oldest publish in flight has waited longer than suspectAfter
// for its ack: a message lost to a dead leader is never acked, and a new
// leader (the only way a later publish could land) takes longer than that
// to be elected.
type publisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	log  zerolog.Logger
	in   chan *nats.Msg
	stop chan struct{} // publish what is queued, wait for its acks, then return
	quit chan struct{} // give up on retries: the launcher is leaving
	done chan struct{}
	// wake is poked by every ack and ack error.
	wake chan struct{}
	// failed is set by an ack error; the run goroutine clears it when it
	// recovers.
	failed atomic.Bool

	// run goroutine only
	runID  string // Nats-Msg-Id prefix of this launcher's output
	next   uint64 // Nats-Msg-Id counter
	window []*outEntry

	resent   atomic.Int64 // bus messages sent again, in all
	errs     atomic.Int64 // ack errors since the last log line
	lastLog  atomic.Int64
	quitOnce sync.Once
}

// outEntry is one bus message (a whole kernel message or one chunk) from
// its first publish until its ack.
type outEntry struct {
	m    *nats.Msg
	f    jetstream.PubAckFuture // nil when the publish call itself failed
	sent time.Time
	ok   bool  // acknowledged
	err  error // failed; resent by recover
}

const (
	// maxPendingAcks bounds unacknowledged publishes (the window).
	maxPendingAcks = 4096
	// ackTimeout fails a publish whose ack never came (it went to a
	// leader that died): it is resent, and deduplicated if it had landed.
	// Well inside KB_IO's 2 min duplicate window, and long enough that an
	// overloaded server's slow acks do not turn into resends that load it
	// more (seen at 5 s on a busy 2-core machine).
	ackTimeout = 10 * time.Second
	// suspectAfter: see publisher.
	suspectAfter = time.Second
	// resendMaxWait caps the backoff between resends.
	resendMaxWait = 2 * time.Second
)

// noRetry turns off nats.go's own resend on "no responders": it resends
// later on a timer, behind messages published since, which breaks order.
var noRetry = jetstream.WithRetryAttempts(0)

func newPublisher(nc *nats.Conn, log zerolog.Logger) (*publisher, error) {
	p := &publisher{nc: nc, log: log, in: make(chan *nats.Msg, 1024),
		stop: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{}),
		wake: make(chan struct{}, 1), runID: nuid.Next()}
	js, err := jetstream.New(nc,
		// Above the window, so a publish never stalls inside nats.go.
		jetstream.WithPublishAsyncMaxPending(maxPendingAcks+64),
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { p.poke() }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.failed.Store(true)
			p.poke()
			p.ackError(m, err)
		}))
	if err != nil {
		return nil, err
	}
	p.js = js
	return p, nil
}

func (p *publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run() {
	defer close(p.done)
	for {
		select {
		case m := <-p.in:
			p.publishQueued(m)
		case <-p.wake:
			p.reap()
			if p.failed.Load() && !p.recover() {
				p.dropWindow()
				return
			}
		case <-p.stop:
			for {
				select {
				case m := <-p.in:
					p.publishQueued(m)
					continue
				default:
				}
				break
			}
			if !p.settle() {
				p.dropWindow()
			}
			return
		}
	}
}

// batchMax bounds the body of one batch: well under any max_payload a
// bus would have, so a batch is never chunked.
const batchMax = 128 << 10

// publishQueued publishes m and, when more iopub output of the same
// subject is already queued behind it, that too, as one bus message
// (broker.HeaderBatch): a kernel printing fast costs the bus one store,
// ack and delivery per batch rather than per message. Nothing waits for a
// batch to fill: a lone message goes out alone, at once.
func (p *publisher) publishQueued(m *nats.Msg) {
	for m != nil {
		if !batchable(m) {
			p.publish(m)
			return
		}
		var next *nats.Msg
		batch := []*nats.Msg{m}
		size := 4 + len(m.Data)
	gather:
		for {
			select {
			case n := <-p.in:
				if batchable(n) && n.Subject == m.Subject && size+4+len(n.Data) <= batchMax {
					batch = append(batch, n)
					size += 4 + len(n.Data)
					continue
				}
				next = n
			default:
			}
			break gather
		}
		p.publish(mergeBatch(batch, size))
		m = next
	}
}

// batchable reports whether m may travel in a batch: iopub output (which
// every session receives, so no per-message session is needed), small
// and not already stamped.
func batchable(m *nats.Msg) bool {
	return len(m.Data) <= batchMax/4 && m.Header.Get(broker.HeaderChannel) == chIOPub &&
		m.Header.Get(jetstream.MsgIDHeader) == "" && m.Header.Get(broker.HeaderBatch) == ""
}

// mergeBatch makes one bus message of the kernel messages in batch.
func mergeBatch(batch []*nats.Msg, size int) *nats.Msg {
	if len(batch) == 1 {
		return batch[0]
	}
	body := make([]byte, 0, size)
	for _, m := range batch {
		body = broker.AppendBatch(body, m.Data)
	}
	return &nats.Msg{Subject: batch[0].Subject, Data: body, Header: nats.Header{
		broker.HeaderChannel: channelValue[chIOPub],
		broker.HeaderVersion: envelopeValue,
		broker.HeaderBatch:   {strconv.Itoa(len(batch))},
	}}
}

// publish sends m, stamped with this launcher's next Nats-Msg-Id, chunk
// by chunk, each once there is room in the window.
func (p *publisher) publish(m *nats.Msg) {
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	if m.Header.Get(jetstream.MsgIDHeader) == "" {
		p.next++
		m.Header.Set(jetstream.MsgIDHeader, p.runID+"."+strconv.FormatUint(p.next, 10))
	}
	for _, c := range kbjs.SplitOutput(p.nc, m) {
		if !p.room() {
			p.log.Error().Str("subject", m.Subject).Int("bytes", len(m.Data)).Msg("kernel output dropped on exit")
			return
		}
		e := &outEntry{m: c}
		p.send(e)
		p.window = append(p.window, e)
	}
}

func (p *publisher) send(e *outEntry) {
	e.ok, e.err, e.sent = false, nil, time.Now()
	f, err := p.js.PublishMsgAsync(e.m, noRetry)
	if err != nil {
		// Not sent at all (reconnect buffer full, connection closed):
		// the same path as a failed ack.
		e.f, e.err = nil, err
		p.failed.Store(true)
		return
	}
	e.f = f
}

// room waits until a new publish may go out: nothing failed (or it was
// resent), the window has space and its oldest publish is not suspect.
// It returns false when the launcher gives up (quit).
func (p *publisher) room() bool {
	for {
		p.reap()
		if p.failed.Load() {
			if !p.recover() {
				return false
			}
			continue
		}
		if len(p.window) < maxPendingAcks && (len(p.window) == 0 || time.Since(p.window[0].sent) < suspectAfter) {
			return true
		}
		wait := 50 * time.Millisecond
		if len(p.window) > 0 {
			wait = max(time.Millisecond, suspectAfter-time.Since(p.window[0].sent))
			wait = min(wait, 50*time.Millisecond)
		}
		select {
		case <-p.wake:
		case <-time.After(wait):
		case <-p.quit:
			return false
		}
	}
}

// poll records the outcome of e's publish if it is known.
func (e *outEntry) poll() {
	if e.ok || e.err != nil || e.f == nil {
		return
	}
	select {
	case <-e.f.Ok():
		e.ok = true
	case err := <-e.f.Err():
		e.err = err
	default:
	}
}

// reap forgets the acknowledged publishes at the head of the window.
func (p *publisher) reap() {
	n := 0
	for ; n < len(p.window); n++ {
		e := p.window[n]
		e.poll()
		if !e.ok {
			break
		}
	}
	if n > 0 {
		clear(p.window[:n])
		p.window = p.window[n:]
		if len(p.window) == 0 {
			p.window = nil
		}
	}
}

// recover waits until every publish in the window has resolved, then
// resends, in order, those that failed, with growing pauses while they
// keep failing. It returns false on quit.
func (p *publisher) recover() bool {
	wait := 100 * time.Millisecond
	for round := 1; ; round++ {
		for !p.settled() {
			select {
			case <-p.wake:
			case <-time.After(50 * time.Millisecond):
			case <-p.quit:
				return false
			}
		}
		p.failed.Store(false)
		p.reap()
		var resend []*outEntry
		landedAfter := false
		for _, e := range p.window {
			if !e.ok {
				resend = append(resend, e)
			} else if len(resend) > 0 {
				landedAfter = true
			}
		}
		if len(resend) == 0 {
			return true
		}
		if landedAfter {
			// Rare by construction (suspectAfter); say so if it happens.
			p.log.Warn().Msg("kernel output: a message landed on the bus ahead of an earlier one that is being resent")
		}
		if round == 1 || round%10 == 0 {
			p.log.Warn().Err(resend[0].err).Int("messages", len(resend)).Int("round", round).Msg("kernel output not acknowledged by the bus: resending in order")
		}
		select {
		case <-time.After(wait):
		case <-p.quit:
			return false
		}
		wait = min(2*wait, resendMaxWait)
		for _, e := range resend {
			p.send(e)
		}
		p.resent.Add(int64(len(resend)))
	}
}

// settled reports whether every publish in the window has an outcome.
func (p *publisher) settled() bool {
	for _, e := range p.window {
		e.poll()
		if !e.ok && e.err == nil && e.f != nil {
			return false
		}
	}
	return true
}

// settle waits, on stop, until the window is empty (resending what
// fails) or quit. It returns false on quit.
func (p *publisher) settle() bool {
	for {
		p.reap()
		if p.failed.Load() && !p.recover() {
			return false
		}
		if len(p.window) == 0 {
			return true
		}
		select {
		case <-p.wake:
		case <-time.After(50 * time.Millisecond):
		case <-p.quit:
			return false
		}
	}
}

func (p *publisher) dropWindow() {
	p.reap()
	if n := len(p.window); n > 0 {
		p.log.Warn().Int("pending", n).Msg("exit with kernel output not yet acknowledged")
	}
	p.window = nil
}

// ackError logs failed acks, at most once a second with a count: an
// outage fails every message in flight.
func (p *publisher) ackError(m *nats.Msg, err error) {
	n := p.errs.Add(1)
	now := time.Now().UnixNano()
	last := p.lastLog.Load()
	if now-last < int64(time.Second) || !p.lastLog.CompareAndSwap(last, now) {
		return
	}
	p.errs.Add(-n)
	lvl := p.log.Debug()
	if !errors.Is(err, jetstream.ErrAsyncPublishTimeout) && !errors.Is(err, nats.ErrDisconnected) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
		lvl = p.log.Warn()
	}
	lvl.Err(err).Str("subject", m.Subject).Int64("failed", n).Msg("kernel output not acknowledged by the bus (it will be resent)")
}

// close publishes what is queued and waits up to grace for its acks,
// resending what fails.
func (p *publisher) close(grace time.Duration) {
	close(p.stop)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.quitOnce.Do(func() { close(p.quit) })
		<-p.done
	}
	p.quitOnce.Do(func() { close(p.quit) })
}
