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
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats.go"
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

	// A kernel environment its worker could not bring here (a pod): the
	// launcher fetches it from the workers first.
	if needsEnv(l.cfg) {
		if err := l.fetchEnv(ctx); err != nil {
			reason := err.Error()
			l.log.Error().Str("reason", reason).Msg("kernel environment unavailable")
			l.state.Store(broker.StateFailed)
			_ = l.update(true, func(k *broker.Kernel) { k.State, k.Reason = broker.StateFailed, reason })
			l.emit(broker.EvStartFailed, reason, "")
			return &StartError{Reason: reason}
		}
		l.env = usableHome(kernelEnv(l.cfg.Env), l.dir)
	}

	ports, err := broker.ParsePortRange(l.cfg.PortRange)
	if err != nil {
		return err
	}
	if l.ci, err = newConnInfo(l.cfg.IP, l.cfg.Spec, ports); err != nil {
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

	// The input pull starts before the record says running. It binds the
	// consumer the worker creates without asking the server for it, and
	// pulls until it exists: the consumer delivers all the kernel's input
	// the stream holds, so what a client sends as soon as it sees running
	// waits in the stream until then.
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
