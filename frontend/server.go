package frontend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/broker/routines"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Server is one front-end instance.
type Server struct {
	cfg      Config
	bus      *kbjs.Bus
	specs    SpecSource
	log      zerolog.Logger
	app      *fiber.App
	origins  originSet
	policy   broker.EnvPolicy
	ioStream jetstream.Stream
	// liveWrites counts bus messages written to websockets from the live
	// path (wslive.go), for tests and the benchmark's log.
	liveWrites atomic.Int64
	// liveDropped counts live messages a slow socket's subscription
	// dropped (they came from the stream); livePending bounds that
	// subscription's queue, in messages and bytes (wslive.go).
	liveDropped atomic.Int64
	// bodyGets counts output bodies a headers-only output consumer had
	// to fetch (kbjs.Bus.OutputBody): the messages the live path did not
	// carry to a socket first.
	bodyGets    atomic.Int64
	livePending [2]int
	// liveNC carries the live subscriptions (Config.LiveConn); nil when
	// live output is off or the connection could not be opened.
	liveNC *nats.Conn
	// sources prove identities (Config.Token first, then Identities);
	// failures limits failed attempts per remote address.
	sources  []auth.Source
	failures *failLimiter
	// slots enforces the per-user kernel limit across front-ends: the
	// admin limits' max_kernels, else MaxKernelsPerUser.
	slots *userSlots
	// limits are the admin limits (admin_limits.go); ui the web UI's
	// session signing (ui.go).
	limits *adminLimits
	ui     *uiState
	// envs holds kernel environments (environments.go); resolving bounds
	// pip resolvers running at once.
	envs      *kbjs.Envs
	resolving chan struct{}
	// largest caches the resource managers' largest containers
	// (largest.go).
	largest largestCache

	// ctx ends at Stop; every goroutine the server starts watches it
	// and is one of routines.
	ctx      context.Context
	cancel   context.CancelFunc
	routines routines.Group

	state  *state
	hub    *hub
	events chan broker.Event

	// draining is set when Stop starts: websockets that complete
	// their upgrade after that are closed at once.
	draining   atomic.Bool
	wsCount    *wsCounter // open websockets per caller (guard.go)
	hostName   string     // this machine's, a Host always allowed (guard.go)
	releaseSub *nats.Subscription
	ops        *ops // metrics, health, API description (ops.go)
	started    atomic.Bool
	shutOnce   sync.Once
	shutErr    error
	// lnMu guards ln, the listener Serve serves, and stopped: Stop closes
	// the listener itself, so a Serve that had not reached the listener
	// when Stop ran cannot go on serving after it.
	lnMu    sync.Mutex
	ln      net.Listener
	stopped bool
}

// New validates cfg and builds the Fiber app; it starts nothing. Start
// binds to the bus and starts the watchers that keep the kernel, activity
// and session caches; nothing listens until Listen or Serve.
func New(cfg Config, bus *kbjs.Bus, specs SpecSource, log zerolog.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if bus == nil || specs == nil {
		return nil, errors.New("frontend: a bus and a spec source are required")
	}
	origins, _ := parseOrigins(cfg.AllowOrigin)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, bus: bus, specs: specs, origins: origins, livePending: [2]int{livePendingMsgs, livePendingBytes},
		log:    log.With().Str("frontend", cfg.FrontendID).Logger(),
		policy: broker.EnvPolicy{Allowed: cfg.AllowedEnv, DefaultLaunchTimeout: cfg.DefaultLaunchTimeout, MaxLaunchTimeout: cfg.MaxLaunchTimeout},
		ctx:    ctx, cancel: cancel,
		events: make(chan broker.Event, 1024),
	}
	if cfg.Token != "" {
		ts, err := auth.NewTokenSource(cfg.Token, cfg.TokenUser)
		if err != nil {
			return nil, err
		}
		s.sources = append(s.sources, ts)
	}
	for _, src := range cfg.Identities {
		if src == nil {
			return nil, errors.New("frontend: an identity source is nil")
		}
		s.sources = append(s.sources, src)
	}
	s.failures = newFailLimiter(cfg.AuthFailLimit, cfg.AuthFailWindow)
	s.state = newState()
	s.hub = newHub(s)
	if s.ops, err = newOps(s); err != nil {
		cancel()
		return nil, fmt.Errorf("frontend: metrics: %w", err)
	}
	s.app = s.routes()
	return s, nil
}

// Start binds to the bus (up to ctx, or 15s) and starts the server's
// watchers; they run until Stop. On an error, whatever started is stopped.
func (s *Server) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("frontend: started twice")
	}
	fail := func(err error) error {
		s.cancel()
		if s.releaseSub != nil {
			_ = s.releaseSub.Unsubscribe()
		}
		if s.liveNC != nil {
			s.liveNC.Close()
		}
		_ = s.routines.Wait(context.Background())
		return err
	}
	sctx, scancel := context.WithTimeout(ctx, 15*time.Second)
	defer scancel()
	var err error
	if s.ioStream, err = s.bus.JS.Stream(sctx, broker.StreamIO); err != nil {
		return fail(fmt.Errorf("frontend: stream %s: %w", broker.StreamIO, err))
	}
	if s.slots, err = openUserSlots(sctx, s); err != nil {
		return fail(err)
	}
	s.limits = &adminLimits{kv: s.slots.kv, fallbackMax: s.cfg.MaxKernelsPerUser}
	if s.ui, err = newUIState(sctx, s.slots.kv); err != nil {
		return fail(err)
	}
	if err := s.state.start(sctx, s); err != nil {
		return fail(err)
	}
	s.resolving = make(chan struct{}, 2)
	if err := s.startEnvironments(sctx); err != nil {
		return fail(err)
	}
	if !s.cfg.NoLiveOutput {
		s.openLiveConn()
	}
	if s.releaseSub, err = s.bus.NC.Subscribe(broker.SubjectFrontend(s.cfg.FrontendID), s.hub.onRelease); err != nil {
		return fail(fmt.Errorf("frontend: subscribe %s: %w", broker.SubjectFrontend(s.cfg.FrontendID), err))
	}
	s.goFunc(s.emitLoop)
	s.goFunc(s.hub.tickLoop)
	return nil
}

// openLiveConn opens the connection of the live subscriptions. Without
// it websockets get their output from the stream only, as with
// NoLiveOutput.
func (s *Server) openLiveConn() {
	open := s.cfg.LiveConn
	if open == nil {
		open = func() (*nats.Conn, error) {
			return kbjs.Sibling(s.bus.NC, s.bus.NC.Opts.Name+"-live")
		}
	}
	nc, err := open()
	if err != nil {
		s.log.Warn().Err(err).Msg("no connection for live output: websockets get output from the stream only")
		return
	}
	s.liveNC = nc
}

// goFunc runs f in a goroutine owned by the server, unless Stop has
// begun waiting for them (then it reports false).
func (s *Server) goFunc(f func()) bool { return s.routines.Go(f) }

// App returns the Fiber app, for tests (app.Test) and for mounting.
func (s *Server) App() *fiber.App { return s.app }

// Listen serves on addr until Stop.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve serves on ln until Stop; Start comes first.
func (s *Server) Serve(ln net.Listener) error {
	if !s.started.Load() {
		return errors.New("frontend: Serve before Start")
	}
	s.lnMu.Lock()
	if s.stopped {
		s.lnMu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.ln = ln
	s.lnMu.Unlock()
	s.log.Info().Str("addr", ln.Addr().String()).Str("base_url", s.cfg.BaseURL).Msg("front-end listening")
	err := s.app.Listener(ln)
	s.lnMu.Lock()
	stopped := s.stopped
	s.lnMu.Unlock()
	if stopped {
		return nil // stopped by Stop
	}
	return err
}

// Stop stops accepting requests, closes every websocket (code 1012, so
// clients reconnect, to another front-end if there is one) after saving its
// replay cursor, stops the watchers and waits, up to ctx, for every
// goroutine the server started. It is safe to call more than once.
func (s *Server) Stop(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.draining.Store(true)
		s.lnMu.Lock()
		s.stopped = true
		ln := s.ln
		s.lnMu.Unlock()
		s.hub.closeAll(closeServiceRestart, "front-end shutting down")
		if err := s.app.ShutdownWithContext(ctx); err != nil {
			s.shutErr = err
		}
		if ln != nil {
			_ = ln.Close() // already closed by the shutdown, unless Serve had not begun to accept
		}
		if s.releaseSub != nil {
			_ = s.releaseSub.Unsubscribe()
		}
		s.cancel()
		if err := s.routines.Wait(ctx); err != nil && s.shutErr == nil {
			s.shutErr = err
		}
		if s.liveNC != nil {
			s.liveNC.Close() // after the sockets, which unsubscribed from it
		}
	})
	return s.shutErr
}

// routes builds the Fiber app.
func (s *Server) routes() *fiber.App {
	app := fiber.New(fiber.Config{
		ErrorHandler:          s.renderError,
		DisableStartupMessage: true,
		Immutable:             true, // values outlive handlers (records, logs)
		ReadBufferSize:        16 << 10,
		// Hand hijacked websocket connections over without the 16 KiB
		// request reader (the websocket has its own, smaller one).
		ReduceMemoryUsage: true,
		BodyLimit:         8 << 20,
		// The API takes JSON only: a multipart body is not parsed (and
		// spooled to disk) before the guard refuses it.
		DisablePreParseMultipartForm: true,
		IdleTimeout:                  2 * time.Minute,
		AppName:                      "kernelbus",
	})
	s.guardServer(app)
	app.Use(s.guard) // before everything, the public endpoints too (guard.go)
	s.publicOps(app)
	s.publicUI(app)
	app.Use(s.cors, s.auth)
	prefix := strings.TrimSuffix(s.cfg.BaseURL, "/")
	g := app.Group(prefix)
	s.protectedOps(g)
	g.Get("/api", s.getAPI)
	g.Get("/api/kernelspecs", s.listSpecs)
	g.Get("/api/kernelspecs/:name", s.getSpec)
	g.Get("/kernelspecs/:name/*", s.getSpecFile)
	g.Head("/kernelspecs/:name/*", s.getSpecFile)
	g.Get("/api/kernels", s.listKernels)
	g.Post("/api/kernels", s.postKernel)
	g.Get("/api/kernels/:id", s.getKernel)
	g.Delete("/api/kernels/:id", s.deleteKernel)
	g.Post("/api/kernels/:id/interrupt", s.interruptKernel)
	g.Post("/api/kernels/:id/restart", s.restartKernel)
	g.Get("/api/kernels/:id/channels", s.wsLimit, s.wsPrecheck, s.wsHandler())
	g.Get("/api/sessions", s.listSessions)
	g.Post("/api/sessions", s.postSession)
	g.Get("/api/sessions/:id", s.getSession)
	g.Patch("/api/sessions/:id", s.patchSession)
	g.Delete("/api/sessions/:id", s.deleteSession)
	g.Get("/api/environments", s.listEnvironments)
	g.Post("/api/environments", s.postEnvironment)
	g.Get("/api/environments/options", s.envOptions)
	g.Get("/api/environments/:name", s.getEnvironment)
	g.Delete("/api/environments/:name", s.deleteEnvironment)
	g.Get("/api/environments/:name/log", s.environmentLog)
	g.Get("/api/events", s.listEvents)
	g.Get("/api/warm", s.listWarm)
	g.Get("/api/events/stream", s.streamEvents)
	// The platform's pages read these (ui.go, admin_limits.go).
	g.Get("/api/me", s.getMe)
	g.Get("/api/cluster", s.getCluster)
	g.Get("/api/kernel-records", s.listKernelRecords)
	g.Get("/api/kernel-records/:id", s.getKernelRecord)
	g.Get("/api/limits", s.getMyLimits)
	adm := g.Group("/api/admin", requireAdmin)
	adm.Get("/limits", s.getAdminLimits)
	adm.Put("/limits/default", s.putDefaultLimits)
	adm.Put("/limits/users/:user", s.putUserLimits)
	adm.Delete("/limits/users/:user", s.deleteUserLimits)
	app.Use(func(c *fiber.Ctx) error {
		return broker.Errorf(broker.ErrNotFound, "%s %s: no such endpoint", c.Method(), c.Path())
	})
	return app
}

// renderError is the one place errors become responses:
// {"reason","message"} with the error's status, as JEG's JSONErrorsMixin.
func (s *Server) renderError(c *fiber.Ctx, err error) error {
	status, reason, msg := http.StatusInternalServerError, "", err.Error()
	var fe *fiber.Error
	if errors.As(err, &fe) {
		status, msg = fe.Code, fe.Message
	} else {
		be := broker.AsError(err)
		status, msg = be.Status, be.Error()
		if errors.Is(be, broker.ErrLimit) {
			reason = "Resource Limit"
		}
	}
	if reason == "" {
		reason = http.StatusText(status)
	}
	ev := s.log.Debug()
	if status >= 500 {
		ev = s.log.Warn()
	}
	ev.Int("status", status).Str("method", c.Method()).Str("path", c.Path()).Msg(msg)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(status).JSON(fiber.Map{"reason": reason, "message": msg})
}

// cors answers preflights and labels responses for allowed browser
// origins when AllowOrigin is set.
func (s *Server) cors(c *fiber.Ctx) error {
	origin := c.Get(fiber.HeaderOrigin)
	if !s.origins.enabled() || origin == "" {
		if c.Method() == fiber.MethodOptions && c.Get(fiber.HeaderAccessControlRequestMethod) != "" {
			return c.SendStatus(fiber.StatusNoContent)
		}
		return c.Next()
	}
	c.Vary(fiber.HeaderOrigin)
	if !s.origins.match(origin) {
		return c.Next() // no CORS headers: the browser refuses the answer
	}
	if s.origins.any {
		c.Set(fiber.HeaderAccessControlAllowOrigin, "*")
	} else {
		c.Set(fiber.HeaderAccessControlAllowOrigin, origin)
		c.Set(fiber.HeaderAccessControlAllowCredentials, "true")
	}
	c.Set(fiber.HeaderAccessControlExposeHeaders, "Location")
	if c.Method() == fiber.MethodOptions && c.Get(fiber.HeaderAccessControlRequestMethod) != "" {
		c.Set(fiber.HeaderAccessControlAllowMethods, "GET, HEAD, POST, PATCH, DELETE, OPTIONS")
		if h := c.Get(fiber.HeaderAccessControlRequestHeaders); h != "" {
			c.Set(fiber.HeaderAccessControlAllowHeaders, h)
		} else {
			c.Set(fiber.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, X-XSRFToken, X-Requested-With")
		}
		c.Set(fiber.HeaderAccessControlMaxAge, "600")
		return c.SendStatus(fiber.StatusNoContent)
	}
	return c.Next()
}

// checkOrigin refuses a browser (which always sends Origin) whose origin
// is neither this host nor allowed by AllowOrigin: websockets are not
// covered by CORS, so without this any page could drive a kernel with the
// user's ?token= link.
func (s *Server) checkOrigin(c *fiber.Ctx) error {
	origin := c.Get(fiber.HeaderOrigin)
	if origin == "" || s.origins.match(origin) {
		return nil
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, string(c.Request().Host())) {
		return nil
	}
	return broker.Errorf(broker.ErrForbidden, "websocket origin %s is not allowed (same origin only; see AllowOrigin)", origin)
}

// getAPI answers GET /api.
func (s *Server) getAPI(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"version": JupyterServerVersion, "gateway_version": s.cfg.Version})
}

// requestID names the HTTP request in events and logs.
func requestID(c *fiber.Ctx) string {
	if id := c.Get("X-Request-Id"); id != "" && len(id) <= 128 {
		return id
	}
	return newID()
}

// emit queues an event for the audit log without waiting for the bus.
func (s *Server) emit(ev broker.Event) {
	ev.Source = "frontend"
	select {
	case s.events <- ev:
	default:
		s.log.Warn().Str("event", ev.Type).Str("kernel_id", ev.Kernel).Msg("event queue full; dropping event")
	}
}

func (s *Server) emitLoop() {
	for {
		select {
		case <-s.ctx.Done():
			// Flush what is queued, briefly: these are audit records.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			for {
				select {
				case ev := <-s.events:
					_ = s.bus.Emit(ctx, ev)
				default:
					return
				}
			}
		case ev := <-s.events:
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			if err := s.bus.Emit(ctx, ev); err != nil {
				s.log.Warn().Err(err).Str("event", ev.Type).Str("kernel_id", ev.Kernel).Msg("emit event")
			}
			cancel()
		}
	}
}

// newID returns a random id for requests and sessions.
func newID() string { return uuid.NewString() }
