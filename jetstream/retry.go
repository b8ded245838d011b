package jetstream

import (
	"context"
	"sync/atomic"
	"time"
)

// retries counts, process-wide, the bus operations tried again after a
// failure (kernelbus_bus_retries_total): a rising rate means the cluster
// is electing leaders or losing nodes.
var retries atomic.Uint64

// Retries returns how many times this process tried a bus operation again.
func Retries() uint64 { return retries.Load() }

// CountRetry counts one retry of a caller's own retry loop.
func CountRetry() { retries.Add(1) }

// Retry runs try until it succeeds, it returns an error final reports as
// final (final may be nil), ctx ends or window has passed, and returns
// try's last error. Between tries it waits 100 ms, doubling up to 2 s, and
// tells onRetry (which may be nil). It is for bus calls that fail while
// NATS elects new leaders after losing a node: a part that gave up then
// would fail work the cluster can serve a few seconds later.
func Retry(ctx context.Context, window time.Duration, try func() error, final func(error) bool, onRetry func(err error, wait time.Duration)) error {
	giveUp := time.Now().Add(window)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		err := try()
		if err == nil || (final != nil && final(err)) || ctx.Err() != nil || time.Now().Add(wait).After(giveUp) {
			return err
		}
		retries.Add(1)
		if onRetry != nil {
			onRetry(err, wait)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}
