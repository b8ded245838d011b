package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KernelLink is a launcher's view of the bus: one kernel's record,
// activity, events and input, reached only through the calls that kernel's
// scoped credentials allow (access.LauncherTemplate). It never binds a
// stream or bucket (that takes a stream-info call, which could list every
// key) and never creates a consumer.
type KernelLink struct {
	NC *nats.Conn
	JS jetstream.JetStream
	ID string
}

// OpenKernel returns the link of kernel id over nc. nc should use
// access.InboxPrefix(id) as its inbox prefix, the only inboxes a launcher
// may subscribe to.
func OpenKernel(nc *nats.Conn, id string) (*KernelLink, error) {
	js, err := New(nc)
	if err != nil {
		return nil, err
	}
	return &KernelLink{NC: nc, JS: js, ID: id}, nil
}

const (
	kvOperationHeader = "KV-Operation"
	natsSequence      = "Nats-Sequence"
)

// GetKernel reads the kernel's record and its revision by a direct get of
// its key's last message. A missing or deleted record is
// broker.ErrKernelNotFound.
func (l *KernelLink) GetKernel(ctx context.Context) (*broker.Kernel, uint64, error) {
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	subj := "$JS.API.DIRECT.GET.KV_" + broker.BucketKernels + "." + kvKey(broker.BucketKernels, l.ID)
	resp, err := l.NC.RequestWithContext(ctx, subj, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("read kernel record %s: %w", l.ID, err)
	}
	if st := resp.Header.Get("Status"); st != "" {
		if st == "404" {
			return nil, 0, broker.Errorf(broker.ErrKernelNotFound, "Kernel does not exist: %s", l.ID)
		}
		return nil, 0, fmt.Errorf("read kernel record %s: status %s %s", l.ID, st, resp.Header.Get("Description"))
	}
	if op := resp.Header.Get(kvOperationHeader); op == "DEL" || op == "PURGE" {
		return nil, 0, broker.Errorf(broker.ErrKernelNotFound, "Kernel does not exist: %s", l.ID)
	}
	rev, err := strconv.ParseUint(resp.Header.Get(natsSequence), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("read kernel record %s: no sequence in the answer", l.ID)
	}
	var k broker.Kernel
	if err := json.Unmarshal(resp.Data, &k); err != nil {
		return nil, 0, fmt.Errorf("kernel record %s: %w", l.ID, err)
	}
	return &k, rev, nil
}

// UpdateKernel is Bus.UpdateKernel for the kernel's own record: a
// compare-and-swap publish on its key.
func (l *KernelLink) UpdateKernel(ctx context.Context, fn func(*broker.Kernel) error) (*broker.Kernel, error) {
	return updateRecord(ctx, l.ID, func(ctx context.Context) (*broker.Kernel, uint64, error) { return l.GetKernel(ctx) },
		func(ctx context.Context, data []byte, rev uint64) error {
			m := &nats.Msg{Subject: kvKey(broker.BucketKernels, l.ID), Data: data}
			_, err := l.JS.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev))
			return err
		}, fn)
}

// PutActivity writes the kernel's activity key.
func (l *KernelLink) PutActivity(ctx context.Context, data []byte) error {
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := l.JS.Publish(ctx, kvKey(broker.BucketActivity, l.ID), data)
	return err
}

// Emit publishes one of the kernel's events (see Bus.Emit).
func (l *KernelLink) Emit(ctx context.Context, ev broker.Event) error {
	return emit(ctx, l.JS, ev)
}

// WatchKernel calls fn with the kernel's record now and after every change
// until ctx ends or fn returns false: a core subscription on the record's
// key (every write is also published there) read once more after it is in
// place. A deleted record is nil; fn may see the same record twice.
//
// The read after subscribing is not enough on its own: a write the server
// routed just before the subscription was in place, but that the stream had
// not stored yet, is neither delivered nor read. Under 200 concurrent
// starts 2–12 launchers in 260 missed the worker's submitted that way and
// waited out their whole submitWait (10 s). So the record is read again at
// growing intervals (50 ms up to 1 s) while fn waits.
func (l *KernelLink) WatchKernel(ctx context.Context, fn func(*broker.Kernel) bool) error {
	ch := make(chan *nats.Msg, 16)
	sub, err := l.NC.ChanSubscribe(kvKey(broker.BucketKernels, l.ID), ch)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	read := func() (bool, error) {
		k, _, err := l.GetKernel(ctx)
		switch {
		case errors.Is(err, broker.ErrKernelNotFound):
			k = nil
		case err != nil:
			return true, err
		}
		return fn(k), nil
	}
	if more, err := read(); err != nil || !more {
		return err
	}
	every := 50 * time.Millisecond
	reread := time.NewTimer(every)
	defer reread.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-reread.C:
			// A failed read is retried at the next interval.
			if more, err := read(); err == nil && !more {
				return nil
			}
			every = min(2*every, time.Second)
			reread.Reset(every)
		case m := <-ch:
			var cur *broker.Kernel
			if op := m.Header.Get(kvOperationHeader); op != "DEL" && op != "PURGE" {
				cur = new(broker.Kernel)
				if json.Unmarshal(m.Data, cur) != nil {
					continue
				}
			}
			if !fn(cur) {
				return nil
			}
		}
	}
}

// Input looks up the kernel's input consumer, which a worker creates
// (EnsureInput), through the JetStream API. The launcher does not: it
// pulls by name with ConsumeInput.
func (l *KernelLink) Input(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	return l.JS.Consumer(ctx, broker.StreamIO, broker.InputConsumer(l.ID))
}

// InputAckWait is how long a delivered client message may go unacked
// before the bus delivers it again. The launcher acks as soon as it has
// queued a message, so this only matters when a delivery was lost.
const InputAckWait = 5 * time.Second

// EnsureInput creates (or confirms) kernel id's input consumer: a durable
// pull consumer of everything ever sent to kb.io.<id>.in (kernel ids are
// fresh UUIDs, so that is everything sent to this kernel), one message in
// flight at a time so that a lost delivery can never let a later message
// overtake it. A launcher that stops pulling for InputInactive has its
// consumer removed by the server.
func EnsureInput(ctx context.Context, js jetstream.JetStream, id string) error {
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := js.CreateOrUpdateConsumer(ctx, broker.StreamIO, jetstream.ConsumerConfig{
		Durable:           broker.InputConsumer(id),
		Description:       "client input of kernel " + id,
		FilterSubject:     broker.SubjectIn(id),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           InputAckWait,
		MaxDeliver:        -1,
		MaxAckPending:     1,
		InactiveThreshold: InputInactive,
	})
	if err != nil {
		return fmt.Errorf("input consumer of %s: %w", id, err)
	}
	return nil
}

// InputInactive is how long an input consumer lives without pulls: a
// launcher pulls every few seconds while it lives.
const InputInactive = 15 * time.Minute

// DeleteInput removes kernel id's input consumer; a missing one is fine.
func DeleteInput(ctx context.Context, js jetstream.JetStream, id string) error {
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	err := js.DeleteConsumer(ctx, broker.StreamIO, broker.InputConsumer(id))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return err
}

// kvKey is the subject a KV key is stored under.
func kvKey(bucket, key string) string { return "$KV." + bucket + "." + key }
