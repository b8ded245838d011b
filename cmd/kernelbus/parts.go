package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/kernelbus/kernelbus/workers"
	kbk8s "github.com/kernelbus/kernelbus/workers/kubernetes"
	"github.com/kernelbus/kernelbus/workers/local"
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
	kbyarn "github.com/kernelbus/kernelbus/workers/yarn"
	"github.com/rs/zerolog"
)

// natsFlags say how a separate part reaches an existing NATS.
type natsFlags struct {
	urls     string
	creds    string
	token    string
	conn     string
	ca       string
	replicas int
	setup    bool
	// presenceTTL is the kb_workers TTL that --setup gives the bucket.
	presenceTTL time.Duration
	busWait     time.Duration
	// retention of the audit log that --setup gives KB_EVENTS.
	retention retentionFlags
}

func (n *natsFlags) register(fs *flagSet) {
	fs.StringVar(&n.urls, "nats", "nats://127.0.0.1:4222", "NATS server URLs, comma separated")
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&n.token, "nats-token", "", "NATS token (legacy: a shared token cannot keep kernels apart; use credentials)")
	fs.StringVar(&n.conn, "nats-conn", "", "nats.conn of a `kernelbus serve` data folder or of `kernelbus nats-auth init`: the NATS URL, the credentials of this part's role and the CA")
	fs.StringVar(&n.ca, "nats-ca", "", "CA certificate (PEM) that signed the NATS servers' TLS certificates")
	fs.IntVar(&n.replicas, "replicas", 1, "JetStream replicas for streams and buckets when --setup creates them (3 on a cluster)")
	fs.BoolVar(&n.setup, "setup", true, "create or update the streams and buckets at start")
	n.retention.register(fs)
	fs.DurationVar(&n.busWait, "bus-wait", 2*time.Minute, "how long to keep trying when the streams cannot be set up or found yet (a cluster still forming or electing leaders)")
	fs.DurationVar(&n.presenceTTL, "presence-ttl", 0, "how soon a silent worker counts as gone, when --setup creates or updates kb_workers (0: keep the bucket's; 15s when new)")
}

// forRole fills --nats and --nats-creds from --nats-conn with the
// credentials of role (a worker's: of resource manager rm), and returns the
// installation's credentials folder ("" without --nats-conn).
func (n *natsFlags) forRole(role, rm string) (string, error) {
	if n.conn == "" {
		return "", nil
	}
	cf, err := readConnFile(n.conn)
	if err != nil {
		return "", err
	}
	n.urls = cf.url
	authDir := cf.authDir
	if n.ca == "" {
		n.ca = cf.ca
	}
	if n.creds == "" {
		switch role {
		case access.RoleFrontend:
			n.creds = filepath.Join(authDir, access.FrontendCreds)
		case access.RoleWorker:
			n.creds = filepath.Join(authDir, access.WorkerCreds(rm))
		default:
			n.creds = filepath.Join(authDir, access.AdminCreds)
		}
	}
	return authDir, nil
}

func (n *natsFlags) connect(ctx context.Context, name string, log zerolog.Logger) (*kbjs.Bus, error) {
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: n.urls, CredsFile: n.creds, Token: n.token, CAFile: n.ca, Name: name})
	if err != nil {
		return nil, err
	}
	// A part started with its cluster (deploy files start everything at
	// once) may find streams without leaders or peers still offline; it
	// waits for them rather than exit, up to --bus-wait.
	deadline := time.Now().Add(n.busWait)
	wait := 250 * time.Millisecond
	for {
		var bus *kbjs.Bus
		if n.setup {
			bus, err = kbjs.Setup(ctx, nc, n.retention.layout(kbjs.Layout{Replicas: n.replicas, PresenceTTL: n.presenceTTL}))
		} else {
			bus, err = kbjs.Open(ctx, nc)
		}
		if err == nil {
			return bus, nil
		}
		if errors.Is(err, kbjs.ErrNoInstallation) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			nc.Close()
			return nil, err
		}
		log.Warn().Err(err).Dur("retry_in", wait).Msg("bus not ready; retrying")
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func cmdFrontend(args []string, stderr io.Writer) error {
	fs := newFlagSet("frontend", stderr)
	var ff frontendFlags
	var nf natsFlags
	var df dutyFlags
	ff.register(fs)
	nf.register(fs)
	df.register(fs)
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs.FlagSet, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	if err := ff.checkAuth("frontend"); err != nil {
		return err
	}
	host, _ := os.Hostname()
	feID := "fe-" + host + "-" + randomHex(3)
	feCfg, err := ff.config(feID, log)
	if err != nil {
		return err
	}
	if _, err := nf.forRole(access.RoleFrontend, ""); err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	run := &parts{log: log}
	defer run.stopAll(15 * time.Second)
	bus, err := nf.connect(ctx, "kernelbus-frontend", log)
	if err != nil {
		return err
	}
	run.onStop("bus connection", closeConn(bus.NC))
	reg := metrics.NewRegistry()
	if err := metrics.RegisterBus(reg, "frontend", bus.NC); err != nil {
		return err
	}
	if err := metrics.RegisterBuildInfo(reg, version); err != nil {
		return err
	}
	feCfg.Metrics = reg
	fe, err := frontend.New(feCfg, bus, ff.catalog(log), log)
	if err != nil {
		return err
	}
	web, url, err := serveFrontend(ctx, run, &ff, &df, fe, bus, feID, reg, log)
	if err != nil {
		return err
	}
	log.Info().Str("url", url).Msg("kernelbus front-end serving")
	select {
	case <-ctx.Done():
	case <-web.done:
		err = web.err
	}
	return err
}

func cmdWorker(args []string, stderr io.Writer) error {
	fs := newFlagSet("worker", stderr)
	var nf natsFlags
	var df dutyFlags
	nf.register(fs)
	df.register(fs)
	rm := fs.String("rm", "local", "resource manager of this pool: "+fmt.Sprint(registry(zerolog.Nop()).Names())+", or build (the environment build pool)")
	launcherFlag := fs.String("launcher", "", "path of kernelbus-launcher (default: next to kernelbus, then PATH)")
	launcherNATS := fs.String("launcher-nats", "", "NATS URLs the launchers use (default: --nats)")
	minterFile := fs.String("launcher-minter", "", "file with the installation's launcher signing key (launcher-minter.json), to give each launcher credentials of its own kernel (default: from --nats-conn)")
	portRange := fs.String("port-range", "", "ports of the kernels this worker starts, lower..upper (JEG's port_range), best outside the OS's ephemeral ports; empty: any free port")
	credsTTL := fs.Duration("launcher-creds-ttl", access.DefaultLauncherCredsTTL, launcherCredsTTLUsage)
	concurrency := fs.Int("concurrency", 64, "launches in flight in this worker")
	id := fs.String("id", "", "this worker's id in kb_workers and kernel records (default: <rm>-<random>)")
	ackWait := fs.Duration("ack-wait", 0, "how long a claimed start may go without progress before another worker may take it (0: 15s)")
	metricsListen := fs.String("metrics-listen", "", "address serving /metrics, /healthz and /readyz (empty: none)")
	metricsToken := fs.String("metrics-token", "", "token Prometheus must send to /metrics (Authorization: Bearer T); empty: none (keep --metrics-listen on a private address then)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var specDirs, allowedEnv listFlag
	fs.Var(&specDirs, "kernelspec-dir", "extra folder of kernelspecs (repeatable; searched before the Jupyter folders): the worker builds each launch from the spec itself, so give it the front-ends' folders")
	maxEnvBytes := fs.Int("max-env-bytes", broker.DefaultMaxEnvBytes, "largest env of a start request, names and values: the front-ends' limit, applied again here")
	fs.Var(&allowedEnv, "allowed-env", "env names besides KERNEL_* that clients may pass (comma separated; * for all): the front-ends' list, applied again here")
	var warm warmFlag
	fs.Var(&warm, "warm", warmUsage)
	// Each resource manager's own flags give its backend's options.
	rmOpts := map[string]func() (map[string]string, error){
		broker.RMLocal:      localFlags(fs),
		broker.RMSSH:        sshFlags(fs),
		broker.RMKubernetes: k8sFlags(fs),
		broker.RMYarn:       yarnFlags(fs),
	}
	var ef envFlags
	ef.registerCommon(fs)
	ef.registerWorker(fs)
	if err := parse(fs.FlagSet, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	if *rm == broker.RMBuild {
		// The build pool builds environments; it starts no launchers.
		if _, err := nf.forRole(access.RoleWorker, *rm); err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		bus, err := nf.connect(ctx, "kernelbus-worker-build", log)
		if err != nil {
			return err
		}
		defer bus.NC.Close()
		return runBuilder(ctx, &ef, *id, bus, log)
	}
	launcher, err := findLauncher(*launcherFlag)
	if err != nil {
		return err
	}
	var opts map[string]string
	if f, ok := rmOpts[*rm]; ok {
		if opts, err = f(); err != nil {
			return err
		}
	}
	be, err := registry(log).New(*rm, workers.BackendConfig{LauncherPath: launcher, Options: opts})
	if err != nil {
		return fmt.Errorf("--rm: %w", err)
	}
	authDir, err := nf.forRole(access.RoleWorker, *rm)
	if err != nil {
		return err
	}
	if *minterFile == "" && authDir != "" {
		*minterFile = filepath.Join(authDir, access.MinterFileName)
	}
	var minter *access.Minter
	if *minterFile != "" {
		if minter, err = access.LoadMinter(*minterFile); err != nil {
			return fmt.Errorf("--launcher-minter: %w", err)
		}
	} else {
		log.Warn().Msg("no --launcher-minter: launchers get this worker's own bus credentials, so code in one kernel can reach every other kernel")
	}
	var natsCA string
	if nf.ca != "" {
		b, err := os.ReadFile(nf.ca)
		if err != nil {
			return fmt.Errorf("--nats-ca: %w", err)
		}
		natsCA = string(b)
	}
	ctx, cancel := signalContext()
	defer cancel()
	run := &parts{log: log}
	defer run.stopAll(15 * time.Second)
	if c, ok := be.(io.Closer); ok {
		run.onStop("backend", func(context.Context) error { return c.Close() })
	}
	bus, err := nf.connect(ctx, "kernelbus-worker-"+*rm, log)
	if err != nil {
		return err
	}
	run.onStop("bus connection", closeConn(bus.NC))
	lurls := *launcherNATS
	if lurls == "" {
		lurls = nf.urls
	}
	reg := metrics.NewRegistry()
	if err := metrics.RegisterBus(reg, "worker", bus.NC); err != nil {
		return err
	}
	if err := metrics.RegisterBuildInfo(reg, version); err != nil {
		return err
	}
	pcfg := workers.PoolConfig{ID: *id, AckWait: *ackWait, Concurrency: *concurrency, NATSURLs: lurls, NATSCA: natsCA,
		Minter: minter, LauncherCredsTTL: *credsTTL, Metrics: reg,
		Specs: specCatalog(specDirs, log), Env: broker.EnvPolicy{Allowed: allowedEnv, MaxTotalBytes: *maxEnvBytes}, Warm: warm, PortRange: *portRange}
	if len(warm) > 0 {
		pcfg.Specs = warmSpecs(specCatalog(specDirs, log))
	}
	if minter == nil {
		pcfg.NATSToken = nf.token
		if nf.creds != "" {
			b, err := os.ReadFile(nf.creds)
			if err != nil {
				return fmt.Errorf("--nats-creds: %w", err)
			}
			pcfg.NATSCreds = string(b)
		}
	}
	// Every resource manager runs kernel environments: local unpacks
	// them here, the others ship the archive (workers.EnvShipper).
	if pcfg.Environments, pcfg.Specs, err = ef.workerEnvironments(ctx, bus, pcfg.Specs, log); err != nil {
		return err
	}
	pool, err := workers.NewPool(pcfg, bus, be, log)
	if err != nil {
		return err
	}
	if *metricsListen != "" {
		ln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen %s: %w", *metricsListen, err)
		}
		if *metricsToken == "" {
			log.Warn().Str("addr", ln.Addr().String()).Msg("/metrics needs no token: set --metrics-token unless the address is private")
		}
		ready := metrics.NewReadiness(time.Second, metrics.Check{Name: "claiming", Fn: pool.Ready})
		opsSrv := &http.Server{Handler: metrics.OpsMux(reg, *metricsToken, ready), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = opsSrv.Serve(ln) }()
		run.onStop("metrics server", func(context.Context) error { return opsSrv.Close() })
		log.Info().Str("addr", ln.Addr().String()).Msg("worker metrics and health serving")
	}
	if err := run.start(ctx, "worker pool", pool); err != nil {
		return err
	}
	d, err := df.duties(ctx, bus, pool.ID(), log)
	if err != nil {
		return err
	}
	if err := metrics.RegisterDuties(reg, pool.ID(), d); err != nil {
		return err
	}
	if err := run.start(ctx, "duties", d); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// registry lists the resource managers this binary links.
func registry(log zerolog.Logger) *workers.Registry {
	var r workers.Registry
	local.Register(&r, log)
	kbssh.Register(&r, log)
	kbk8s.Register(&r, log)
	kbyarn.Register(&r, log)
	return &r
}

// connFile is what a nats.conn says (access.ConnFile).
type connFile struct{ url, authDir, ca string }

// readConnFile reads a nats.conn (access.ReadConnFile).
func readConnFile(path string) (connFile, error) {
	c, err := access.ReadConnFile(path)
	return connFile{url: c.URL, authDir: c.AuthDir, ca: c.CA}, err
}

// localFlags are the local resource manager's: which OS accounts run
// kernels when the worker runs as root.
func localFlags(fs *flagSet) func() (map[string]string, error) {
	runAs := fs.String("run-as", "", "local kernels: one OS account that runs every kernel when the worker runs as root (not root; e.g. "+local.DefaultAccount+"; kernels sharing it can reach each other; default: a uid per kernel, see --run-as-range)")
	idRange := fs.String("run-as-range", "", "local kernels: uids FIRST-LAST (each also the gid) given one per kernel, with a private HOME, when the worker runs as root: never 0, an existing account or group, or a live kernel's (default "+local.DefaultRange.String()+" when root and no --run-as/--run-as-owners)")
	self := fs.Bool("run-as-gateway-user", false, "local kernels: run them as the worker's own account even when it is root (they can then read the bus data folder and signal the gateway; only where every kernel is trusted)")
	owners := fs.String("run-as-owners", "", "local kernels: kernel owners (comma separated; * for all) that run as the OS account of the same name, never uid 0; others run as --run-as; the owner is only as trustworthy as the front-ends' authentication (without it, the client's KERNEL_USERNAME)")
	return func() (map[string]string, error) {
		return map[string]string{local.OptRunAs: *runAs, local.OptRunAsOwners: *owners, local.OptRunAsRange: *idRange, local.OptRunAsSelf: strconv.FormatBool(*self)}, nil
	}
}
