package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// WarmPool is an operator's wish to keep kernels of one kernelspec started
// and idle, so that a start request takes one instead of waiting for a
// launch.
type WarmPool struct {
	// Spec is the kernelspec's name; it must name this pool's resource
	// manager.
	Spec string
	// Count is how many idle warm kernels are kept (starting ones count).
	Count int
	// Ceiling caps the live kernels of the spec on this resource manager,
	// users' and warm ones together: no warm kernel is started beyond it,
	// so a busy cluster is not filled with idle kernels. 0: no cap.
	Ceiling int
	// Idle is how long a warm kernel may wait for a request before it is
	// replaced by a fresh one. Default 1h.
	Idle time.Duration
	// LaunchTimeout bounds a warm kernel's start. Default 120s.
	LaunchTimeout time.Duration
	// Accept names client env variables a request may set and still take
	// a warm kernel, which then lacks them in its environment: the
	// operator's judgement that they do not matter to these kernels (say
	// KERNEL_WORKING_DIR, which kernelbus does not apply to local kernels
	// anyway, and which jupyter_server sends with every session).
	Accept []string
}

// ParseWarmPool reads "SPEC=COUNT[,ceiling=N][,idle=DURATION][,timeout=DURATION][,accept=NAME:NAME...]".
func ParseWarmPool(s string) (WarmPool, error) {
	parts := strings.Split(s, ",")
	name, count, ok := strings.Cut(parts[0], "=")
	if !ok || !broker.ValidSpecName(name) {
		return WarmPool{}, fmt.Errorf("warm pool %q: want SPEC=COUNT[,ceiling=N][,idle=DURATION][,timeout=DURATION][,accept=NAME:NAME...]", s)
	}
	w := WarmPool{Spec: name}
	var err error
	if w.Count, err = strconv.Atoi(count); err != nil || w.Count < 0 || w.Count > 1000 {
		return WarmPool{}, fmt.Errorf("warm pool %q: COUNT must be a number from 0 to 1000", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "ceiling":
			if w.Ceiling, err = strconv.Atoi(v); err != nil || w.Ceiling < 0 {
				return WarmPool{}, fmt.Errorf("warm pool %q: ceiling must be a number >= 0", s)
			}
		case "idle":
			if w.Idle, err = time.ParseDuration(v); err != nil || w.Idle <= 0 {
				return WarmPool{}, fmt.Errorf("warm pool %q: idle must be a positive duration such as 30m", s)
			}
		case "timeout":
			if w.LaunchTimeout, err = time.ParseDuration(v); err != nil || w.LaunchTimeout <= 0 {
				return WarmPool{}, fmt.Errorf("warm pool %q: timeout must be a positive duration such as 60s", s)
			}
		case "accept":
			for _, name := range strings.Split(v, ":") {
				if !envName.MatchString(name) {
					return WarmPool{}, fmt.Errorf("warm pool %q: accept wants env names separated by colons, not %q", s, name)
				}
				w.Accept = append(w.Accept, name)
			}
		default:
			return WarmPool{}, fmt.Errorf("warm pool %q: unknown setting %q (ceiling, idle, timeout, accept)", s, k)
		}
	}
	return w, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

func (w WarmPool) withDefaults() WarmPool {
	if w.Idle <= 0 {
		w.Idle = time.Hour
	}
	if w.LaunchTimeout <= 0 {
		w.LaunchTimeout = 120 * time.Second
	}
	return w
}

// WarmLeaseName is the kb_leases key that the warm keeper of resource
// manager rm holds: one worker of a pool fills its warm pools at a time, so
// two workers never both fill the same gap.
func WarmLeaseName(rm string) string { return "warm-" + rm }

// keeper fills and reaps the warm pools of this worker's resource manager
// while this worker holds the warm lease. It keeps a view of the kernel
// records of its resource manager from a watch of kb_kernels.
type keeper struct {
	p     *Pool
	pools map[string]WarmPool // by broker.WarmPoolKey
	recs  map[string]*broker.Kernel
	poke  chan struct{}
	// warned rate-limits the warning about a pool that cannot start
	// kernels (its spec is missing or names another resource manager),
	// which reconcile would otherwise repeat every second.
	warned map[string]time.Time
}

// runWarm campaigns for the warm lease until the pool stops.
func (p *Pool) runWarm() {
	ls, err := kbjs.OpenLeases(p.ctx, p.bus.JS)
	if err != nil {
		p.log.Error().Err(err).Msg("warm pools: no lease bucket; warm pools are off")
		return
	}
	k := &keeper{p: p, pools: map[string]WarmPool{}, poke: make(chan struct{}, 1), warned: map[string]time.Time{}}
	for _, w := range p.cfg.Warm {
		k.pools[broker.WarmPoolKey(p.be.Name(), w.Spec)] = w.withDefaults()
	}
	_ = ls.Campaign(p.ctx, WarmLeaseName(p.be.Name()), p.cfg.ID, k.run, func(held bool) {
		p.log.Info().Bool("held", held).Msg("warm keeper lease")
	})
}

// run is the keeper's term as lease holder.
func (k *keeper) run(ctx context.Context) {
	p := k.p
	w, err := p.bus.Kernels.WatchAll(ctx)
	if err != nil {
		p.log.Error().Err(err).Msg("warm keeper: watch kernel records")
		return
	}
	defer func() { _ = w.Stop() }()
	k.recs = map[string]*broker.Kernel{}
	synced := false
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				synced = true
				k.reconcile(ctx)
				continue
			}
			k.apply(e)
			if synced {
				select {
				case k.poke <- struct{}{}:
				default:
				}
			}
		case <-k.poke:
			k.reconcile(ctx)
		case <-tick.C:
			if synced {
				k.reconcile(ctx)
			}
		}
	}
}

func (k *keeper) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(k.recs, e.Key())
		return
	}
	var rec broker.Kernel
	if json.Unmarshal(e.Value(), &rec) != nil || rec.RM != k.p.be.Name() {
		delete(k.recs, e.Key())
		return
	}
	// The launch configuration is large and of no use here.
	rec.Launch, rec.Env = nil, nil
	k.recs[e.Key()] = &rec
}

// reconcile reaps the warm kernels that must go and starts the missing
// ones.
func (k *keeper) reconcile(ctx context.Context) {
	p := k.p
	now := time.Now()
	alive := map[string]bool{p.cfg.ID: true}
	keeperAlive := func(id string) bool {
		a, ok := alive[id]
		if !ok {
			a = p.workerAlive(ctx, id)
			alive[id] = a
		}
		return a
	}
	idle := map[string][]*broker.Kernel{}
	live := map[string]int{} // by spec
	for _, r := range k.recs {
		if r.State.Terminal() {
			if r.WarmIdle() && now.Sub(r.Updated) > time.Minute {
				// Nobody took it and it ended (lost, failed, reaped):
				// nothing will ever show or delete its record. A
				// minute lets the reap's stop finish with the handle.
				k.forget(ctx, r.ID)
			}
			continue
		}
		live[r.Spec]++
		if !r.WarmIdle() {
			continue
		}
		w, configured := k.pools[r.Warm.Pool]
		var why string
		switch {
		case !configured:
			why = "its warm pool is no longer configured"
		case !keeperAlive(r.Warm.Keeper):
			// The worker that started it is gone: its launch may be
			// half done and its processes beyond our reach otherwise.
			why = "the worker that started it (" + r.Warm.Keeper + ") is gone"
		case r.State == broker.StateRunning && now.Sub(r.Warm.Since) > w.Idle:
			why = "its idle lifetime of " + w.Idle.String() + " passed"
		default:
			spec, ok := p.cfg.Specs.Spec(w.Spec)
			if !ok {
				why = "its kernelspec " + w.Spec + " is gone"
			} else if spec.Digest() != r.Warm.Digest {
				why = "its kernelspec " + w.Spec + " changed"
			}
		}
		if why != "" {
			k.reap(ctx, r, why)
			continue
		}
		idle[r.Warm.Pool] = append(idle[r.Warm.Pool], r)
	}
	keys := make([]string, 0, len(k.pools))
	for key := range k.pools {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		w := k.pools[key]
		have := idle[key]
		// Too many (the count was lowered): the youngest go, the oldest
		// are the most likely to be warmed up.
		sort.Slice(have, func(i, j int) bool { return have[i].Warm.Since.Before(have[j].Warm.Since) })
		for len(have) > w.Count {
			k.reap(ctx, have[len(have)-1], "its warm pool holds "+strconv.Itoa(w.Count))
			have = have[:len(have)-1]
		}
		need := w.Count - len(have)
		if w.Ceiling > 0 {
			need = min(need, w.Ceiling-live[w.Spec])
		}
		for range need {
			r, err := k.startWarm(ctx, w)
			if err != nil {
				if time.Since(k.warned[key]) > time.Minute {
					k.warned[key] = time.Now()
					p.log.Warn().Err(err).Str("spec", w.Spec).Msg("warm keeper: could not start a warm kernel")
				}
				break
			}
			k.recs[r.ID] = r
			live[w.Spec]++
		}
	}
}

// startWarm records a warm kernel and starts it as a start request would,
// in the background: the record is what keeps the count, so it is written
// before reconcile returns.
func (k *keeper) startWarm(ctx context.Context, w WarmPool) (*broker.Kernel, error) {
	p := k.p
	spec, ok := p.cfg.Specs.Spec(w.Spec)
	if !ok {
		return nil, fmt.Errorf("kernelspec %s not found", w.Spec)
	}
	if rm, err := spec.RM(); err != nil || rm != p.be.Name() {
		return nil, fmt.Errorf("kernelspec %s is not a %s kernel", w.Spec, p.be.Name())
	}
	now := time.Now().UTC()
	r := &broker.Kernel{
		ID: uuid.NewString(), Spec: spec.Name, RM: p.be.Name(), State: broker.StateRequested,
		Created: now, Deadline: now.Add(w.LaunchTimeout),
		Warm: &broker.Warm{Pool: broker.WarmPoolKey(p.be.Name(), spec.Name), Keeper: p.cfg.ID, Since: now, Digest: spec.Digest(), Accept: w.Accept},
	}
	if ub, ok := p.be.(UserBound); !ok || !ub.RunsAsUser() {
		r.Warm.AnyUser = true
	}
	// No user and no client env: only what every request of the spec
	// would get, which is what lets any of them take it.
	r.Launch = broker.NewLaunchConfig(spec, r.ID, "", nil, w.LaunchTimeout)
	r.Launch.Warm = true
	if _, err := p.bus.CreateKernel(ctx, r); err != nil {
		return nil, err
	}
	ev := broker.NewEvent(broker.EvWarmStarted, r)
	ev.ID, ev.Source, ev.Reason = broker.EventID(r.ID, broker.EvWarmStarted), "worker", "warm pool "+r.Warm.Pool
	p.emit(ev)
	p.met.warmStarted()
	p.routines.Go(func() {
		select {
		case p.sem <- struct{}{}:
		case <-p.ctx.Done():
			return
		}
		release := p.releaser()
		defer release()
		if err := p.handleStart(nil, broker.StartRequest{KernelID: r.ID, RequestID: "warm"}, release); err != nil && p.ctx.Err() == nil {
			p.log.Warn().Err(err).Str("kernel_id", r.ID).Msg("warm start failed")
		}
	})
	rec := *r
	rec.Launch = nil
	return &rec, nil
}

// reap ends a warm kernel nobody took. The record is ended first, by
// compare-and-swap on its still being idle, so that a front-end claiming
// it at the same moment either wins (and the kernel is a user's) or
// finds it gone; then the launcher is asked to shut down, and killed
// through its handle if it does not answer.
func (k *keeper) reap(ctx context.Context, r *broker.Kernel, why string) {
	p := k.p
	errTaken := errors.New("taken")
	cur, err := p.bus.UpdateKernel(ctx, r.ID, func(rec *broker.Kernel) error {
		if !rec.WarmIdle() || rec.State.Terminal() {
			return errTaken
		}
		rec.State, rec.Reason = broker.StateTerminated, "warm kernel reaped: "+why
		return nil
	})
	if err != nil {
		if cur != nil {
			k.recs[r.ID] = cur
		}
		return
	}
	k.recs[r.ID] = cur
	ev := broker.NewEvent(broker.EvWarmReaped, cur)
	ev.ID, ev.Source, ev.Reason = broker.EventID(r.ID, broker.EvWarmReaped), "worker", why
	p.emit(ev)
	p.met.warmReaped()
	p.log.Info().Str("kernel_id", r.ID).Str("reason", why).Msg("warm kernel reaped")
	p.routines.Go(func() {
		p.stopWarm(cur, "warm kernel reaped: "+why)
	})
}

// stopWarm ends a reaped kernel's processes: over the bus first (it works
// wherever the launcher runs), then through the handle this resource
// manager recorded.
func (p *Pool) stopWarm(k *broker.Kernel, why string) {
	data, _ := json.Marshal(broker.ControlRequest{Op: broker.OpShutdown, Reason: why})
	m := &nats.Msg{Subject: broker.SubjectControl(k.ID), Data: data, Header: nats.Header{}}
	m.Header.Set(broker.HeaderType, broker.TypeControl)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The answer does not matter: a launcher that answered has shut the
	// kernel down, and the handle makes sure of one that did not.
	_, _ = p.bus.NC.RequestMsgWithContext(ctx, m)
	if h, err := p.trustedHandle(ctx, k.ID); err == nil && len(h.Data) > 0 {
		_ = p.be.Stop(ctx, h, p.cfg.StopGrace)
	}
	_ = kbjs.DeleteInput(ctx, p.bus.JS, k.ID)
}

// forget deletes the record of an ended warm kernel that nobody took.
func (k *keeper) forget(ctx context.Context, id string) {
	p := k.p
	_ = p.bus.Activity.Delete(ctx, id)
	_ = p.bus.Handles.Delete(ctx, id)
	if err := p.bus.Kernels.Delete(ctx, id); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		delete(k.recs, id)
	}
}
