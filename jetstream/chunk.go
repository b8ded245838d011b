package jetstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// headerSlack is kept free in every chunk for NATS headers and protocol.
const headerSlack = 4 << 10

// MaxMessage bounds a reassembled message. Default 256 MiB: large enough
// for big widget buffers and images, small enough to not take a process
// down.
const MaxMessage = 256 << 20

// chunkSize returns how many body bytes fit in one bus message.
func chunkSize(nc *nats.Conn) int {
	mp := int(nc.MaxPayload())
	if mp <= 2*headerSlack {
		return mp / 2
	}
	return mp - headerSlack
}

// Split returns m itself when it fits, or one message per chunk otherwise.
// Chunks carry m's headers plus HeaderChunk and HeaderChunkID.
func Split(nc *nats.Conn, m *nats.Msg) []*nats.Msg { return splitBy(m, chunkSize(nc)) }

// SplitOutput is Split for kernel output published on
// broker.SubjectOut: a message larger than broker.LiveMax, chunked or not,
// moves to its channel's broker.SubjectOutLarge, which the stream keeps and
// websocket consumers read but live subscriptions never see.
func SplitOutput(nc *nats.Conn, m *nats.Msg) []*nats.Msg {
	parts := Split(nc, m)
	if len(m.Data) <= broker.LiveMax {
		return parts
	}
	for _, p := range parts {
		p.Subject = broker.LargeSubject(p.Subject)
	}
	return parts
}

// splitBy splits m into chunks of at most size body bytes.
func splitBy(m *nats.Msg, size int) []*nats.Msg {
	if len(m.Data) <= size {
		return []*nats.Msg{m}
	}
	n := (len(m.Data) + size - 1) / size
	id := nuid.Next()
	out := make([]*nats.Msg, 0, n)
	for i := 0; i < n; i++ {
		end := min((i+1)*size, len(m.Data))
		h := make(nats.Header, len(m.Header)+2)
		for k, v := range m.Header {
			h[k] = v
		}
		h.Set(broker.HeaderChunk, strconv.Itoa(i)+"/"+strconv.Itoa(n))
		h.Set(broker.HeaderChunkID, id)
		// Each chunk needs its own dedup id, or the stream would keep
		// only the first chunk of a message published with Nats-Msg-Id.
		if dedup := m.Header.Get(jetstream.MsgIDHeader); dedup != "" {
			h.Set(jetstream.MsgIDHeader, dedup+"/"+strconv.Itoa(i))
		}
		out = append(out, &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data[i*size : end]})
	}
	return out
}

// Publish publishes m to JetStream and waits for the acks, splitting it
// into chunks when it is larger than the server's max_payload.
func Publish(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return publishParts(ctx, js, Split(nc, m), opts)
}

// PublishOutput is Publish for kernel output (see SplitOutput).
func PublishOutput(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return publishParts(ctx, js, SplitOutput(nc, m), opts)
}

func publishParts(ctx context.Context, js jetstream.JetStream, parts []*nats.Msg, opts []jetstream.PublishOpt) (*jetstream.PubAck, error) {
	var ack *jetstream.PubAck
	for _, c := range parts {
		a, err := js.PublishMsg(ctx, c, opts...)
		if err != nil {
			return nil, err
		}
		ack = a
	}
	return ack, nil
}

// Reassembler joins chunked messages. Feed it every message of a
// subscription in order; it returns whole messages. Chunks of different
// messages may interleave (different subjects); chunks of one message
// arrive in order because one publisher sends them back to back.
type Reassembler struct {
	partial map[string]*partialMsg
	// pending is the sum of the partial messages' bytes.
	pending int
}

// maxPartials and maxPending bound what a Reassembler holds for messages
// that are not complete yet: a publisher (a kernel holding its launcher's
// credentials) can start chunked messages and never finish them.
const (
	maxPartials = 64
	maxPending  = 2 * MaxMessage
	// maxPrealloc bounds the buffer reserved from a first chunk's claims.
	maxPrealloc = 1 << 20
)

type partialMsg struct {
	next, count int
	data        []byte
	started     time.Time
}

// Feed returns (data, true) when m completes a message, with data being
// m.Data for unchunked messages. A chunk that does not continue what came
// before (for example a replay that starts mid-message) is dropped.
func (r *Reassembler) Feed(m *nats.Msg) ([]byte, bool, error) {
	c := m.Header.Get(broker.HeaderChunk)
	if c == "" {
		return m.Data, true, nil
	}
	idx, count, ok := parseChunk(c)
	if !ok {
		return nil, false, fmt.Errorf("bad %s header %q", broker.HeaderChunk, c)
	}
	id := m.Header.Get(broker.HeaderChunkID)
	if r.partial == nil {
		r.partial = make(map[string]*partialMsg)
	}
	p := r.partial[id]
	if p == nil {
		if idx != 0 {
			return nil, false, nil // joined mid-message: wait for the next one
		}
		// Divide rather than multiply: count comes from the header and
		// count*len overflows.
		if len(m.Data) > 0 && count > MaxMessage*2/len(m.Data) {
			return nil, false, fmt.Errorf("chunked message of %d parts is too large", count)
		}
		r.gc()
		if len(r.partial) >= maxPartials {
			return nil, false, fmt.Errorf("more than %d chunked messages in progress: %s dropped", maxPartials, id)
		}
		p = &partialMsg{count: count, started: time.Now(), data: make([]byte, 0, min(count*len(m.Data), maxPrealloc))}
		r.partial[id] = p
	}
	if idx != p.next || count != p.count {
		r.drop(id)
		return nil, false, fmt.Errorf("chunk %d/%d of %s out of order (want %d)", idx, count, id, p.next)
	}
	if len(p.data)+len(m.Data) > MaxMessage {
		r.drop(id)
		return nil, false, fmt.Errorf("chunked message exceeds %d bytes", MaxMessage)
	}
	if r.pending+len(m.Data) > maxPending {
		r.drop(id)
		return nil, false, fmt.Errorf("chunked messages in progress exceed %d bytes: %s dropped", maxPending, id)
	}
	p.data = append(p.data, m.Data...)
	r.pending += len(m.Data)
	p.next++
	if p.next < p.count {
		return nil, false, nil
	}
	r.drop(id)
	return p.data, true, nil
}

func (r *Reassembler) drop(id string) {
	if p := r.partial[id]; p != nil {
		r.pending -= len(p.data)
		delete(r.partial, id)
	}
}

// gc drops partial messages abandoned by a publisher that died mid-send.
func (r *Reassembler) gc() {
	for id, p := range r.partial {
		if time.Since(p.started) > 5*time.Minute {
			r.drop(id)
		}
	}
}

func parseChunk(s string) (idx, count int, ok bool) {
	a, b, found := strings.Cut(s, "/")
	if !found {
		return 0, 0, false
	}
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || n <= 0 || i < 0 || i >= n {
		return 0, 0, false
	}
	return i, n, true
}
