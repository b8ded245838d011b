// Package duties runs the installation-wide chores that must happen in
// exactly one process at a time, whichever processes run: the idle culler
// (jupyter_server's cull_idle_timeout, cull_interval, cull_connected,
// cull_busy) and the lost-kernel detector (a running kernel whose launcher
// stopped answering pings on kb.ctl.<id>). Every `kernelbus serve`,
// `frontend` and `worker` process starts one Duties; they campaign for the
// "duties" lease in kb_leases and only the holder acts, so two front-ends
// never cull the same kernel twice and a crashed holder is replaced within
// one lease TTL.
package duties

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// LeaseName is the kb_leases key the duties campaign for.
const LeaseName = "duties"

// Event sources of the events the duties emit.
const (
	SourceCuller   = "culler"
	SourceWatchdog = "watchdog"
)

// Config says which duties run and how. The zero value runs only the lost
// detector, with its defaults.
type Config struct {
	// Holder names this process in the lease. Default: a random id.
	Holder string

	// CullIdleTimeout shuts down kernels that have been idle longer than
	// this, as jupyter_server's cull_idle_timeout. 0 disables culling.
	// Default 0.
	CullIdleTimeout time.Duration
	// CullInterval is how often idle kernels are looked for
	// (cull_interval). Default 300s.
	CullInterval time.Duration
	// CullConnected culls kernels that still have a connected websocket
	// (cull_connected). Default false.
	CullConnected bool
	// CullBusy culls kernels whose execution_state is busy (cull_busy).
	// Default false.
	CullBusy bool

	// LostAfter is how long a running kernel's launcher may go without
	// answering a ping on kb.ctl.<id> before the kernel is declared lost
	// (record dead, event lost, its resource manager told to stop what is
	// left). Negative disables the detector. Default 60s: longer than a
	// NATS reconnect.
	LostAfter time.Duration
	// LostInterval is how often launchers are pinged. Default 15s.
	LostInterval time.Duration
	// PingTimeout bounds one ping. Default 5s.
	PingTimeout time.Duration
	// ShutdownTimeout bounds the shutdown of a culled kernel by its
	// launcher before its resource manager is asked. Default 15s.
	ShutdownTimeout time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Holder == "" {
		c.Holder = "duties-" + uuid.NewString()[:8]
	}
	if c.CullIdleTimeout < 0 {
		return c, fmt.Errorf("cull idle timeout %s must not be negative (0 disables culling)", c.CullIdleTimeout)
	}
	if c.CullInterval < 0 || c.LostInterval < 0 || c.PingTimeout < 0 {
		return c, errors.New("cull interval, lost interval and ping timeout must not be negative")
	}
	if c.CullInterval == 0 {
		c.CullInterval = 300 * time.Second
	}
	if c.LostAfter == 0 {
		c.LostAfter = 60 * time.Second
	}
	if c.LostInterval == 0 {
		c.LostInterval = 15 * time.Second
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = 5 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 15 * time.Second
	}
	return c, nil
}

// Duties is one process's participant in the duties lease.
type Duties struct {
	cfg    Config
	bus    *kbjs.Bus
	leases *kbjs.Leases
	log    zerolog.Logger

	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	leader bool
	// silent maps a kernel id to when its launcher first failed to answer,
	// in the current leadership term.
	silent map[string]time.Time

	// culled and lost count what this process did as holder, for metrics.
	culled, lost atomic.Uint64
}

// New validates cfg and binds the lease bucket; nothing runs until Start.
func New(ctx context.Context, cfg Config, bus *kbjs.Bus, log zerolog.Logger) (*Duties, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ls, err := kbjs.OpenLeases(ctx, bus.JS)
	if err != nil {
		return nil, err
	}
	return &Duties{cfg: cfg, bus: bus, leases: ls, log: log.With().Str("duties", cfg.Holder).Logger(), silent: map[string]time.Time{}}, nil
}

// Start campaigns for the lease in the background until Stop; ctx only
// bounds starting, which needs no I/O.
func (d *Duties) Start(context.Context) error {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		_ = d.leases.Campaign(ctx, LeaseName, d.cfg.Holder, d.lead, func(held bool) {
			d.mu.Lock()
			d.leader = held
			d.mu.Unlock()
			if held {
				d.log.Info().Dur("cull_idle_timeout", d.cfg.CullIdleTimeout).Dur("lost_after", d.cfg.LostAfter).Msg("holding the duties lease")
			} else {
				d.log.Info().Msg("released the duties lease")
			}
		})
	}()
	return nil
}

// Stop ends the duties and releases the lease, so another process takes
// over at once; it waits up to ctx. Safe to call more than once.
func (d *Duties) Stop(ctx context.Context) error {
	if d.cancel == nil {
		return nil
	}
	d.cancel()
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("duties: stopping: %w", ctx.Err())
	}
}

// Leader reports whether this process holds the duties lease now.
func (d *Duties) Leader() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leader
}

// Culled counts the kernels this process culled.
func (d *Duties) Culled() uint64 { return d.culled.Load() }

// Lost counts the kernels this process declared lost.
func (d *Duties) Lost() uint64 { return d.lost.Load() }

// lead runs the duties while the lease is held; ctx ends when it is lost.
func (d *Duties) lead(ctx context.Context) {
	d.mu.Lock()
	d.silent = map[string]time.Time{}
	d.mu.Unlock()
	var cull, lost <-chan time.Time
	if d.cfg.CullIdleTimeout > 0 {
		t := time.NewTicker(d.cfg.CullInterval)
		defer t.Stop()
		cull = t.C
	}
	if d.cfg.LostAfter > 0 {
		t := time.NewTicker(d.cfg.LostInterval)
		defer t.Stop()
		lost = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-cull:
			if err := d.CullOnce(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Msg("culling round")
			}
		case <-lost:
			if err := d.CheckLostOnce(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Msg("lost-kernel round")
			}
		}
	}
}

// snapshot reads every current value of a bucket in one pass.
func snapshot(ctx context.Context, kv jetstream.KeyValue) (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watch of " + kv.Bucket() + " closed")
			}
			if e == nil {
				return out, nil
			}
			out[e.Key()] = e.Value()
		}
	}
}

// CullOnce shuts down every running kernel idle longer than
// CullIdleTimeout, with jupyter_server's rules. It is what the leader
// runs every CullInterval; tests call it directly.
func (d *Duties) CullOnce(ctx context.Context) error {
	if d.cfg.CullIdleTimeout <= 0 {
		return nil
	}
	recs, err := snapshot(ctx, d.bus.Kernels)
	if err != nil {
		return err
	}
	acts, err := snapshot(ctx, d.bus.Activity)
	if err != nil {
		return err
	}
	connected := map[string]bool{}
	if !d.cfg.CullConnected {
		sess, err := snapshot(ctx, d.bus.Sessions)
		if err != nil {
			return err
		}
		for _, v := range sess {
			var cs broker.ClientSession
			if json.Unmarshal(v, &cs) == nil && cs.Connected {
				connected[cs.Kernel] = true
			}
		}
	}
	now := time.Now()
	for id, v := range recs {
		var k broker.Kernel
		// A warm kernel waits idle on purpose; its pool's keeper ends it
		// when its idle lifetime passes.
		if json.Unmarshal(v, &k) != nil || k.State != broker.StateRunning || k.WarmIdle() {
			continue
		}
		var a broker.Activity
		_ = json.Unmarshal(acts[id], &a)
		last := a.LastActivity
		if last.Before(k.Created) {
			last = k.Created
		}
		// A warm kernel's idle time starts when a request took it, not
		// when it started waiting for one.
		if k.Warm != nil && last.Before(k.Warm.Claimed) {
			last = k.Warm.Claimed
		}
		idle := now.Sub(last)
		switch {
		case idle <= d.cfg.CullIdleTimeout:
			continue
		case a.ExecutionState == "busy" && !d.cfg.CullBusy:
			continue
		case connected[id]:
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		reason := fmt.Sprintf("culled: idle for %s (cull_idle_timeout %s", idle.Round(time.Second), d.cfg.CullIdleTimeout)
		if a.ExecutionState != "" {
			reason += ", execution_state " + a.ExecutionState
		}
		reason += ")"
		if err := d.cull(ctx, &k, reason); err != nil {
			d.log.Warn().Err(err).Str("kernel_id", id).Msg("cull kernel")
		} else {
			d.culled.Add(1)
		}
	}
	return nil
}

// cull records the decision, shuts the kernel down as a DELETE would, and
// removes its record, activity, websocket sessions and notebook sessions
// (jupyter_server forgets a culled kernel's sessions too).
func (d *Duties) cull(ctx context.Context, k *broker.Kernel, reason string) error {
	reqID := "cull-" + uuid.NewString()
	log := d.log.With().Str("kernel_id", k.ID).Str("request_id", reqID).Logger()
	ev := broker.NewEvent(broker.EvCulled, k)
	ev.ID, ev.Source, ev.Reason, ev.RequestID = k.ID+":culled", SourceCuller, reason, reqID
	// The decision goes to the log first, so it precedes the launcher's
	// terminated event.
	if err := d.bus.Emit(ctx, ev); err != nil {
		return fmt.Errorf("emit culled: %w", err)
	}
	log.Info().Str("reason", reason).Msg("culling idle kernel")
	stopped := false
	r, err := d.bus.Control(ctx, k.ID, broker.ControlRequest{Op: broker.OpShutdown, RequestID: reqID, User: SourceCuller, Reason: reason}, d.cfg.ShutdownTimeout)
	stopped = err == nil && r.OK
	cur, err := d.bus.UpdateKernel(ctx, k.ID, func(k *broker.Kernel) error {
		if k.State.Terminal() {
			return kbjs.ErrNoChange
		}
		k.State, k.Reason = broker.StateTerminated, reason
		return nil
	})
	if err != nil && !errors.Is(err, broker.ErrKernelNotFound) {
		return err
	}
	if cur == nil {
		cur = k
	}
	if !stopped {
		log.Info().Msg("launcher did not confirm the shutdown; asking its pool to stop the kernel")
		stop := broker.StopRequest{KernelID: k.ID, Host: cur.Host, Handle: cur.Handle, Reason: reason, RequestID: reqID}
		if err := d.bus.Request(ctx, broker.VerbStop, k.RM, k.ID+":stop", stop); err != nil {
			log.Warn().Err(err).Msg("queue the stop request")
		}
	}
	if kl, err := d.bus.Sessions.ListKeysFiltered(ctx, k.ID+".>"); err == nil {
		for key := range kl.Keys() {
			_ = d.bus.Sessions.Delete(ctx, key)
		}
	}
	if nbs, err := snapshot(ctx, d.bus.NotebookSessions); err == nil {
		for key, v := range nbs {
			var s broker.NotebookSession
			if json.Unmarshal(v, &s) == nil && s.KernelID == k.ID {
				_ = d.bus.NotebookSessions.Delete(ctx, key)
			}
		}
	}
	_ = d.bus.Activity.Delete(ctx, k.ID)
	if err := d.bus.Kernels.Delete(ctx, k.ID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete the record: %w", err)
	}
	return nil
}

// CheckLostOnce pings the launcher of every running or restarting kernel
// and declares lost those whose launcher has not answered for LostAfter.
// The leader runs it every LostInterval; tests call it directly.
func (d *Duties) CheckLostOnce(ctx context.Context) error {
	if d.cfg.LostAfter <= 0 {
		return nil
	}
	recs, err := snapshot(ctx, d.bus.Kernels)
	if err != nil {
		return err
	}
	type result struct {
		k      broker.Kernel
		answer bool
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		results []result
		sem     = make(chan struct{}, 32)
	)
	for _, v := range recs {
		var k broker.Kernel
		if json.Unmarshal(v, &k) != nil || (k.State != broker.StateRunning && k.State != broker.StateRestarting) {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ok := d.ping(ctx, k.ID)
			mu.Lock()
			results = append(results, result{k, ok})
			mu.Unlock()
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	now := time.Now()
	seen := map[string]bool{}
	for _, r := range results {
		seen[r.k.ID] = true
		d.mu.Lock()
		first, was := d.silent[r.k.ID]
		switch {
		case r.answer:
			delete(d.silent, r.k.ID)
		case !was:
			d.silent[r.k.ID] = now
			first = now
		}
		d.mu.Unlock()
		if r.answer || now.Sub(first) < d.cfg.LostAfter {
			continue
		}
		if err := d.markLost(ctx, r.k.ID, now.Sub(first)); err != nil {
			d.log.Warn().Err(err).Str("kernel_id", r.k.ID).Msg("mark kernel lost")
			continue
		}
		d.mu.Lock()
		delete(d.silent, r.k.ID)
		d.mu.Unlock()
	}
	d.mu.Lock()
	for id := range d.silent {
		if !seen[id] {
			delete(d.silent, id)
		}
	}
	d.mu.Unlock()
	return nil
}

// ping reports whether the kernel's launcher answered. Only no answer
// counts: a launcher that answers with an error is alive.
func (d *Duties) ping(ctx context.Context, id string) bool {
	_, err := d.bus.Control(ctx, id, broker.ControlRequest{Op: broker.OpPing}, d.cfg.PingTimeout)
	if errors.Is(err, kbjs.ErrBadReply) {
		return true // an answer that could not be read is an answer
	}
	if err != nil && d.bus.NC.Status() != nats.CONNECTED {
		// Our own connection is down: that says nothing of the launcher.
		return true
	}
	return err == nil
}

// markLost ends the record of a kernel whose launcher went silent, emits
// lost and asks its resource manager to stop whatever is left of it.
func (d *Duties) markLost(ctx context.Context, id string, silentFor time.Duration) error {
	reason := fmt.Sprintf("lost: its launcher has not answered on %s for %s", broker.SubjectControl(id), silentFor.Round(time.Second))
	k, err := d.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		if k.State != broker.StateRunning && k.State != broker.StateRestarting {
			return kbjs.ErrNoChange
		}
		k.State, k.Reason = broker.StateDead, reason
		return nil
	})
	if errors.Is(err, broker.ErrKernelNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if k.State != broker.StateDead || !strings.HasPrefix(k.Reason, "lost: ") {
		return nil // it changed meanwhile: not ours to end
	}
	d.lost.Add(1)
	reqID := "lost-" + uuid.NewString()
	ev := broker.NewEvent(broker.EvLost, k)
	ev.ID, ev.Source, ev.Reason, ev.RequestID = id+":lost", SourceWatchdog, reason, reqID
	if err := d.bus.Emit(ctx, ev); err != nil {
		d.log.Warn().Err(err).Str("kernel_id", id).Msg("emit lost")
	}
	d.log.Warn().Str("kernel_id", id).Str("reason", reason).Msg("kernel lost")
	stop := broker.StopRequest{KernelID: id, Host: k.Host, Handle: k.Handle, Reason: reason, RequestID: reqID}
	if err := d.bus.Request(ctx, broker.VerbStop, k.RM, id+":stop", stop); err != nil {
		d.log.Warn().Err(err).Str("kernel_id", id).Msg("queue the stop of a lost kernel")
	}
	return nil
}
