// Package launcher runs beside one kernel: it writes the kernel's
// connection file, starts the kernel in its own process group, bridges the
// kernel's ZMQ sockets to the bus (kb.io.<id>.in → kernel, kernel →
// kb.io.<id>.out.<channel>), signs and verifies messages with a key that
// never leaves this host, serves interrupt / restart / shutdown / ping on
// kb.ctl.<id>, restarts a kernel that dies, and keeps the kernel record,
// its activity and its lifecycle events current. It only touches subjects
// and keys that carry its own kernel id, so it can run with credentials
// scoped to that kernel.
package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Timings of stopping a kernel, as jupyter_client's shutdown_wait_time/2.
const (
	shutdownWait = 2500 * time.Millisecond
	termWait     = 2500 * time.Millisecond
	// stableRun is how long a kernel must run for its restart count to
	// reset and for restarts to keep its ports (jupyter_client's
	// stable_start_time).
	stableRun = 10 * time.Second
	// nudgeEvery is how often kernel_info_request is resent while waiting
	// for a new kernel, because a SUB socket joins late and misses the
	// first statuses. jupyter_server nudges every 500 ms; measured
	// (kernelbus-bench, scenario 1), that wait was most of kernelbus's start
	// overhead over starting ipykernel directly, and a request every 100 ms
	// costs the booting kernel nothing it notices.
	nudgeEvery = 100 * time.Millisecond
	// hbEvery is the heartbeat period; hbStall is when a missing echo is
	// logged.
	hbEvery = 3 * time.Second
	hbStall = 10 * time.Second
	// routeEntries bounds the msg_id → session map.
	routeEntries = 10000
	// busTimeout bounds each record, event and activity write.
	busTimeout = 10 * time.Second
	// interruptWait bounds the wait for interrupt_reply in message mode.
	interruptWait = 5 * time.Second
	// submitWait bounds how long a kernel that is ready waits for its
	// worker to record the submission (see awaitSubmitted).
	submitWait = 10 * time.Second
)

// Source is the Event.Source of every event the launcher emits.
const Source = "launcher"

var (
	// errAborted: a shutdown arrived while a kernel was being started.
	errAborted = errors.New("start aborted by a shutdown request")
	// errRecordGone: somebody else ended the kernel's record (failed,
	// dead, terminated or deleted), so this launcher must stop.
	errRecordGone = errors.New("the kernel record is gone or ended")
	errTerminal   = errors.New("record is terminal")
	// ErrSuperseded: the record names another attempt (see
	// broker.LaunchConfig.Attempt). Run returns it once this launcher has
	// stood down, having stopped its kernel and written nothing.
	ErrSuperseded = errors.New("another worker took the start of this kernel over: this launcher stands down")
)

// StartError says why a kernel did not become ready. Run returns it when
// the first start fails.
type StartError struct{ Reason string }

func (e *StartError) Error() string { return e.Reason }

// GaveUpError is returned by Run when the kernel kept dying and automatic
// restarts were exhausted.
type GaveUpError struct{ Reason string }

func (e *GaveUpError) Error() string { return e.Reason }

// Run starts the kernel described by cfg, serves it until it is shut down
// (control request or ctx cancelled, e.g. by SIGTERM) and returns nil; or
// returns an error when the kernel fails to start (*StartError), dies for
// good (*GaveUpError), or the bus cannot be used. The kernel process group
// is gone when Run returns.
func Run(ctx context.Context, cfg *broker.LaunchConfig, log zerolog.Logger) error {
	if cfg == nil || cfg.KernelID == "" || len(cfg.Argv) == 0 {
		return errors.New("launch config: kernel_id and argv are required")
	}
	c := *cfg // defaults below must not change the caller's config
	cfg = &c
	l := &launcher{
		cfg:      cfg,
		id:       cfg.KernelID,
		log:      log.With().Str("kernel_id", cfg.KernelID).Logger(),
		session:  newUUID(),
		identity: "kb-" + newUUID(),
		username: cfg.User,
		env:      kernelEnv(cfg.Env),
		routes:   newSessionRoutes(routeEntries),
		act:      newActivity(),
		gate:     make(chan struct{}),
		cmds:     make(chan command, 16),
		shutdown: make(chan struct{}),
		in:       make(chan inMsg, 256),
		inStop:   make(chan struct{}),
		waiters:  map[string]chan []byte{},
	}
	if l.username == "" {
		l.username = "kernelbus"
	}
	if cfg.LaunchTimeout <= 0 {
		cfg.LaunchTimeout = broker.Duration(40 * time.Second)
	}
	if cfg.MaxRestarts <= 0 {
		cfg.MaxRestarts = 5
	}
	if cfg.IP == "" {
		cfg.IP = "127.0.0.1"
	}
	l.state.Store(broker.StateSubmitted)
	for _, ch := range []string{chShell, chControl, chStdin, chIOPub} {
		l.outSubject[chIndex(ch)] = broker.SubjectOut(l.id, ch)
	}
	return l.run(ctx)
}

type launcher struct {
	cfg      *broker.LaunchConfig
	id       string
	log      zerolog.Logger
	session  string // the launcher's own Jupyter session
	identity string // ZMQ identity of shell and stdin
	username string
	env      []string

	// superseded: the record names another attempt; write and emit nothing.
	superseded atomic.Bool

	dir      string
	connPath string
	ci       *connInfo

	nc   *nats.Conn
	link *kbjs.KernelLink
	pub  *publisher

	routes     *sessionRoutes
	act        *activity
	outSubject [4]string

	// The current kernel and whether it takes input. gate is closed while
	// the kernel is ready; input waits on it during restarts.
	mu       sync.Mutex
	cur      *incarnation
	gate     chan struct{}
	gateOpen bool

	state atomic.Value // broker.State
	pid   atomic.Int64
	rec   atomic.Pointer[broker.Kernel]

	// Control: operations run one at a time on the supervisor goroutine.
	cmds          chan command
	shutdown      chan struct{} // closed on the first shutdown request
	shutdownOnce  sync.Once
	shutdownWhy   string
	shutdownReqID string
	smu           sync.Mutex
	finished      bool
	shutdownReqs  []*nats.Msg

	// Input from clients.
	in     chan inMsg
	inStop chan struct{}

	// Replies to the launcher's own requests, by request msg_id.
	wmu     sync.Mutex
	waiters map[string]chan []byte

	// Supervisor-only state.
	gen        int
	restarts   int
	everStable bool

	bg      sync.WaitGroup // input forwarder, publisher, activity writer
	closing atomic.Bool    // the launcher is leaving: bus disconnects are expected
	creds   credentials    // own bus credentials, renewed (renew.go)
}

type command struct {
	req broker.ControlRequest
	msg *nats.Msg
}

type inMsg struct {
	channel string
	frame   broker.Frame
	session string
	msgID   string
}

func chIndex(ch string) int {
	switch ch {
	case chShell:
		return 0
	case chControl:
		return 1
	case chStdin:
		return 2
	}
	return 3
}

func (l *launcher) run(ctx context.Context) (err error) {
	dir, err := privateDir(l.id)
	if err != nil {
		return fmt.Errorf("private directory: %w", err)
	}
	l.dir = dir
	defer os.RemoveAll(dir)
	l.env = usableHome(l.env, dir)
	l.connPath = connFilePath(dir, l.id)

	if err := l.connect(ctx); err != nil {
		return err
	}
	// Not in l.bg: that group is waited for before this defer runs.
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewDone := make(chan struct{})
	go func() { defer close(renewDone); l.renewCredentials(renewCtx) }()
	defer func() {
		stopRenew()
		<-renewDone
		l.closing.Store(true)
		l.nc.Close()
	}()

	rec, err := l.readRecord(ctx)
	if err != nil {
		return fmt.Errorf("read kernel record: %w", err)
	}
	if rec.State.Terminal() {
		return fmt.Errorf("kernel record is %s already: not starting", rec.State)
	}
	if l.supersededBy(rec) {
		l.superseded.Store(true)
		return ErrSuperseded
	}
	l.rec.Store(rec)
	l.state.Store(rec.State)

	if l.pub, err = newPublisher(l.nc, l.log); err != nil {
		return err
	}
	actStop := make(chan struct{})
	l.bg.Add(2)
	go func() { defer l.bg.Done(); l.pub.run() }()
	go func() { defer l.bg.Done(); l.act.run(actStop, l.writeActivity) }()
	defer func() {
		close(actStop)
		l.pub.close(5 * time.Second)
		l.bg.Wait()
		if err := l.nc.FlushTimeout(2 * time.Second); err != nil {
			l.log.Warn().Err(err).Msg("flush bus connection")
		}
	}()

	// Control is served from the start, so a DELETE during a slow start
	// reaches the launcher.
	sub, err := l.nc.Subscribe(broker.SubjectControl(l.id), l.onControl)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", broker.SubjectControl(l.id), err)
	}
	defer func() {
		l.finishControl()
		_ = sub.Unsubscribe()
	}()

	if l.ci, err = newConnInfo(l.cfg.IP, l.cfg.Spec); err != nil {
		return err
	}
	if err := l.ci.write(l.connPath); err != nil {
		return fmt.Errorf("write connection file: %w", err)
	}

	inc, err := l.launch(ctx, false)
	// The ports were free when picked, but another process can take one
	// before the kernel binds it (the race jupyter_client accepts too); it
	// shows under concurrent starts. Fresh ports fix it.
	for try := 0; try < 3 && portTaken(err); try++ {
		l.log.Warn().Err(err).Msg("the kernel could not bind its ports: starting it again on new ones")
		inc, err = l.launch(ctx, true)
	}
	defer func() {
		if cur := l.current(); cur != nil {
			l.stopKernel(cur, false, false)
		}
	}()
	switch {
	case errors.Is(err, errAborted):
		if ctx.Err() != nil {
			l.requestShutdown("launcher stopped by signal", "")
		}
		return l.terminate(nil)
	case err != nil:
		reason := err.Error()
		l.log.Error().Str("reason", reason).Msg("kernel failed to start")
		l.state.Store(broker.StateFailed)
		_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateFailed, reason })
		l.emit(broker.EvStartFailed, reason, "")
		return err
	}

	// The input consumer exists before the record says running: a client
	// may publish as soon as it sees running, and DeliverNew starts at the
	// consumer's creation.
	cc, err := l.consumeInput(ctx)
	if err != nil {
		l.stopKernel(inc, false, false)
		reason := "cannot consume kernel input from the bus: " + err.Error()
		_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateFailed, reason })
		l.emit(broker.EvStartFailed, reason, "")
		return err
	}
	l.bg.Add(1)
	go func() { defer l.bg.Done(); l.forwardInput() }()
	defer func() {
		close(l.inStop) // first: the consumer's handler may wait on it
		cc.Stop()
	}()

	l.awaitSubmitted(ctx)
	if err := l.markRunning(inc); err != nil {
		if errors.Is(err, ErrSuperseded) {
			l.log.Info().Msg("another worker took this kernel's start over: stopping this launch's kernel")
			l.stopKernel(inc, false, false)
			return ErrSuperseded
		}
		l.log.Error().Err(err).Msg("kernel record ended by someone else: stopping the kernel")
		l.stopKernel(inc, true, false)
		return err
	}
	l.emit(broker.EvStarted, "", "")
	l.log.Info().Int("pid", inc.proc.pid).Msg("kernel running")
	return l.supervise(ctx, inc)
}

// readRecord reads the kernel record, trying again for up to 30 s (as
// update does) while the bus cannot answer: a NATS node was lost and its
// streams elect new leaders.
func (l *launcher) readRecord(ctx context.Context) (rec *broker.Kernel, err error) {
	err = kbjs.Retry(ctx, 30*time.Second, func() error {
		rctx, cancel := context.WithTimeout(ctx, busTimeout)
		defer cancel()
		rec, _, err = l.link.GetKernel(rctx)
		return err
	}, func(err error) bool { return errors.Is(err, broker.ErrKernelNotFound) }, func(err error, _ time.Duration) {
		l.log.Warn().Err(err).Msg("read kernel record; retrying")
	})
	return rec, err
}

// portTaken reports a start that failed because the kernel found one of
// its ports in use. The kernel is another program, so its stderr (zmq4's
// and libzmq's EADDRINUSE text) is the only account of why it exited.
func portTaken(err error) bool {
	var se *StartError
	return errors.As(err, &se) && strings.Contains(strings.ToLower(se.Reason), "address already in use")
}

// connect dials the bus with the config's credentials. They stay in
// memory: a file would be readable by the kernel, which runs as the same
// OS user. Replies come to the kernel's own inboxes, the only ones its
// credentials let it subscribe to.
func (l *launcher) connect(ctx context.Context) error {
	opts := kbjs.ConnectOptions{
		URLs:        l.cfg.NATSURLs,
		Token:       l.cfg.NATSToken,
		CA:          []byte(l.cfg.NATSCA),
		InboxPrefix: broker.InboxPrefix(l.id),
		Name:        "kernelbus-launcher " + l.id,
		OnState: func(ev string, err error) {
			if l.closing.Load() {
				return
			}
			l.log.Warn().Err(err).Str("bus", ev).Msg("bus connection")
		},
	}
	if l.cfg.NATSCreds != "" {
		creds := []byte(l.cfg.NATSCreds)
		info, err := access.ReadCreds(creds)
		if err != nil {
			return err
		}
		l.creds.cur.Store(&creds)
		l.creds.info.Store(&info)
		opts.CredsFunc = l.creds.get
	}
	nc, err := kbjs.Connect(opts)
	if err != nil {
		return err
	}
	link, err := kbjs.OpenKernel(nc, l.id)
	if err != nil {
		nc.Close()
		return fmt.Errorf("open the bus: %w", err)
	}
	l.nc, l.link = nc, link
	return nil
}

// supervise runs control operations and watches the kernel until it is
// shut down or dies for good.
func (l *launcher) supervise(ctx context.Context, inc *incarnation) error {
	for {
		var died <-chan struct{}
		if inc != nil {
			died = inc.proc.done
		}
		select {
		case <-ctx.Done():
			l.requestShutdown("launcher stopped by signal", "")
			if l.stoppedOutside() {
				return l.die(inc)
			}
			return l.terminate(inc)
		case <-l.shutdown:
			return l.terminate(inc)
		case c := <-l.cmds:
			switch c.req.Op {
			case broker.OpInterrupt:
				err := l.interrupt(inc, c.req.RequestID)
				l.reply(c.msg, l.status(err))
			case broker.OpRestart:
				next, err := l.restart(ctx, inc, c)
				inc = next
				var gaveUp *GaveUpError
				if errors.As(err, &gaveUp) || errors.Is(err, errRecordGone) {
					return err
				}
			}
		case <-died:
			next, err := l.recover(ctx, inc, "")
			inc = next
			if err != nil && !errors.Is(err, errAborted) {
				return err
			}
		}
	}
}

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

func (inc *incarnation) stopped() bool {
	select {
	case <-inc.stop:
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

// ---- the current kernel and the input gate ----

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

// ---- bus writes ----

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

// ---- control ----

func (l *launcher) onControl(m *nats.Msg) {
	var req broker.ControlRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		l.reply(m, broker.ControlReply{Error: "bad control request: " + err.Error()})
		return
	}
	switch req.Op {
	case broker.OpPing:
		l.reply(m, l.status(nil))
	case broker.OpShutdown:
		l.smu.Lock()
		if l.finished {
			l.smu.Unlock()
			l.reply(m, l.status(nil))
			return
		}
		l.shutdownReqs = append(l.shutdownReqs, m)
		l.smu.Unlock()
		why := "shutdown requested"
		if req.User != "" {
			why += " by " + req.User
		}
		if req.Reason != "" {
			why = req.Reason
		}
		l.requestShutdown(why, req.RequestID)
	case broker.OpInterrupt, broker.OpRestart:
		select {
		case l.cmds <- command{req: req, msg: m}:
		default:
			l.reply(m, broker.ControlReply{Error: "too many control requests waiting; try again"})
		}
	default:
		l.reply(m, broker.ControlReply{Error: fmt.Sprintf("unknown control op %q", req.Op)})
	}
}

// requestShutdown makes shutdown idempotent: the first caller's reason
// wins, later ones only wait for the same end.
func (l *launcher) requestShutdown(why, requestID string) {
	l.shutdownOnce.Do(func() {
		l.shutdownWhy, l.shutdownReqID = why, requestID
		close(l.shutdown)
	})
}

// finishControl answers every request still waiting when the launcher
// leaves: shutdowns succeed (the kernel is gone), other operations fail.
func (l *launcher) finishControl() {
	l.smu.Lock()
	l.finished = true
	reqs := l.shutdownReqs
	l.shutdownReqs = nil
	l.smu.Unlock()
	for _, m := range reqs {
		l.reply(m, l.status(nil))
	}
	for {
		select {
		case c := <-l.cmds:
			l.reply(c.msg, l.status(broker.Errorf(broker.ErrKernelGone, "kernel %s is %s", l.id, l.state.Load())))
		default:
			return
		}
	}
}

func (l *launcher) status(err error) broker.ControlReply {
	r := broker.ControlReply{OK: err == nil, State: l.state.Load().(broker.State), PID: int(l.pid.Load())}
	if err != nil {
		r.Error = err.Error()
	}
	if r.State.Terminal() {
		r.PID = 0
	}
	return r
}

func (l *launcher) reply(m *nats.Msg, r broker.ControlReply) {
	if m == nil || m.Reply == "" {
		return
	}
	data, _ := json.Marshal(r)
	out := &nats.Msg{Subject: m.Reply, Data: data, Header: nats.Header{}}
	out.Header.Set(broker.HeaderType, broker.TypeControl)
	if err := l.nc.PublishMsg(out); err != nil {
		l.log.Warn().Err(err).Msg("answer control request")
	}
}

// ---- messages to the kernel ----

// request sends a message the launcher itself makes on ch. It returns the
// request's msg_id and a channel that receives the reply's content; the
// caller must forget(id) if it stops waiting before the reply.
func (l *launcher) request(inc *incarnation, ch, msgType string, content []byte) (string, <-chan []byte, error) {
	id, hdr := newHeader(msgType, l.session, l.username)
	reply := make(chan []byte, 1)
	l.wmu.Lock()
	l.waiters[id] = reply
	l.wmu.Unlock()
	sg := newSigner(l.ci.Key)
	err := inc.socks.byChannel(ch).send(sg.wireFrames(hdr, []byte("{}"), []byte("{}"), content, nil))
	if err != nil {
		l.forget(id)
		return "", nil, err
	}
	return id, reply, nil
}

func (l *launcher) forget(id string) {
	l.wmu.Lock()
	delete(l.waiters, id)
	l.wmu.Unlock()
}

func (l *launcher) sendKernelInfo(inc *incarnation) {
	_, hdr := newHeader("kernel_info_request", l.session, l.username)
	sg := newSigner(l.ci.Key)
	if err := inc.socks.shell.send(sg.wireFrames(hdr, []byte("{}"), []byte("{}"), []byte("{}"), nil)); err != nil {
		l.log.Debug().Err(err).Msg("send kernel_info_request")
	}
}

// deliver hands the reply to one of the launcher's own requests to its
// waiter, if any.
func (l *launcher) deliver(parentID, content []byte) {
	l.wmu.Lock()
	ch, ok := l.waiters[string(parentID)]
	if ok {
		delete(l.waiters, string(parentID))
	}
	l.wmu.Unlock()
	if ok {
		ch <- append([]byte(nil), content...)
	}
}

// consumeInput starts the ordered consumer of kb.io.<id>.in, retrying
// until the launch deadline: while the stream's leader moves (a NATS node
// died) creating a consumer fails for a few seconds, and the kernel is
// already running. An ordered consumer resumes after a bus reconnect or a
// leader change from the last sequence it saw, so client input published
// during an outage still arrives. It starts at an explicit sequence (the
// stream's end now) rather than "deliver new": a consumer that is
// recreated before its first message would otherwise start at the new end
// and skip what clients sent in between.
func (l *launcher) consumeInput(ctx context.Context) (cc jetstream.ConsumeContext, err error) {
	deadline := time.Now().Add(time.Duration(l.cfg.LaunchTimeout))
	if rec := l.rec.Load(); rec != nil && !rec.Deadline.IsZero() && rec.Deadline.After(time.Now()) {
		deadline = rec.Deadline
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tries := 0
	err = kbjs.Retry(dctx, time.Until(deadline), func() error {
		tries++
		cc, err = l.tryConsumeInput(dctx)
		return err
	}, nil, func(err error, _ time.Duration) {
		l.log.Warn().Err(err).Int("try", tries).Msg("kernel input consumer: retrying")
	})
	if err == nil && tries > 1 {
		l.log.Info().Int("tries", tries).Msg("kernel input consumer created")
	}
	return cc, err
}

func (l *launcher) tryConsumeInput(ctx context.Context) (jetstream.ConsumeContext, error) {
	ctx, cancel := context.WithTimeout(ctx, busTimeout)
	defer cancel()
	cons, err := l.link.Input(ctx)
	if err != nil {
		return nil, err
	}
	// The consumer has one message in flight at a time and redelivers
	// one whose ack was lost: a stream sequence seen before is acked and
	// dropped, so the kernel gets each client message once, in order.
	var last uint64
	var re kbjs.Reassembler
	return cons.Consume(func(m jetstream.Msg) {
		if md, err := m.Metadata(); err == nil {
			if md.Sequence.Stream <= last {
				_ = m.Ack()
				return
			}
			last = md.Sequence.Stream
		}
		defer func() { _ = m.Ack() }()
		hdr := m.Headers()
		data, ok, err := re.Feed(&nats.Msg{Subject: m.Subject(), Header: hdr, Data: m.Data()})
		if err != nil {
			l.log.Warn().Err(err).Msg("kernel input: bad chunk")
			return
		}
		if !ok {
			return
		}
		f, err := broker.DecodeV1(data)
		if err != nil {
			l.log.Warn().Err(err).Msg("kernel input: dropped")
			return
		}
		ch := f.Channel
		if ch == "" {
			ch = hdr.Get(broker.HeaderChannel)
		}
		if !broker.IsClientChannel(ch) {
			l.log.Warn().Str("channel", ch).Msg("kernel input on a channel clients may not use: dropped")
			return
		}
		select {
		case l.in <- inMsg{channel: ch, frame: f, session: hdr.Get(broker.HeaderSession), msgID: hdr.Get(broker.HeaderMsgID)}:
		case <-l.inStop:
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		l.log.Warn().Err(err).Msg("kernel input consumer")
	}))
}

var msgIDKey = []string{"msg_id"}

// forwardInput signs client messages and sends them to the kernel, holding
// them while the kernel restarts.
func (l *launcher) forwardInput() {
	sg := newSigner(l.ci.Key)
	for {
		var m inMsg
		select {
		case m = <-l.in:
		case <-l.inStop:
			return
		}
		if m.msgID == "" {
			var v [1][]byte
			_ = scanStrings(m.frame.Header, msgIDKey, v[:])
			m.msgID = string(v[0])
		}
		l.routes.put(m.msgID, m.session)
		gate, inc := l.gateAndKernel()
		select {
		case <-gate:
		case <-l.inStop:
			return
		}
		if inc == nil {
			continue
		}
		f := &m.frame
		frames := sg.wireFrames(f.Header, f.ParentHeader, f.Metadata, f.Content, f.Buffers)
		if err := inc.socks.byChannel(m.channel).send(frames); err != nil {
			l.log.Warn().Err(err).Str("channel", m.channel).Msg("send to kernel")
		}
	}
}
