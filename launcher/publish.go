package launcher

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// publisher is the one goroutine that publishes kernel output. One
// goroutine keeps the order of each subject and the chunks of a large
// message contiguous; JetStream acks are checked asynchronously (the error
// handler), and in-flight publishes are bounded by the async max pending.
type publisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	log  zerolog.Logger
	in   chan *nats.Msg
	stop chan struct{} // drain what is queued, then return
	quit chan struct{} // give up on retries: the launcher is leaving
	done chan struct{}
	// chunkAt is the body size above which a message is chunked.
	chunkAt int

	errs     atomic.Int64 // ack errors since the last log line
	lastLog  atomic.Int64
	quitOnce sync.Once
}

// maxPendingAcks bounds unacknowledged async publishes.
const maxPendingAcks = 4096

func newPublisher(nc *nats.Conn, log zerolog.Logger) (*publisher, error) {
	p := &publisher{nc: nc, log: log, in: make(chan *nats.Msg, 1024),
		stop: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(maxPendingAcks),
		// A lost ack (bus outage) must not hold a pending slot forever.
		jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.ackError(m, err)
		}))
	if err != nil {
		return nil, err
	}
	p.js = js
	p.chunkAt = int(nc.MaxPayload()) - 8<<10
	return p, nil
}

func (p *publisher) run() {
	defer close(p.done)
	for {
		select {
		case m := <-p.in:
			p.publish(m)
		case <-p.stop:
			for {
				select {
				case m := <-p.in:
					p.publish(m)
				default:
					return
				}
			}
		}
	}
}

func (p *publisher) publish(m *nats.Msg) {
	chunked := len(m.Data) > p.chunkAt
	if chunked {
		// Let every pending ack come back first: then all chunks fit under
		// the pending limit and no chunk can stall half way, which would
		// leave a torn message on the subject.
		select {
		case <-p.js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
		case <-p.quit:
		}
	}
	for attempt := 0; ; attempt++ {
		fs, err := kbjs.PublishAsync(p.nc, p.js, m)
		if err == nil {
			return
		}
		retry := len(fs) == 0 && (errors.Is(err, jetstream.ErrTooManyStalledMsgs) || errors.Is(err, nats.ErrReconnectBufExceeded))
		if !retry {
			p.log.Error().Err(err).Str("subject", m.Subject).Int("bytes", len(m.Data)).Msg("publish kernel output")
			return
		}
		// The bus is slow or away: hold the kernel's output back rather
		// than drop it. Stalls already waited; the reconnect buffer needs
		// a moment to drain.
		if attempt%50 == 49 {
			p.log.Warn().Err(err).Int("attempts", attempt+1).Msg("kernel output waits for the bus")
		}
		select {
		case <-p.quit:
			p.log.Error().Err(err).Str("subject", m.Subject).Msg("kernel output dropped on exit")
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ackError logs failed acks, at most once a second with a count, since a
// misconfigured stream fails every message.
func (p *publisher) ackError(m *nats.Msg, err error) {
	n := p.errs.Add(1)
	now := time.Now().UnixNano()
	last := p.lastLog.Load()
	if now-last < int64(time.Second) || !p.lastLog.CompareAndSwap(last, now) {
		return
	}
	p.errs.Add(-n)
	p.log.Error().Err(err).Str("subject", m.Subject).Int64("failed", n).Msg("kernel output not acknowledged by the bus")
}

// close publishes what is queued and waits up to grace for the acks.
func (p *publisher) close(grace time.Duration) {
	deadline := time.Now().Add(grace)
	close(p.stop)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.quitOnce.Do(func() { close(p.quit) })
		<-p.done
	}
	wait := max(time.Until(deadline), 100*time.Millisecond)
	select {
	case <-p.js.PublishAsyncComplete():
	case <-time.After(wait):
		p.log.Warn().Int("pending", p.js.PublishAsyncPending()).Msg("exit with kernel output not yet acknowledged")
	}
	p.quitOnce.Do(func() { close(p.quit) })
}
