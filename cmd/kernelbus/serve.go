package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/metrics"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// frontendFlags are shared by serve and frontend.
type frontendFlags struct {
	listen        string
	token         string
	specDirs      listFlag
	allowedEnv    listFlag
	allowOrigin   string
	baseURL       string
	launchTimeout time.Duration
	maxKernels    int
	maxPerUser    int
	metricsPublic bool
	topUsers      int
}

func (f *frontendFlags) register(fs *flagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8888", "address of the Jupyter gateway API")
	fs.StringVar(&f.token, "token", "", "token clients must send (Authorization: token T or ?token=T); empty: none")
	fs.Var(&f.specDirs, "kernelspec-dir", "extra folder of kernelspecs (repeatable; searched before the Jupyter folders)")
	fs.Var(&f.allowedEnv, "allowed-env", "env names besides KERNEL_* that clients may pass (comma separated; * for all)")
	fs.StringVar(&f.allowOrigin, "allow-origin", "", "Origin allowed for browsers (CORS and websockets); * for any; empty: same origin only")
	fs.StringVar(&f.baseURL, "base-url", "/", "URL prefix of every route")
	fs.DurationVar(&f.launchTimeout, "launch-timeout", 40*time.Second, "default KERNEL_LAUNCH_TIMEOUT")
	fs.IntVar(&f.maxKernels, "max-kernels", 0, "most kernels at once, starting ones included (0: no limit)")
	fs.IntVar(&f.maxPerUser, "max-kernels-per-user", 0, "most kernels per KERNEL_USERNAME (0: no limit)")
	fs.BoolVar(&f.metricsPublic, "metrics-public", false, "serve /metrics without authentication (default: it needs the API's token)")
	fs.IntVar(&f.topUsers, "metrics-top-users", 0, "add kernelbus_user_kernels{user} for this many users with the most kernels (0: no per-user series)")
}

func (f *frontendFlags) config(id string) frontend.Config {
	return frontend.Config{
		Token:                f.token,
		AllowedEnv:           f.allowedEnv,
		AllowOrigin:          f.allowOrigin,
		BaseURL:              f.baseURL,
		DefaultLaunchTimeout: f.launchTimeout,
		FrontendID:           id,
		MaxKernels:           f.maxKernels,
		MaxKernelsPerUser:    f.maxPerUser,
		MetricsPublic:        f.metricsPublic,
		MetricsTopUsers:      f.topUsers,
	}
}

func (f *frontendFlags) catalog(log zerolog.Logger) frontend.SpecSource {
	dirs := append(append([]string{}, f.specDirs...), frontend.DefaultKernelDirs()...)
	return frontend.NewCatalog(dirs, log)
}

func cmdServe(args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	var ff frontendFlags
	var df dutyFlags
	var rf retentionFlags
	ff.register(fs)
	df.register(fs)
	rf.register(fs)
	dataDir := fs.String("data-dir", defaultDataDir(), "folder for the embedded NATS's JetStream data")
	natsListen := fs.String("nats-listen", "127.0.0.1:-1", "address of the embedded NATS for launchers and tools (port -1: any free one)")
	launcherFlag := fs.String("launcher", "", "path of kernelbus-launcher (default: next to kernelbus, then PATH)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	portRange := fs.String("port-range", "", "ports of the kernels, lower..upper (JEG's port_range), best outside the OS's ephemeral ports; empty: any free port")
	stopKernels := fs.Bool("stop-kernels-on-exit", true, "shut down the kernels this process started when it exits")
	if err := parse(fs.FlagSet, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	launcher, err := findLauncher(*launcherFlag)
	if err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(*natsListen)
	if err != nil {
		return fmt.Errorf("--nats-listen %q: %w", *natsListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("--nats-listen %q: bad port", *natsListen)
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}

	// The embedded NATS trusts this installation's keys only: every part
	// connects with credentials of its role, and each launcher with its
	// own kernel's (package access). The keys and the role credentials
	// for parts and tools started beside serve live in <data-dir>/auth.
	authDir := filepath.Join(*dataDir, "auth")
	inst, err := access.LoadOrGenerate(authDir)
	if err != nil {
		return fmt.Errorf("bus credentials: %w", err)
	}
	if err := access.WriteFiles(authDir, inst); err != nil {
		return fmt.Errorf("bus credentials: %w", err)
	}
	minter, err := inst.Minter()
	if err != nil {
		return err
	}
	srv, err := embedded.NewServer(embedded.Options{Host: host, Port: port, StoreDir: filepath.Join(*dataDir, "jetstream"), Auth: inst})
	if err != nil {
		return err
	}
	if err := srv.Start(10 * time.Second); err != nil {
		return err
	}
	defer srv.Shutdown()
	log.Info().Str("nats", srv.ClientURL()).Str("data_dir", *dataDir).Msg("embedded NATS ready")
	if err := writeInstallation(*dataDir, srv.ClientURL(), authDir); err != nil {
		return err
	}
	roleConn := func(file, name string) (*nats.Conn, error) {
		creds, err := os.ReadFile(filepath.Join(authDir, file))
		if err != nil {
			return nil, err
		}
		return kbjs.Connect(kbjs.ConnectOptions{InProcess: srv.NATS(), Creds: creds, Name: name})
	}
	nc, err := roleConn(access.AdminCreds, "kernelbus-serve")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := signalContext()
	defer cancel()
	bus, err := kbjs.Setup(ctx, nc, rf.layout(kbjs.Layout{Replicas: 1}))
	if err != nil {
		return err
	}
	roleBus := func(file, name string) (*nats.Conn, *kbjs.Bus, error) {
		c, err := roleConn(file, name)
		if err != nil {
			return nil, nil, err
		}
		b, err := kbjs.Open(ctx, c)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return c, b, nil
	}
	feNC, feBus, err := roleBus(access.FrontendCreds, "kernelbus-serve-frontend")
	if err != nil {
		return err
	}
	defer feNC.Close()
	wNC, wBus, err := roleBus(access.WorkerCreds(broker.RMLocal), "kernelbus-serve-worker")
	if err != nil {
		return err
	}
	defer wNC.Close()

	be, err := registry(log).New(broker.RMLocal, workers.BackendConfig{LauncherPath: launcher})
	if err != nil {
		return err
	}
	// One registry for every part of this process, served at /metrics.
	reg := metrics.NewRegistry()
	if err := metrics.RegisterBuildInfo(reg, version); err != nil {
		return err
	}
	for part, c := range map[string]*nats.Conn{"serve": nc, "frontend": feNC, "worker": wNC} {
		if err := metrics.RegisterBus(reg, part, c); err != nil {
			return err
		}
	}
	pool, err := workers.NewPool(workers.PoolConfig{NATSURLs: srv.ClientURL(), Minter: minter, Metrics: reg, PortRange: *portRange}, wBus, be, log)
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}

	fcfg := ff.config("serve-" + randomHex(4))
	fcfg.Metrics = reg
	fcfg.ReadyChecks = []metrics.Check{{Name: "worker", Fn: pool.Ready}}
	fe, err := frontend.New(fcfg, feBus, ff.catalog(log), log)
	if err != nil {
		pool.Stop()
		return err
	}
	ln, err := net.Listen("tcp", ff.listen)
	if err != nil {
		pool.Stop()
		return fmt.Errorf("--listen %s: %w", ff.listen, err)
	}
	d, err := df.start(ctx, feBus, pool.ID(), log)
	if err != nil {
		ln.Close()
		pool.Stop()
		return err
	}
	if err := metrics.RegisterDuties(reg, pool.ID(), d); err != nil {
		d.Stop()
		ln.Close()
		pool.Stop()
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- fe.Serve(ln) }()
	log.Info().Str("url", "http://"+ln.Addr().String()+ff.baseURL).Str("launcher", launcher).Msg("kernelbus serving")

	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case err = <-serveErr:
		log.Error().Err(err).Msg("front-end stopped")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	d.Stop()
	_ = fe.Shutdown(sctx)
	pool.Stop()
	if *stopKernels {
		stopAllKernels(sctx, bus, log)
	}
	_ = wNC.Drain()
	_ = feNC.Drain()
	_ = nc.Drain()
	return err
}

// stopAllKernels asks every launcher on the bus to shut its kernel down,
// in parallel, so that a stopped single-process gateway leaves no kernels.
func stopAllKernels(ctx context.Context, bus *kbjs.Bus, log zerolog.Logger) {
	keys, err := bus.Kernels.ListKeys(ctx)
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	for id := range keys.Keys() {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			req := []byte(`{"op":"` + broker.OpShutdown + `","request_id":"serve-exit"}`)
			if _, err := bus.NC.RequestWithContext(ctx, broker.SubjectControl(id), req); err != nil && !errors.Is(err, nats.ErrNoResponders) {
				log.Warn().Err(err).Str("kernel_id", id).Msg("shutdown on exit")
			}
		}(id)
	}
	wg.Wait()
}

// writeInstallation records how parts and tools reach this installation's
// NATS: its URL and the folder of role credentials (--nats-conn).
func writeInstallation(dir, url, authDir string) error {
	data := []byte("url=" + url + "\nauth=" + authDir + "\n")
	return os.WriteFile(filepath.Join(dir, "nats.conn"), data, 0o600)
}

func defaultDataDir() string {
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "share", "kernelbus")
	}
	return "kernelbus-data"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
