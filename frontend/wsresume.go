package frontend

// The resume protocol of a websocket session: where a (re)connecting
// session starts reading the kernel's output, how a client's resume_after
// is placed among what was written before, and the session record that
// carries the cursor from one front-end to the next.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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
		c.recRun, c.recThrough, c.recInFlight = cs.LiveRun, cs.LiveThrough, cs.LiveInFlight
		c.wRun, c.wThrough = cs.LiveRun, cs.LiveThrough
		if c.resumeAfter != "" {
			c.seekID = c.resumeAfter
			c.seekEnd = max(cs.InFlight, cs.Cursor)
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

// seek places a whole message at the start of a connection whose client
// sent resume_after, until the client's last message is found or known
// not to be there; it returns what to hand to the writer (nothing while
// messages are held). mu is held.
//
// At or before the saved cursor nothing is written: every such message
// was written before, received or not. If the client's last message is
// among them, the client missed everything after it (an abrupt TCP drop
// loses what sat in buffers), so delivery restarts right after it. Past
// the cursor, the messages up to the record's InFlight (a socket write
// under way when the front-end died), or else the first message for this
// session, may have reached the client without being recorded: they are
// held; if the client's last message is among them, it and what came
// before it are not sent again; otherwise they are all delivered. Either
// way seeking ends there.
func (c *conn) seek(it outItem) []outItem {
	routed := c.routed(it.h, it.subject)
	if it.seq <= c.skipUpTo || c.writtenLive(it) {
		if routed && msgIDOf(it.data, it.h) == c.seekID {
			c.log.Debug().Str("resume_after", c.seekID).Uint64("seq", it.seq).Uint64("saved_cursor", c.skipUpTo).
				Msg("resume_after found at or before the saved cursor: delivering from right after it")
			c.seekID = ""
			// Inside a batch, the rest of the batch is still to come.
			upTo := it.seq
			if !it.last {
				upTo--
			}
			if c.writtenLive(it) {
				// What follows it was not received: no longer written.
				c.skipUpTo = max(c.skipUpTo, upTo)
				c.recThrough = it.num
				if !it.last {
					c.recThrough--
				}
				if c.wRun == it.run {
					c.wThrough = min(c.wThrough, c.recThrough)
				}
				c.cursor, c.dirty = max(c.cursor, upTo), true
				return nil
			}
			c.skipUpTo, c.cursor, c.dirty = upTo, upTo, true
		}
		return nil
	}
	if routed && msgIDOf(it.data, it.h) == c.seekID {
		c.log.Debug().Str("resume_after", c.seekID).Uint64("seq", it.seq).Int("held", len(c.held)).
			Msg("resume_after is past the saved cursor: not sent again, nor what came before it")
		c.seekID = ""
		out := append(c.held, it)
		for i := range out {
			out[i].write, out[i].data = false, nil
		}
		c.held, c.heldRouted = nil, false
		return out
	}
	c.held = append(c.held, it)
	c.heldRouted = c.heldRouted || routed
	inLiveFlight := it.run != "" && it.run == c.recRun && it.num <= c.recInFlight
	if it.seq < c.seekEnd || inLiveFlight || !it.last {
		return nil // the rest of the window (or of the batch) may hold it
	}
	out := c.held
	c.held = nil
	if c.heldRouted {
		c.log.Debug().Str("resume_after", c.seekID).Uint64("saved_cursor", c.skipUpTo).
			Msg("resume_after not found: resuming after the saved cursor")
		c.seekID, c.heldRouted = "", false
	}
	return out
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

// persistLocked publishes the session record right after a socket write
// (or, with inFlight set, right before one of several messages), before
// the next write: if this process dies now (SIGKILL, OOM), the bytes
// already handed to the kernel still reach the client, and the session
// record must say so, or the front-end that takes over sends them again.
// So the record leaves the process at once (a publish on the bucket's
// subject, flushed in place rather than by the client's flusher
// goroutine), leaving a window of a few microseconds instead of the
// up-to-a-second of the periodic save, which still confirms it. mu is
// held, which keeps every write of the record in cursor order on the
// connection.
func (c *conn) persistLocked() {
	_ = c.s.bus.SaveCursor(c.key, c.recordLocked(true)) // on error the periodic save retries
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
	c.dirty = false
	fut, err := c.s.bus.SaveCursorAsync(c.key, c.recordLocked(connected))
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
	if c.inFlight > c.cursor {
		cs.InFlight = c.inFlight
	}
	cs.LiveRun, cs.LiveThrough = c.wRun, c.wThrough
	if c.liveInFlight.run != "" {
		if c.liveInFlight.run != c.wRun {
			cs.LiveRun, cs.LiveThrough = c.liveInFlight.run, 0
		}
		cs.LiveInFlight = c.liveInFlight.n
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
