package frontend

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
)

// The audit API for administrators (and the admin UI):
//
//	GET /api/events?kernel=&user=&type=a,b&since=&until=&cursor=&limit=
//	    one page, oldest first: {"events":[{"seq":N,...}], "next_cursor":N, "more":bool}
//	GET /api/events/stream?kernel=&user=&type=&since=&cursor=
//	    server-sent events, one per audit event ("id: <seq>", "data: <event>"),
//	    resumable with Last-Event-ID; without since or cursor it starts with
//	    the events written from now on.
//
// Filters read like `kernelbus events` flags and fail alike, naming the
// parameter. Administrators read every event, other users their own
// kernels' only.

const (
	defaultEventPage = 100
	maxEventPage     = 1000
	// eventScanMax bounds the events one page request looks at, so that a
	// rare user or time filter cannot hold a request for the whole log.
	eventScanMax = 50000
	// sseHeartbeat keeps proxies from closing a quiet feed.
	sseHeartbeat = 15 * time.Second
)

// emitNow writes an event before the caller goes on, for events that must
// precede what other parts report next (causal order in the audit log).
func (s *Server) emitNow(ev broker.Event) {
	ev.Source = "frontend"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.bus.Emit(ctx, ev); err != nil {
		s.log.Warn().Err(err).Str("event", ev.Type).Str("kernel_id", ev.Kernel).Msg("emit event")
	}
}

// eventFilter reads the filter query parameters. A user who is not an
// administrator reads the events of their own kernels only (events carry
// the kernel's owner as user).
func eventFilter(c *fiber.Ctx, now time.Time) (broker.EventFilter, error) {
	f := broker.EventFilter{Kernel: strings.TrimSpace(c.Query("kernel")), User: c.Query("user")}
	if who := identityOf(c); !who.IsAdmin() {
		if f.User != "" && f.User != who.Name {
			return f, broker.Errorf(broker.ErrForbidden, "user: you may read the events of your own kernels only; leave user out or pass %q", who.Name)
		}
		f.User = who.Name
	}
	// The kernel id goes into a subject, so into a NATS protocol line,
	// which the server refuses past 4 KiB by closing the connection: the
	// front-end's own. A kernel id is one short subject token.
	if f.Kernel != "" && !validKernelID(f.Kernel) {
		return f, broker.Errorf(broker.ErrBadRequest, "kernel: %.80q is not a kernel id (letters, digits, - and _, at most 128 bytes)", f.Kernel)
	}
	var err error
	if f.Types, err = broker.ParseEventTypes("type", c.Query("type")); err != nil {
		return f, err
	}
	if f.Since, err = broker.ParseTime("since", c.Query("since"), now); err != nil {
		return f, err
	}
	if f.Until, err = broker.ParseTime("until", c.Query("until"), now); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return f, broker.Errorf(broker.ErrBadRequest, "until: %s is before since %s", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	return f, nil
}

func parseCursor(name, v string) (uint64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, broker.Errorf(broker.ErrBadRequest, "%s: %q is not a cursor; pass the next_cursor (or event seq) of an earlier answer", name, v)
	}
	return n, nil
}

func eventsError(err error) error {
	if errors.Is(err, kbjs.ErrNoInstallation) {
		return broker.Wrap(broker.ErrUnavailable, err, "the audit log is not available")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return broker.Wrap(broker.ErrUnavailable, err, "reading the audit log took too long; narrow the filters")
	}
	return broker.Wrap(broker.ErrUnavailable, err, "could not read the audit log")
}

// eventPage is the answer of GET /api/events.
type eventPage struct {
	Events     []kbjs.SeqEvent `json:"events"`
	NextCursor uint64          `json:"next_cursor"`
	More       bool            `json:"more"`
}

func (s *Server) listEvents(c *fiber.Ctx) error {
	f, err := eventFilter(c, time.Now())
	if err != nil {
		return err
	}
	after, err := parseCursor("cursor", c.Query("cursor"))
	if err != nil {
		return err
	}
	limit := defaultEventPage
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxEventPage {
			return broker.Errorf(broker.ErrBadRequest, "limit: %q must be a number from 1 to %d", v, maxEventPage)
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	p, err := kbjs.ReadEventPage(ctx, s.bus.JS, f, after, limit, eventScanMax)
	if err != nil {
		return eventsError(err)
	}
	if p.Events == nil {
		p.Events = []kbjs.SeqEvent{}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(eventPage{Events: p.Events, NextCursor: p.Next, More: p.More})
}

// streamEvents is the live feed, as server-sent events.
func (s *Server) streamEvents(c *fiber.Ctx) error {
	f, err := eventFilter(c, time.Now())
	if err != nil {
		return err
	}
	if !f.Until.IsZero() {
		return broker.Errorf(broker.ErrBadRequest, "until: a live feed has no end; use GET /api/events for a time range")
	}
	after, err := parseCursor("cursor", c.Query("cursor"))
	if err != nil {
		return err
	}
	if v := c.Get("Last-Event-ID"); v != "" {
		if after, err = parseCursor("Last-Event-ID", v); err != nil {
			return err
		}
	}
	// Fail before the stream starts when there is no audit log.
	sctx, scancel := context.WithTimeout(s.ctx, 10*time.Second)
	_, err = s.bus.JS.Stream(sctx, broker.StreamEvents)
	scancel()
	if err != nil {
		return eventsError(kbjs.ErrNoInstallation)
	}

	ctx, cancel := context.WithCancel(s.ctx)
	evs := make(chan kbjs.SeqEvent, 256)
	scanErr := make(chan error, 1)
	opts := kbjs.ScanOptions{After: after, Follow: true, NewOnly: after == 0 && f.Since.IsZero()}
	if !s.goFunc(func() {
		scanErr <- kbjs.ScanEvents(ctx, s.bus.JS, f, opts, func(seq uint64, ev broker.Event) error {
			select {
			case evs <- kbjs.SeqEvent{Seq: seq, Event: ev}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}) {
		cancel()
		return broker.Errorf(broker.ErrUnavailable, "front-end shutting down")
	}
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no") // nginx: do not buffer the feed
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		// A reconnecting EventSource waits this long (ms) before retrying.
		if _, err := w.WriteString("retry: 2000\n: kernelbus audit feed\n\n"); err != nil || w.Flush() != nil {
			return
		}
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		quiet := time.Now()
		for {
			select {
			case e := <-evs:
				data, _ := json.Marshal(e)
				fmt.Fprintf(w, "id: %d\ndata: %s\n\n", e.Seq, data)
				// Write everything queued before one flush.
				for more := true; more; {
					select {
					case e := <-evs:
						data, _ := json.Marshal(e)
						fmt.Fprintf(w, "id: %d\ndata: %s\n\n", e.Seq, data)
					default:
						more = false
					}
				}
				if w.Flush() != nil {
					return
				}
				quiet = time.Now()
			case err := <-scanErr:
				if err != nil && ctx.Err() == nil {
					msg, _ := json.Marshal(map[string]string{"message": "the audit feed stopped: " + err.Error()})
					fmt.Fprintf(w, "event: error\ndata: %s\n\n", msg)
					_ = w.Flush()
				}
				return
			case <-tick.C:
				// The server's ctx only ends after the HTTP server has
				// drained, so a feed watches the drain itself.
				if s.draining.Load() {
					return
				}
				if time.Since(quiet) >= sseHeartbeat {
					if _, err := w.WriteString(": ping\n\n"); err != nil || w.Flush() != nil {
						return
					}
					quiet = time.Now()
				}
			}
		}
	})
	return nil
}
