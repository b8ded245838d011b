package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lastActivityLayout is what jupyter_server's gateway client parses with
// strptime("%Y-%m-%dT%H:%M:%S.%fZ"): six fractional digits and a Z.
const lastActivityLayout = "2006-01-02T15:04:05.000000Z"

// KernelModel is a kernel as the Jupyter REST API shows it.
type KernelModel struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	LastActivity   string `json:"last_activity"`
	ExecutionState string `json:"execution_state"`
	Connections    int    `json:"connections"`
	Reason         string `json:"reason,omitempty"`
}

// executionStates are the values JupyterLab accepts; anything else the
// launcher might report is shown as idle rather than break the client.
var executionStates = map[string]bool{"starting": true, "idle": true, "busy": true, "restarting": true, "dead": true}

func (s *Server) model(k *broker.Kernel) KernelModel {
	m := KernelModel{ID: k.ID, Name: k.Spec, Connections: s.state.connections(k.ID)}
	last := k.Created
	if k.Updated.After(last) {
		last = k.Updated
	}
	a, hasActivity := s.state.activityOf(k.ID)
	if hasActivity && !a.LastActivity.IsZero() {
		last = a.LastActivity
	}
	if k.Warm != nil && last.Before(k.Warm.Claimed) {
		last = k.Warm.Claimed // a warm kernel is new to whoever took it
	}
	m.LastActivity = last.UTC().Format(lastActivityLayout)
	switch {
	case k.State.Starting():
		m.ExecutionState = "starting"
	case k.State == broker.StateRestarting:
		m.ExecutionState = "restarting"
	case k.State.Terminal():
		m.ExecutionState = "dead"
		m.Reason = k.Reason
	case hasActivity && executionStates[a.ExecutionState]:
		m.ExecutionState = a.ExecutionState
	default:
		m.ExecutionState = "idle"
	}
	return m
}

func kernelNotFound(id string) error {
	return broker.Errorf(broker.ErrKernelNotFound, "Kernel does not exist: %s", id)
}

// visibleKernel reads a record fresh from the bus (not the cache, so a
// kernel another front-end just removed is gone here too) and hides the
// failed and terminated ones, which Jupyter must see as 404.
func (s *Server) visibleKernel(ctx context.Context, id string) (*broker.Kernel, uint64, error) {
	k, rev, err := s.readKernel(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	s.state.putKernel(id, k, rev, false)
	if k.State == broker.StateFailed || k.State == broker.StateTerminated {
		return nil, 0, kernelNotFound(id)
	}
	return k, rev, nil
}

// readKernel reads a record; an id that cannot even be a key is simply
// not a kernel.
func (s *Server) readKernel(ctx context.Context, id string) (*broker.Kernel, uint64, error) {
	if !validKernelID(id) {
		return nil, 0, kernelNotFound(id)
	}
	k, rev, err := s.bus.GetKernel(ctx, id)
	if err == nil && k.WarmIdle() {
		// A warm kernel belongs to no one until a start request takes
		// it: nobody may connect to, restart or stop it by its id.
		return nil, 0, kernelNotFound(id)
	}
	return k, rev, err
}

// validKernelID accepts what can be one token of a subject and a KV key.
func validKernelID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Server) listKernels(c *fiber.Ctx) error {
	who := identityOf(c)
	ks := s.state.listKernels()
	out := make([]KernelModel, 0, len(ks))
	for _, k := range ks {
		if may(who, k.Owner) {
			out = append(out, s.model(k))
		}
	}
	return c.JSON(out)
}

func (s *Server) getKernel(c *fiber.Ctx) error {
	k, _, err := s.ownedKernel(s.ctx, identityOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(s.model(k))
}

// startBody is POST /api/kernels.
type startBody struct {
	Name string            `json:"name"`
	Env  map[string]string `json:"env"`
	Path string            `json:"path"`
}

func (s *Server) postKernel(c *fiber.Ctx) error {
	var b startBody
	if body := c.Body(); len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &b); err != nil {
			return broker.Errorf(broker.ErrBadRequest, "request body is not valid JSON {name, env}: %v", err)
		}
	}
	k, err := s.startKernel(identityOf(c), b.Name, b.Env, requestID(c))
	if err != nil {
		return err
	}
	c.Location(s.cfg.BaseURL + "api/kernels/" + k.ID)
	return c.Status(fiber.StatusCreated).JSON(s.model(k))
}

// startKernel creates the kernel record, asks the spec's worker pool to
// start it and waits until the launcher reports it running, it fails, or
// its launch timeout passes. The kernel belongs to who (or to the user
// who, impersonating, named in KERNEL_USERNAME).
func (s *Server) startKernel(who *auth.Identity, specName string, clientEnv map[string]string, reqID string) (started *broker.Kernel, err error) {
	if specName == "" {
		specName = s.specs.Default()
	}
	spec, ok := s.specs.Spec(specName)
	if !ok {
		return nil, broker.Errorf(broker.ErrSpecNotFound, "Kernel spec %s not found", specName)
	}
	env, err := s.policy.Filter(clientEnv)
	if err != nil {
		return nil, err
	}
	timeout, err := s.policy.LaunchTimeout(env)
	if err != nil {
		return nil, err
	}
	user, err := kernelUser(who, env[broker.EnvUsername])
	if err != nil {
		return nil, err
	}
	if user != "" {
		env[broker.EnvUsername] = user
	}
	if err := s.authorize(spec, user); err != nil {
		return nil, err
	}
	// The installation-wide limit counts this front-end's view of the
	// records, so front-ends starting at once may overshoot it a little;
	// the per-user limit is exact (userSlots).
	if all, _ := s.state.counts(user); s.cfg.MaxKernels > 0 && all >= s.cfg.MaxKernels {
		return nil, broker.Errorf(broker.ErrLimit, "A limit of %d kernels is reached; shut one down first", s.cfg.MaxKernels)
	}
	rm, err := spec.RM()
	if err != nil {
		return nil, broker.Wrap(broker.ErrBadRequest, err, "Kernel spec %s cannot be started", spec.Name)
	}
	// The admin limits: what the launch would ask of its resource
	// manager, read from the very configuration the worker gets.
	var lim Limits
	if user != "" {
		if lim, err = s.limits.effective(s.ctx, user); err != nil {
			return nil, err
		}
		if err := lim.check(user, rm, broker.NewLaunchConfig(spec, "", user, env, timeout)); err != nil {
			return nil, err
		}
	}
	// An environment's kernel asking more than its resource manager's
	// largest container (which may have shrunk since the environment was
	// made) is refused here rather than by the resource manager.
	if spec.Environment() != nil {
		a, err := askedOf(broker.NewLaunchConfig(spec, "", user, env, timeout))
		if err != nil {
			return nil, err
		}
		if err := s.checkLargest(s.ctx, rm, int64(a.DriverMemoryMB), int64(a.Cores), "driver memory", "driver cores"); err != nil {
			return nil, err
		}
	}

	if k, err := s.claimWarm(spec, rm, env, user, reqID, lim.MaxKernels); k != nil || err != nil {
		return k, err
	}

	ctx, cancel := context.WithTimeout(s.ctx, timeout+10*time.Second)
	defer cancel()
	// JEG lets a client choose the id (KERNEL_ID, a UUID) of a new kernel.
	ids := []string{}
	if want, err := uuid.Parse(env[broker.EnvKernelID]); err == nil && want.Version() == 4 {
		ids = append(ids, want.String())
	}
	ids = append(ids, uuid.NewString())
	slot := ""
	if lim.MaxKernels > 0 && user != "" {
		if slot, err = s.slots.acquire(ctx, user, ids[0], lim.MaxKernels); err != nil {
			return nil, err
		}
		// A start that fails gives its slot back at once (its record,
		// failed, would free it too, but only when the slots are full).
		defer func() {
			if err != nil {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer rcancel()
				s.slots.releaseKey(rctx, slot, ids...)
			}
		}()
	}
	now := time.Now().UTC()
	k := &broker.Kernel{
		Spec: spec.Name, RM: rm, User: user, Owner: user, State: broker.StateRequested, Env: env,
		Created: now, Deadline: now.Add(timeout),
	}
	var rev uint64
	for i, id := range ids {
		k.ID = id
		k.Launch = broker.NewLaunchConfig(spec, k.ID, k.User, env, timeout)
		rev, err = s.bus.CreateKernel(ctx, k)
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrKeyExists) || i == len(ids)-1 {
			return nil, broker.Wrap(broker.ErrUnavailable, err, "could not record the new kernel")
		}
		s.log.Info().Str("kernel_id", id).Msg("client-chosen KERNEL_ID is taken; using a new id")
	}
	if slot != "" && k.ID != ids[0] {
		s.slots.moved(ctx, slot, k.ID)
	}
	s.state.putKernel(k.ID, k, rev, false)
	log := s.log.With().Str("kernel_id", k.ID).Str("spec", spec.Name).Str("request_id", reqID).Logger()

	ev := broker.NewEvent(broker.EvRequested, k)
	ev.ID, ev.Source, ev.RequestID, ev.Actor = broker.EventID(k.ID, broker.EvRequested), "frontend", reqID, actorOf(who)
	if err := s.bus.Emit(ctx, ev); err != nil {
		log.Warn().Err(err).Msg("emit requested event")
	}
	// Listen before asking, so no transition can slip by. The state's
	// watcher of every record tells this start about its own: a watch
	// per start was a consumer per start, created through the JetStream
	// API, which capped concurrent starts. A slow poll covers a watcher
	// that is catching up after the bus lost a node.
	changed, unlisten := s.state.listen(k.ID)
	defer unlisten()
	if err := s.bus.Request(ctx, broker.VerbStart, rm, k.ID, broker.StartRequest{KernelID: k.ID, RequestID: reqID}); err != nil {
		s.failStart(k.ID, "the start request could not be queued: "+err.Error(), reqID, actorOf(who))
		return nil, broker.Wrap(broker.ErrUnavailable, err, "could not queue the start of kernel %s", k.ID)
	}
	log.Info().Dur("timeout", timeout).Str("rm", rm).Msg("kernel requested")

	timer := time.NewTimer(time.Until(k.Deadline))
	defer timer.Stop()
	poll := time.NewTicker(2 * time.Second)
	defer poll.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return nil, broker.Errorf(broker.ErrUnavailable, "front-end shutting down while kernel %s starts", k.ID)
		case <-timer.C:
			return s.startTimedOut(k, timeout, reqID, actorOf(who))
		case <-poll.C:
			if cur, rev, err := s.bus.GetKernel(ctx, k.ID); err == nil {
				s.state.putKernel(cur.ID, cur, rev, false)
			} else if errors.Is(err, broker.ErrKernelNotFound) {
				return nil, broker.Errorf(broker.ErrStartFailed, "Kernel %s was removed while it started", k.ID)
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		case <-changed:
			cur, deleted := s.state.record(k.ID)
			if deleted {
				return nil, broker.Errorf(broker.ErrStartFailed, "Kernel %s was removed while it started", k.ID)
			}
			if cur == nil {
				continue
			}
			switch {
			case cur.State == broker.StateRunning || cur.State == broker.StateRestarting:
				log.Info().Str("host", cur.Host).Msg("kernel running")
				return cur, nil
			case cur.State.Terminal():
				return nil, startFailed(cur)
			}
		}
	}
}

// watchKernel watches kernel id's record. A watch is a new consumer, which
// the bus cannot create while it elects a leader after losing a NATS node:
// it tries again for up to 15 s (or until ctx ends).
func (s *Server) watchKernel(ctx context.Context, id string) (w jetstream.KeyWatcher, err error) {
	err = kbjs.Retry(ctx, 15*time.Second, func() error {
		w, err = s.bus.Kernels.Watch(ctx, id)
		return err
	}, nil, func(err error, _ time.Duration) {
		s.log.Warn().Err(err).Str("kernel_id", id).Msg("watch of the kernel record: trying again")
	})
	return w, err
}

func startFailed(k *broker.Kernel) error {
	reason := k.Reason
	if reason == "" {
		reason = "it ended as " + string(k.State)
	}
	e := broker.Errorf(broker.ErrStartFailed, "Kernel %s failed to start: %s", k.ID, reason)
	if k.FailStatus >= 400 && k.FailStatus < 600 {
		e.Status = k.FailStatus // refused by the resource manager: the request is at fault, or the time
	}
	return e
}

// startTimedOut fails a start whose deadline passed (unless it made it
// after all) and asks the worker pool to kill whatever it started.
func (s *Server) startTimedOut(k *broker.Kernel, timeout time.Duration, reqID, actor string) (*broker.Kernel, error) {
	secs := strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)
	reason := "timeout: the kernel did not start within " + secs + "s (KERNEL_LAUNCH_TIMEOUT)"
	cur, err := s.failStart(k.ID, reason, reqID, actor)
	if err == nil && cur != nil && (cur.State == broker.StateRunning || cur.State == broker.StateRestarting) {
		return cur, nil // it made it while we gave up
	}
	if cur != nil && cur.State.Terminal() && cur.Reason != reason {
		return nil, startFailed(cur)
	}
	return nil, broker.Errorf(broker.ErrStartTimeout, "Kernel %s did not start within %ss (KERNEL_LAUNCH_TIMEOUT)", k.ID, secs)
}

// failStart marks a starting kernel failed and sends a stop request to
// its pool. It returns the record as it is afterwards.
func (s *Server) failStart(id, reason, reqID, actor string) (*broker.Kernel, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	changed := false
	cur, err := s.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		changed = false
		if !k.State.Starting() {
			return kbjs.ErrNoChange
		}
		k.State, k.Reason = broker.StateFailed, reason
		changed = true
		return nil
	})
	if err != nil {
		s.log.Warn().Err(err).Str("kernel_id", id).Msg("could not mark the kernel failed")
		return cur, err
	}
	if !changed {
		return cur, nil
	}
	stop := broker.StopRequest{KernelID: id, Host: cur.Host, Handle: cur.Handle, Reason: reason, RequestID: reqID}
	if err := s.bus.Request(ctx, broker.VerbStop, cur.RM, id+":stop", stop); err != nil {
		s.log.Warn().Err(err).Str("kernel_id", id).Msg("could not queue the stop of a failed start")
	}
	ev := broker.NewEvent(broker.EvStartFailed, cur)
	ev.ID, ev.RequestID, ev.Reason, ev.Actor = id+":start_failed", reqID, reason, actor
	s.emit(ev)
	return cur, nil
}

// control sends op to the kernel's launcher and waits for its answer.
func (s *Server) control(ctx context.Context, k *broker.Kernel, op, reqID string, timeout time.Duration) (*broker.ControlReply, error) {
	r, err := s.bus.Control(ctx, k.ID, broker.ControlRequest{Op: op, RequestID: reqID, User: k.User}, timeout)
	if errors.Is(err, kbjs.ErrBadReply) {
		return nil, broker.Wrap(broker.ErrInternal, err, "the launcher of kernel %s sent an unreadable reply", k.ID)
	}
	return r, err
}

// controlError turns a failed control request into the error to show.
func controlError(k *broker.Kernel, op string, err error) error {
	if errors.Is(err, nats.ErrNoResponders) {
		return broker.Errorf(broker.ErrKernelGone, "Kernel %s is not reachable: its launcher is not on the bus", k.ID)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return broker.Errorf(broker.ErrUnavailable, "Kernel %s: the launcher did not answer %s in time", k.ID, op)
	}
	return broker.Wrap(broker.ErrInternal, err, "Kernel %s: %s failed", k.ID, op)
}

// liveKernel returns a kernel that can take interrupt and restart.
func (s *Server) liveKernel(who *auth.Identity, id string) (*broker.Kernel, error) {
	k, _, err := s.ownedKernel(s.ctx, who, id)
	if err != nil {
		return nil, err
	}
	switch {
	case k.State.Starting():
		return nil, broker.Errorf(broker.ErrConflict, "Kernel %s is still starting; try again when it runs", id)
	case k.State == broker.StateDead:
		return nil, broker.Errorf(broker.ErrKernelGone, "Kernel %s is dead: %s", id, k.Reason)
	}
	return k, nil
}

func (s *Server) interruptKernel(c *fiber.Ctx) error {
	k, err := s.liveKernel(identityOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	r, err := s.control(s.ctx, k, broker.OpInterrupt, requestID(c), 10*time.Second)
	if err != nil {
		return controlError(k, "interrupt", err)
	}
	if !r.OK {
		return broker.Errorf(broker.ErrInternal, "Kernel %s could not be interrupted: %s", k.ID, r.Error)
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Server) restartKernel(c *fiber.Ctx) error {
	k, err := s.liveKernel(identityOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	reqID := requestID(c)
	// Written before the launcher is asked, so it precedes what the
	// launcher reports; the launcher emits the same id, stored once.
	ev := broker.NewEvent(broker.EvRestartRequested, k)
	ev.ID, ev.RequestID, ev.Actor = broker.EventID(k.ID, broker.EvRestartRequested, reqID), reqID, actorOf(identityOf(c))
	s.emitNow(ev)
	timeout := s.cfg.DefaultLaunchTimeout
	if k.Launch != nil && k.Launch.LaunchTimeout > 0 {
		timeout = time.Duration(k.Launch.LaunchTimeout)
	}
	r, err := s.control(s.ctx, k, broker.OpRestart, reqID, timeout+5*time.Second)
	if err != nil {
		return controlError(k, "restart", err)
	}
	if !r.OK {
		return broker.Errorf(broker.ErrInternal, "Kernel %s could not be restarted: %s", k.ID, r.Error)
	}
	if cur, _, err := s.visibleKernel(s.ctx, k.ID); err == nil {
		k = cur
	}
	return c.JSON(s.model(k))
}

func (s *Server) deleteKernel(c *fiber.Ctx) error {
	if err := s.shutdownKernel(identityOf(c), c.Params("id"), requestID(c)); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// shutdownKernel asks the launcher to shut the kernel down (its pool to
// kill it when the launcher does not answer), then removes the kernel's
// record, activity and sessions and closes its websockets here.
func (s *Server) shutdownKernel(who *auth.Identity, id, reqID string) error {
	k, _, err := s.ownedKernel(s.ctx, who, id)
	if err != nil {
		return err
	}
	// Written before the launcher is asked, so it precedes terminated.
	ev := broker.NewEvent(broker.EvShutdownRequest, k)
	ev.ID, ev.RequestID, ev.Actor = broker.EventID(k.ID, broker.EvShutdownRequest, reqID), reqID, actorOf(who)
	s.emitNow(ev)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stopped := false
	if k.State == broker.StateRunning || k.State == broker.StateRestarting {
		r, err := s.control(ctx, k, broker.OpShutdown, reqID, 12*time.Second)
		switch {
		case err != nil:
			s.log.Info().Err(err).Str("kernel_id", id).Msg("launcher did not confirm shutdown; asking its pool to stop it")
		case !r.OK:
			s.log.Info().Str("kernel_id", id).Str("error", r.Error).Msg("launcher refused shutdown; asking its pool to stop it")
		default:
			stopped = true
		}
	}
	cur, err := s.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		if k.State.Terminal() {
			return kbjs.ErrNoChange
		}
		k.State = broker.StateTerminated
		if k.Reason == "" {
			k.Reason = "shut down on request"
		}
		return nil
	})
	if err != nil && !errors.Is(err, broker.ErrKernelNotFound) {
		return broker.Wrap(broker.ErrUnavailable, err, "could not record the shutdown of kernel %s", id)
	}
	if cur == nil {
		cur = k
	}
	if k.Owner != "" {
		if lim, err := s.limits.effective(ctx, k.Owner); err == nil && lim.MaxKernels > 0 {
			s.slots.release(ctx, k.Owner, id, lim.MaxKernels)
		}
	}
	// Let this front-end's cache know at once that the kernel ended.
	if k2, rev, err := s.bus.GetKernel(ctx, id); err == nil {
		s.state.putKernel(id, k2, rev, false)
	}
	if !stopped {
		stop := broker.StopRequest{KernelID: id, Host: cur.Host, Handle: cur.Handle, Reason: "shutdown requested", RequestID: reqID}
		if err := s.bus.Request(ctx, broker.VerbStop, k.RM, id+":stop", stop); err != nil {
			s.log.Warn().Err(err).Str("kernel_id", id).Msg("could not queue the stop request")
		}
	}
	// Close this front-end's sockets first (the record is terminal, so
	// their final save removes their session keys instead of writing
	// them), then remove what is left of the kernel.
	s.hub.kernelEnded(id)
	s.hub.waitKernelClosed(ctx, id)
	keys := s.state.sessionKeys(id)
	if kl, err := s.bus.Sessions.ListKeysFiltered(ctx, id+".>"); err == nil {
		for key := range kl.Keys() {
			keys = append(keys, key)
		}
	}
	for _, key := range keys {
		_ = s.bus.Sessions.Delete(ctx, key)
	}
	_ = s.bus.Activity.Delete(ctx, id)
	if err := s.bus.Kernels.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		s.log.Warn().Err(err).Str("kernel_id", id).Msg("could not delete the kernel record")
	}
	s.state.putKernel(id, nil, s.state.rev(id)+1, false)
	s.log.Info().Str("kernel_id", id).Bool("launcher_confirmed", stopped).Msg("kernel shut down")
	return nil
}

// warmServes says why warm kernel k of resource manager rm cannot serve a
// request with the client's filtered env exactly as asked, or "" when it
// can. A warm kernel was started with the spec's env and no user: what a
// request adds at launch (custom env, a chosen id, the user a YARN or SSH
// kernel is impersonated as) cannot be applied to a process that already
// runs. Only its owner and launch timeout can, and what the operator's
// warm pool accepts (Warm.Accept) is let through.
func warmServes(k *broker.Kernel, rm string, env map[string]string) string {
	for name := range env {
		switch {
		case name == broker.EnvLaunchTimeout, slices.Contains(k.Warm.Accept, name):
		case name == broker.EnvUsername:
			if rm != broker.RMLocal && !k.Warm.AnyUser {
				// This resource manager runs kernels as KERNEL_USERNAME
				// (impersonation), and the warm one runs as the worker's
				// user; local kernels run as the worker's user whoever
				// asks.
				return "the kernel must run as " + name
			}
		default:
			return "the request sets " + name
		}
	}
	return ""
}

// claimWarm hands the request a warm kernel of spec if one can serve it
// exactly, or returns nil (then the start is a cold one). The record is
// taken by compare-and-swap on its still being idle, so two front-ends
// never hand out the same kernel and a keeper never reaps a taken one.
func (s *Server) claimWarm(spec *broker.KernelSpec, rm string, env map[string]string, user, reqID string, maxKernels int) (*broker.Kernel, error) {
	pool := broker.WarmPoolKey(rm, spec.Name)
	digest := spec.Digest()
	var cands []*broker.Kernel
	why := ""
	for _, c := range s.state.warmIdle(pool) {
		if c.Warm.Digest != digest {
			continue
		}
		if why = warmServes(c, rm, env); why == "" {
			cands = append(cands, c)
		}
	}
	if len(cands) == 0 {
		if why != "" {
			s.log.Debug().Str("spec", spec.Name).Str("why", why).Msg("cold start: no warm kernel can serve the request")
		}
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	// A warm kernel handed to a user is that user's kernel: it takes one
	// of their slots like a cold start, before it is taken.
	slot := ""
	if maxKernels > 0 && user != "" {
		var err error
		if slot, err = s.slots.acquire(ctx, user, cands[0].ID, maxKernels); err != nil {
			return nil, err
		}
	}
	errTaken := errors.New("taken")
	for _, c := range cands {
		k, err := s.bus.UpdateKernel(ctx, c.ID, func(k *broker.Kernel) error {
			if !k.WarmIdle() || k.State != broker.StateRunning || k.Warm.Digest != digest || k.Warm.Pool != pool {
				return errTaken
			}
			k.User, k.Owner, k.Warm.Claimed = user, user, time.Now().UTC()
			return nil
		})
		if err != nil {
			continue
		}
		if slot != "" && k.ID != cands[0].ID {
			s.slots.moved(ctx, slot, k.ID)
		}
		s.state.putKernel(k.ID, k, s.state.rev(k.ID)+1, false)
		ev := broker.NewEvent(broker.EvWarmClaimed, k)
		who := user
		if who == "" {
			who = "an anonymous client"
		}
		ev.ID, ev.Source, ev.RequestID = broker.EventID(k.ID, broker.EvWarmClaimed), "frontend", reqID
		ev.Reason = "warm kernel handed to " + who
		s.emit(ev)
		s.log.Info().Str("kernel_id", k.ID).Str("spec", spec.Name).Str("user", user).Str("request_id", reqID).Msg("warm kernel handed out")
		return k, nil
	}
	if slot != "" {
		s.slots.releaseKey(ctx, slot, cands[0].ID)
	}
	return nil, nil
}

// WarmModel is a warm kernel nobody took, as GET /api/warm shows it to
// administrators.
type WarmModel struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Pool   string `json:"pool"`
	Keeper string `json:"keeper"`
	Since  string `json:"since"`
	State  string `json:"state"`
}

// listWarm shows administrators the warm kernels that wait for a request.
func (s *Server) listWarm(c *fiber.Ctx) error {
	if !identityOf(c).IsAdmin() {
		return broker.Errorf(broker.ErrForbidden, "only administrators may list warm kernels")
	}
	out := []WarmModel{}
	for _, k := range s.state.warmAll() {
		out = append(out, WarmModel{ID: k.ID, Name: k.Spec, Pool: k.Warm.Pool, Keeper: k.Warm.Keeper,
			Since: k.Warm.Since.UTC().Format(lastActivityLayout), State: string(k.State)})
	}
	return c.JSON(out)
}
