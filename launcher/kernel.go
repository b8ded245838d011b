package launcher

// One run of the kernel at a time: starting it, stopping, interrupting,
// restarting and recovering it, and which run is current.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// incarnation is one run of the kernel with its own sockets.
type incarnation struct {
	proc      *process
	socks     *sockets
	stop      chan struct{}
	stopOnce  sync.Once
	wg        sync.WaitGroup
	info      chan struct{} // closed by the first kernel_info_reply
	iopub     chan struct{} // closed by the first iopub message
	infoOnce  sync.Once
	iopubOnce sync.Once
	dialed    atomic.Bool
}

func (inc *incarnation) sawInfo()  { inc.infoOnce.Do(func() { close(inc.info) }) }
func (inc *incarnation) sawIOPub() { inc.iopubOnce.Do(func() { close(inc.iopub) }) }

func (inc *incarnation) stopped() bool { return isClosed(inc.stop) }

// isClosed reports, without waiting, whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// launch starts a kernel process and waits until it is ready: a
// kernel_info_reply came back and the iopub subscription delivers. It
// fails with a *StartError when the kernel exits first or the launch
// timeout passes, and with errAborted on shutdown.
func (l *launcher) launch(ctx context.Context, newPorts bool) (*incarnation, error) {
	if newPorts {
		if err := l.ci.pickPorts(); err != nil {
			return nil, &StartError{Reason: err.Error()}
		}
		if err := l.ci.write(l.connPath); err != nil {
			return nil, &StartError{Reason: "write connection file: " + err.Error()}
		}
	}
	l.gen++
	l.act.set("starting")
	vars := map[string]string{"connection_file": l.connPath, "kernel_id": l.id}
	if l.cfg.ResourceDir != "" {
		vars["resource_dir"] = l.cfg.ResourceDir
	}
	argv := broker.SubstituteArgv(l.cfg.Argv, vars)
	p, err := startProcess(argv, l.env, l.cfg.WorkDir, l.log)
	if err != nil {
		return nil, &StartError{Reason: err.Error()}
	}
	l.pid.Store(int64(p.pid))
	l.log.Info().Int("pid", p.pid).Int("run", l.gen).Strs("argv", argv).Msg("kernel process started")
	socks, err := newSockets(l.identity, l.log)
	if err != nil {
		p.kill()
		p.closePipes(time.Second)
		return nil, &StartError{Reason: "create sockets: " + err.Error()}
	}
	inc := &incarnation{proc: p, socks: socks, stop: make(chan struct{}),
		info: make(chan struct{}), iopub: make(chan struct{})}
	l.setCurrent(inc)
	inc.wg.Add(6)
	go l.readLoop(inc, chShell, socks.shell.s)
	go l.readLoop(inc, chControl, socks.control.s)
	go l.readLoop(inc, chStdin, socks.stdin.s)
	go l.readLoop(inc, chIOPub, socks.iopub)
	go l.hbLoop(inc)
	dialed := make(chan error, 1)
	ci := *l.ci // a later restart may pick new ports
	go func() {
		defer inc.wg.Done()
		dialed <- socks.dial(&ci)
	}()

	limit := time.Duration(l.cfg.LaunchTimeout)
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	var nudge <-chan time.Time
	info, iopub := inc.info, inc.iopub
	fail := func(reason string) (*incarnation, error) {
		l.stopKernel(inc, false, false)
		if tail := p.stderrTail(); tail != "" {
			reason += "; stderr: " + tail
		}
		return nil, &StartError{Reason: reason}
	}
	for info != nil || iopub != nil {
		select {
		case err := <-dialed:
			if err != nil {
				if p.wait(time.Second) {
					return fail("kernel " + p.exitDescription() + " before it was ready")
				}
				return fail(err.Error())
			}
			inc.dialed.Store(true)
			t := time.NewTicker(nudgeEvery)
			defer t.Stop()
			nudge = t.C
			l.sendKernelInfo(inc)
		case <-nudge:
			l.sendKernelInfo(inc)
		case <-info:
			info = nil
		case <-iopub:
			iopub = nil
		case <-p.done:
			return fail("kernel " + p.exitDescription() + " before it was ready")
		case <-timeout.C:
			if info == nil {
				return fail(fmt.Sprintf("kernel_info_reply arrived but no iopub message within %s", limit))
			}
			return fail(fmt.Sprintf("no kernel_info_reply within %s", limit))
		case <-l.shutdown:
			l.stopKernel(inc, false, false)
			return nil, errAborted
		case <-ctx.Done():
			l.stopKernel(inc, false, false)
			return nil, errAborted
		}
	}
	l.log.Info().Int("pid", p.pid).Dur("boot", time.Since(p.started)).Msg("kernel ready")
	return inc, nil
}

// stopKernel ends an incarnation. graceful asks the kernel first
// (shutdown_request on control, restart telling it whether it comes
// back), then escalates to SIGTERM and SIGKILL of the process group, as
// jupyter_client does. The sockets are closed and the readers waited for.
func (l *launcher) stopKernel(inc *incarnation, graceful, restart bool) {
	p := inc.proc
	if graceful && !p.exited() {
		if inc.dialed.Load() {
			content := []byte(`{"restart":false}`)
			if restart {
				content = []byte(`{"restart":true}`)
			}
			id, _, err := l.request(inc, chControl, "shutdown_request", content)
			if err != nil {
				l.log.Warn().Err(err).Msg("send shutdown_request")
			}
			// The process exiting is the answer that counts.
			defer l.forget(id)
		}
		if !p.wait(shutdownWait) {
			l.log.Warn().Int("pid", p.pid).Msg("kernel ignored shutdown_request: SIGTERM")
			_ = p.signal(syscall.SIGTERM)
			if !p.wait(termWait) {
				l.log.Warn().Int("pid", p.pid).Msg("kernel ignored SIGTERM: SIGKILL")
			}
		}
	}
	p.kill()
	inc.stopOnce.Do(func() { close(inc.stop) })
	inc.socks.close()
	done := make(chan struct{})
	go func() { inc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		// zmq4 has no deadline on its handshake; a socket stuck there is
		// abandoned rather than allowed to hold the launcher.
		l.log.Warn().Msg("kernel socket goroutines did not stop in 5s")
	}
	p.closePipes(time.Second)
	l.mu.Lock()
	if l.cur == inc {
		l.cur = nil
	}
	l.mu.Unlock()
}

// awaitSubmitted holds the first started back until the worker has
// recorded the submission. The worker emits submitted before it writes
// the record, so the audit log reads submitted before started even when a
// kernel boots faster than its worker gets to write. A worker that died in
// between is waited for no longer than submitWait: the kernel runs anyway.
func (l *launcher) awaitSubmitted(ctx context.Context) {
	submitted := func(k *broker.Kernel) bool {
		return k == nil || (k.State != broker.StateRequested && k.State != broker.StateClaimed) || l.supersededBy(k)
	}
	if submitted(l.rec.Load()) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, submitWait)
	defer cancel()
	err := l.link.WatchKernel(ctx, func(k *broker.Kernel) bool {
		if k == nil || submitted(k) {
			if k != nil {
				l.rec.Store(k)
			}
			return false
		}
		return true
	})
	if errors.Is(err, context.DeadlineExceeded) {
		l.log.Warn().Dur("waited", submitWait).Msg("the worker has not recorded the submission: marking the kernel running anyway")
	}
}

// markRunning writes running into the record and opens input.
func (l *launcher) markRunning(inc *incarnation) error {
	host, _ := os.Hostname()
	pid := inc.proc.pid
	restarts := l.restarts
	err := l.update(false, func(k *broker.Kernel) {
		k.State, k.Reason, k.Restarts = broker.StateRunning, "", restarts
		if k.Host == "" {
			k.Host = host
		}
		if len(k.Handle) == 0 || string(k.Handle) == "null" {
			k.Handle = json.RawMessage(fmt.Sprintf(`{"pid":%d}`, pid))
		}
	})
	if err != nil {
		return err
	}
	l.state.Store(broker.StateRunning)
	l.openGate(inc)
	return nil
}

// terminate shuts the kernel down for good after a shutdown request or a
// signal, and records it.
func (l *launcher) terminate(inc *incarnation) error {
	l.closeGate()
	if inc != nil {
		l.stopKernel(inc, true, false)
	}
	l.state.Store(broker.StateTerminated)
	reason := l.shutdownWhy
	_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateTerminated, reason })
	l.emit(broker.EvTerminated, reason, l.shutdownReqID)
	l.log.Info().Str("reason", reason).Msg("kernel shut down")
	return nil
}

// stoppedOutside reports whether the signal that stopped the launcher came
// from outside kernelbus: kernelbus records a shutdown (or a failed start)
// before it signals a launcher, so a record that is not terminal means
// nobody here asked.
func (l *launcher) stoppedOutside() bool {
	ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
	defer cancel()
	k, _, err := l.link.GetKernel(ctx)
	return err == nil && !k.State.Terminal()
}

// die ends a kernel stopped from outside kernelbus: clients are told it is
// dead, and the record says so (unless kernelbus ended it meanwhile).
func (l *launcher) die(inc *incarnation) error {
	l.closeGate()
	if inc != nil {
		l.stopKernel(inc, true, false)
	}
	l.log.Warn().Msg("stopped by a signal kernelbus did not send: the kernel is dead")
	l.publishStatus("dead")
	l.act.set("dead")
	l.state.Store(broker.StateDead)
	_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateDead, broker.ReasonStoppedOutside })
	l.emit(broker.EvDied, broker.ReasonStoppedOutside, "")
	return nil
}

// interrupt interrupts the running kernel: SIGINT to its process group, or
// interrupt_request on control for interrupt_mode message.
func (l *launcher) interrupt(inc *incarnation, requestID string) error {
	if inc == nil || inc.proc.exited() {
		return broker.Errorf(broker.ErrKernelGone, "kernel %s is not running", l.id)
	}
	if l.cfg.InterruptMode == "message" {
		id, ch, err := l.request(inc, chControl, "interrupt_request", []byte("{}"))
		if err != nil {
			return err
		}
		defer l.forget(id)
		t := time.NewTimer(interruptWait)
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("no interrupt_reply within %s", interruptWait)
		case <-inc.proc.done:
			return broker.Errorf(broker.ErrKernelGone, "kernel %s exited", l.id)
		}
	} else if err := inc.proc.signal(syscall.SIGINT); err != nil {
		return fmt.Errorf("SIGINT kernel: %w", err)
	}
	l.emit(broker.EvInterrupted, "", requestID)
	return nil
}

// restart restarts the kernel in place on request: same id, same
// connection file (ports and key). No iopub restarting status is sent, as
// jupyter_server sends none for REST restarts.
func (l *launcher) restart(ctx context.Context, inc *incarnation, c command) (*incarnation, error) {
	l.closeGate()
	l.state.Store(broker.StateRestarting)
	if err := l.update(false, func(k *broker.Kernel) { k.State, k.Reason = broker.StateRestarting, "" }); err != nil {
		l.reply(c.msg, l.status(err))
		if inc != nil {
			l.stopKernel(inc, true, false)
		}
		return nil, err
	}
	l.emit(broker.EvRestartRequested, "", c.req.RequestID)
	if inc != nil {
		l.stopKernel(inc, true, true)
	}
	l.act.set("restarting")
	next, err := l.launch(ctx, false)
	if errors.Is(err, errAborted) {
		l.reply(c.msg, l.status(err))
		return nil, err
	}
	if err != nil {
		l.reply(c.msg, l.status(err))
		// The kernel did not come back: the automatic restart rules take
		// over from here.
		return l.recover(ctx, nil, err.Error())
	}
	if err := l.markRunning(next); err != nil {
		l.reply(c.msg, l.status(err))
		l.stopKernel(next, true, false)
		return nil, err
	}
	l.emit(broker.EvRestarted, "", c.req.RequestID)
	l.reply(c.msg, l.status(nil))
	return next, nil
}

// recover handles an unexpected death (dead != nil) or a failed restart:
// it restarts the kernel like jupyter_client's KernelRestarter, announcing
// each attempt with an iopub restarting status, and gives up after
// MaxRestarts consecutive failures with an iopub dead status. New ports are
// used while the kernel never ran stably, in case another process took
// one of them.
func (l *launcher) recover(ctx context.Context, dead *incarnation, reason string) (*incarnation, error) {
	l.closeGate()
	if dead != nil {
		reason = "kernel " + dead.proc.exitDescription()
		if dead.proc.uptime() >= stableRun {
			l.restarts = 0
			l.everStable = true
		}
		l.stopKernel(dead, false, false)
		l.log.Warn().Str("reason", reason).Msg("kernel died")
		l.emit(broker.EvDied, reason, "")
	}
	for l.restarts < l.cfg.MaxRestarts {
		l.restarts++
		n := l.restarts
		// The record first, so that a client reacting to the status
		// finds the kernel restarting.
		l.state.Store(broker.StateRestarting)
		if err := l.update(false, func(k *broker.Kernel) {
			k.State, k.Reason, k.Restarts = broker.StateRestarting, reason, n
		}); err != nil {
			return nil, err
		}
		l.publishStatus("restarting")
		l.act.set("restarting")
		l.log.Info().Int("attempt", n).Int("max", l.cfg.MaxRestarts).Bool("new_ports", !l.everStable).Msg("restarting kernel")
		next, err := l.launch(ctx, !l.everStable)
		if errors.Is(err, errAborted) {
			return nil, err
		}
		if err != nil {
			reason = err.Error()
			l.log.Warn().Str("reason", reason).Msg("kernel restart failed")
			continue
		}
		if err := l.markRunning(next); err != nil {
			l.stopKernel(next, true, false)
			return nil, err
		}
		l.emit(broker.EvAutoRestarted, reason, "")
		return next, nil
	}
	gaveUp := fmt.Sprintf("gave up after %d restarts", l.restarts)
	full := gaveUp + "; last failure: " + reason
	l.log.Error().Str("reason", full).Msg("kernel is dead")
	l.publishStatus("dead")
	l.act.set("dead")
	l.state.Store(broker.StateDead)
	_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateDead, full })
	l.emit(broker.EvDied, gaveUp, "")
	return nil, &GaveUpError{Reason: full}
}

func (l *launcher) setCurrent(inc *incarnation) {
	l.mu.Lock()
	l.cur = inc
	l.mu.Unlock()
}

func (l *launcher) current() *incarnation {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

func (l *launcher) openGate(inc *incarnation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cur = inc
	if !l.gateOpen {
		close(l.gate)
		l.gateOpen = true
	}
}

func (l *launcher) closeGate() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gateOpen {
		l.gate = make(chan struct{})
		l.gateOpen = false
	}
}

func (l *launcher) gateAndKernel() (<-chan struct{}, *incarnation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gate, l.cur
}
