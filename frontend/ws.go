package frontend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	fws "github.com/fasthttp/websocket"
	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// SubprotocolV1 is the binary kernel websocket protocol of jupyter_server
// 2 and JupyterLab 4; clients that offer nothing get the legacy JSON one.
const SubprotocolV1 = "v1.kernel.websocket.jupyter.org"

// Websocket close codes used here.
const (
	closeNormal         = 1000 // kernel gone or session moved: do not reconnect
	closeInternal       = 1011
	closeServiceRestart = 1012 // front-end stopping: reconnect (elsewhere)
)

const (
	localsKernel  = "kb.kernel"
	localsActor   = "kb.actor"
	localsSession = "kb.session"
	localsStart   = "kb.start"
	localsFirst   = "kb.first"
	localsResume  = "kb.resume"
	// wsBufferSize is the read buffer of each connection and the size of
	// the pooled write buffers: small, because an idle connection should
	// cost little; large messages simply take more reads.
	wsBufferSize = 4 << 10
	// partialMaxAge drops the memory of a chunked message whose publisher
	// died mid-way (the Reassembler forgets it after the same time).
	partialMaxAge = 5 * time.Minute
	// maxResumeAfter bounds the resume_after parameter: a msg_id is a
	// UUID or the like.
	maxResumeAfter = 256
	// resumeLookback is how far before a session's saved cursor a
	// connection with resume_after looks for the client's last message, in
	// KB_IO stream sequences (shared by all kernels, so it is at most this
	// many of the kernel's messages). It bounds the work of a reconnect;
	// what a client can miss behind the cursor is what sat in socket
	// buffers when its connection dropped.
	resumeLookback = 1000
)

// writeBufferPool lends write buffers to connections only while they
// write, so idle connections hold none.
var writeBufferPool = &sync.Pool{}

// legacyBufPool holds buffers for the legacy re-encoding of outputs.
var legacyBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// wsPrecheck refuses a websocket before the upgrade, with a JSON error
// the client can read: bad origin, not an upgrade, unknown kernel. A kernel
// still starting is waited for until its launch deadline.
func (s *Server) wsPrecheck(c *fiber.Ctx) error {
	if err := s.checkOrigin(c); err != nil {
		return err
	}
	if !websocket.IsWebSocketUpgrade(c) {
		return broker.Errorf(broker.ErrBadRequest, "this endpoint needs a websocket upgrade")
	}
	resumeAfter, err := resumeAfterParam(c)
	if err != nil {
		return err
	}
	id := c.Params("id")
	who := identityOf(c)
	rec, err := s.waitStarted(who, id)
	if err != nil {
		return err
	}
	session := c.Query("session_id")
	if session == "" {
		session = newID()
		s.log.Warn().Str("kernel_id", id).Str("session", session).Msg("websocket without session_id: using a random session, so it cannot resume after a reconnect")
	}
	// A new session sees what the kernel publishes from now on. "Now"
	// must be before the client learns the socket is open, or output of
	// its first request could slip in ahead of the subscription.
	// While the stream's leader moves (a NATS node died) this fails for
	// a few seconds: retry rather than refuse the client.
	var info *jetstream.StreamInfo
	err = retryBus(s.ctx, busRetryFor, func(ctx context.Context) (err error) {
		info, err = s.ioStream.Info(ctx)
		return err
	})
	if err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "cannot read the kernel output stream")
	}
	c.Locals(localsKernel, rec)
	c.Locals(localsSession, session)
	c.Locals(localsStart, info.State.LastSeq)
	c.Locals(localsFirst, info.State.FirstSeq)
	c.Locals(localsResume, resumeAfter)
	c.Locals(localsActor, actorOf(who))
	return c.Next()
}

// resumeAfterParam reads the optional resume_after query parameter: the
// header.msg_id of the last message the client received in its session.
func resumeAfterParam(c *fiber.Ctx) (string, error) {
	args := c.Context().QueryArgs()
	if !args.Has("resume_after") {
		return "", nil
	}
	v := string(args.Peek("resume_after"))
	if v == "" || len(v) > maxResumeAfter {
		return "", broker.Errorf(broker.ErrBadRequest,
			"resume_after must be the msg_id of the last message received, 1 to %d bytes (got %d)", maxResumeAfter, len(v))
	}
	return v, nil
}

// waitStarted returns the record of a kernel that is running (or
// restarting), waiting while it starts.
func (s *Server) waitStarted(who *auth.Identity, id string) (*broker.Kernel, error) {
	rec, _, err := s.readKernel(s.ctx, id)
	if err != nil {
		return nil, err
	}
	// Another user's kernel is absent, before anything else is revealed.
	if !may(who, rec.Owner) {
		return nil, kernelNotFound(id)
	}
	if !rec.State.Starting() {
		return rec, liveErr(rec)
	}
	ctx, cancel := context.WithDeadline(s.ctx, rec.Deadline.Add(time.Second))
	defer cancel()
	w, err := s.watchKernel(ctx, id)
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, broker.Errorf(broker.ErrStartTimeout, "Kernel %s did not start in time", id)
		case e, ok := <-w.Updates():
			if !ok {
				return nil, broker.Errorf(broker.ErrUnavailable, "watch of kernel %s ended", id)
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				return nil, kernelNotFound(id)
			}
			var k broker.Kernel
			if json.Unmarshal(e.Value(), &k) != nil {
				continue
			}
			if !k.State.Starting() {
				return &k, liveErr(&k)
			}
		}
	}
}

// liveErr says why a kernel that is not starting cannot take a websocket.
func liveErr(k *broker.Kernel) error {
	switch k.State {
	case broker.StateRunning, broker.StateRestarting:
		return nil
	case broker.StateDead:
		return broker.Errorf(broker.ErrKernelGone, "Kernel %s is dead: %s", k.ID, k.Reason)
	default:
		return kernelNotFound(k.ID)
	}
}

func (s *Server) wsHandler() fiber.Handler {
	return websocket.New(s.serveWS, websocket.Config{
		HandshakeTimeout: 10 * time.Second,
		Subprotocols:     []string{SubprotocolV1},
		ReadBufferSize:   wsBufferSize,
		WriteBufferSize:  wsBufferSize,
		WriteBufferPool:  writeBufferPool,
		RecoverHandler: func(c *websocket.Conn) {
			if r := recover(); r != nil {
				s.log.Error().Interface("panic", r).Msg("websocket handler panicked")
			}
		},
	})
}

// conn is one client websocket of one kernel session.
type conn struct {
	s       *Server
	ws      *fws.Conn // the inner conn: contrib's wrapper is pooled and reused after the handler returns
	rec     *broker.Kernel
	kernel  string
	session string
	actor   string // the identity that opened it, for events
	key     string // kb_sessions key
	v1      bool
	log     zerolog.Logger
	inSubj  string
	// streamEnd is the output stream's last sequence when the client
	// asked to connect: where a new session starts; streamFirst its first.
	streamEnd, streamFirst uint64
	// resumeAfter is the msg_id the client says it received last (the
	// resume_after parameter), or empty.
	resumeAfter string

	// mu guards delivery: the cursor, reassembly and data writes. The
	// consumer's handler holds it while it writes, so once finish has set
	// finished under mu nothing more is delivered or counted.
	mu       sync.Mutex
	cc       jetstream.ConsumeContext
	cons     jetstream.Consumer // the output consumer, deleted when the socket closes
	finished bool
	broken   bool   // a write failed: deliver nothing more
	seen     uint64 // stream sequence of the last message received
	cursor   uint64 // stream sequence of the last whole message handled
	skipUpTo uint64 // messages completing at or before were delivered before a reconnect
	// seekID, while not empty, is the client's last msg_id still being
	// looked for at the start of a resumed connection (see seek).
	seekID  string
	dirty   bool
	partial map[string]partialStart // chunked messages in progress
	reasm   kbjs.Reassembler

	writing atomic.Bool // a data write is in progress: pings skip this one

	saveMu sync.Mutex // orders session record writes
	saved  bool       // the final (disconnected) record is written

	once sync.Once
	done chan struct{}
}

type partialStart struct {
	seq uint64
	at  time.Time
}

// sessionKVKey is the kb_sessions key of a session. A session id that is
// not a safe KV key token (JupyterLab's are UUIDs, but any string may
// come) is stored base64-encoded, so every id maps to one key.
func sessionKVKey(kernel, session string) string {
	safe := session != "" && !strings.HasPrefix(session, "b64_")
	for i := 0; safe && i < len(session); i++ {
		ch := session[i]
		safe = ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '='
	}
	if !safe {
		session = "b64_" + base64.RawURLEncoding.EncodeToString([]byte(session))
	}
	return broker.SessionKey(kernel, session)
}

// serveWS runs one websocket from upgrade to close, on the goroutine
// fasthttp gave the hijacked connection; it is the connection's reader.
func (s *Server) serveWS(w *websocket.Conn) {
	defer holdWSSlot(w.Locals(localsWSSlot))() // the caller's websocket slot (guard.go)
	rec, _ := w.Locals(localsKernel).(*broker.Kernel)
	session, _ := w.Locals(localsSession).(string)
	streamEnd, _ := w.Locals(localsStart).(uint64)
	streamFirst, _ := w.Locals(localsFirst).(uint64)
	resumeAfter, _ := w.Locals(localsResume).(string)
	actor, _ := w.Locals(localsActor).(string)
	if rec == nil {
		_ = w.Close()
		return
	}
	c := &conn{
		s: s, ws: w.Conn, rec: rec, kernel: rec.ID, session: session, actor: actor,
		key: sessionKVKey(rec.ID, session), v1: w.Subprotocol() == SubprotocolV1,
		inSubj: broker.SubjectIn(rec.ID), done: make(chan struct{}), streamEnd: streamEnd,
		streamFirst: streamFirst, resumeAfter: resumeAfter,
	}
	c.log = s.log.With().Str("kernel_id", c.kernel).Str("session", session).Logger()
	if old := s.hub.register(c); old != nil {
		old.finish(closeNormal, "replaced by a newer connection of the same session")
	}
	// Shutdown sets draining before it closes what is registered, so a
	// connection either is closed by it or sees the flag here.
	if s.draining.Load() {
		c.finish(closeServiceRestart, "front-end shutting down")
		return
	}
	if err := c.start(); err != nil {
		c.log.Warn().Err(err).Msg("websocket setup failed")
		c.finish(closeInternal, "could not subscribe to kernel output")
		<-c.done
		return
	}
	// The kernel may have ended between the pre-check and register; the
	// watcher found no socket to close then, so look again now.
	if s.state.gone(c.kernel) {
		s.hub.kernelEnded(c.kernel)
	}
	ev := broker.NewEvent(broker.EvClientConnected, rec)
	ev.Session, ev.Actor = session, actor
	s.emit(ev)
	c.log.Debug().Bool("v1", c.v1).Msg("websocket connected")
	c.readLoop()
	c.finish(closeNormal, "")
	<-c.done
}

// start finds where the session resumes, subscribes to the kernel's
// output from there and records the session as connected here. It runs
// before the first client message is read, so no reply can be missed.
func (c *conn) start() error {
	var start uint64
	err := retryBus(c.s.ctx, busRetryFor, func(ctx context.Context) (err error) {
		start, err = c.resumePoint(ctx)
		return err
	})
	if err != nil {
		return err
	}
	var cons jetstream.Consumer
	err = retryBus(c.s.ctx, busRetryFor, func(ctx context.Context) (err error) {
		cons, err = c.s.bus.JS.OrderedConsumer(ctx, broker.StreamIO, jetstream.OrderedConsumerConfig{
			FilterSubjects:    []string{broker.SubjectOutAll(c.kernel)},
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       start,
			InactiveThreshold: outputConsumerIdle,
		})
		return err
	})
	if err != nil {
		return err
	}
	// The pull may hold a few whole chunks, never more: chunks are up
	// to max_payload each.
	maxBytes := max(16<<20, 3*int(c.s.bus.NC.MaxPayload()))
	cc, err := cons.Consume(c.deliver, jetstream.PullMaxBytes(maxBytes),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			c.log.Debug().Err(err).Msg("output consumer")
		}))
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		cc.Stop()
		go c.s.dropConsumer(cons)
		return errors.New("connection closed during setup")
	}
	c.cc, c.cons = cc, cons
	c.mu.Unlock()
	c.save(true, false)
	return nil
}

// resumePoint returns the stream sequence to read from. A known session
// resumes after its saved cursor; if another front-end still holds it, that
// one is asked to let go first, so its final cursor is the one used. A
// known session whose client sent resume_after reads from up to
// resumeLookback earlier, to find the client's last message (see seek). A
// new session starts after where the stream ended when the client asked.
func (c *conn) resumePoint(ctx context.Context) (uint64, error) {
	cs, found, err := c.loadSession(ctx)
	if err != nil {
		return 0, err
	}
	if found && cs.Connected && cs.Frontend != "" && cs.Frontend != c.s.cfg.FrontendID {
		req, _ := json.Marshal(broker.SessionRelease{Kernel: c.kernel, Session: c.session})
		m := &nats.Msg{Subject: broker.SubjectFrontend(cs.Frontend), Data: req, Header: nats.Header{}}
		m.Header.Set(broker.HeaderType, broker.TypeSessionRelease)
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		_, rerr := c.s.bus.NC.RequestMsgWithContext(rctx, m)
		rcancel()
		if rerr != nil {
			c.log.Debug().Err(rerr).Str("holder", cs.Frontend).Msg("previous front-end did not release the session; resuming from its last saved cursor")
		}
		if cs, found, err = c.loadSession(ctx); err != nil {
			return 0, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if found {
		start := cs.Cursor + 1
		if cs.ReplayFrom > 0 && cs.ReplayFrom < start {
			start = cs.ReplayFrom
		}
		c.cursor, c.skipUpTo = cs.Cursor, cs.Cursor
		if c.resumeAfter != "" {
			c.seekID = c.resumeAfter
			back := max(start-min(start-1, resumeLookback), c.streamFirst)
			start = min(start, back)
		}
		c.seen = start - 1
		return start, nil
	}
	if c.resumeAfter != "" {
		c.log.Debug().Str("resume_after", c.resumeAfter).Msg("resume_after ignored: the session has no record, so it starts as new")
	}
	last := c.streamEnd
	c.cursor, c.skipUpTo, c.seen = last, last, last
	return last + 1, nil
}

func (c *conn) loadSession(ctx context.Context) (broker.ClientSession, bool, error) {
	var cs broker.ClientSession
	e, err := c.s.bus.Sessions.Get(ctx, c.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return cs, false, nil
	}
	if err != nil {
		return cs, false, err
	}
	if err := json.Unmarshal(e.Value(), &cs); err != nil {
		return cs, false, nil // unreadable: start over as a new session
	}
	return cs, true, nil
}

// deliver is the output consumer's handler: reassemble, route, write,
// and advance the cursor only past whole messages.
func (c *conn) deliver(m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	seq := meta.Sequence.Stream
	h := m.Headers()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || c.broken || seq <= c.seen {
		return
	}
	c.seen = seq
	nm := nats.Msg{Subject: m.Subject(), Header: h, Data: m.Data()}
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
		return
	}
	if !whole {
		return
	}
	if chunkID != "" {
		delete(c.partial, chunkID)
	}
	if c.seekID != "" && c.seek(seq, data, h, m.Subject()) {
		return
	}
	wrote := false
	if seq > c.skipUpTo && c.routed(h, m.Subject()) {
		if err := c.write(data, h); err != nil {
			// Not counted as delivered: a reconnect gets it again.
			c.broken = true
			c.log.Debug().Err(err).Msg("websocket write failed")
			_ = c.ws.NetConn().Close() // ends the read loop, which finishes
			return
		}
		wrote = true
		c.s.relayToClient(h, m.Subject(), len(data))
	}
	// Replayed chunks may complete messages behind the saved cursor; the
	// cursor never moves back for them.
	c.cursor = max(c.cursor, seq)
	c.dirty = true
	if wrote {
		c.persistWritten()
	}
}

// seek handles a whole message at the start of a connection whose client
// sent resume_after, until the client's last message is placed; it
// returns true when the message must not be delivered. mu is held.
//
// At or before the saved cursor nothing is written: every such message
// was written before, received or not. If the client's last message is
// among them, the client missed everything after it (an abrupt TCP drop
// loses what sat in buffers), so delivery restarts right after it. Past
// the cursor, the first message for this session is the one a front-end
// may have written just before it died, without recording it: skipped if
// it is the client's last, delivered otherwise, and seeking ends.
func (c *conn) seek(seq uint64, data []byte, h nats.Header, subject string) bool {
	routed := c.routed(h, subject)
	if seq <= c.skipUpTo {
		if routed && msgIDOf(data, h) == c.seekID {
			c.log.Debug().Str("resume_after", c.seekID).Uint64("seq", seq).Uint64("saved_cursor", c.skipUpTo).
				Msg("resume_after found at or before the saved cursor: delivering from right after it")
			c.seekID = ""
			c.skipUpTo, c.cursor, c.dirty = seq, seq, true
		}
		return true
	}
	if !routed {
		return false
	}
	want := c.seekID
	c.seekID = ""
	if msgIDOf(data, h) == want {
		c.log.Debug().Str("resume_after", want).Uint64("seq", seq).
			Msg("resume_after is the message after the saved cursor: not sent again")
		c.cursor, c.dirty = seq, true
		return true
	}
	c.log.Debug().Str("resume_after", want).Uint64("saved_cursor", c.skipUpTo).
		Msg("resume_after not found: resuming after the saved cursor")
	return false
}

// msgIDOf returns header.msg_id of a whole kernel message: from the
// Kb-Msg-Id header (every chunk of a chunked message carries them all),
// else from the message itself.
func msgIDOf(data []byte, h nats.Header) string {
	if id := h.Get(broker.HeaderMsgID); id != "" {
		return id
	}
	f, err := broker.DecodeV1(data)
	if err != nil {
		return ""
	}
	mh, err := broker.ParseHeader(f.Header)
	if err != nil {
		return ""
	}
	return mh.MsgID
}

// persistWritten records the cursor of a message just written, before the
// next one is: if this process dies now (SIGKILL, OOM), the bytes already
// handed to the kernel still reach the client, and the session record must
// say so, or the front-end that takes over sends them again. So the record
// leaves the process right after the write (a publish on the bucket's
// subject, flushed in place rather than by the client's flusher goroutine),
// leaving a window of a few microseconds instead of the up-to-a-second of
// the periodic save. The periodic save still confirms it. mu is held, which
// keeps every write of the record in cursor order on the connection.
func (c *conn) persistWritten() {
	data, _ := json.Marshal(c.recordLocked(true))
	nc := c.s.bus.NC
	if err := nc.PublishMsg(&nats.Msg{Subject: kvSubject(broker.BucketSessions, c.key), Data: data}); err != nil {
		return // the periodic save retries
	}
	// Flush in place: a ping written by this goroutine pushes the buffered
	// record out with it. Its pong is not waited for.
	_ = nc.FlushTimeout(time.Nanosecond)
}

// kvSubject is the subject a KV bucket stores key under.
func kvSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

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

// write sends one kernel message, as it is to a v1 client, re-encoded to
// the legacy JSON (binary with buffers) otherwise. mu is held.
func (c *conn) write(data []byte, h nats.Header) error {
	c.writing.Store(true)
	defer c.writing.Store(false)
	// Slow clients get time in proportion to the message, then are cut
	// off rather than hold the consumer forever.
	_ = c.ws.SetWriteDeadline(time.Now().Add(30*time.Second + time.Duration(len(data)>>18)*time.Second))
	if c.v1 {
		return c.ws.WriteMessage(fws.BinaryMessage, data)
	}
	f, err := broker.DecodeV1(data)
	if err != nil {
		c.log.Warn().Err(err).Msg("dropping malformed kernel message")
		return nil
	}
	msgID, msgType := h.Get(broker.HeaderMsgID), h.Get(broker.HeaderMsgType)
	if msgID == "" || msgType == "" {
		if mh, err := broker.ParseHeader(f.Header); err == nil {
			msgID, msgType = mh.MsgID, mh.MsgType
		}
	}
	bp := legacyBufPool.Get().(*[]byte)
	var out []byte
	typ := fws.TextMessage
	if len(f.Buffers) == 0 {
		out = f.AppendLegacyJSON((*bp)[:0], msgID, msgType, true)
	} else {
		out = f.AppendLegacyBinary((*bp)[:0], msgID, msgType)
		typ = fws.BinaryMessage
	}
	err = c.ws.WriteMessage(typ, out)
	if cap(out) <= 1<<20 { // do not let one huge output pin memory
		*bp = out[:0]
		legacyBufPool.Put(bp)
	}
	return err
}

// readLoop reads client messages until the connection ends.
func (c *conn) readLoop() {
	ws := c.ws
	ws.SetReadLimit(c.s.cfg.WSReadLimit)
	// A client that answers neither pings nor sends anything for this
	// long is gone (half-open TCP); every websocket client answers pings.
	idle := 2*c.s.cfg.WSPingInterval + 10*time.Second
	_ = ws.SetReadDeadline(time.Now().Add(idle))
	ws.SetPongHandler(func(string) error { return ws.SetReadDeadline(time.Now().Add(idle)) })
	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			if fws.IsUnexpectedCloseError(err, closeNormal, 1001, 1005) && !errors.Is(err, context.Canceled) {
				c.log.Debug().Err(err).Msg("websocket read ended")
			}
			return
		}
		_ = ws.SetReadDeadline(time.Now().Add(idle))
		c.handleInput(typ, data)
		// handleInput may have waited out a bus outage.
		_ = ws.SetReadDeadline(time.Now().Add(idle))
	}
}

// handleInput decodes one client frame and publishes it to the kernel.
// Malformed frames are logged and dropped; the connection stays.
func (c *conn) handleInput(typ int, data []byte) {
	var (
		f    broker.Frame
		err  error
		body []byte
	)
	switch {
	case typ == fws.BinaryMessage && c.v1:
		f, err = broker.DecodeV1(data)
		body = data // already the bus envelope
	case typ == fws.BinaryMessage:
		f, err = broker.DecodeLegacyBinary(data)
	case len(data) > 0 && data[0] == '{' && utf8.Valid(data):
		f, err = broker.DecodeLegacyJSON(data)
	default:
		// jupyter_server's gateway proxy forwards a browser's binary
		// frame as a text frame of raw bytes.
		f, err = broker.DecodeLegacyBinary(data)
	}
	if err != nil {
		c.log.Warn().Err(err).Int("bytes", len(data)).Msg("dropping malformed client message")
		return
	}
	if !broker.IsClientChannel(f.Channel) {
		c.log.Debug().Str("channel", f.Channel).Msg("dropping client message on a channel clients cannot send on")
		return
	}
	hdr, err := broker.ParseHeader(f.Header)
	if err != nil {
		c.log.Warn().Err(err).Msg("dropping client message with an unreadable header")
		return
	}
	if body == nil {
		body = f.V1()
	}
	m := &nats.Msg{Subject: c.inSubj, Data: body, Header: nats.Header{
		broker.HeaderChannel: {f.Channel},
		broker.HeaderMsgType: {hdr.MsgType},
		broker.HeaderMsgID:   {hdr.MsgID},
		broker.HeaderSession: {c.session},
		broker.HeaderVersion: {broker.EnvelopeVersion},
	}}
	if hdr.MsgID != "" {
		// A client resending the same message (or a retried publish)
		// reaches the kernel once.
		m.Header[jetstream.MsgIDHeader] = []string{c.kernel + ":" + hdr.MsgID}
	}
	// Split once, so that a retried chunk keeps its chunk id; each is
	// retried with its own Nats-Msg-Id while the stream has no leader (a
	// NATS node died), so nothing the client sent is lost or doubled, and
	// the read loop waits meanwhile, which keeps the client's order.
	for _, part := range kbjs.Split(c.s.bus.NC, m) {
		err := retryBus(c.s.ctx, inputRetryFor, func(ctx context.Context) error {
			_, err := c.s.bus.JS.PublishMsg(ctx, part)
			return err
		})
		if err != nil {
			c.log.Error().Err(err).Str("msg_type", hdr.MsgType).Msg("could not pass a client message to the kernel")
			return
		}
	}
	c.s.ops.relay.Add(metrics.ToKernel, f.Channel, len(body))
}

const (
	// busRetryFor bounds the retries of a websocket's setup: a stream
	// leader election takes seconds, a client waits for its handshake.
	busRetryFor = 30 * time.Second
	// inputRetryFor bounds the retries of one client message: about the
	// time a client waits for a reply.
	inputRetryFor = 60 * time.Second
)

// retryBus runs op, each try bounded by 10 s, until it succeeds, ctx ends
// or total has passed, backing off from 100 ms to 2 s between tries. An
// op is idempotent (reads, or publishes with a Nats-Msg-Id).
func retryBus(ctx context.Context, total time.Duration, op func(context.Context) error) error {
	deadline := time.Now().Add(total)
	wait := 100 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, min(10*time.Second, max(time.Until(deadline), time.Second)))
		err := op(tctx)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		kbjs.CountRetry()
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// ping is called by the hub's ticker. A connection busy writing is alive
// enough and skipped, so one slow client never stalls the ticker.
func (c *conn) ping() {
	if c.writing.Load() || c.isFinished() {
		return
	}
	_ = c.ws.WriteControl(fws.PingMessage, nil, time.Now().Add(time.Second))
}

func (c *conn) seenSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen
}

func (c *conn) isFinished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finished
}

func (c *conn) saveIfDirty() {
	c.mu.Lock()
	dirty := c.dirty
	c.mu.Unlock()
	if dirty {
		c.save(true, false)
	}
}

// save writes the session record: the resume cursor and whether this
// front-end holds the session. After the final write nothing else is
// written, so a late tick cannot mark a closed session connected again.
func (c *conn) save(connected, final bool) {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	if c.saved {
		return
	}
	// Not c.s.ctx: the final save happens during Shutdown.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if final && c.s.state.gone(c.kernel) {
		// Nobody will resume a session of a kernel that is gone.
		_ = c.s.bus.Sessions.Delete(ctx, c.key)
		c.saved = true
		return
	}
	// The record is published under mu, like persistWritten's, so the
	// bucket receives cursors in order: an older one never lands last.
	c.mu.Lock()
	data, _ := json.Marshal(c.recordLocked(connected))
	c.dirty = false
	fut, err := c.s.bus.JS.PublishMsgAsync(&nats.Msg{Subject: kvSubject(broker.BucketSessions, c.key), Data: data})
	c.mu.Unlock()
	var rev uint64
	if err == nil {
		select {
		case ack := <-fut.Ok():
			rev = ack.Sequence
		case err = <-fut.Err():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		c.log.Warn().Err(err).Msg("could not save the session cursor")
		c.mu.Lock()
		c.dirty = true
		c.mu.Unlock()
	} else {
		c.s.state.setSession(c.kernel, c.key, connected, rev, false)
	}
	if final {
		c.saved = true
	}
}

// recordLocked is the session record as of now. mu is held.
func (c *conn) recordLocked(connected bool) broker.ClientSession {
	cs := broker.ClientSession{
		Kernel: c.kernel, Session: c.session, Connected: connected, Frontend: c.s.cfg.FrontendID,
		Cursor: c.cursor, Updated: time.Now().UTC(),
	}
	now := time.Now()
	for id, p := range c.partial {
		if now.Sub(p.at) > partialMaxAge {
			delete(c.partial, id)
			continue
		}
		if p.seq <= c.cursor && (cs.ReplayFrom == 0 || p.seq < cs.ReplayFrom) {
			cs.ReplayFrom = p.seq
		}
	}
	return cs
}

// finish ends the connection once: stop the output consumer, say goodbye
// with code, close the socket (which ends the read loop), then save the
// final cursor as disconnected. Safe from any goroutine; concurrent
// callers wait until it is done.
func (c *conn) finish(code int, text string) {
	c.once.Do(func() {
		c.mu.Lock()
		cc, cons := c.cc, c.cons
		c.mu.Unlock()
		if cc != nil {
			cc.Stop()
			go c.s.dropConsumer(cons)
		}
		c.closeNow(code, text)
		c.mu.Lock() // waits for a delivery in progress, cut short by the close
		c.finished = true
		c.mu.Unlock()
		c.save(false, true)
		go c.s.pruneSessions(c.kernel)
		c.s.hub.unregister(c)
		ev := broker.NewEvent(broker.EvClientLeft, c.rec)
		ev.Session, ev.Reason, ev.Actor = c.session, text, c.actor
		c.s.emit(ev)
		c.log.Debug().Int("code", code).Str("why", text).Msg("websocket closed")
		close(c.done)
	})
	<-c.done
}

// closeNow sends a close frame (bounded wait) and closes the socket.
func (c *conn) closeNow(code int, text string) {
	if len(text) > 120 {
		text = text[:120]
	}
	_ = c.ws.WriteControl(fws.CloseMessage, fws.FormatCloseMessage(code, text), time.Now().Add(time.Second))
	_ = c.ws.NetConn().Close()
}
