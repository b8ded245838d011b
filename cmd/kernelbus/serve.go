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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// frontendFlags are shared by serve and frontend.
type frontendFlags struct {
	listen        string
	token         string
	tokenFile     string
	tokenUser     string
	usersFile     string
	noAuth        bool
	authorized    listFlag
	unauthorized  listFlag
	specDirs      listFlag
	allowedEnv    listFlag
	allowOrigin   string
	baseURL       string
	launchTimeout time.Duration
	maxKernels    int
	maxPerUser    int
	allowHost     listFlag
	maxEnvBytes   int
	maxWS         int
	metricsPublic bool
	liveOutput    bool
	headersOnly   bool
	liveInput     bool
	topUsers      int
	tls           tlsFlags
	ident         identityFlags
	env           envFlags
}

func (f *frontendFlags) register(fs *flagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8888", "address of the Jupyter gateway API")
	fs.StringVar(&f.token, "token", "", "shared token clients may send (Authorization: token T or ?token=T); its holder is an administrator (serve: one is generated when no authentication is configured)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding --token (prefer it: a command line is readable by every local user, kernels included, in /proc/<pid>/cmdline)")
	fs.StringVar(&f.tokenUser, "token-user", "admin", "user name of the --token identity")
	fs.StringVar(&f.usersFile, "users-file", "", "users file with per-user tokens and passwords (`kernelbus users`)")
	fs.BoolVar(&f.noAuth, "insecure-no-auth", false, "no authentication: every caller is an anonymous administrator (tests and trusted networks only)")
	fs.Var(&f.authorized, "authorized-users", "KERNEL_USERNAMEs that may start kernels whose spec names no authorized_users (comma separated; empty: any)")
	fs.Var(&f.unauthorized, "unauthorized-users", "KERNEL_USERNAMEs that may start no kernel (comma separated)")
	fs.Var(&f.specDirs, "kernelspec-dir", "extra folder of kernelspecs (repeatable; searched before the Jupyter folders)")
	fs.Var(&f.allowedEnv, "allowed-env", "env names besides KERNEL_* that clients may pass (comma separated; * for all)")
	fs.StringVar(&f.allowOrigin, "allow-origin", "", "Origin allowed for browsers (CORS and websockets); * for any; empty: same origin only")
	fs.StringVar(&f.baseURL, "base-url", "/", "URL prefix of every route")
	fs.Var(&f.allowHost, "allow-host", "Host names (comma separated; *.example.com, * for any) accepted on loopback connections besides localhost and 127.0.0.1 (DNS rebinding protection)")
	fs.IntVar(&f.maxEnvBytes, "max-env-bytes", broker.DefaultMaxEnvBytes, "largest env of a start request, names and values (400 beyond)")
	fs.IntVar(&f.maxWS, "max-websockets-per-caller", 256, "most kernel websockets open at once per client address (429 beyond; -1: no limit)")
	fs.DurationVar(&f.launchTimeout, "launch-timeout", 40*time.Second, "default KERNEL_LAUNCH_TIMEOUT")
	fs.IntVar(&f.maxKernels, "max-kernels", 0, "most kernels at once, starting ones included (0: no limit)")
	fs.IntVar(&f.maxPerUser, "max-kernels-per-user", 0, "most kernels per user, across front-ends (0: no limit)")
	fs.BoolVar(&f.headersOnly, "headers-only-output", false, "with live output, websockets read their output consumer headers only and fetch the bodies the live path missed by sequence (each body reaches the front-end once; measured to cost more CPU than it saves in an iopub flood, where the consumer handles most messages)")
	fs.BoolVar(&f.liveOutput, "live-output", true, "deliver kernel output to websockets as it is published (core NATS), the stream filling gaps, carrying outputs over 1 MiB and serving resumes; false: from the stream only")
	fs.BoolVar(&f.liveInput, "live-input", true, "number client messages per websocket so that launchers may take them as they are published (core NATS), the stream filling gaps; false: launchers take input from the stream only")
	fs.BoolVar(&f.metricsPublic, "metrics-public", false, "serve /metrics without authentication (default: it needs the API's token)")
	fs.IntVar(&f.topUsers, "metrics-top-users", 0, "add kernelbus_user_kernels{user} for this many users with the most kernels (0: no per-user series)")
	f.tls.register(fs)
	f.ident.register(fs)
	f.env.registerCommon(fs)
	f.env.registerFrontend(fs)
}

// identities returns the identity sources the flags configure, in the
// order they are asked (the --token comes first, inside frontend.New).
func (f *frontendFlags) identities(log zerolog.Logger) ([]auth.Source, error) {
	var out []auth.Source
	if f.usersFile != "" {
		us, err := auth.NewUsersSource(f.usersFile)
		if err != nil {
			return nil, fmt.Errorf("--users-file: %w", err)
		}
		out = append(out, us)
	}
	more, err := identitySources(f, log)
	if err != nil {
		return nil, err
	}
	return append(out, more...), nil
}

// authConfigured reports whether any authentication is configured.
func (f *frontendFlags) authConfigured() bool {
	return f.token != "" || f.tokenFile != "" || f.usersFile != "" || f.ident.hubURL != "" || len(f.ident.proxyCIDRs) > 0 || f.tls.clientCA != ""
}

// checkAuth refuses a configuration with no authentication unless
// --insecure-no-auth says so, and refuses --insecure-no-auth beside
// authentication (one of them is a mistake).
func (f *frontendFlags) checkAuth(part string) error {
	if f.noAuth && f.authConfigured() {
		return errors.New("--insecure-no-auth cannot go with --token, --token-file or --users-file: drop one")
	}
	tok, err := secretFlag("--token", f.token, f.tokenFile)
	if err != nil {
		return err
	}
	f.token, f.tokenFile = tok, ""
	if !f.noAuth && !f.authConfigured() {
		return fmt.Errorf("kernelbus %s needs authentication: pass --token (shared by every front-end), --users-file, or --insecure-no-auth to let anyone who reaches %s act as an administrator", part, f.listen)
	}
	return nil
}

func (f *frontendFlags) config(id string, log zerolog.Logger) (frontend.Config, error) {
	ids, err := f.identities(log)
	if err != nil {
		return frontend.Config{}, err
	}
	envCfg, err := f.env.frontendConfig(context.Background(), log)
	if err != nil {
		return frontend.Config{}, err
	}
	return frontend.Config{
		Environments:         envCfg,
		Token:                f.token,
		TokenUser:            f.tokenUser,
		Identities:           ids,
		AuthorizedUsers:      f.authorized,
		UnauthorizedUsers:    f.unauthorized,
		AllowedEnv:           f.allowedEnv,
		AllowOrigin:          f.allowOrigin,
		Guard:                frontend.GuardConfig{AllowHost: f.allowHost, MaxEnvBytes: f.maxEnvBytes, MaxWebsocketsPerCaller: f.maxWS},
		BaseURL:              f.baseURL,
		DefaultLaunchTimeout: f.launchTimeout,
		FrontendID:           id,
		MaxKernels:           f.maxKernels,
		MaxKernelsPerUser:    f.maxPerUser,
		MetricsPublic:        f.metricsPublic,
		MetricsTopUsers:      f.topUsers,
		NoLiveOutput:         !f.liveOutput,
		HeadersOnlyOutput:    f.headersOnly,
		NoLiveInput:          !f.liveInput,
	}, nil
}

func (f *frontendFlags) catalog(log zerolog.Logger) frontend.SpecSource {
	dirs := append(append([]string{}, f.specDirs...), frontend.DefaultKernelDirs()...)
	return frontend.NewCatalog(dirs, log)
}

// specCatalog reads the kernelspecs of dirs and then Jupyter's folders, as
// front-ends and workers both do.
func specCatalog(dirs []string, log zerolog.Logger) *frontend.Catalog {
	return frontend.NewCatalog(append(append([]string{}, dirs...), frontend.DefaultKernelDirs()...), log)
}

func cmdServe(args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	var ff frontendFlags
	var df dutyFlags
	var rf retentionFlags
	ff.register(fs)
	ff.env.registerWorker(fs)
	df.register(fs)
	rf.register(fs)
	builds := fs.Bool("build-worker", true, "run an environment build worker in this process (it builds environments with --env-python)")
	dataDir := fs.String("data-dir", defaultDataDir(), "folder for the embedded NATS's JetStream data")
	natsListen := fs.String("nats-listen", "127.0.0.1:-1", "address of the embedded NATS for launchers and tools (port -1: any free one)")
	launcherFlag := fs.String("launcher", "", "path of kernelbus-launcher (default: next to kernelbus, then PATH)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	portRange := fs.String("port-range", "", "ports of the kernels, lower..upper (JEG's port_range), best outside the OS's ephemeral ports; empty: any free port")
	localOpts := localFlags(fs)
	var warm warmFlag
	fs.Var(&warm, "warm", warmUsage)
	stopKernels := fs.Bool("stop-kernels-on-exit", true, "shut down every kernel on its bus when it exits (false: they keep running after it)")
	var tf busTLSFlags
	tf.register(fs)
	credsTTL := fs.Duration("launcher-creds-ttl", access.DefaultLauncherCredsTTL, launcherCredsTTLUsage)
	memLimit := fs.Int("memory-limit-mib", defaultServeMemoryLimitMiB, memoryLimitUsage)
	if err := parse(fs.FlagSet, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	defer keepMemoryLimit(*memLimit)()
	// Like jupyter_server: with no authentication configured, a token for
	// this run, shown once below.
	generated := false
	if !ff.noAuth && !ff.authConfigured() {
		ff.token, generated = randomHex(24), true
	}
	if err := ff.checkAuth("serve"); err != nil {
		return err
	}
	feCfg, err := ff.config("serve-"+randomHex(4), log)
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
	// The folder holds the signing keys, every part's credentials and
	// every kernel's traffic in the stream files: closed to everyone
	// else, the accounts local kernels run as included, even when it
	// existed before with a wider mode.
	if err := os.Chmod(*dataDir, 0o700); err != nil {
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
	tlsFiles, err := tf.files(filepath.Join(authDir, "tls"), host)
	if err != nil {
		return err
	}
	var natsCA string
	if tlsFiles.CA != "" {
		b, err := os.ReadFile(tlsFiles.CA)
		if err != nil {
			return fmt.Errorf("--nats-ca: %w", err)
		}
		natsCA = string(b)
	}
	srv, err := embedded.NewServer(embedded.Options{Host: host, Port: port, StoreDir: filepath.Join(*dataDir, "jetstream"), Auth: inst,
		TLSCert: tlsFiles.Cert, TLSKey: tlsFiles.Key})
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	// Everything started below stops here, in reverse order, however
	// serve ends.
	run := &parts{log: log}
	defer run.stopAll(20 * time.Second)
	if err := run.start(ctx, "embedded NATS", srv); err != nil {
		return err
	}
	log.Info().Str("nats", srv.ClientURL()).Bool("tls", tlsFiles.Cert != "").Str("data_dir", *dataDir).Msg("embedded NATS ready")
	if err := writeInstallation(*dataDir, srv.ClientURL(), authDir, tlsFiles.CA); err != nil {
		return err
	}
	roleConn := func(file, name string) (*nats.Conn, error) {
		creds, err := os.ReadFile(filepath.Join(authDir, file))
		if err != nil {
			return nil, err
		}
		nc, err := kbjs.Connect(kbjs.ConnectOptions{InProcess: srv.NATS(), Creds: creds, Name: name})
		if err != nil {
			return nil, err
		}
		run.onStop(name, closeConn(nc))
		return nc, nil
	}
	nc, err := roleConn(access.AdminCreds, "kernelbus-serve")
	if err != nil {
		return err
	}
	bus, err := kbjs.Setup(ctx, nc, rf.layout(kbjs.Layout{Replicas: 1}))
	if err != nil {
		return err
	}
	if *stopKernels {
		// Stopped after the worker and the front-end: no kernel starts
		// once this runs.
		run.onStop("kernels", func(ctx context.Context) error { stopAllKernels(ctx, bus, log); return nil })
	}
	roleBus := func(file, name string) (*nats.Conn, *kbjs.Bus, error) {
		c, err := roleConn(file, name)
		if err != nil {
			return nil, nil, err
		}
		b, err := kbjs.Open(ctx, c)
		if err != nil {
			return nil, nil, err
		}
		return c, b, nil
	}
	feNC, feBus, err := roleBus(access.FrontendCreds, "kernelbus-serve-frontend")
	if err != nil {
		return err
	}
	wNC, wBus, err := roleBus(access.WorkerCreds(broker.RMLocal), "kernelbus-serve-worker")
	if err != nil {
		return err
	}

	lopts, err := localOpts()
	if err != nil {
		return err
	}
	be, err := registry(log).New(broker.RMLocal, workers.BackendConfig{LauncherPath: launcher, Options: lopts})
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
	// Environments unpack beside the bus's data, except as root: kernels
	// then run as other accounts, to which the data folder (0700) is
	// closed, so the worker's default (/var/cache/kernelbus/envs) holds.
	if ff.env.cache == "" && os.Geteuid() != 0 {
		ff.env.cache = filepath.Join(*dataDir, "envs")
	}
	var baseSpecs workers.SpecSource = specCatalog(ff.specDirs, log)
	if len(warm) > 0 {
		baseSpecs = warmSpecs(specCatalog(ff.specDirs, log))
	}
	envCache, wSpecs, err := ff.env.workerEnvironments(ctx, wBus, baseSpecs, log)
	if err != nil {
		return err
	}
	// The worker reads the front-end's folders and applies its env
	// policy: it resolves the very specs the front-end offers.
	pool, err := workers.NewPool(workers.PoolConfig{NATSURLs: srv.ClientURL(), NATSCA: natsCA, Minter: minter, LauncherCredsTTL: *credsTTL, Metrics: reg,
		Specs: wSpecs, Env: broker.EnvPolicy{Allowed: ff.allowedEnv, MaxTotalBytes: ff.maxEnvBytes}, Environments: envCache, Warm: warm, PortRange: *portRange}, wBus, be, log)
	if err != nil {
		return err
	}
	if *builds {
		_, bBus, err := roleBus(access.WorkerCreds(broker.RMBuild), "kernelbus-serve-build")
		if err != nil {
			return err
		}
		b, err := ff.env.builder(ctx, "", bBus, log)
		if err != nil {
			log.Warn().Err(err).Msg("no environment build worker in this process")
		} else {
			run.onStop("environment builder", b.Stop)
		}
	}
	if err := run.start(ctx, "worker pool", pool); err != nil {
		return err
	}

	feCfg.Metrics = reg
	feCfg.ReadyChecks = []metrics.Check{{Name: "worker", Fn: pool.Ready}}
	fe, err := frontend.New(feCfg, feBus, ff.catalog(log), log)
	if err != nil {
		return err
	}
	web, url, err := serveFrontend(ctx, run, &ff, &df, fe, feBus, pool.ID(), reg, log)
	if err != nil {
		return err
	}
	log.Info().Str("url", url).Str("launcher", launcher).Msg("kernelbus serving")
	if generated {
		printGeneratedToken(stderr, strings.TrimSuffix(url, "/"), ff.token)
	}

	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case <-web.done:
		err = web.err
		log.Error().Err(err).Msg("front-end stopped")
	}
	return err
}

// printGeneratedToken shows the token generated for this run, once, with
// what a client needs to use it (as jupyter_server prints its token URL).
func printGeneratedToken(w io.Writer, url, token string) {
	fmt.Fprintf(w, `
    No --token or --users-file was given, so kernelbus generated a token for this run.
    Clients send it as "Authorization: token <token>" or ?token=<token>:

        %s/api/kernelspecs?token=%s
        jupyter lab --gateway-url=%s --GatewayClient.auth_token=%s

`, url, token, url, token)
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
			_, err := bus.Control(ctx, id, broker.ControlRequest{Op: broker.OpShutdown, RequestID: "serve-exit"}, time.Minute) // bounded by ctx
			if err != nil && !errors.Is(err, nats.ErrNoResponders) {
				log.Warn().Err(err).Str("kernel_id", id).Msg("shutdown on exit")
			}
		}(id)
	}
	wg.Wait()
}

// launcherCredsTTLUsage documents --launcher-creds-ttl of serve and worker.
const launcherCredsTTLUsage = "validity of each launcher's own bus credentials: launchers renew them at half-life while their kernel runs, so this is how long they outlive it (negative: no expiry)"

// writeInstallation records how parts and tools reach this installation's
// NATS (--nats-conn): its URL, the CA of its TLS certificate and the
// folder of role credentials. The file appears whole (rename), since
// harnesses poll for it.
func writeInstallation(dir, url, authDir, ca string) error {
	data := "url=" + url + "\n"
	if ca != "" {
		data += "ca=" + ca + "\n"
	}
	data += "auth=" + authDir + "\n"
	p := filepath.Join(dir, "nats.conn")
	if err := os.WriteFile(p+".tmp", []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// busTLSFlags say how the embedded NATS serves TLS.
type busTLSFlags struct {
	on        bool
	cert, key string
	ca        string
	hosts     listFlag
}

func (f *busTLSFlags) register(fs *flagSet) {
	fs.BoolVar(&f.on, "nats-tls", true, "serve the embedded NATS over TLS only; without --nats-tls-cert, with a certificate from a private CA kept in <data-dir>/auth/tls")
	fs.StringVar(&f.cert, "nats-tls-cert", "", "TLS certificate (PEM) of the embedded NATS, instead of the generated one")
	fs.StringVar(&f.key, "nats-tls-key", "", "key (PEM) of --nats-tls-cert")
	fs.StringVar(&f.ca, "nats-ca", "", "CA certificate (PEM) that --nats-tls-cert chains to, given to every part and launcher (empty: the system's roots)")
	fs.Var(&f.hosts, "nats-tls-hosts", "extra names and addresses of the generated NATS certificate (comma separated), for launchers that reach the bus by another name than --nats-listen's host")
}

// files returns the certificate, key and CA the embedded server and its
// clients use (all empty: no TLS), generating them in dir when asked.
func (f *busTLSFlags) files(dir, listenHost string) (access.TLSFiles, error) {
	if (f.cert == "") != (f.key == "") {
		return access.TLSFiles{}, errors.New("--nats-tls-cert and --nats-tls-key go together")
	}
	if f.cert != "" {
		if !f.on {
			return access.TLSFiles{}, errors.New("--nats-tls-cert with --nats-tls=false: drop one of them")
		}
		out := access.TLSFiles{Cert: f.cert, Key: f.key, CA: f.ca}
		for _, p := range []*string{&out.Cert, &out.Key, &out.CA} {
			if *p == "" {
				continue
			}
			abs, err := filepath.Abs(*p)
			if err != nil {
				return out, err
			}
			if _, err := os.Stat(abs); err != nil {
				return out, fmt.Errorf("bus TLS: %w", err)
			}
			*p = abs
		}
		return out, nil
	}
	if !f.on {
		return access.TLSFiles{}, nil
	}
	if f.ca != "" {
		return access.TLSFiles{}, errors.New("--nats-ca without --nats-tls-cert: the generated certificate has its own CA")
	}
	hosts := append([]string{}, f.hosts...)
	if ip := net.ParseIP(listenHost); listenHost == "" || (ip != nil && ip.IsUnspecified()) {
		// Listening everywhere: name this host and its addresses, which
		// is how remote launchers are likely to reach it.
		hosts = append(hosts, localNames()...)
	} else {
		hosts = append(hosts, listenHost)
	}
	files, err := access.WriteTLS(dir, hosts)
	if err != nil {
		return files, fmt.Errorf("bus TLS: %w", err)
	}
	return files, nil
}

// localNames are this host's name and interface addresses.
func localNames() []string {
	var out []string
	if h, err := os.Hostname(); err == nil {
		out = append(out, h)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out = append(out, n.IP.String())
		}
	}
	return out
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
