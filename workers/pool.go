package workers

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
	"github.com/kernelbus/kernelbus/broker/routines"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// PoolConfig configures one worker pool process.
type PoolConfig struct {
	// ID names this worker; default: a random id.
	ID string
	// Concurrency bounds launches in flight in this worker. Default 64.
	Concurrency int
	// AckWait is how long a claimed request may go without progress before
	// the bus redelivers it to another worker: with the kb_workers TTL, it
	// bounds how late a start claimed by a worker that died is taken over.
	// Default 15s.
	AckWait time.Duration
	// NATSURLs is where launchers reach the bus (the worker's own
	// connection may be in-process); NATSCA the PEM of the CA of its TLS
	// certificate, if private.
	NATSURLs string
	NATSCA   string
	// Minter mints each launcher credentials of its own, scoped to its
	// kernel (access.LauncherTemplate). Without one, launchers get
	// NATSToken or NATSCreds, the worker's own unscoped credentials: then
	// a kernel's code can reach every other kernel, which is only fit for
	// a single user's machine.
	Minter *access.Minter
	// LauncherCredsTTL is how long minted credentials are valid, and so
	// how long they outlive their kernel: launchers renew them at
	// half-life from the workers, which renew only while the kernel runs
	// (renew.go). Default access.DefaultLauncherCredsTTL; negative: no
	// expiry.
	LauncherCredsTTL time.Duration
	NATSToken        string
	NATSCreds        string
	// StopGrace is how long Stop waits before killing. Default 5s.
	StopGrace time.Duration
	// PortRange, "lower..upper", is where the kernels this worker starts
	// take their ports (JEG's port_range); empty: the OS's ephemeral
	// ports, which other processes' connections take too.
	PortRange string
	// Specs is where the worker reads kernelspecs: it builds every launch
	// from the spec the record names and never from the record's argv or
	// launch configuration, which others write (a forged record would
	// otherwise run any command as the worker's user). It must hold the
	// same specs as the front-ends' (the same --kernelspec-dir). Required.
	Specs SpecSource
	// Env is the policy the worker filters the client's env with again,
	// as the front-ends do (the same --allowed-env), so a record written
	// past a front-end cannot hand a kernel LD_PRELOAD or PATH. Its
	// MaxLaunchTimeout also caps the launch time a record asks for.
	Env broker.EnvPolicy
	// Metrics is where the pool registers its collectors (metrics.go);
	// nil: nowhere.
	Metrics prometheus.Registerer
	// Environments brings a kernel's packed environment to where its
	// launcher runs and returns its folder there (envs.Cache for local
	// kernels). Nil: kernels of environment specs fail with a reason.
	Environments EnvironmentSource
	// Warm lists the warm pools of this resource manager (warm.go); the
	// worker holding the warm lease keeps them, from the kernelspecs in
	// Specs.
	Warm []WarmPool
}

// EnvironmentSource makes a packed environment available to kernels.
type EnvironmentSource interface {
	// Ensure unpacks ref's archive on the worker's host (cached by
	// digest) and returns its folder.
	Ensure(ctx context.Context, ref *broker.EnvRef) (string, error)
	// Archive returns the path of ref's archive on the worker's host
	// (cached by digest, its bytes checked against it), for backends
	// that ship it (EnvShipper).
	Archive(ctx context.Context, ref *broker.EnvRef) (string, error)
}

// EnvShipper is a Backend whose kernels run on hosts other than the
// worker's: it is handed the environment's archive in
// LaunchConfig.EnvArchive and says where the kernel finds it unpacked
// ({env_prefix}), which may be a placeholder its launch fills in on the
// kernel's host. Backends without it get the folder Ensure unpacked.
type EnvShipper interface {
	EnvPrefix(cfg *broker.LaunchConfig) (string, error)
}

// SpecSource finds kernelspecs by name; frontend.Catalog is one.
type SpecSource interface {
	Spec(name string) (*broker.KernelSpec, bool)
}

// SpecList is a fixed SpecSource.
type SpecList []*broker.KernelSpec

// Spec implements SpecSource.
func (l SpecList) Spec(name string) (*broker.KernelSpec, bool) {
	name = strings.ToLower(name)
	for _, s := range l {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Pool claims requests of one resource manager and runs them through its
// Backend. It holds no state that matters: everything is in the records.
type Pool struct {
	cfg  PoolConfig
	bus  *kbjs.Bus
	be   Backend
	log  zerolog.Logger
	cons jetstream.ConsumeContext
	sem  chan struct{}
	// routines are the goroutines Stop waits for; the consumer's and the
	// renewals' callbacks may still start some while it waits.
	routines routines.Group
	ctx      context.Context
	stop     context.CancelFunc
	met      *poolMetrics
	// claiming is set once the consumer runs (Ready).
	claiming atomic.Bool

	// renewals answers launchers' credential renewals (with a Minter).
	renewals *nats.Subscription
}

// NewPool validates cfg; nothing runs until Start.
func NewPool(cfg PoolConfig, bus *kbjs.Bus, be Backend, log zerolog.Logger) (*Pool, error) {
	if cfg.ID == "" {
		cfg.ID = be.Name() + "-" + randomID()
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 15 * time.Second
	}
	if _, err := broker.ParsePortRange(cfg.PortRange); err != nil {
		return nil, err
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	switch {
	case cfg.LauncherCredsTTL == 0:
		cfg.LauncherCredsTTL = access.DefaultLauncherCredsTTL
	case cfg.LauncherCredsTTL < 0:
		cfg.LauncherCredsTTL = 0
	case cfg.LauncherCredsTTL < 2*time.Second:
		return nil, errors.New("worker pool: launcher credentials must be valid 2s or more, to be renewed in time")
	}
	if cfg.NATSURLs == "" {
		return nil, errors.New("worker pool: the NATS URL launchers should use is required")
	}
	if cfg.Specs == nil {
		return nil, errors.New("worker pool: kernelspecs are required (the worker builds each launch from the spec itself)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{cfg: cfg, bus: bus, be: be, log: log.With().Str("worker", cfg.ID).Str("rm", be.Name()).Logger(),
		sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, stop: cancel}
	met, err := newPoolMetrics(cfg.Metrics, p)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("worker pool: metrics: %w", err)
	}
	p.met = met
	return p, nil
}

// ID is the worker's id.
func (p *Pool) ID() string { return p.cfg.ID }

// Start begins claiming requests.
func (p *Pool) Start(ctx context.Context) error {
	rm := p.be.Name()
	cons, err := p.bus.JS.CreateOrUpdateConsumer(ctx, broker.StreamRequests, jetstream.ConsumerConfig{
		Durable:       broker.WorkerConsumer(rm),
		Description:   "the " + rm + " worker pool",
		FilterSubject: broker.SubjectRequestsFor(rm),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		MaxAckPending: 10000,
		MaxDeliver:    -1,
	})
	if err != nil {
		return fmt.Errorf("worker pool %s: consumer: %w", rm, err)
	}
	// Pulls expire within AckWait: the server keeps a worker's pull
	// requests until they expire even when the worker is dead, and a
	// request redelivered to one of those waits another AckWait.
	expiry := min(max(p.cfg.AckWait, time.Second), 30*time.Second)
	cc, err := cons.Consume(p.dispatch, jetstream.PullMaxMessages(p.cfg.Concurrency), jetstream.PullExpiry(expiry))
	if err != nil {
		return fmt.Errorf("worker pool %s: consume: %w", rm, err)
	}
	p.cons = cc
	if p.cfg.Minter != nil {
		if p.renewals, err = p.serveRenewals(); err != nil {
			cc.Stop()
			return fmt.Errorf("worker pool %s: credential renewals: %w", rm, err)
		}
	}
	p.claiming.Store(true)
	p.routines.Go(p.presence)
	if f, ok := p.be.(Follower); ok {
		p.routines.Go(func() {
			if err := f.Follow(p.ctx, poolKernels{p}); err != nil && p.ctx.Err() == nil {
				p.log.Error().Err(err).Msg("following the resource manager stopped")
			}
		})
	}
	if len(p.cfg.Warm) > 0 {
		p.routines.Go(p.runWarm)
	}
	p.log.Info().Msg("worker pool claiming requests")
	return nil
}

// Stop stops claiming and waits, up to ctx, for handlers in flight to
// return. Launchers already started keep running: they do not depend on
// the worker. Safe to call more than once.
func (p *Pool) Stop(ctx context.Context) error {
	p.claiming.Store(false)
	if p.cons != nil {
		p.cons.Stop()
	}
	if p.renewals != nil {
		_ = p.renewals.Unsubscribe()
	}
	p.stop()
	// The consumer's callback may be inside dispatch until Closed.
	if err := p.routines.WaitAfter(ctx, p.cons); err != nil {
		return fmt.Errorf("worker pool %s: stopping: %w", p.cfg.ID, err)
	}
	return nil
}

// releaser returns the function that gives a launch slot back, once
// however often it is called.
func (p *Pool) releaser() func() {
	var once sync.Once
	return func() { once.Do(func() { <-p.sem }) }
}

// presence keeps this worker's key alive in kb_workers, renewing it three
// times per TTL of the bucket so one lost renewal does not make it look dead.
func (p *Pool) presence() {
	every := kbjs.DefaultPresenceTTL / 3
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	if st, err := p.bus.Workers.Status(ctx); err == nil && st.TTL() > 0 {
		every = st.TTL() / 3
	}
	cancel()
	t := time.NewTicker(every)
	defer t.Stop()
	// A resource manager's report is refreshed beside the loop, never in
	// it: a slow RM must not delay the heartbeat others judge us by.
	var report atomic.Pointer[map[string]any]
	if rep, ok := p.be.(Reporter); ok {
		p.routines.Go(func() {
			for {
				rctx, rcancel := context.WithTimeout(p.ctx, every)
				m := map[string]any{}
				if v, err := rep.Report(rctx); err == nil {
					m["cluster"] = v
				} else if p.ctx.Err() == nil {
					m["cluster_error"] = err.Error()
				}
				rcancel()
				report.Store(&m)
				select {
				case <-p.ctx.Done():
					return
				case <-time.After(every):
				}
			}
		})
	}
	for {
		info := hostStats()
		info["id"], info["rm"], info["seen"] = p.cfg.ID, p.be.Name(), time.Now().UTC()
		if r := report.Load(); r != nil {
			for k, v := range *r {
				info[k] = v
			}
		}
		data, _ := json.Marshal(info)
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		if _, err := p.bus.Workers.Put(ctx, p.cfg.ID, data); err != nil && p.ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("worker presence")
		}
		cancel()
		select {
		case <-p.ctx.Done():
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = p.bus.Workers.Delete(ctx, p.cfg.ID)
			cancel()
			return
		case <-t.C:
		}
	}
}

func (p *Pool) dispatch(m jetstream.Msg) {
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		_ = m.Nak()
		return
	}
	started := p.routines.Go(func() {
		release := p.releaser()
		defer release()
		var err error
		switch m.Headers().Get(broker.HeaderType) {
		case broker.TypeStartRequest:
			var r broker.StartRequest
			if err = json.Unmarshal(m.Data(), &r); err == nil {
				err = p.handleStart(m, r, release)
			}
		case broker.TypeStopRequest:
			var r broker.StopRequest
			if err = json.Unmarshal(m.Data(), &r); err == nil {
				err = p.handleStop(r)
			}
		default:
			err = fmt.Errorf("unknown request type %q on %s", m.Headers().Get(broker.HeaderType), m.Subject())
			p.log.Error().Err(err).Msg("dropping request")
			_ = m.Term()
			return
		}
		if errors.Is(err, errNakked) {
			return
		}
		if err != nil && p.ctx.Err() != nil {
			// Shutting down: let another worker take it.
			_ = m.Nak()
			return
		}
		if err != nil {
			p.log.Error().Err(err).Str("subject", m.Subject()).Msg("request failed")
		}
		_ = m.Ack()
	})
	if !started {
		<-p.sem
		_ = m.Nak()
	}
}

// handleStart is idempotent on the kernel id: a redelivered request finds
// the record and resumes or cleans up instead of starting a second kernel.
// m is nil for a warm kernel's start, which no request carries. release
// gives the launch slot back once the launcher is submitted: following a
// kernel until it runs costs a watch, not a launch, and holding the slot
// meanwhile capped starts in flight at Concurrency whatever their speed.
func (p *Pool) handleStart(m jetstream.Msg, r broker.StartRequest, release func()) error {
	ctx := p.ctx
	log := p.log.With().Str("kernel_id", r.KernelID).Logger()
	var resumed bool
	attempt := uuid.NewString()
	k, err := p.bus.UpdateKernel(ctx, r.KernelID, func(k *broker.Kernel) error {
		switch {
		case k.State == broker.StateRequested:
			k.State, k.Worker, k.Attempt = broker.StateClaimed, p.cfg.ID, attempt
			return nil
		case k.State.Starting() && len(k.Handle) > 0:
			// Another worker submitted it and died: follow it from the
			// handle rather than start a second launcher.
			resumed = true
			return kbjs.ErrNoChange
		case k.State.Starting() && k.Worker != p.cfg.ID && !p.workerAlive(ctx, k.Worker):
			// Claimed but never submitted, and the claimer is gone. It may
			// have started a launcher before it died: the new attempt makes
			// that launcher stand down when it next reads the record.
			k.State, k.Worker, k.Attempt = broker.StateClaimed, p.cfg.ID, attempt
			return nil
		case k.State.Starting():
			// Another live worker (or this one) is submitting it right
			// now: a duplicate request must not start a second launcher.
			return errInProgress
		default:
			return errAlreadyDone
		}
	})
	if errors.Is(err, errAlreadyDone) || errors.Is(err, broker.ErrKernelNotFound) {
		return nil
	}
	if errors.Is(err, errInProgress) {
		// Ask again later: if the claimer dies before it records a
		// handle, its presence expires and a later delivery takes over.
		if m == nil {
			return err
		}
		_ = m.NakWithDelay(5 * time.Second)
		return errNakked
	}
	if err != nil {
		return err
	}
	if !resumed {
		// One claimed per worker that claims: a redelivery to the same
		// worker is stored once, a takeover by another worker is a fact
		// of its own. It is stored while the launch is prepared (a bus
		// round trip fewer on the start's path); every later event of
		// this start waits for it, so the log keeps claimed first.
		ev := broker.NewEvent(broker.EvClaimed, k)
		ev.ID, ev.Source, ev.RequestID = broker.EventID(r.KernelID, broker.EvClaimed, p.cfg.ID), "worker", r.RequestID
		claimed := p.emitAsync(ev)
		defer claimed()
		failStatus := func(status int, reason string) error {
			claimed()
			return p.failStatus(k, nil, status, reason)
		}
		if time.Now().After(k.Deadline) && !k.Deadline.IsZero() {
			p.countStart(k, OutcomeTimeout)
			return failStatus(0, fmt.Sprintf("the launch deadline passed before a %s worker could take the request", p.be.Name()))
		}
		cfg, status, err := p.resolveLaunch(k)
		if err != nil {
			if status != 0 {
				p.countStart(k, OutcomeRefused)
			} else {
				p.countStart(k, OutcomeFailed)
			}
			return failStatus(status, err.Error())
		}
		// The kernel's input consumer is created while the launcher
		// starts (a consumer is a JetStream API call that queues behind
		// every other start's): the launcher pulls from it by name,
		// without looking it up, and pulls again until it exists.
		input := make(chan error, 1)
		go func() {
			input <- kbjs.Retry(ctx, 30*time.Second, func() error { return kbjs.EnsureInput(ctx, p.bus.JS, r.KernelID) }, nil, nil)
		}()
		if err := p.launchCreds(cfg, r.KernelID); err != nil {
			<-input
			return err
		}
		cfg.Attempt = k.Attempt
		cfg.PortRange = p.cfg.PortRange
		if cfg.Environment != nil {
			if p.cfg.Environments == nil {
				p.countStart(k, OutcomeFailed)
				return failStatus(0, fmt.Sprintf("kernels of environment %s cannot run on %s yet: its workers do not unpack environments", cfg.Environment.Name, p.be.Name()))
			}
			if err := p.environment(ctx, cfg); err != nil {
				if RefusedStatus(err) != 0 {
					p.countStart(k, OutcomeRefused)
				} else {
					p.countStart(k, OutcomeFailed)
				}
				return failStatus(RefusedStatus(err), err.Error())
			}
		}
		if d := time.Until(k.Deadline); !k.Deadline.IsZero() && d < time.Duration(cfg.LaunchTimeout) {
			cfg.LaunchTimeout = broker.Duration(d)
		}
		h, err := p.be.Start(ctx, cfg)
		if err != nil {
			<-input
			if RefusedStatus(err) != 0 {
				p.countStart(k, OutcomeRefused)
			} else {
				p.countStart(k, OutcomeFailed)
			}
			return failStatus(RefusedStatus(err), fmt.Sprintf("%s could not start the kernel: %v", p.be.Name(), err))
		}
		h.Env = cfg.Environment
		// submitted goes to the log before the record says so: the
		// launcher waits for the record before it reports started, so the
		// log keeps submitted before started however fast the kernel is.
		// It is stored while the trusted handle is.
		claimed()
		ev = broker.NewEvent(broker.EvSubmitted, k)
		ev.ID, ev.Source, ev.RequestID = broker.EventID(r.KernelID, broker.EvSubmitted, p.cfg.ID), "worker", r.RequestID
		ev.Host, ev.Handle = h.Host, h.Data
		submitted := p.emitAsync(ev)
		err = p.saveHandle(ctx, r.KernelID, h)
		submitted()
		if err != nil {
			log.Warn().Err(err).Msg("could not record the trusted handle: stopping the launcher")
			_ = p.be.Stop(context.Background(), h, p.cfg.StopGrace)
			p.countStart(k, OutcomeFailed)
			return p.fail(k, nil, "the worker could not record what it started: "+err.Error())
		}
		k, err = p.bus.UpdateKernel(ctx, r.KernelID, func(k *broker.Kernel) error {
			if !k.State.Starting() && k.State != broker.StateRunning {
				return errAlreadyDone
			}
			k.Handle, k.Host = h.Data, h.Host
			if k.State.Starting() {
				k.State = broker.StateSubmitted
			}
			return nil
		})
		if err != nil {
			// Cancelled or deleted meanwhile: do not leave it running.
			log.Info().Err(err).Msg("kernel went away during submission; stopping it")
			p.countStart(k, OutcomeCancelled)
			_ = p.be.Stop(context.Background(), h, p.cfg.StopGrace)
			return nil
		}
		log.Info().Str("host", h.Host).RawJSON("handle", h.Data).Msg("launcher submitted")
		// The input consumer is waited for only now: the launcher needs it
		// once its kernel is ready, and waits for the record to say
		// submitted before it reports started, so writing the record first
		// keeps a consumer creation queued on the JetStream API off the
		// path of every start.
		if inputErr := <-input; inputErr != nil {
			_ = p.be.Stop(context.Background(), h, p.cfg.StopGrace)
			p.countStart(k, OutcomeFailed)
			return p.fail(k, nil, "the worker could not create the kernel's input consumer: "+inputErr.Error())
		}
	}
	release()
	return p.follow(m, k, log)
}

// environment brings the kernel's packed environment where its launcher
// runs and fills {env_prefix} in: unpacked here (cached by digest), or, for
// an EnvShipper, the archive handed to the backend to ship.
func (p *Pool) environment(ctx context.Context, cfg *broker.LaunchConfig) error {
	sh, ships := p.be.(EnvShipper)
	if !ships {
		dir, err := p.cfg.Environments.Ensure(ctx, cfg.Environment)
		if err != nil {
			return fmt.Errorf("the worker could not unpack the kernel's environment: %w", err)
		}
		cfg.FillEnvPrefix(dir)
		return nil
	}
	archive, err := p.cfg.Environments.Archive(ctx, cfg.Environment)
	if err != nil {
		return fmt.Errorf("the worker could not fetch the kernel's environment: %w", err)
	}
	prefix, err := sh.EnvPrefix(cfg)
	if err != nil {
		return fmt.Errorf("%s cannot run the kernel's environment: %w", p.be.Name(), err)
	}
	cfg.EnvArchive = archive
	cfg.FillEnvPrefix(prefix)
	return nil
}

var (
	errAlreadyDone = errors.New("request already handled")
	errInProgress  = errors.New("another worker is submitting this kernel")
	errNakked      = errors.New("request handed back for later")
)

// workerAlive reports whether worker id still announces itself in
// kb_workers. An unknown answer counts as alive: better a late start than
// two kernels.
func (p *Pool) workerAlive(ctx context.Context, id string) bool {
	if id == "" {
		return false
	}
	_, err := p.bus.Workers.Get(ctx, id)
	return !errors.Is(err, jetstream.ErrKeyNotFound)
}

// follow waits until the launcher reports the kernel running, or the
// launch fails, keeping the request in progress meanwhile.
func (p *Pool) follow(m jetstream.Msg, k *broker.Kernel, log zerolog.Logger) error {
	h, err := p.trustedHandle(p.ctx, k.ID)
	if err != nil {
		return err
	}
	// The record is read on each poll rather than watched: a watch is a
	// consumer created through the JetStream API, and one per start in
	// flight capped how fast kernels could start. The client does not
	// wait for this: its front-end sees the record change itself.
	progress := time.NewTicker(p.cfg.AckWait / 3)
	defer progress.Stop()
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	deadline := k.Deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(time.Minute)
	}
	// A little grace past the deadline lets the launcher report its own,
	// more precise reason first.
	timer := time.NewTimer(time.Until(deadline) + 2*time.Second)
	defer timer.Stop()
	// ended reports whether the record says the start is over, and deals
	// with it.
	ended := func() bool {
		cur, _, err := p.bus.GetKernel(p.ctx, k.ID)
		switch {
		case errors.Is(err, broker.ErrKernelNotFound):
			p.countStart(k, OutcomeCancelled)
			return true // deleted: the front-end gave up on it
		case err != nil:
			return false
		case cur.State == broker.StateRunning || cur.State == broker.StateRestarting:
			p.countStartAt(k, OutcomeStarted, cur.Updated)
			return true
		case cur.State.Terminal():
			p.countStart(k, endOutcome(cur))
			// Failed or cancelled: make sure nothing is left behind.
			_ = p.be.Stop(context.Background(), h, p.cfg.StopGrace)
			return true
		}
		return false
	}
	if ended() {
		return nil
	}
	polls := 0
	for {
		select {
		case <-p.ctx.Done():
			return p.ctx.Err()
		case <-poll.C:
			// The record and the resource manager are read less often once
			// a start takes a while: a YARN poll is a REST call, starts in
			// flight are not bounded by Concurrency any more, and at 200
			// concurrent starts reading every record each 250 ms was 3 %
			// of serve's CPU. Nobody waits for this loop to see running.
			polls++
			if polls > 8 && polls%4 != 0 {
				continue
			}
			if ended() {
				return nil
			}
			st, err := p.be.Poll(p.ctx, h)
			if err == nil && st.Exited {
				// The launcher writes its own failure reason before it
				// exits; give that a moment to land, then fill in ours.
				cur, _, gerr := p.bus.GetKernel(p.ctx, k.ID)
				if gerr == nil && cur.State.Starting() {
					p.countStart(k, OutcomeFailed)
					return p.fail(cur, &h, "the launcher exited before the kernel was ready: "+st.Reason)
				}
				if gerr == nil {
					p.countStart(k, endOutcome(cur))
				}
				return nil
			}
		case <-progress.C:
			if m != nil {
				_ = m.InProgress()
			}
		case <-timer.C:
			cur, _, err := p.bus.GetKernel(p.ctx, k.ID)
			if err == nil && cur.State.Starting() {
				p.countStart(k, OutcomeTimeout)
				return p.fail(cur, &h, fmt.Sprintf("the kernel did not start within %s", k.Deadline.Sub(k.Created).Round(time.Second)))
			}
			return nil
		}
	}
}

// fail marks a start failed (unless something else already ended it),
// stops what was started and emits start_failed.
func (p *Pool) fail(k *broker.Kernel, h *Handle, reason string) error {
	return p.failStatus(k, h, 0, reason)
}

// RefusedStatus is the HTTP status a start that failed with err answers
// with when err is a *broker.Error other than a 500 (the backend refused the
// request itself), else 0 (a 500).
func RefusedStatus(err error) int {
	var e *broker.Error
	if errors.As(err, &e) && e.Status != 500 {
		return e.Status
	}
	return 0
}

// failStatus is fail with the HTTP status the client's start answers with
// (0: 500).
func (p *Pool) failStatus(k *broker.Kernel, h *Handle, status int, reason string) error {
	if h != nil {
		_ = p.be.Stop(context.Background(), *h, p.cfg.StopGrace)
	}
	k2, err := p.bus.UpdateKernel(p.ctx, k.ID, func(k *broker.Kernel) error {
		if k.State.Terminal() {
			return errAlreadyDone
		}
		k.State, k.Reason, k.FailStatus = broker.StateFailed, reason, status
		return nil
	})
	if errors.Is(err, errAlreadyDone) || errors.Is(err, broker.ErrKernelNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	ev := broker.NewEvent(broker.EvStartFailed, k2)
	ev.ID, ev.Source, ev.Reason = k.ID+":start_failed", "worker", reason
	p.emit(ev)
	p.log.Warn().Str("kernel_id", k.ID).Str("reason", reason).Msg("start failed")
	return nil
}

// handleStop ends a kernel through the resource manager, for when its
// launcher cannot be reached on the bus.
func (p *Pool) handleStop(r broker.StopRequest) error {
	// Only what this pool's resource manager recorded is stopped: the
	// request's and the record's handles are written by others (a
	// launcher writes its own record).
	h, err := p.trustedHandle(p.ctx, r.KernelID)
	if err != nil {
		return err
	}
	k, _, err := p.bus.GetKernel(p.ctx, r.KernelID)
	if err != nil && !errors.Is(err, broker.ErrKernelNotFound) {
		return err
	}
	_ = kbjs.DeleteInput(p.ctx, p.bus.JS, r.KernelID)
	if len(h.Data) > 0 {
		if err := p.be.Stop(p.ctx, h, p.cfg.StopGrace); err != nil {
			return fmt.Errorf("stop %s: %w", r.KernelID, err)
		}
	}
	if k == nil {
		return nil
	}
	k, err = p.bus.UpdateKernel(p.ctx, r.KernelID, func(k *broker.Kernel) error {
		if k.State == broker.StateTerminated {
			// The front-end recorded the stop before it asked; the
			// launcher, which it could not reach, may never have told
			// the end. Tell it here (the same event id: stored once).
			return kbjs.ErrNoChange
		}
		if !k.State.Terminal() {
			k.State = broker.StateTerminated
		}
		if k.Reason == "" {
			k.Reason = r.Reason
		}
		return nil
	})
	if err != nil {
		return nil
	}
	ev := broker.NewEvent(broker.EvTerminated, k)
	ev.ID, ev.Source, ev.Reason, ev.RequestID = r.KernelID+":terminated", "worker", r.Reason, r.RequestID
	p.emit(ev)
	return nil
}

// emitAsync emits ev beside the caller's work; the function it returns
// waits until ev is stored (or given up on), and may be called again.
func (p *Pool) emitAsync(ev broker.Event) (wait func()) {
	done := make(chan struct{})
	if !p.routines.Go(func() { defer close(done); p.emit(ev) }) {
		p.emit(ev) // stopping: the group takes no more goroutines
		close(done)
	}
	return func() { <-done }
}

func (p *Pool) emit(ev broker.Event) {
	ev.Worker = p.cfg.ID
	// Long enough for KB_EVENTS to elect a new leader on a loaded cluster
	// (a 5 s budget lost audit records in the failover suite).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.bus.Emit(ctx, ev); err != nil {
		p.log.Warn().Err(err).Str("event", ev.Type).Msg("emit event")
	}
}

// poolKernels is the pool's side of a Follower.
type poolKernels struct{ p *Pool }

func (pk poolKernels) Lost(ctx context.Context, id, reason string) error {
	p := pk.p
	var starting bool
	k, err := p.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		// A launcher stopped from outside only knew it was signalled; the
		// resource manager's account of why replaces that.
		if k.State == broker.StateDead && k.Reason == broker.ReasonStoppedOutside {
			k.Reason = reason
			return nil
		}
		if k.State.Terminal() {
			return errAlreadyDone
		}
		starting = k.State.Starting()
		if starting {
			k.State = broker.StateFailed
		} else {
			k.State = broker.StateDead
		}
		k.Reason = reason
		return nil
	})
	if errors.Is(err, errAlreadyDone) || errors.Is(err, broker.ErrKernelNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	typ := broker.EvLost
	if starting {
		typ = broker.EvStartFailed
	}
	ev := broker.NewEvent(typ, k)
	ev.ID, ev.Source, ev.Reason = id+":"+typ, "worker", reason
	p.emit(ev)
	p.log.Warn().Str("kernel_id", id).Str("reason", reason).Str("state", string(k.State)).Msg("the resource manager lost the kernel")
	return nil
}

func (pk poolKernels) Ended(ctx context.Context, id string) (bool, error) {
	k, _, err := pk.p.bus.GetKernel(ctx, id)
	if errors.Is(err, broker.ErrKernelNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return k.State.Terminal(), nil
}

// resolveLaunch builds the launch of kernel k from what this worker checks
// itself: the kernelspec the record names, read from the worker's own
// catalog and meant for its resource manager, and the client's env filtered
// again by the worker's policy. The record's own launch configuration is
// never used: whoever can write a record (a front-end, an administrator, a
// forged request) must not choose the command a worker runs. A refusal
// comes with the HTTP status the client's start answers with (0: 500).
func (p *Pool) resolveLaunch(k *broker.Kernel) (*broker.LaunchConfig, int, error) {
	rm := p.be.Name()
	spec, ok := p.cfg.Specs.Spec(k.Spec)
	if !ok {
		return nil, 0, fmt.Errorf("the %s worker has no kernelspec %q (workers must read the same kernelspec folders as the front-ends: --kernelspec-dir)", rm, k.Spec)
	}
	specRM, err := spec.RM()
	if err != nil {
		return nil, 400, err
	}
	if specRM != rm || (k.RM != "" && k.RM != rm) {
		return nil, 400, fmt.Errorf("kernelspec %s is for the %s resource manager; the %s worker refuses it", spec.Name, specRM, rm)
	}
	env, err := p.cfg.Env.Filter(k.Env)
	if err != nil {
		return nil, 400, err
	}
	// The record's deadline carries the launch time the front-end granted
	// (its default or the client's KERNEL_LAUNCH_TIMEOUT); the worker's
	// own cap still applies.
	timeout, err := p.cfg.Env.LaunchTimeout(env)
	if err != nil {
		return nil, 400, err
	}
	if !k.Deadline.IsZero() && k.Deadline.After(k.Created) {
		timeout = k.Deadline.Sub(k.Created)
	}
	maxT := p.cfg.Env.MaxLaunchTimeout
	if maxT <= 0 {
		maxT = 10 * time.Minute
	}
	timeout = min(timeout, maxT)
	// KERNEL_USERNAME is the record's owner: the front-end decides who
	// that is; a client value that differs does not reach the kernel.
	delete(env, broker.EnvUsername)
	cfg := broker.NewLaunchConfig(spec, k.ID, k.User, env, timeout)
	// A warm pool's kernel (its keeper wrote the record) is started ready
	// for its first request (a YARN driver builds its SparkContext and
	// runs a first job before it answers). Without this the backend never
	// saw LaunchConfig.Warm: the keeper's record carried it, but the launch
	// is rebuilt here from the spec.
	cfg.Warm = k.Warm != nil
	return cfg, 0, nil
}

// launchCreds gives a launch its way onto the bus: credentials scoped to
// the kernel when the pool has a minter. (Its input consumer, which a
// launcher may not create, is the worker's too: see handleStart.)
func (p *Pool) launchCreds(cfg *broker.LaunchConfig, id string) error {
	cfg.NATSURLs, cfg.NATSCA = p.cfg.NATSURLs, p.cfg.NATSCA
	if p.cfg.Minter == nil {
		cfg.NATSToken, cfg.NATSCreds = p.cfg.NATSToken, p.cfg.NATSCreds
		return nil
	}
	cfg.NATSToken = ""
	var err error
	cfg.NATSCreds, err = p.cfg.Minter.LauncherCreds(id, p.cfg.LauncherCredsTTL)
	return err
}

// trustedHandle is what a resource manager started for a kernel, as its
// worker recorded it in kb_handles: it names this pool's resource manager,
// or the kernel has none here (an empty Handle).
type trustedHandle struct {
	V      int             `json:"v"`
	RM     string          `json:"rm"`
	Worker string          `json:"worker"`
	Host   string          `json:"host,omitempty"`
	Data   json.RawMessage `json:"data"`
	Env    *broker.EnvRef  `json:"env,omitempty"`
}

func (p *Pool) saveHandle(ctx context.Context, id string, h Handle) error {
	data, err := json.Marshal(trustedHandle{V: 1, RM: p.be.Name(), Worker: p.cfg.ID, Host: h.Host, Data: h.Data, Env: h.Env})
	if err != nil {
		return err
	}
	return kbjs.Retry(ctx, 30*time.Second, func() error {
		_, err := p.bus.Handles.Put(ctx, id, data)
		return err
	}, nil, nil)
}

// trustedHandle reads the handle this pool's resource manager recorded for
// kernel id; none is an empty Handle, not an error.
func (p *Pool) trustedHandle(ctx context.Context, id string) (Handle, error) {
	var th trustedHandle
	err := kbjs.Retry(ctx, 15*time.Second, func() error {
		e, err := p.bus.Handles.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			th = trustedHandle{}
			return nil
		}
		if err != nil {
			return err
		}
		return json.Unmarshal(e.Value(), &th)
	}, func(err error) bool { var se *json.SyntaxError; return errors.As(err, &se) }, nil)
	if err != nil {
		return Handle{}, fmt.Errorf("trusted handle of %s: %w", id, err)
	}
	if th.RM != p.be.Name() {
		return Handle{}, nil
	}
	return Handle{Host: th.Host, Data: th.Data, Env: th.Env}, nil
}
