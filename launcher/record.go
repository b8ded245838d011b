package launcher

// The launcher's writes to the bus: its kernel's record, activity and
// events.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
)

// update changes the kernel record by compare-and-swap, retrying through
// bus outages for a while (then it logs and gives up on the change). A
// record that somebody else ended is left alone: final updates (failed,
// dead, terminated) then do nothing, others fail with errRecordGone, the
// only error update returns.
func (l *launcher) update(final bool, fn func(*broker.Kernel)) error {
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
		k, err := l.link.UpdateKernel(ctx, func(k *broker.Kernel) error {
			if l.supersededBy(k) {
				return ErrSuperseded
			}
			if k.State.Terminal() {
				if final {
					return kbjs.ErrNoChange
				}
				return errTerminal
			}
			fn(k)
			return nil
		})
		cancel()
		if errors.Is(err, ErrSuperseded) {
			l.superseded.Store(true)
			return err
		}
		if k != nil {
			l.rec.Store(k)
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errTerminal), errors.Is(err, broker.ErrKernelNotFound):
			return fmt.Errorf("%w: %v", errRecordGone, err)
		case time.Since(start) > 30*time.Second:
			// The kernel keeps working; the record catches up with the
			// next transition.
			l.log.Error().Err(err).Msg("update kernel record: giving up on this change")
			return nil
		}
		l.log.Warn().Err(err).Msg("update kernel record; retrying")
		time.Sleep(time.Second)
	}
}

// supersededBy reports whether record k names another attempt than this
// launcher's.
func (l *launcher) supersededBy(k *broker.Kernel) bool {
	return k != nil && l.cfg.Attempt != "" && k.Attempt != "" && k.Attempt != l.cfg.Attempt
}

// emit publishes a lifecycle event built from the last known record. Its
// id is deterministic where another part may witness the same fact (a
// start failure, the end, a requested restart) so that the stream keeps
// one; events the launcher alone sees are tied to the kernel's run number.
func (l *launcher) emit(typ, reason, requestID string) {
	if l.superseded.Load() {
		return // the kernel's events are the other attempt's to tell
	}
	ev := broker.NewEvent(typ, l.rec.Load())
	ev.Source, ev.Reason, ev.RequestID = Source, reason, requestID
	switch typ {
	case broker.EvStarted, broker.EvStartFailed, broker.EvTerminated:
		ev.ID = broker.EventID(l.id, typ)
	case broker.EvInterrupted, broker.EvRestartRequested, broker.EvRestarted:
		if requestID != "" {
			ev.ID = broker.EventID(l.id, typ, requestID)
		}
	case broker.EvDied, broker.EvAutoRestarted:
		run := strconv.Itoa(l.gen)
		if typ == broker.EvDied && l.state.Load() == broker.StateDead {
			run = "gave_up"
		}
		ev.ID = broker.EventID(l.id, typ, l.session, run)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*busTimeout)
	defer cancel()
	if err := l.link.Emit(ctx, ev); err != nil {
		l.log.Error().Err(err).Str("event", typ).Msg("emit event")
	}
}

func (l *launcher) writeActivity(a broker.Activity) {
	if l.superseded.Load() {
		return
	}
	data, err := json.Marshal(a)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
	defer cancel()
	if err := l.link.PutActivity(ctx, data); err != nil {
		l.log.Warn().Err(err).Msg("write activity")
	}
}
