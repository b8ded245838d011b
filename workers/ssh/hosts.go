package ssh

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// hosts keeps what placement needs: health of each host, a round-robin
// cursor per pool and starts in flight per host.
type hosts struct {
	unhealthyFor time.Duration
	now          func() time.Time

	mu      sync.Mutex
	health  map[string]health // by addr
	cursor  map[string]int    // by pool (its hosts joined)
	pending map[string]int    // starts in flight, by addr
}

type health struct {
	until  time.Time
	reason string
}

func newHosts(unhealthyFor time.Duration) *hosts {
	return &hosts{unhealthyFor: unhealthyFor, now: time.Now,
		health: map[string]health{}, cursor: map[string]int{}, pending: map[string]int{}}
}

// markUnhealthy keeps addr out of first choices for a while.
func (h *hosts) markUnhealthy(addr, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.health[addr] = health{until: h.now().Add(h.unhealthyFor), reason: reason}
}

func (h *hosts) markHealthy(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.health, addr)
}

// unhealthy returns why addr is unhealthy, or "".
func (h *hosts) unhealthy(addr string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	hh, ok := h.health[addr]
	if !ok || h.now().After(hh.until) {
		return ""
	}
	return hh.reason
}

// order returns the pool in the order to try: healthy hosts first, in
// placement order, then unhealthy ones (they may have recovered, and a
// start should not fail while a host might take it). load gives the
// kernels on each host for least-connection; nil for round-robin.
func (h *hosts) order(pool []string, load map[string]int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := strings.Join(pool, ",")
	start := h.cursor[key] % len(pool)
	h.cursor[key]++
	// Rotate first, so round-robin moves on and least-connection breaks
	// ties the same fair way.
	rot := append(append([]string(nil), pool[start:]...), pool[:start]...)
	now := h.now()
	rank := func(a string) int {
		if hh, ok := h.health[a]; ok && now.Before(hh.until) {
			return 1
		}
		return 0
	}
	sort.SliceStable(rot, func(i, j int) bool {
		ri, rj := rank(rot[i]), rank(rot[j])
		if ri != rj {
			return ri < rj
		}
		if load != nil {
			return load[rot[i]]+h.pending[rot[i]] < load[rot[j]]+h.pending[rot[j]]
		}
		return false
	})
	return rot
}

// begin and end count a start in flight on addr, so that concurrent
// least-connection starts do not all pick the same idle host.
func (h *hosts) begin(addr string) {
	h.mu.Lock()
	h.pending[addr]++
	h.mu.Unlock()
}

func (h *hosts) end(addr string) {
	h.mu.Lock()
	if h.pending[addr]--; h.pending[addr] <= 0 {
		delete(h.pending, addr)
	}
	h.mu.Unlock()
}

// noHostError says why no host of the pool took a kernel.
type noHostError struct {
	tried []error
}

func (e *noHostError) Error() string {
	parts := make([]string, len(e.tried))
	for i, err := range e.tried {
		parts[i] = err.Error()
	}
	return fmt.Sprintf("no ssh host could take the kernel (%d tried): %s", len(e.tried), strings.Join(parts, "; "))
}
