package launcher

import "sync"

// sessionRoutes remembers which websocket session sent each request
// (header msg_id → Kb-Session), so that the replies and outputs whose
// parent is that request can be routed back. It is bounded: the oldest
// entries are forgotten first, which only matters for requests whose
// outputs keep coming after 10k newer requests.
type sessionRoutes struct {
	mu   sync.Mutex
	m    map[string]string
	ring []string
	next int
}

func newSessionRoutes(size int) *sessionRoutes {
	return &sessionRoutes{m: make(map[string]string, size), ring: make([]string, size)}
}

func (r *sessionRoutes) put(msgID, session string) {
	if msgID == "" || session == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[msgID]; ok {
		r.m[msgID] = session
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.m, old)
	}
	r.ring[r.next] = msgID
	r.next = (r.next + 1) % len(r.ring)
	r.m[msgID] = session
}

// get looks msgID up; the []byte key does not allocate.
func (r *sessionRoutes) get(msgID []byte) string {
	if len(msgID) == 0 {
		return ""
	}
	r.mu.Lock()
	s := r.m[string(msgID)]
	r.mu.Unlock()
	return s
}
