// Package routines counts the goroutines a part of kernelbus owns, so that
// its Stop can wait for every one of them. A goroutine may be started by a
// callback (a NATS subscription, a JetStream consumer) while Stop already
// waits; a sync.WaitGroup must not grow while Wait runs, so once Stop
// begins the group starts nothing more, as nats-server's startGoRoutine
// refuses once the server shuts down.
package routines

import (
	"context"
	"sync"
)

// Group is a set of goroutines; its zero value is ready.
type Group struct {
	mu       sync.Mutex
	stopping bool
	wg       sync.WaitGroup
}

// Go runs f in a goroutine of the group, unless Wait has begun (then f
// does not run and Go reports false).
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopping {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Wait refuses new goroutines and waits, up to ctx, for those running.
func (g *Group) Wait(ctx context.Context) error {
	g.mu.Lock()
	g.stopping = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Closer is a NATS consumer (jetstream.ConsumeContext) whose callback may
// start goroutines of a group: Closed closes once the callback has
// returned for good.
type Closer interface {
	Closed() <-chan struct{}
}

// WaitAfter waits, up to ctx, until c (when not nil), already stopped, has
// closed, and then for the group as Wait does: a part's Stop, after it
// stopped its consumer and cancelled its work.
func (g *Group) WaitAfter(ctx context.Context, c Closer) error {
	if c != nil {
		select {
		case <-c.Closed():
		case <-ctx.Done():
		}
	}
	return g.Wait(ctx)
}
