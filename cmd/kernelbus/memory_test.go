package main

import (
	"runtime"
	"testing"
)

var memoryTestSink [][]byte

// TestMemoryLimitFollowsLiveHeap: the limit is the base while the live
// heap is small, and never below 1.5 × the live heap, so a live heap over
// the base cannot make the collector run back to back.
func TestMemoryLimitFollowsLiveHeap(t *testing.T) {
	for range 64 {
		memoryTestSink = append(memoryTestSink, make([]byte, 64<<10))
	}
	runtime.GC()
	s := memorySamples()
	if got := memoryLimitFor(1<<40, s); got != 1<<40 {
		t.Fatalf("limit %d with a base of 1 TiB, want the base", got)
	}
	live := s[0].Value.Uint64()
	if live < 4<<20 {
		t.Fatalf("live heap %d after keeping 4 MiB", live)
	}
	if got := memoryLimitFor(1, memorySamples()); got < live+live/2 {
		t.Fatalf("limit %d below 1.5 × the live heap %d", got, live)
	}
	memoryTestSink = nil
}
