package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// GetKernel reads a kernel record and its revision. A missing record is
// broker.ErrKernelNotFound.
func (b *Bus) GetKernel(ctx context.Context, id string) (*broker.Kernel, uint64, error) {
	e, err := b.Kernels.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, 0, broker.Errorf(broker.ErrKernelNotFound, "Kernel does not exist: %s", id)
		}
		return nil, 0, err
	}
	var k broker.Kernel
	if err := json.Unmarshal(e.Value(), &k); err != nil {
		return nil, 0, fmt.Errorf("kernel record %s: %w", id, err)
	}
	return &k, e.Revision(), nil
}

// CreateKernel writes a new record; it fails with jetstream.ErrKeyExists
// if the id exists. It retries while the bucket is unavailable (its
// leader moving), until ctx ends; a retry that finds the record it wrote
// itself (its write landed but the ack was lost) succeeds.
func (b *Bus) CreateKernel(ctx context.Context, k *broker.Kernel) (uint64, error) {
	k.Updated = time.Now().UTC()
	data, err := json.Marshal(k)
	if err != nil {
		return 0, err
	}
	ctx, cancel := withTimeout(ctx, 30*time.Second)
	defer cancel()
	var rev uint64
	err = retryBus(ctx, func(ctx context.Context, try int) error {
		rev, err = b.Kernels.Create(ctx, k.ID, data)
		if try > 1 && errors.Is(err, jetstream.ErrKeyExists) {
			if e, gerr := b.Kernels.Get(ctx, k.ID); gerr == nil && string(e.Value()) == string(data) {
				rev, err = e.Revision(), nil
			}
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			return stopRetry{err}
		}
		return err
	})
	return rev, err
}

// stopRetry ends retryBus with its error.
type stopRetry struct{ error }

func (s stopRetry) Unwrap() error { return s.error }

// retryBus runs op until it succeeds, returns a stopRetry, or ctx ends,
// backing off from 100 ms to 2 s: a stream or bucket whose leader died is
// unavailable for the seconds an election takes. Each try gets at most
// 10 s. op must be safe to repeat (a read, a create that checks, a publish
// with a Nats-Msg-Id).
func retryBus(ctx context.Context, op func(ctx context.Context, try int) error) error {
	wait := 100 * time.Millisecond
	for try := 1; ; try++ {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(tctx, try)
		cancel()
		var stop stopRetry
		if errors.As(err, &stop) {
			return stop.error
		}
		if err == nil || ctx.Err() != nil {
			return err
		}
		retries.Add(1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// ErrNoChange may be returned by an UpdateKernel mutator to leave the
// record as it is.
var ErrNoChange = errors.New("no change")

// UpdateKernel applies fn to the current record and writes it back by
// compare-and-swap, retrying when another writer got there first. fn may
// be called several times and must only look at the record it is given.
func (b *Bus) UpdateKernel(ctx context.Context, id string, fn func(*broker.Kernel) error) (*broker.Kernel, error) {
	return updateRecord(ctx, id, func(ctx context.Context) (*broker.Kernel, uint64, error) { return b.GetKernel(ctx, id) },
		func(ctx context.Context, data []byte, rev uint64) error {
			_, err := b.Kernels.Update(ctx, id, data, rev)
			return err
		}, fn)
}

// updateRecord is the compare-and-swap loop of UpdateKernel over a way to
// read a record with its revision and to write it at a revision.
func updateRecord(ctx context.Context, id string, get func(context.Context) (*broker.Kernel, uint64, error),
	put func(ctx context.Context, data []byte, rev uint64) error, fn func(*broker.Kernel) error) (*broker.Kernel, error) {
	for attempt := 0; ; attempt++ {
		k, rev, err := get(ctx)
		if err != nil {
			return nil, err
		}
		if err := fn(k); err != nil {
			if errors.Is(err, ErrNoChange) {
				return k, nil
			}
			return k, err
		}
		k.Updated = time.Now().UTC()
		data, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		if err := put(ctx, data, rev); err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence && attempt < 50 {
				continue
			}
			return nil, fmt.Errorf("update kernel record %s: %w", id, err)
		}
		return k, nil
	}
}

// Emit publishes a lifecycle event durably. Events with the same ID are
// stored once (the stream deduplicates on Nats-Msg-Id), so a part that
// retries, or a redelivered request, never writes an event twice.
func (b *Bus) Emit(ctx context.Context, ev broker.Event) error { return emit(ctx, b.JS, ev) }

func emit(ctx context.Context, js jetstream.JetStream, ev broker.Event) error {
	if ev.ID == "" {
		ev.ID = nuid.Next()
	}
	if ev.V == 0 {
		ev.V = broker.EventSchemaVersion
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: broker.SubjectEvent(ev.Kernel, ev.Type), Data: data, Header: nats.Header{}}
	m.Header.Set(broker.HeaderType, broker.TypeEvent)
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	// Retrying is safe: the stream stores an id once. An audit record is
	// worth a few seconds of a NATS node failing over.
	wait := 100 * time.Millisecond
	for {
		_, err = js.PublishMsg(ctx, m)
		if err == nil || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("emit %s event of %s: %w", ev.Type, ev.Kernel, err)
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Request publishes a start or stop request on the work queue of rm,
// deduplicated on dedupID.
func (b *Bus) Request(ctx context.Context, verb, rm, dedupID string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: broker.SubjectRequest(verb, rm), Data: data, Header: nats.Header{}}
	switch verb {
	case broker.VerbStart:
		m.Header.Set(broker.HeaderType, broker.TypeStartRequest)
	case broker.VerbStop:
		m.Header.Set(broker.HeaderType, broker.TypeStopRequest)
	}
	if dedupID != "" {
		m.Header.Set(jetstream.MsgIDHeader, dedupID)
	}
	ctx, cancel := withTimeout(ctx, 10*time.Second)
	defer cancel()
	if dedupID == "" {
		_, err = b.JS.PublishMsg(ctx, m)
		return err
	}
	// Deduplicated, so retrying through a leader change is safe.
	return retryBus(ctx, func(ctx context.Context, _ int) error {
		_, err := b.JS.PublishMsg(ctx, m)
		return err
	})
}
