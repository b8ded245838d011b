package frontend

// Kernel output to one websocket: the output consumer's handler
// reassembles, routes and places each message and queues it; one writer
// goroutine per connection takes whatever has queued up, writes it to the
// socket in one write (several websocket frames) and records the cursor
// once per write. Under load a write carries many messages, so the socket
// and the session record cost one system call and one bus message per
// write instead of per message; a lone message goes out at once.

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// maxBatchBytes and maxBatchFrames bound one socket write: what a
	// front-end killed during a write may send again to a client that
	// reconnects without resume_after. A larger message goes alone.
	maxBatchBytes  = 256 << 10
	maxBatchFrames = 256
	// maxQueuedBytes bounds what waits for the writer; beyond it the
	// output consumer's handler waits, which slows the pull from the bus.
	maxQueuedBytes = 4 << 20
	// largeFrame: payloads from this size are written from where they
	// are rather than copied into the write buffer.
	largeFrame = 64 << 10
)

// outItem is one whole kernel message on its way to the socket, or (write
// false) one that only moves the cursor: routed elsewhere, or known to
// have reached the client already.
type outItem struct {
	seq     uint64
	data    []byte
	h       nats.Header
	subject string
	write   bool
	// last is false for all but the last message of a batch: the items
	// of one bus message share its sequence, and the cursor passes it
	// only once all of them are written.
	last bool
	// run and num are the launcher's number of the bus message (see
	// wslive.go); live marks one from the live path, which has no stream
	// sequence (seq 0) and moves no cursor.
	run  string
	num  uint64
	live bool
}

var errConnClosed = errors.New("connection closed")

// frameBufPool holds the write buffers of batches of small messages.
var frameBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// deliver is the output consumer's handler: reassemble, route, place
// (seek) and queue for the writer. The cursor advances only when the
// writer is done with a message, and only past whole messages.
func (c *conn) deliver(m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	seq := meta.Sequence.Stream
	h := m.Headers()
	data := m.Data()
	// omu keeps what the live path and this handler queue in the order
	// they placed it (enqueue runs outside mu). It is taken before a
	// body is fetched: the live path must not write a later number while
	// this message, which the stream holds before it, waits for its body.
	c.omu.Lock()
	defer c.omu.Unlock()
	// A headers-only consumer's message has no body: fetch it unless
	// the socket does not need it. (What makes a body unneeded does not
	// change before the handler places the message below: only this
	// handler removes a number from liveWritten.)
	c.mu.Lock()
	headersOnly := c.headersOnly
	fetch := headersOnly && seq > c.seen && c.needsBody(seq, h, m.Subject())
	c.mu.Unlock()
	if fetch {
		body, err := c.s.bus.OutputBody(c.s.ctx, seq, busRetryFor)
		switch {
		case errors.Is(err, kbjs.ErrBodyGone):
			// Aged out of the stream since: as if the consumer had
			// never seen it.
			c.log.Warn().Uint64("seq", seq).Msg("kernel output left the stream before it was delivered")
			return
		case err != nil:
			// Delivering what follows would skip this message: end the
			// connection; the client's reconnect replays from the
			// cursor, which has not passed it.
			c.log.Warn().Err(err).Uint64("seq", seq).Msg("could not read kernel output from the stream")
			c.mu.Lock()
			c.broken = true
			c.mu.Unlock()
			go c.finish(closeInternal, "kernel output unavailable")
			return
		}
		c.s.bodyGets.Add(1)
		data = body
	}
	c.mu.Lock()
	if c.finished || c.broken || seq <= c.seen {
		c.mu.Unlock()
		return
	}
	c.seen = seq
	if headersOnly && !fetch {
		// Written live already, behind the cursor or another session's:
		// it only moves the cursor.
		run, num, _, _ := launchID(h)
		c.queueStream(h, []outItem{{seq: seq, h: h, subject: m.Subject(), last: true, run: run, num: num}})
		return
	}
	nm := nats.Msg{Subject: m.Subject(), Header: h, Data: data}
	chunkID := ""
	if ch := h.Get(broker.HeaderChunk); ch != "" {
		chunkID = h.Get(broker.HeaderChunkID)
		if strings.HasPrefix(ch, "0/") {
			if c.partial == nil {
				c.partial = map[string]partialStart{}
			}
			c.partial[chunkID] = partialStart{seq: seq, at: time.Now()}
		}
	}
	data, whole, err := c.reasm.Feed(&nm)
	if err != nil {
		c.log.Warn().Err(err).Uint64("seq", seq).Msg("dropping broken chunked output")
		delete(c.partial, chunkID)
		c.mu.Unlock()
		return
	}
	if !whole {
		c.mu.Unlock()
		return
	}
	if chunkID != "" {
		delete(c.partial, chunkID)
	}
	frames := [][]byte{data}
	if nb := h.Get(broker.HeaderBatch); nb != "" {
		n, _ := strconv.Atoi(nb)
		if frames, err = broker.SplitBatch(data, n); err != nil {
			c.log.Warn().Err(err).Uint64("seq", seq).Msg("dropping a malformed batch of output")
			c.mu.Unlock()
			return
		}
	}
	run, num, _, _ := launchID(h)
	items := make([]outItem, 0, len(frames))
	for i, f := range frames {
		it := outItem{seq: seq, data: f, h: h, subject: m.Subject(), last: i == len(frames)-1, run: run, num: num}
		// Replayed chunks may complete messages behind the saved cursor;
		// they are not written, and the cursor never moves back for them.
		// Nor are messages the record says were written live.
		it.write = seq > c.skipUpTo && !c.writtenLive(it) && c.routed(h, it.subject)
		if c.seekID != "" {
			items = append(items, c.seek(it)...)
		} else {
			items = append(items, it)
		}
	}
	c.queueStream(h, items)
}

// queueStream places the items of one stream message for live delivery
// and queues them for the writer; mu is held and released.
func (c *conn) queueStream(h nats.Header, items []outItem) {
	if !c.s.cfg.NoLiveOutput {
		c.placeStream(h, items)
	}
	c.qmu.Lock()
	c.pending += len(items)
	c.qmu.Unlock()
	c.mu.Unlock()
	c.enqueue(items)
}

// needsBody reports whether a socket reading headers only needs the body
// of the stream message seq: not when it was written live, lies behind
// the cursor or is routed to another session. mu is held.
func (c *conn) needsBody(seq uint64, h nats.Header, subject string) bool {
	if h.Get(broker.HeaderChunk) != "" || c.seekID != "" {
		return true // reassembly and seeking read every body
	}
	if seq <= c.skipUpTo {
		return false
	}
	if run, n, _, ok := launchID(h); ok {
		if _, done := c.liveWritten[liveKey{run, n}]; done {
			return false
		}
		if c.writtenLive(outItem{run: run, num: n}) {
			return false
		}
	}
	return c.routed(h, subject)
}

// routed applies jupyter_server's routing: iopub to every connection;
// shell, control and stdin only to the session that asked.
func (c *conn) routed(h nats.Header, subject string) bool {
	ch := h.Get(broker.HeaderChannel)
	if ch == "" {
		ch = broker.ChannelFromSubject(subject)
	}
	if ch == "iopub" {
		return true
	}
	return h.Get(broker.HeaderSession) == c.session
}

// enqueue hands the items of one bus message to the writer, together,
// waiting while the queue is full (or until the connection ends).
func (c *conn) enqueue(items []outItem) {
	if len(items) == 0 {
		return
	}
	n := 0
	for _, it := range items {
		n += len(it.data)
	}
	for {
		c.qmu.Lock()
		if len(c.q) == 0 || c.qBytes+n <= maxQueuedBytes {
			c.q = append(c.q, items...)
			c.qBytes += n
			c.qmu.Unlock()
			poke(c.qwake)
			return
		}
		c.qmu.Unlock()
		select {
		case <-c.qspace:
		case <-c.quit:
			return
		}
	}
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// writeLoop is the connection's writer: it takes what has queued up, a
// batch at a time, until the connection ends or a write fails.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		select {
		case <-c.quit:
			return
		case <-c.qwake:
		}
		for {
			batch := c.take()
			if len(batch) == 0 {
				break
			}
			poke(c.qspace)
			if !c.writeBatch(batch) {
				return
			}
		}
	}
}

// take removes the next batch from the queue: messages in order up to
// maxBatchBytes and maxBatchFrames of writes (one larger message alone),
// never splitting the messages of one bus message.
func (c *conn) take() []outItem {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	n, bytes, frames := 0, 0, 0
	for ; n < len(c.q); n++ {
		it := &c.q[n]
		if it.write {
			full := bytes+len(it.data) > maxBatchBytes || frames >= maxBatchFrames
			if frames > 0 && full && !sameBusMsg(&c.q[n-1], it) {
				break
			}
			bytes += len(it.data)
			frames++
		}
	}
	batch := make([]outItem, n)
	copy(batch, c.q[:n])
	clear(c.q[:n])
	c.q = c.q[n:]
	if len(c.q) == 0 {
		c.q = nil
	}
	for _, it := range batch {
		c.qBytes -= len(it.data)
	}
	return batch
}

// sameBusMsg reports whether two queued items come from one bus message.
func sameBusMsg(a, b *outItem) bool {
	if a.live || b.live {
		return a.live && b.live && a.run == b.run && a.num == b.num
	}
	return a.seq == b.seq
}

// writeBatch writes the batch's messages to the socket in one write and
// then records the cursor past the whole batch. A write of several
// messages is announced in the record first (InFlight), so that a client
// resuming with resume_after after this process died mid-way gets none of
// them twice. It returns false when the socket is broken.
func (c *conn) writeBatch(batch []outItem) bool {
	defer func() {
		c.qmu.Lock()
		c.pending -= len(batch)
		c.qmu.Unlock()
	}()
	// Live items have no stream sequence (0): the cursor moves for the
	// stream's items only, the live mark for the live ones.
	var last, lastWritten, liveLast uint64
	var liveRun string
	frames := 0
	for _, it := range batch {
		last = max(last, it.seq)
		if it.live {
			liveRun, liveLast = it.run, it.num
		}
		if it.write {
			frames++
			lastWritten = max(lastWritten, it.seq)
		}
	}
	if frames == 0 {
		c.mu.Lock()
		c.advanceLocked(last)
		c.markLiveLocked(liveRun, liveLast)
		c.mu.Unlock()
		return true
	}
	if frames > 1 {
		c.mu.Lock()
		c.inFlight = lastWritten
		if liveRun != "" {
			c.liveInFlight = liveKey{liveRun, liveLast}
		}
		c.persistLocked()
		c.mu.Unlock()
	}
	err := c.writeFrames(batch)
	c.mu.Lock()
	if err != nil {
		// Not counted as delivered: a reconnect gets them again (with
		// resume_after, not the ones the client received: InFlight stays).
		c.broken = true
		c.mu.Unlock()
		if !errors.Is(err, errConnClosed) {
			c.log.Debug().Err(err).Msg("websocket write failed")
		}
		_ = c.ws.NetConn().Close() // ends the read loop, which finishes
		return false
	}
	c.inFlight, c.liveInFlight = 0, liveKey{}
	c.advanceLocked(last)
	c.markLiveLocked(liveRun, liveLast)
	c.persistLocked()
	c.mu.Unlock()
	for _, it := range batch {
		if it.write {
			c.s.relayToClient(it.h, it.subject, len(it.data))
		}
	}
	return true
}

// advanceLocked moves the cursor past messages the writer is done with.
// mu is held.
func (c *conn) advanceLocked(seq uint64) {
	c.cursor = max(c.cursor, seq)
	c.written = max(c.written, seq)
	c.dirty = true
}

// markLiveLocked records that live output up to number n of run is
// written (run "" is nothing). mu is held.
func (c *conn) markLiveLocked(run string, n uint64) {
	if run == "" {
		return
	}
	if run != c.wRun || n > c.wThrough {
		c.wRun, c.wThrough = run, n
		c.dirty = true
	}
}

// writeFrames writes the batch's messages as websocket frames: as they are
// to a v1 client, re-encoded to the legacy JSON (binary with buffers)
// otherwise. Small frames are gathered into one buffer; a large payload
// is written from where it is. Holding wsem keeps control frames (pings,
// pongs, close) from landing inside a data frame.
func (c *conn) writeFrames(batch []outItem) error {
	select {
	case c.wsem <- struct{}{}:
	case <-c.quit:
		return errConnClosed
	}
	defer func() { <-c.wsem }()
	bp := frameBufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= 1<<20 { // do not let one huge output pin memory
			*bp = buf[:0]
			frameBufPool.Put(bp)
		}
	}()
	size := 0
	for _, it := range batch {
		size += len(it.data)
	}
	nc := c.ws.NetConn()
	// Slow clients get time in proportion to the write, then are cut off
	// rather than hold the consumer forever.
	_ = nc.SetWriteDeadline(time.Now().Add(30*time.Second + time.Duration(size>>18)*time.Second))
	for _, it := range batch {
		if !it.write {
			continue
		}
		op, payload, ok := c.encode(it)
		if !ok {
			continue
		}
		buf = appendFrameHeader(buf, op, len(payload))
		if len(payload) < largeFrame || !c.v1 {
			buf = append(buf, payload...)
			continue
		}
		if _, err := nc.Write(buf); err != nil {
			return err
		}
		buf = buf[:0]
		if _, err := nc.Write(payload); err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		if _, err := nc.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// encode returns the frame opcode and payload of one message for this
// client: the message itself, or for a legacy client its re-encoding.
func (c *conn) encode(it outItem) (int, []byte, bool) {
	if c.v1 {
		return fws.BinaryMessage, it.data, true
	}
	f, err := broker.DecodeV1(it.data)
	if err != nil {
		c.log.Warn().Err(err).Msg("dropping malformed kernel message")
		return 0, nil, false
	}
	msgID, msgType := it.h.Get(broker.HeaderMsgID), it.h.Get(broker.HeaderMsgType)
	if msgID == "" || msgType == "" {
		if mh, err := broker.ParseHeader(f.Header); err == nil {
			msgID, msgType = mh.MsgID, mh.MsgType
		}
	}
	if len(f.Buffers) == 0 {
		return fws.TextMessage, f.AppendLegacyJSON(nil, msgID, msgType, true), true
	}
	return fws.BinaryMessage, f.AppendLegacyBinary(nil, msgID, msgType), true
}

// appendFrameHeader appends the header of one unfragmented, unmasked
// (server to client) websocket frame of n payload bytes (RFC 6455 5.2).
func appendFrameHeader(b []byte, op, n int) []byte {
	b = append(b, 0x80|byte(op))
	switch {
	case n <= 125:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// seenSeq is the stream sequence up to which this connection is done:
// everything it received is written (or needs no writing).
func (c *conn) seenSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.qmu.Lock()
	idle := c.pending == 0 && len(c.held) == 0
	c.qmu.Unlock()
	if idle {
		return c.seen
	}
	return c.written
}

// writeControl writes a control frame (ping, pong, close) between data
// writes, waiting at most wait for one in progress; it reports whether it
// wrote.
func (c *conn) writeControl(typ int, data []byte, wait time.Duration) bool {
	if wait <= 0 {
		select {
		case c.wsem <- struct{}{}:
		default:
			return false
		}
	} else {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case c.wsem <- struct{}{}:
		case <-t.C:
			return false
		}
	}
	defer func() { <-c.wsem }()
	return c.ws.WriteControl(typ, data, time.Now().Add(time.Second)) == nil
}
