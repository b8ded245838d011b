package jetstream

// The launcher's side of the kernel relay: client input pulled from the
// kernel's input consumer, which a worker created.

import (
	"context"
	"errors"
	"fmt"
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
// order, from its input consumer: the consumer has one message in flight
// at a time and redelivers one whose ack was lost, so a stream sequence
// seen before is acked and dropped. A message is acked once fn returns.
// Malformed messages, and messages on channels clients may not use, are
// dropped and reported to drop, and so are the pull errors it recovers
// from.
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
	pctx, stop := context.WithCancel(context.Background())
	c := &Consumption{stop: stop, closed: make(chan struct{})}
	go func() {
		defer close(c.closed)
		defer func() { _ = sub.Unsubscribe() }()
		l.pullInput(pctx, sub, fn, drop)
	}()
	return c, nil
}

func (l *KernelLink) pullInput(ctx context.Context, sub *nats.Subscription, fn func(InputMsg), drop func(error)) {
	var last uint64
	var re Reassembler
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
				drop(fmt.Errorf("input consumer: %w", err))
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
			if md, err := m.Metadata(); err == nil {
				if md.Sequence.Stream <= last {
					_ = m.Ack()
					continue
				}
				last = md.Sequence.Stream
			}
			l.deliverInput(&re, m, fn, drop)
			_ = m.Ack()
		}
	}
}

// deliverInput reassembles, decodes and checks one input message and
// hands it to fn.
func (l *KernelLink) deliverInput(re *Reassembler, m *nats.Msg, fn func(InputMsg), drop func(error)) {
	hdr := m.Header
	data, ok, err := re.Feed(m)
	if err != nil {
		drop(fmt.Errorf("bad chunk: %w", err))
		return
	}
	if !ok {
		return
	}
	f, err := broker.DecodeV1(data)
	if err != nil {
		drop(err)
		return
	}
	ch := f.Channel
	if ch == "" {
		ch = hdr.Get(broker.HeaderChannel)
	}
	if !broker.IsClientChannel(ch) {
		drop(fmt.Errorf("a message on channel %q, which clients may not use", ch))
		return
	}
	fn(InputMsg{Channel: ch, Session: hdr.Get(broker.HeaderSession), MsgID: hdr.Get(broker.HeaderMsgID), Frame: f})
}
