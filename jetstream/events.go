package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// ReadEvents replays the audit log through fn, oldest first, filtered by f.
// Without follow it returns once it has read what the stream held when it
// started; with follow it then waits for new events until ctx ends.
func ReadEvents(ctx context.Context, js jetstream.JetStream, f broker.EventFilter, follow bool, fn func(broker.Event) error) error {
	st, err := js.Stream(ctx, broker.StreamEvents)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return ErrNoInstallation
		}
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: f.Subjects(), DeliverPolicy: jetstream.DeliverAllPolicy}
	if !f.Since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &f.Since
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 && !follow {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	// Without follow, stop at the stream's last sequence at start; a
	// consumer with nothing pending says so through NumPending.
	cinfo, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if !follow && cinfo.NumPending == 0 {
		return nil
	}
	it, err := c.Messages()
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
		if !f.Until.IsZero() && ev.Time.After(f.Until) && !follow {
			return nil
		}
		if f.Match(&ev) {
			if err := fn(ev); err != nil {
				return err
			}
		}
		if !follow && meta.NumPending == 0 {
			return nil
		}
	}
}
