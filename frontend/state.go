package frontend

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// state mirrors the kb_kernels, kb_activity and kb_sessions buckets in
// memory through KV watchers, so that listing kernels (JupyterLab polls
// every 10 s per client) and counting connections never scan the bus.
// Entries carry their KV revision and only newer revisions replace them,
// so a handler may also feed in what it just read or wrote without the
// watcher's older view ever overwriting it.
type state struct {
	mu       sync.RWMutex
	kernels  map[string]kernelEntry
	activity map[string]activityEntry
	// sessions: kernel id -> kb_sessions key -> entry.
	sessions map[string]map[string]sessionEntry
	// listeners are told when a kernel's entry changes (listen).
	listeners map[string][]chan struct{}
}

type kernelEntry struct {
	rec     *broker.Kernel // nil when deleted
	rev     uint64
	deleted bool
	at      time.Time // when it was deleted
}

type activityEntry struct {
	a   broker.Activity
	rev uint64
}

type sessionEntry struct {
	connected bool
	rev       uint64
}

func newState() *state {
	return &state{
		kernels:   map[string]kernelEntry{},
		activity:  map[string]activityEntry{},
		sessions:  map[string]map[string]sessionEntry{},
		listeners: map[string][]chan struct{}{},
	}
}

// start opens the three watchers and returns once each has delivered the
// buckets' current contents.
func (st *state) start(ctx context.Context, s *Server) error {
	type watch struct {
		kv    jetstream.KeyValue
		apply func(jetstream.KeyValueEntry)
	}
	for _, w := range []watch{
		{s.bus.Kernels, func(e jetstream.KeyValueEntry) { st.applyKernel(s, e) }},
		{s.bus.Activity, st.applyActivity},
		{s.bus.Sessions, st.applySession},
	} {
		// The watcher lives as long as the server, not as ctx.
		kw, err := w.kv.WatchAll(s.ctx)
		if err != nil {
			return fmt.Errorf("frontend: watch bucket %s: %w", w.kv.Bucket(), err)
		}
		ready := make(chan struct{})
		apply := w.apply
		s.goFunc(func() {
			defer func() { _ = kw.Stop() }()
			once := sync.OnceFunc(func() { close(ready) })
			for {
				select {
				case <-s.ctx.Done():
					return
				case e, ok := <-kw.Updates():
					if !ok {
						return
					}
					if e == nil {
						once() // initial values delivered
						continue
					}
					apply(e)
				}
			}
		})
		select {
		case <-ready:
		case <-ctx.Done():
			return fmt.Errorf("frontend: reading bucket %s: %w", w.kv.Bucket(), ctx.Err())
		}
	}
	return nil
}

func (st *state) applyKernel(s *Server, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		st.putKernel(e.Key(), nil, e.Revision(), true)
		s.hub.kernelEnded(e.Key())
		return
	}
	var k broker.Kernel
	if err := json.Unmarshal(e.Value(), &k); err != nil {
		s.log.Warn().Err(err).Str("kernel_id", e.Key()).Msg("unreadable kernel record")
		return
	}
	st.putKernel(e.Key(), &k, e.Revision(), true)
	if k.State.Terminal() {
		s.hub.kernelEnded(k.ID)
	}
}

// putKernel records rec (nil: deleted) at revision rev unless a newer
// revision is known. Deletions stay as tombstones for a while, so that
// the watcher, which may still be catching up with older revisions of a
// kernel a handler just removed, cannot bring it back, and so that late
// cursor saves know the kernel is gone.
func (st *state) putKernel(id string, rec *broker.Kernel, rev uint64, fromWatcher bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if cur, ok := st.kernels[id]; ok && (cur.rev > rev || cur.rev == rev && !(fromWatcher && rec == nil)) {
		return
	}
	if rec != nil {
		st.kernels[id] = kernelEntry{rec: rec, rev: rev}
	} else {
		st.kernels[id] = kernelEntry{rev: rev, deleted: true, at: time.Now()}
	}
	for _, ch := range st.listeners[id] {
		select {
		case ch <- struct{}{}:
		default: // one wake-up pending is enough: the listener reads the entry
		}
	}
}

// listen returns a channel that receives (at most one pending) signal each
// time kernel id's entry changes, and the function that stops it. It also
// serves the caller's own wake-ups (a poll), hence bidirectional.
func (st *state) listen(id string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	st.mu.Lock()
	st.listeners[id] = append(st.listeners[id], ch)
	st.mu.Unlock()
	return ch, func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		ls := st.listeners[id]
		for i, c := range ls {
			if c == ch {
				ls = append(ls[:i], ls[i+1:]...)
				break
			}
		}
		if len(ls) == 0 {
			delete(st.listeners, id)
		} else {
			st.listeners[id] = ls
		}
	}
}

// record returns the entry of kernel id: its record (nil if unknown) and
// whether it was deleted.
func (st *state) record(id string) (*broker.Kernel, bool) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	e, ok := st.kernels[id]
	if !ok {
		return nil, false
	}
	return e.rec, e.deleted
}

// rev returns the revision known for a kernel.
// kernel is the last known record of kernel id, nil if deleted or unknown.
func (st *state) kernel(id string) *broker.Kernel {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.kernels[id].rec
}

func (st *state) rev(id string) uint64 {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.kernels[id].rev
}

// gone reports whether a kernel is known to be deleted or ended.
func (st *state) gone(id string) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	e, ok := st.kernels[id]
	return ok && (e.deleted || e.rec != nil && e.rec.State.Terminal())
}

// gc forgets tombstones old enough that no watcher lags behind them.
func (st *state) gc(now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for id, e := range st.kernels {
		if e.deleted && now.Sub(e.at) > 10*time.Minute {
			delete(st.kernels, id)
		}
	}
}

func (st *state) applyActivity(e jetstream.KeyValueEntry) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(st.activity, e.Key())
		return
	}
	var a broker.Activity
	if json.Unmarshal(e.Value(), &a) != nil {
		return
	}
	if cur, ok := st.activity[e.Key()]; ok && cur.rev >= e.Revision() {
		return
	}
	st.activity[e.Key()] = activityEntry{a: a, rev: e.Revision()}
}

func (st *state) applySession(e jetstream.KeyValueEntry) {
	kernel, _, ok := strings.Cut(e.Key(), ".")
	if !ok {
		return
	}
	connected := false
	if e.Operation() == jetstream.KeyValuePut {
		var cs broker.ClientSession
		if json.Unmarshal(e.Value(), &cs) != nil {
			return
		}
		connected = cs.Connected
	}
	st.setSession(kernel, e.Key(), connected, e.Revision(), e.Operation() != jetstream.KeyValuePut)
}

func (st *state) setSession(kernel, key string, connected bool, rev uint64, deleted bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	m := st.sessions[kernel]
	if cur, ok := m[key]; ok && cur.rev >= rev {
		return
	}
	if deleted {
		delete(m, key)
		if len(m) == 0 {
			delete(st.sessions, kernel)
		}
		return
	}
	if m == nil {
		m = map[string]sessionEntry{}
		st.sessions[kernel] = m
	}
	m[key] = sessionEntry{connected: connected, rev: rev}
}

// listKernels returns the records Jupyter should see: everything not
// failed or terminated, oldest first.
func (st *state) listKernels() []*broker.Kernel {
	st.mu.RLock()
	out := make([]*broker.Kernel, 0, len(st.kernels))
	for _, e := range st.kernels {
		if e.rec != nil && e.rec.State != broker.StateFailed && e.rec.State != broker.StateTerminated && !e.rec.WarmIdle() {
			out = append(out, e.rec)
		}
	}
	st.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// counts returns the kernels that are starting or alive, overall and for
// user: what the kernel limits count.
func (st *state) counts(user string) (all, mine int) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	for _, e := range st.kernels {
		// Warm kernels nobody took count against the cluster's
		// capacity (their pool's ceiling), not against users' limits.
		if e.rec == nil || e.rec.State.Terminal() || e.rec.WarmIdle() {
			continue
		}
		all++
		if user != "" && e.rec.Owner == user {
			mine++
		}
	}
	return all, mine
}

func (st *state) activityOf(id string) (broker.Activity, bool) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	e, ok := st.activity[id]
	return e.a, ok
}

// connections counts the connected websocket sessions of a kernel on
// every front-end.
func (st *state) connections(id string) int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	n := 0
	for _, e := range st.sessions[id] {
		if e.connected {
			n++
		}
	}
	return n
}

// sessionKeys returns the kb_sessions keys of a kernel.
func (st *state) sessionKeys(id string) []string {
	st.mu.RLock()
	defer st.mu.RUnlock()
	keys := make([]string, 0, len(st.sessions[id]))
	for k := range st.sessions[id] {
		keys = append(keys, k)
	}
	return keys
}

// warmIdle returns the running warm kernels of warm pool key nobody took
// yet, oldest first: the longest started are the most likely warmed up.
func (st *state) warmIdle(pool string) []*broker.Kernel {
	st.mu.RLock()
	var out []*broker.Kernel
	for _, e := range st.kernels {
		if e.rec != nil && e.rec.WarmIdle() && e.rec.State == broker.StateRunning && e.rec.Warm.Pool == pool {
			out = append(out, e.rec)
		}
	}
	st.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Warm.Since.Before(out[j].Warm.Since) })
	return out
}

// warmAll returns every warm kernel nobody took that has not ended.
func (st *state) warmAll() []*broker.Kernel {
	st.mu.RLock()
	var out []*broker.Kernel
	for _, e := range st.kernels {
		if e.rec != nil && e.rec.WarmIdle() && !e.rec.State.Terminal() {
			out = append(out, e.rec)
		}
	}
	st.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Warm.Since.Before(out[j].Warm.Since) })
	return out
}
