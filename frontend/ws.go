package frontend

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
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
	// maxSessionID bounds the session_id parameter, which becomes part of
	// a kb_sessions key, so of a NATS subject: the server drops a
	// connection whose protocol line passes 4 KiB, and it would be the
	// front-end's own.
	maxSessionID = 256
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
	if n := len(c.Query("session_id")); n > maxSessionID {
		return broker.Errorf(broker.ErrBadRequest, "session_id must be at most %d bytes (got %d)", maxSessionID, n)
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
	err = kbjs.RetryCtx(s.ctx, busRetryFor, func(ctx context.Context) (err error) {
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
	// inSender names this connection in the numbers of its input
	// (broker.HeaderInSeq), inSeq is the last number; the reader only.
	inSender string
	inSeq    uint64
	// streamEnd is the output stream's last sequence when the client
	// asked to connect: where a new session starts; streamFirst its first.
	streamEnd, streamFirst uint64
	// resumeAfter is the msg_id the client says it received last (the
	// resume_after parameter), or empty.
	resumeAfter string

	// mu guards delivery: the cursor, reassembly and placing. finish sets
	// finished under mu once the writer has stopped, so nothing more is
	// delivered or counted after it.
	mu       sync.Mutex
	cc       *kbjs.Output
	finished bool
	broken   bool // a write failed: deliver nothing more
	// headersOnly: the output consumer delivers headers only (see start
	// and deliver's needsBody).
	headersOnly bool
	seen        uint64 // stream sequence of the last message received
	cursor      uint64 // stream sequence of the last whole message handled
	skipUpTo    uint64 // messages completing at or before were delivered before a reconnect
	// seekID, while not empty, is the client's last msg_id still being
	// looked for at the start of a resumed connection (see seek).
	seekID string
	// seekEnd is the saved record's InFlight (or cursor): messages up to it
	// may have reached the client; held are those past the cursor kept
	// back while seeking, heldRouted whether one of them is for this
	// session.
	seekEnd    uint64
	held       []outItem
	heldRouted bool
	dirty      bool
	partial    map[string]partialStart // chunked messages in progress
	reasm      kbjs.Reassembler
	written    uint64 // the writer is done with every message up to here
	inFlight   uint64 // last message of a multi-message write under way

	// Live output (wslive.go). omu orders what the live path and the
	// stream handler queue; the rest is guarded by mu. liveRun/liveNext:
	// the launcher run last handled and its next number; liveWritten:
	// numbers written live whose stream copy has not come; wRun/wThrough:
	// the last number the writer wrote live (the record's LiveThrough);
	// recRun/recThrough/recInFlight: what the record resumed from says.
	omu                     sync.Mutex
	live                    *kernelLive    // the kernel's shared subscription, once joined
	liveIn                  chan *nats.Msg // live messages for liveLoop (offerLive)
	liveBytes               atomic.Int64   // their size
	liveDone                bool           // finish has taken live: no joining after
	liveRun                 string
	liveNext                uint64
	liveWritten             map[liveKey]struct{}
	liveHoles               map[uint64]struct{} // numbers of holesRun below liveNext neither path handled yet
	holesRun                string
	wRun                    string
	wThrough                uint64
	liveInFlight            liveKey
	recRun                  string
	recThrough, recInFlight uint64

	// The queue between the consumer's handler and the writer (wsout.go).
	qmu     sync.Mutex
	q       []outItem
	qBytes  int
	pending int           // queued or being written
	qwake   chan struct{} // cap 1: something was queued
	qspace  chan struct{} // cap 1: the writer took from the queue
	// wsem is held by whoever writes to the socket: the writer, or a
	// control frame between its writes.
	wsem       chan struct{}
	quit       chan struct{} // closed by finish: writer and handler stop
	writerDone chan struct{}

	saveMu sync.Mutex // orders session record writes
	saved  bool       // the final (disconnected) record is written

	once sync.Once
	done chan struct{}
}

type partialStart struct {
	seq uint64
	at  time.Time
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
		inSubj: broker.SubjectIn(rec.ID), inSender: nuid.Next(), done: make(chan struct{}), streamEnd: streamEnd,
		streamFirst: streamFirst, resumeAfter: resumeAfter,
		qwake: make(chan struct{}, 1), qspace: make(chan struct{}, 1), wsem: make(chan struct{}, 1),
		quit: make(chan struct{}), writerDone: make(chan struct{}),
	}
	go c.writeLoop()
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
	err := kbjs.RetryCtx(c.s.ctx, busRetryFor, func(ctx context.Context) (err error) {
		start, err = c.resumePoint(ctx)
		return err
	})
	if err != nil {
		return err
	}
	// With live output and HeadersOnlyOutput, a socket that starts at the stream's end (a
	// new session, or one that missed nothing) reads headers only: the
	// live path carries the bodies, and deliver fetches those it did not.
	// Replay (something to catch up, resume_after) reads whole messages.
	c.mu.Lock()
	c.headersOnly = c.s.cfg.HeadersOnlyOutput && c.s.liveNC != nil && !c.s.cfg.NoLiveOutput && c.seekID == "" && start > c.streamEnd
	headersOnly := c.headersOnly
	c.mu.Unlock()
	cc, err := c.s.bus.ConsumeOutput(c.s.ctx, c.kernel, start, outputConsumerIdle, busRetryFor, headersOnly, c.deliver, func(err error) {
		c.log.Debug().Err(err).Msg("output consumer")
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		cc.Stop()
		go c.s.dropConsumer(cc)
		return errors.New("connection closed during setup")
	}
	c.cc = cc
	c.mu.Unlock()
	if c.s.liveNC != nil {
		// On the live connection, never the bus's (Config.LiveConn).
		// After the consumer: live messages are written only once the
		// stream has shown which run and number come next. Large output
		// (broker.SubjectOutLarge) never comes this way: the consumer
		// delivers it, and what follows it goes live again once the
		// stream has caught up.
		c.liveIn = make(chan *nats.Msg, c.s.livePending[0])
		go c.liveLoop()
		c.mu.Lock()
		var err error
		if !c.liveDone { // else finish has begun and would not leave it
			c.live, err = c.s.hub.joinLive(c)
		}
		c.mu.Unlock()
		if err != nil {
			c.log.Warn().Err(err).Msg("no live output subscription: delivering from the stream only")
		}
	}
	c.save(true, false)
	return nil
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
	// Pongs go between the writer's writes, never inside one.
	ws.SetPingHandler(func(data string) error {
		c.writeControl(fws.PongMessage, []byte(data), 10*time.Second)
		return nil
	})
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
	// Retried while the stream has no leader (a NATS node died), so
	// nothing the client sent is lost or doubled; the read loop waits
	// meanwhile, which keeps the client's order.
	in := kbjs.Input{Kernel: c.kernel, Session: c.session, Channel: f.Channel,
		MsgType: hdr.MsgType, MsgID: hdr.MsgID, Frame: body}
	if !c.s.cfg.NoLiveInput {
		c.inSeq++
		in.Sender, in.Seq = c.inSender, c.inSeq
	}
	err = c.s.bus.SendInput(c.s.ctx, in, inputRetryFor)
	if err != nil {
		c.log.Error().Err(err).Str("msg_type", hdr.MsgType).Msg("could not pass a client message to the kernel")
		return
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

// ping is called by the hub's ticker. A connection busy writing is alive
// enough and skipped, so one slow client never stalls the ticker.
func (c *conn) ping() {
	if c.isFinished() {
		return
	}
	c.writeControl(fws.PingMessage, nil, 0)
}

func (c *conn) isFinished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finished
}

// finish ends the connection once: stop the output consumer, say goodbye
// with code, close the socket (which ends the read loop), then save the
// final cursor as disconnected. Safe from any goroutine; concurrent
// callers wait until it is done.
func (c *conn) finish(code int, text string) {
	c.once.Do(func() {
		c.mu.Lock()
		cc, live := c.cc, c.live
		c.liveDone = true
		c.mu.Unlock()
		if live != nil {
			c.s.hub.leaveLive(c, live)
		}
		if cc != nil {
			cc.Stop()
			go c.s.dropConsumer(cc)
		}
		close(c.quit)
		c.closeNow(code, text)
		<-c.writerDone // a write in progress is cut short by the close
		c.mu.Lock()
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
	c.writeControl(fws.CloseMessage, fws.FormatCloseMessage(code, text), time.Second)
	_ = c.ws.NetConn().Close()
}
