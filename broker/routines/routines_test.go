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
