package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// ScanOptions say where a replay of the audit log starts and whether it
// ends.
type ScanOptions struct {
	// After starts the replay after this KB_EVENTS sequence (a cursor
	// returned by an earlier scan). Zero starts at the filter's Since, or
	// at the oldest event.
	After uint64
	// Follow keeps waiting for new events after the stored ones, until ctx
	// ends.
	Follow bool
	// NewOnly, with Follow and no After or Since, skips stored events:
	// only events written from now on are delivered.
	NewOnly bool
}

// ErrStopScan, returned by a ScanEvents callback, ends the scan without an
// error.
var ErrStopScan = errors.New("stop scan")

// ScanEvents replays the audit log through fn, oldest first, filtered by
// f, with each event's stream sequence. Kernel and type filters are done by
// the server (subject filters), the others here. Without Follow it returns
// once it has read what the stream held when it started (or the first
// event after f.Until). When the stream does not exist it fails with
// ErrNoInstallation.
func ScanEvents(ctx context.Context, js jetstream.JetStream, f broker.EventFilter, o ScanOptions, fn func(seq uint64, ev broker.Event) error) error {
	st, err := js.Stream(ctx, broker.StreamEvents)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return ErrNoInstallation
		}
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: f.Subjects(), DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case o.After > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, o.After+1
	case !f.Since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &f.Since
	case o.NewOnly && o.Follow:
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	if !o.Follow {
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs == 0 || o.After >= info.State.LastSeq {
			return nil
		}
	}
	c, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	// Without follow, stop at the stream's last sequence at start; a
	// consumer with nothing pending says so through NumPending.
	if !o.Follow {
		cinfo, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if cinfo.NumPending == 0 {
			return nil
		}
	}
	it, err := c.Messages(jetstream.PullMaxMessages(2048))
	if err != nil {
		return err
	}
	defer it.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			it.Stop()
		case <-done:
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return ctx.Err()
			}
			return err
		}
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		var ev broker.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			return fmt.Errorf("event at sequence %d: %w", meta.Sequence.Stream, err)
		}
		if !f.Until.IsZero() && ev.Time.After(f.Until) && !o.Follow {
			return nil
		}
		if f.Match(&ev) {
			if err := fn(meta.Sequence.Stream, ev); err != nil {
				if errors.Is(err, ErrStopScan) {
					return nil
				}
				return err
			}
		}
		if !o.Follow && meta.NumPending == 0 {
			return nil
		}
	}
}

// ReadEvents replays the audit log through fn, oldest first, filtered by f.
// Without follow it returns once it has read what the stream held when it
// started; with follow it then waits for new events until ctx ends.
func ReadEvents(ctx context.Context, js jetstream.JetStream, f broker.EventFilter, follow bool, fn func(broker.Event) error) error {
	return ScanEvents(ctx, js, f, ScanOptions{Follow: follow}, func(_ uint64, ev broker.Event) error { return fn(ev) })
}

// EventPage is one page of the audit log.
type EventPage struct {
	Events []SeqEvent
	// Next is the cursor of the next page: the sequence of the last event
	// looked at (matching or not). Passing it as After continues the
	// scan, now or later when new events have arrived.
	Next uint64
	// More says that events were left unread (the page was full or the
	// scan bound was reached).
	More bool
}

// SeqEvent is an event with its KB_EVENTS sequence.
type SeqEvent struct {
	Seq uint64 `json:"seq"`
	broker.Event
}

// ReadEventPage reads up to limit matching events after cursor after. It
// looks at no more than scanMax events (0: no bound), so that a filter
// that matches rarely cannot hold a request for the whole log; More is then
// true and Next says where to go on.
func ReadEventPage(ctx context.Context, js jetstream.JetStream, f broker.EventFilter, after uint64, limit, scanMax int) (EventPage, error) {
	p := EventPage{Next: after}
	scanned := 0
	// User and Until are checked here rather than in the scan, so that the
	// cursor also moves past events that do not match.
	scan := broker.EventFilter{Kernel: f.Kernel, Types: f.Types, Since: f.Since}
	err := ScanEvents(ctx, js, scan, ScanOptions{After: after}, func(seq uint64, ev broker.Event) error {
		if !f.Until.IsZero() && ev.Time.After(f.Until) {
			return ErrStopScan
		}
		scanned++
		p.Next = seq
		if f.User == "" || ev.User == f.User {
			p.Events = append(p.Events, SeqEvent{Seq: seq, Event: ev})
		}
		if len(p.Events) >= limit || (scanMax > 0 && scanned >= scanMax) {
			p.More = true
			return ErrStopScan
		}
		return nil
	})
	if err != nil {
		return p, err
	}
	// A full page at the very end of the log has nothing more to read.
	if p.More {
		if st, err := js.Stream(ctx, broker.StreamEvents); err == nil {
			if info, err := st.Info(ctx); err == nil && info.State.LastSeq <= p.Next {
				p.More = false
			}
		}
	}
	return p, nil
}
