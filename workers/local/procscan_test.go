package local

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// Starts that ask for the ids in use while a scan is under way share the
// next scan, and none is given a scan that began before it asked.
func TestProcScansShareOnlyLaterScans(t *testing.T) {
	var started atomic.Int32
	release := make(chan struct{})
	var s procScans
	s.scan = func(IDRange) map[uint32]bool {
		n := started.Add(1)
		if n == 1 {
			<-release // the first scan is under way while the others ask
		}
		return map[uint32]bool{uint32(n): true}
	}
	r := IDRange{First: 1, Last: 10}
	first := make(chan map[uint32]bool, 1)
	go func() { first <- s.busy(r) }()
	jstest.WaitFor(t, 10*time.Second, "the first scan to begin", func() bool { return started.Load() == 1 })

	const n = 50
	var wg sync.WaitGroup
	got := make([]map[uint32]bool, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = s.busy(r) }()
	}
	jstest.WaitFor(t, 10*time.Second, "every later caller to wait for the next scan", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next != nil && s.next.waiters == n
	})
	close(release)
	wg.Wait()
	if m := <-first; !m[1] {
		t.Fatalf("the first caller got %v, want the first scan", m)
	}
	for i, m := range got {
		if !m[2] {
			t.Fatalf("caller %d got %v: want the second scan (the first began before it asked)", i, m)
		}
	}
	if k := started.Load(); k != 2 {
		t.Fatalf("%d scans for %d callers, want 2", k, n+1)
	}
	// With none under way, a caller scans at once.
	if m := s.busy(r); !m[3] {
		t.Fatalf("a lone caller got %v, want a scan of its own", m)
	}
}
