package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// Leases are named, time-bounded ownerships kept in the kb_leases bucket,
// for duties that must run in exactly one process of an installation at a
// time (the idle culler, the lost-kernel detector) however many front-ends
// and workers run.
//
// The protocol uses only KV compare-and-swap and the bucket's TTL:
//
//   - acquire: kv.Create(name) succeeds for one caller only; everyone else
//     gets ErrLeaseHeld until the key is deleted (release) or ages out
//     (the holder stopped renewing for a whole TTL);
//   - renew: kv.Update(name, revision) of the revision the holder wrote
//     last; any other revision means somebody else holds the lease now,
//     and the renewal fails with ErrLeaseLost;
//   - release: kv.Delete(name, LastRevision(revision)), a no-op when the
//     lease changed hands already.
//
// A holder must stop acting before the server can hand the lease to
// somebody else. The server expires the key TTL after it stored the last
// write, which is after the holder sent it, so the holder counts its
// validity from the moment it sent its last successful write
// (Lease.ValidUntil) minus a safety margin, and gives the lease up when a
// renewal has not succeeded by then, even if the bus never answered.
//
// Campaign wraps all of this: it runs a function while, and only while,
// this process holds the lease.
type Leases struct {
	kv  jetstream.KeyValue
	ttl time.Duration
}

// Lease errors.
var (
	// ErrLeaseHeld: another holder owns the lease.
	ErrLeaseHeld = errors.New("lease held by another holder")
	// ErrLeaseLost: the lease expired or changed hands; stop acting.
	ErrLeaseLost = errors.New("lease lost")
)

// DefaultLeaseTTL is the TTL of the kb_leases bucket that Setup creates:
// how long a dead holder blocks its duties before another process takes
// over.
const DefaultLeaseTTL = 10 * time.Second

// LeaseInfo is the value of a lease key: who holds it and since when.
type LeaseInfo struct {
	Holder   string    `json:"holder"`
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
}

// OpenLeases binds the kb_leases bucket that Setup created. Its TTL is the
// lease TTL; every process of an installation shares it.
func OpenLeases(ctx context.Context, js jetstream.JetStream) (*Leases, error) {
	ctx, cancel := withTimeout(ctx, 15*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("bucket %s: %w", broker.BucketLeases, ErrNoInstallation)
		}
		return nil, fmt.Errorf("bucket %s: %w", broker.BucketLeases, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", broker.BucketLeases, err)
	}
	if st.TTL() <= 0 {
		return nil, fmt.Errorf("bucket %s has no TTL: leases would never expire; recreate it with --setup", broker.BucketLeases)
	}
	return &Leases{kv: kv, ttl: st.TTL()}, nil
}

// TTL is how long a lease lasts without renewal.
func (ls *Leases) TTL() time.Duration { return ls.ttl }

// margin is how long before the server-side expiry a holder considers its
// lease gone: room for clock-rate differences and a slow local scheduler.
func (ls *Leases) margin() time.Duration { return ls.ttl / 5 }

// Lease is one held lease. Its methods are safe for one goroutine at a
// time (Campaign's renewal loop); ValidUntil may be read from any.
type Lease struct {
	ls     *Leases
	name   string
	info   LeaseInfo
	mu     sync.Mutex
	rev    uint64
	valid  time.Time
	closed bool
}

// Acquire takes the lease name for holder, once: it fails with
// ErrLeaseHeld when somebody else holds it. holder should identify the
// process (it is shown by Holder); it does not need to be unique for
// safety, the revision is what proves ownership.
func (ls *Leases) Acquire(ctx context.Context, name, holder string) (*Lease, error) {
	now := time.Now()
	info := LeaseInfo{Holder: holder, Acquired: now.UTC(), Renewed: now.UTC()}
	data, _ := json.Marshal(info)
	ctx, cancel := withTimeout(ctx, ls.ttl/2)
	defer cancel()
	rev, err := ls.kv.Create(ctx, name, data)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, ErrLeaseHeld
		}
		return nil, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return &Lease{ls: ls, name: name, info: info, rev: rev, valid: now.Add(ls.ttl - ls.margin())}, nil
}

// Holder reports who holds lease name; it fails with
// jetstream.ErrKeyNotFound when nobody does.
func (ls *Leases) Holder(ctx context.Context, name string) (LeaseInfo, error) {
	var info LeaseInfo
	e, err := ls.kv.Get(ctx, name)
	if err != nil {
		return info, err
	}
	err = json.Unmarshal(e.Value(), &info)
	return info, err
}

// Name is the lease's name.
func (l *Lease) Name() string { return l.name }

// ValidUntil is when this holder must have stopped acting unless a renewal
// succeeds before.
func (l *Lease) ValidUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.valid
}

// Renew extends the lease by one TTL from now. It fails with ErrLeaseLost
// when the lease expired or changed hands (stop acting at once), and with
// another error when the bus did not answer (the lease may still be held
// until ValidUntil; try again).
func (l *Lease) Renew(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrLeaseLost
	}
	rev := l.rev
	l.mu.Unlock()
	now := time.Now()
	info := l.info
	info.Renewed = now.UTC()
	data, _ := json.Marshal(info)
	nrev, err := l.ls.kv.Update(ctx, l.name, data, rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
			l.mu.Lock()
			l.closed = true
			l.mu.Unlock()
			return fmt.Errorf("%w: %s changed hands or expired", ErrLeaseLost, l.name)
		}
		return fmt.Errorf("renew lease %s: %w", l.name, err)
	}
	l.mu.Lock()
	l.rev, l.valid = nrev, now.Add(l.ls.ttl-l.ls.margin())
	l.mu.Unlock()
	return nil
}

// Release gives the lease up so another process can take it at once. It
// does nothing when the lease changed hands already.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	rev := l.rev
	l.mu.Unlock()
	err := l.ls.kv.Delete(ctx, l.name, jetstream.LastRevision(rev))
	if err != nil && (errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLast(err)) {
		return nil
	}
	return err
}

func isWrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Campaign runs fn while this process holds lease name, until ctx ends.
// It tries to acquire the lease (again after each TTL/3, or at once when
// the holder releases it); once it holds it, it calls fn with a context
// that is cancelled when ctx ends or the lease is lost (a renewal said so,
// or no renewal succeeded before ValidUntil), and renews every TTL/3
// meanwhile. fn must return promptly when its context ends: until it
// returns, Campaign neither releases nor campaigns again. If fn returns
// while the lease is still held, the lease is released and the campaign
// goes on. When ctx ends, Campaign releases the lease (so another process
// takes over without waiting for the TTL) and returns ctx.Err().
//
// onChange, if not nil, is told each time this process gains (true) or
// loses (false) the lease, for logs and tests.
func (ls *Leases) Campaign(ctx context.Context, name, holder string, fn func(context.Context), onChange func(held bool)) error {
	every := ls.ttl / 3
	released := make(chan struct{}, 1)
	if w, err := ls.kv.Watch(ctx, name, jetstream.UpdatesOnly()); err == nil {
		defer func() { _ = w.Stop() }()
		go func() {
			for e := range w.Updates() {
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					select {
					case released <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	for {
		l, err := ls.Acquire(ctx, name, holder)
		if err == nil {
			if onChange != nil {
				onChange(true)
			}
			ls.hold(ctx, l, fn)
			if onChange != nil {
				onChange(false)
			}
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = l.Release(rctx)
			cancel()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-released:
		case <-t.C:
		}
		t.Stop()
	}
}

// hold runs fn under l and renews l until fn returns, ctx ends or l is
// lost.
func (ls *Leases) hold(ctx context.Context, l *Lease, fn func(context.Context)) {
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(dctx)
	}()
	defer func() { stop(); <-done }()
	renew := time.NewTicker(ls.ttl / 3)
	defer renew.Stop()
	expiry := time.NewTimer(time.Until(l.ValidUntil()))
	defer expiry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-expiry.C:
			// No renewal got through in time: the server may give the
			// lease to somebody else any moment now.
			return
		case <-renew.C:
			rctx, cancel := context.WithDeadline(ctx, l.ValidUntil())
			err := l.Renew(rctx)
			cancel()
			if errors.Is(err, ErrLeaseLost) {
				return
			}
			if err == nil {
				expiry.Reset(time.Until(l.ValidUntil()))
			}
		}
	}
}
