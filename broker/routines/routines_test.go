package routines

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Starting goroutines from another goroutine while Wait runs is what the
// group is for; -race checks the WaitGroup is never grown during Wait.
func TestGoDuringWait(t *testing.T) {
	var g Group
	var ran atomic.Int64
	refused := make(chan struct{})
	go func() {
		for g.Go(func() { ran.Add(1) }) {
		}
		close(refused)
	}()
	block := make(chan struct{})
	g.Go(func() { <-block })
	for ran.Load() == 0 {
		runtime.Gosched() // let the starter start some
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); err == nil {
		t.Fatal("Wait returned while a goroutine still ran")
	}
	<-refused
	close(block)
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g.Go(func() {}) {
		t.Fatal("Go ran after Wait")
	}
}

type closer chan struct{}

func (c closer) Closed() <-chan struct{} { return c }

// WaitAfter lets a consumer's callback start goroutines until it closes,
// then waits for them; a consumer that never closes costs ctx, not a hang.
func TestWaitAfter(t *testing.T) {
	var g Group
	c := make(closer)
	ran := make(chan struct{})
	go func() {
		// The callback, still running while Stop waits for Closed.
		if !g.Go(func() { close(ran) }) {
			t.Error("the group refused a goroutine before its consumer closed")
		}
		close(c)
	}()
	if err := g.WaitAfter(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	default:
		t.Fatal("WaitAfter returned before the callback's goroutine ran")
	}

	var g2 Group
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_ = g2.WaitAfter(ctx, make(closer))
	if ctx.Err() == nil {
		t.Fatal("WaitAfter returned before its consumer closed or ctx ended")
	}
	if err := g2.WaitAfter(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}
