package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// hub owns this front-end's websocket connections: the stale-session
// rule, one shared ticker for cursor saves and pings, the release protocol
// between front-ends, and closing a kernel's sockets when it ends.
type hub struct {
	s *Server

	mu       sync.Mutex
	byKey    map[string]*conn              // kb_sessions key -> connection
	byKernel map[string]map[*conn]struct{} // kernel id -> connections
	ending   map[string]bool               // kernels whose sockets are being closed

	// liveMu guards live: each kernel's shared live subscription
	// (wslive.go).
	liveMu sync.Mutex
	live   map[string]*kernelLive
}

func newHub(s *Server) *hub {
	return &hub{s: s, byKey: map[string]*conn{}, byKernel: map[string]map[*conn]struct{}{}, ending: map[string]bool{}, live: map[string]*kernelLive{}}
}

// register adds c and returns the connection it replaces: the same
// kernel:session already open here is stale, as in jupyter_server.
func (h *hub) register(c *conn) (old *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old = h.byKey[c.key]
	h.byKey[c.key] = c
	m := h.byKernel[c.kernel]
	if m == nil {
		m = map[*conn]struct{}{}
		h.byKernel[c.kernel] = m
	}
	m[c] = struct{}{}
	return old
}

func (h *hub) unregister(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byKey[c.key] == c {
		delete(h.byKey, c.key)
	}
	if m := h.byKernel[c.kernel]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(h.byKernel, c.kernel)
		}
	}
}

func (h *hub) lookup(key string) *conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byKey[key]
}

func (h *hub) all() []*conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*conn, 0, len(h.byKey))
	for _, m := range h.byKernel {
		for c := range m {
			out = append(out, c)
		}
	}
	return out
}

func (h *hub) ofKernel(id string) []*conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*conn, 0, len(h.byKernel[id]))
	for c := range h.byKernel[id] {
		out = append(out, c)
	}
	return out
}

// count returns how many websockets this front-end holds.
func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byKey)
}

// tickLoop is the one goroutine that saves changed cursors (about once a
// second) and pings every connection (every WSPingInterval), so an idle
// connection costs no goroutine or timer of its own.
func (h *hub) tickLoop() {
	period := min(time.Second, h.s.cfg.WSPingInterval)
	t := time.NewTicker(period)
	defer t.Stop()
	lastPing := time.Now()
	for {
		select {
		case <-h.s.ctx.Done():
			return
		case now := <-t.C:
			h.s.state.gc(now)
			conns := h.all()
			// Pings first: a slow bus must not delay them.
			if now.Sub(lastPing) >= h.s.cfg.WSPingInterval-period/2 {
				lastPing = now
				for _, c := range conns {
					c.ping()
				}
			}
			// Saves are bounded per tick; what is left stays dirty for
			// the next one.
			budget := time.Now().Add(period / 2)
			for _, c := range conns {
				if time.Now().After(budget) {
					break
				}
				c.saveIfDirty()
			}
		}
	}
}

// onRelease serves SessionRelease on this front-end's subject: another
// front-end took over a session. The connection here stops delivering and
// saves its final cursor before the reply, so the new one resumes right
// after the last message this one sent.
func (h *hub) onRelease(m *nats.Msg) {
	var r broker.SessionRelease
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return
	}
	found := false
	if c := h.lookup(sessionKVKey(r.Kernel, r.Session)); c != nil {
		found = true
		c.finish(closeNormal, "session resumed on another connection")
	}
	data, _ := json.Marshal(broker.SessionReleased{Found: found})
	_ = m.Respond(data)
}

// kernelEnded closes this front-end's sockets of a kernel that died, was
// shut down or was removed, once each has passed on the last message the
// kernel's launcher published (its final iopub status), with code 1000 so
// that clients do not reconnect.
func (h *hub) kernelEnded(id string) {
	h.mu.Lock()
	if len(h.byKernel[id]) == 0 || h.ending[id] {
		h.mu.Unlock()
		return
	}
	h.ending[id] = true
	h.mu.Unlock()
	started := h.s.goFunc(func() {
		for {
			conns := h.ofKernel(id)
			if len(conns) == 0 {
				// Done unless a connection registered meanwhile.
				h.mu.Lock()
				if len(h.byKernel[id]) == 0 {
					delete(h.ending, id)
					h.mu.Unlock()
					return
				}
				h.mu.Unlock()
				continue
			}
			last := h.drain(id, conns, 3*time.Second)
			// A kernel that died (its resource manager killed it, its
			// process is gone for good) says so, as jupyter_server does
			// when auto-restart gives up: an iopub status "dead", then a
			// close whose text carries the reason. A kernel that was shut
			// down just closes.
			why := "kernel shut down"
			var dead *synthetic
			if rec := h.s.state.kernel(id); rec != nil && rec.State == broker.StateDead {
				why = "kernel died: " + rec.Reason
				if !saysDead(last) { // the launcher may have said it already
					dead = deadStatus()
				}
			}
			for _, c := range conns {
				if dead != nil {
					c.sendSynthetic(dead)
				}
				c.finish(closeNormal, why)
			}
		}
	})
	if !started {
		h.mu.Lock()
		delete(h.ending, id)
		h.mu.Unlock()
	}
}

// waitKernelClosed waits until this front-end holds no socket of kernel
// id, at most until ctx ends.
func (h *hub) waitKernelClosed(ctx context.Context, id string) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		h.mu.Lock()
		n := len(h.byKernel[id])
		h.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// drain waits, at most limit, until every connection has seen the last
// output message the kernel has in the stream, and returns that message
// (nil if there is none or it could not be read).
func (h *hub) drain(id string, conns []*conn, limit time.Duration) *jetstream.RawStreamMsg {
	ctx, cancel := context.WithTimeout(h.s.ctx, limit)
	defer cancel()
	last, err := h.s.ioStream.GetLastMsgForSubject(ctx, broker.SubjectOutAll(id))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			h.s.log.Debug().Err(err).Str("kernel_id", id).Msg("last output of ended kernel")
		}
		return nil
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		pending := false
		for _, c := range conns {
			if c.seenSeq() < last.Sequence && !c.isFinished() {
				pending = true
			}
		}
		if !pending {
			return last
		}
		select {
		case <-ctx.Done():
			return last
		case <-t.C:
		}
	}
}

// saysDead reports whether m is (or, a batch, ends with) an iopub status
// "dead".
func saysDead(m *jetstream.RawStreamMsg) bool {
	if m == nil {
		return false
	}
	data, batched := m.Data, false
	if nb := m.Header.Get(broker.HeaderBatch); nb != "" {
		n, _ := strconv.Atoi(nb)
		frames, err := broker.SplitBatch(data, n)
		if err != nil {
			return false
		}
		data, batched = frames[len(frames)-1], true
	} else if m.Header.Get(broker.HeaderMsgType) != "status" {
		return false
	}
	f, err := broker.DecodeV1(data)
	if err != nil {
		return false
	}
	if batched {
		if mh, err := broker.ParseHeader(f.Header); err != nil || mh.MsgType != "status" {
			return false
		}
	}
	var st struct {
		State string `json:"execution_state"`
	}
	return json.Unmarshal(f.Content, &st) == nil && st.State == "dead"
}

// closeAll finishes every connection in parallel (Stop).
func (h *hub) closeAll(code int, text string) {
	var wg sync.WaitGroup
	for _, c := range h.all() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.finish(code, text)
		}()
	}
	wg.Wait()
}

// deadStatus is the iopub status "dead" a front-end sends on its own: a new
// msg_id and an empty parent_header, like jupyter_server's.
func deadStatus() *synthetic {
	id := uuid.NewString()
	hdr, _ := json.Marshal(broker.MsgHeader{
		MsgID: id, MsgType: "status", Session: "kernelbus", Username: "kernelbus", Version: "5.3",
		Date: json.RawMessage(strconv.Quote(time.Now().UTC().Format(lastActivityLayout))),
	})
	f := broker.Frame{Channel: "iopub", Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"),
		Content: []byte(`{"execution_state":"dead"}`)}
	h := nats.Header{}
	h.Set(broker.HeaderMsgID, id)
	h.Set(broker.HeaderMsgType, "status")
	return &synthetic{data: f.V1(), h: h}
}

// synthetic is a message the front-end makes itself, as a v1 frame.
type synthetic struct {
	data []byte
	h    nats.Header
}

// sendSynthetic writes m to the client unless the connection is done.
// Errors end nothing here: the caller closes the connection next.
func (c *conn) sendSynthetic(m *synthetic) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || c.broken {
		return
	}
	_ = c.writeFrames([]outItem{{data: m.data, h: m.h, subject: broker.SubjectOut(c.kernel, "iopub"), write: true, last: true}})
}
