// Package yarn runs kernels as Spark drivers in YARN cluster mode: the
// worker calls spark-submit with a tiny Python driver (driver.py) that
// becomes kernelbus-launcher inside the application master, and follows the
// application through the ResourceManager REST API.
package yarn

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// Name is the resource manager's name.
const Name = broker.RMYarn

//go:embed driver.py
var driverPy []byte

//go:embed startup.py
var startupPy []byte

// handle is the saved form of a YARN kernel: the application is found again
// by id, or by name (the kernel id) when submission did not tell the id.
type handle struct {
	V     int    `json:"v"`
	AppID string `json:"app_id,omitempty"`
	Name  string `json:"name"`
}

// Config of the YARN backend; the worker fills it from its flags.
type Config struct {
	// Launcher is the kernelbus-launcher binary shipped with each application.
	Launcher string
	// Endpoint and AltEndpoint are ResourceManager web addresses (RM HA).
	Endpoint, AltEndpoint string
	// SparkHome holds bin/spark-submit; a spec's SPARK_HOME wins. Default: $SPARK_HOME.
	SparkHome string
	// SparkConf are --conf settings added to every submission (site settings
	// such as spark.yarn.jars); the spec's SPARK_OPTS come after them.
	SparkConf []string
	// Impersonation adds --proxy-user KERNEL_USERNAME. Default false.
	Impersonation bool
	// QueueCheck refuses a start its queue has no room for before
	// submitting (see queue.go). Default false.
	QueueCheck bool
	// User is sent as user.name on the ResourceManager's REST writes
	// (kills) under simple authentication, so that YARN's ACLs and its
	// diagnostics name a real user. Default: the worker's OS user.
	User string
	// SubmitTimeout bounds one spark-submit run. Default 3m.
	SubmitTimeout time.Duration
}

// Backend submits kernels to YARN.
type Backend struct {
	cfg  Config
	rm   *RM
	dir  string // driver.py and startup.py, written once
	log  zerolog.Logger
	host string
}

// Register adds the YARN backend to r. Options: endpoint, alt-endpoint,
// spark-home, spark-conf (newline separated k=v), impersonation, queue-check,
// user.
func Register(r *workers.Registry, log zerolog.Logger) {
	r.Register(Name, func(bc workers.BackendConfig) (workers.Backend, error) {
		cfg := Config{Launcher: bc.LauncherPath}
		var conf string
		o := workers.ReadOptions(Name, bc.Options)
		o.String("endpoint", &cfg.Endpoint)
		o.String("alt-endpoint", &cfg.AltEndpoint)
		o.String("spark-home", &cfg.SparkHome)
		o.String("spark-conf", &conf)
		o.Bool("impersonation", &cfg.Impersonation)
		o.Bool("queue-check", &cfg.QueueCheck)
		o.String("user", &cfg.User)
		if err := o.Err(); err != nil {
			return nil, err
		}
		for _, l := range strings.Split(conf, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				cfg.SparkConf = append(cfg.SparkConf, l)
			}
		}
		return New(cfg, log)
	})
}

// New validates cfg and writes the driver files.
func New(cfg Config, log zerolog.Logger) (*Backend, error) {
	if cfg.Launcher == "" {
		return nil, errors.New("yarn: the path of kernelbus-launcher is required")
	}
	if _, err := os.Stat(cfg.Launcher); err != nil {
		return nil, fmt.Errorf("yarn: launcher binary: %w", err)
	}
	if cfg.SparkHome == "" {
		cfg.SparkHome = os.Getenv("SPARK_HOME")
	}
	if cfg.SubmitTimeout <= 0 {
		cfg.SubmitTimeout = 3 * time.Minute
	}
	if cfg.User == "" {
		if u, err := user.Current(); err == nil {
			cfg.User = u.Username
		}
	}
	rm, err := NewRM(cfg.Endpoint, cfg.AltEndpoint)
	if err != nil {
		return nil, err
	}
	rm.User = cfg.User
	dir, err := os.MkdirTemp("", "kernelbus-yarn-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "kb_driver.py"), driverPy, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "kb_spark_startup.py"), startupPy, 0o644); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return &Backend{cfg: cfg, rm: rm, dir: dir, log: log, host: host}, nil
}

// RM is the backend's ResourceManager client.
func (b *Backend) RM() *RM { return b.rm }

func (b *Backend) Name() string { return Name }

var _ workers.Backend = (*Backend)(nil)

// RunsAsUser: with impersonation an application runs as KERNEL_USERNAME
// (--proxy-user), which a warm kernel, submitted before anyone asked,
// cannot; requests that name a user then get cold starts.
func (b *Backend) RunsAsUser() bool { return b.cfg.Impersonation }

// Submission is one spark-submit run, built from a launch configuration.
type Submission struct {
	SparkHome string
	Args      []string // after bin/spark-submit
	Files     string   // the launch configuration file (holds bus credentials)
}

// jegArg finds --RemoteProcessProxy.<name> value in a JEG argv.
func jegArg(argv []string, name string) string {
	flag := "--RemoteProcessProxy." + name
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// Build turns cfg into a spark-submit command. A JEG YarnClusterProcessProxy
// spec (its argv is a run.sh calling spark-submit with JEG's own launcher)
// keeps its SPARK_HOME and SPARK_OPTS; its argv is replaced by ipykernel's.
func (b *Backend) Build(cfg *broker.LaunchConfig, launchFile string) (*Submission, error) {
	env := cfg.Env
	lc := *cfg
	lc.Env = map[string]string{}
	for k, v := range env {
		lc.Env[k] = v
	}
	mode, _ := cfg.RMConfig["spark_context"].(string)
	if strings.Contains(strings.Join(cfg.Argv, " "), "--RemoteProcessProxy.") {
		if m := jegArg(cfg.Argv, "spark-context-initialization-mode"); m != "" {
			mode = m
		}
		lc.Argv = []string{"python", "-m", "ipykernel_launcher", "-f", "{connection_file}"}
	}
	lc.Env["KERNELBUS_SPARK_CONTEXT"] = sparkContextMode(mode, cfg.Warm)
	if cfg.Warm {
		// A warm kernel also runs a first job before it answers (its
		// executor up, see startup.py), so a request's first job runs at
		// once.
		lc.Env["KERNELBUS_SPARK_WARMUP"] = "1"
	}
	home := env["SPARK_HOME"]
	if home == "" {
		home = b.cfg.SparkHome
	}
	if home == "" {
		return nil, errors.New("no SPARK_HOME: set it in the kernelspec's env or start the worker with --spark-home")
	}
	args := []string{"--master", "yarn", "--deploy-mode", "cluster", "--name", cfg.KernelID,
		"--conf", "spark.yarn.submit.waitAppCompletion=false",
		"--conf", "spark.yarn.maxAppAttempts=1", "--conf", "spark.yarn.tags=" + appTag}
	if cfg.Warm {
		// A warm kernel keeps an executor while it waits for a request,
		// where the site runs dynamic allocation (whose idle timeout would
		// release it, and the first user's job would wait for a new
		// container). First, so that the site's and the spec's say win.
		args = append(args, "--conf", "spark.dynamicAllocation.minExecutors=1")
	}
	for _, c := range b.cfg.SparkConf {
		args = append(args, "--conf", c)
	}
	// The spec's SPARK_OPTS are the site's: like JEG's run.sh, which a
	// shell runs in the gateway's environment, names the kernel's env
	// lacks come from the worker's ($PATH in spark.yarn.appMasterEnv.PATH).
	// The client's KERNEL_EXTRA_SPARK_OPTS go in once, where the spec puts
	// them or at the end, and never see the worker's environment.
	if err := checkClientSparkOpts(env["KERNEL_EXTRA_SPARK_OPTS"]); err != nil {
		return nil, err
	}
	specOpts := env["SPARK_OPTS"]
	words := expand(specOpts, env, os.LookupEnv)
	if !strings.Contains(specOpts, "KERNEL_EXTRA_SPARK_OPTS") {
		words += " " + expand(env["KERNEL_EXTRA_SPARK_OPTS"], env, nil)
	}
	opts, err := shellWords(words)
	if err != nil {
		return nil, fmt.Errorf("SPARK_OPTS: %w", err)
	}
	args = append(args, stripOwn(opts)...)
	archives := rmList(cfg.RMConfig["archives"])
	if cfg.EnvArchive != "" && !strings.HasSuffix(cfg.EnvArchive, ".tar.gz") {
		return nil, fmt.Errorf("the environment archive %s must end in .tar.gz for YARN to unpack it", cfg.EnvArchive)
	}
	if cfg.EnvArchive != "" {
		// The kernel's environment: YARN localizes the archive into the
		// driver's and every executor's container as ./kbenv, and both
		// run its python (settings after the site's and the spec's, so
		// they win).
		if archives != "" {
			archives += ","
		}
		archives += cfg.EnvArchive + "#" + envAlias
		py := "./" + envAlias + "/bin/python"
		for _, c := range []string{"spark.pyspark.python", "spark.pyspark.driver.python", "spark.yarn.appMasterEnv.PYSPARK_PYTHON", "spark.executorEnv.PYSPARK_PYTHON"} {
			args = append(args, "--conf", c+"="+py)
		}
	}
	if archives != "" {
		args = append(args, "--conf", "spark.yarn.dist.archives="+archives)
	}
	if b.cfg.Impersonation {
		user := cfg.User
		if user == "" {
			user = env[broker.EnvUsername]
		}
		if user != "" {
			args = append(args, "--proxy-user", user)
		}
	}
	enc, err := json.Marshal(lc)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(launchFile, enc, 0o600); err != nil {
		return nil, err
	}
	args = append(args, "--files", strings.Join([]string{
		b.cfg.Launcher + "#kernelbus-launcher",
		filepath.Join(b.dir, "kb_spark_startup.py"),
		launchFile + "#kb-launch.json",
	}, ","), filepath.Join(b.dir, "kb_driver.py"))
	return &Submission{SparkHome: home, Args: args, Files: launchFile}, nil
}

// envAlias is the folder YARN unpacks a kernel environment's archive to in
// each container of the application.
const envAlias = "kbenv"

// EnvPrefix implements workers.EnvShipper: the archive goes with the
// application (spark.yarn.dist.archives), YARN unpacks it into the
// application master's container, and driver.py fills in the
// container's folder. The archive's name must end in .tar.gz for YARN to
// unpack it.
func (b *Backend) EnvPrefix(cfg *broker.LaunchConfig) (string, error) {
	return "{container_dir}/" + envAlias, nil
}

var _ workers.EnvShipper = (*Backend)(nil)

// sparkContextMode is when the kernel builds its SparkContext (see
// startup.py): the spec's choice, lazy by default. A warm kernel builds it
// eagerly, before it answers kernel_info and so before its record says
// running and a request may take it: its first Spark job then runs at once
// instead of waiting for the context a lazy kernel builds meanwhile.
func sparkContextMode(spec string, warm bool) string {
	switch {
	case spec == "":
		if warm {
			return "eager"
		}
		return "lazy"
	case spec == "lazy" && warm:
		return "eager"
	}
	return spec
}

// clientSparkFlags are the spark-submit options a client may pass in
// KERNEL_EXTRA_SPARK_OPTS (each takes a value): sizes, the queue, and
// Spark settings. spark-submit runs without a shell, so metacharacters are
// inert, but an option is not: --proxy-user would run the kernel as
// another Hadoop user, --files or --properties-file would ship or read
// files of the worker's host (its bus credentials) into the kernel's
// container.
var clientSparkFlags = map[string]bool{
	"--conf": true, "--driver-memory": true, "--driver-cores": true, "--executor-memory": true,
	"--executor-cores": true, "--num-executors": true, "--queue": true,
}

// clientSparkConfDenied are Spark settings a client may not set: they
// choose the identity an application runs as, or name files on the
// submitting host that spark-submit uploads, or make spark-submit wait.
var clientSparkConfDenied = []string{
	"spark.yarn.dist.", "spark.files", "spark.jars", "spark.archives", "spark.submit.", "spark.yarn.jars",
	"spark.yarn.archive", "spark.yarn.keytab", "spark.yarn.principal", "spark.kerberos.", "spark.yarn.submit.",
	"spark.yarn.tags", "spark.yarn.maxAppAttempts", "spark.yarn.access.", "spark.yarn.proxyUser",
}

// checkClientSparkOpts refuses (400) client options outside
// clientSparkFlags and settings in clientSparkConfDenied.
func checkClientSparkOpts(s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	words, err := shellWords(s)
	if err != nil {
		return broker.Errorf(broker.ErrBadEnv, "KERNEL_EXTRA_SPARK_OPTS: %v", err)
	}
	for i := 0; i < len(words); i++ {
		flag, val, hasVal := strings.Cut(words[i], "=")
		if !clientSparkFlags[flag] {
			return broker.Errorf(broker.ErrBadEnv, "KERNEL_EXTRA_SPARK_OPTS: %q is not allowed: clients may pass --conf KEY=VALUE, --driver-memory, --driver-cores, --executor-memory, --executor-cores, --num-executors and --queue", words[i])
		}
		if !hasVal { // "--conf k=v" rather than "--conf=k=v"
			if i+1 >= len(words) {
				return broker.Errorf(broker.ErrBadEnv, "KERNEL_EXTRA_SPARK_OPTS: %s needs a value", flag)
			}
			i++
			val = words[i]
		}
		if flag != "--conf" {
			continue
		}
		key, _, _ := strings.Cut(val, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		for _, d := range clientSparkConfDenied {
			d = strings.ToLower(d)
			if key == d || strings.HasPrefix(key, strings.TrimSuffix(d, ".")+".") {
				return broker.Errorf(broker.ErrBadEnv, "KERNEL_EXTRA_SPARK_OPTS: the setting %s is not allowed from a client (it chooses the identity, files of the submitting host, or how spark-submit waits); ask the operator to set it in the kernelspec", key)
			}
		}
	}
	return nil
}

// stripOwn drops what kernelbus decides itself from a spec's SPARK_OPTS:
// the master, deploy mode and name are fixed, and JEG's waitAppCompletion
// setting is already there.
func stripOwn(opts []string) []string {
	var out []string
	for i := 0; i < len(opts); i++ {
		switch opts[i] {
		case "--master", "--deploy-mode", "--name":
			i++
			continue
		}
		out = append(out, opts[i])
	}
	return out
}

func rmList(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case []any:
		var s []string
		for _, x := range t {
			if xs, ok := x.(string); ok {
				s = append(s, xs)
			}
		}
		return strings.Join(s, ",")
	}
	return ""
}

// appTag marks the applications kernelbus submits.
const appTag = "kernelbus"

var appIDRe = regexp.MustCompile(`application_\d+_\d+`)

// Start runs spark-submit and returns once YARN has accepted the
// application (or refused it, with YARN's message).
func (b *Backend) Start(ctx context.Context, cfg *broker.LaunchConfig) (workers.Handle, error) {
	tmp, err := os.MkdirTemp("", "kb-submit-")
	if err != nil {
		return workers.Handle{}, err
	}
	defer os.RemoveAll(tmp)
	sub, err := b.Build(cfg, filepath.Join(tmp, "launch.json"))
	if err != nil {
		return workers.Handle{}, err
	}
	if b.cfg.QueueCheck {
		if err := b.checkCapacity(ctx, sub.Args); err != nil {
			return workers.Handle{}, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SubmitTimeout)
	defer cancel()
	name, args := filepath.Join(sub.SparkHome, "bin", "spark-submit"), sub.Args
	if cfg.Warm {
		// A warm kernel's submission is background work, most often the
		// refill after a request took a kernel: its spark-submit JVM runs
		// at a lower CPU priority, so that on a shared host it does not
		// slow the taken kernel's first cells.
		// Under Linux's autogroup scheduling (sched_autogroup_enabled)
		// nice only ranks the threads of one session against each other,
		// and the JVM's dozen threads at nice 10 still took about half the
		// worker's session from the gateway and NATS beside it: measured,
		// a cell sent to a just-taken kernel reached it 1.3 s later
		// while the refill's spark-submit started, 0.3-0.5 s without. So
		// it also runs in a session of its own whose autogroup is at
		// nice 10 (see submitNice).
		if nice, err := exec.LookPath("nice"); err == nil {
			name, args = nice, append([]string{"-n", "10", name}, args...)
		}
	}
	cmd := exec.CommandContext(sctx, name, args...)
	cmd.Env = append(os.Environ(), "SPARK_HOME="+sub.SparkHome)
	for _, k := range []string{"HADOOP_CONF_DIR", "YARN_CONF_DIR", "PYSPARK_ARCHIVES_PATH", "SPARK_CONF_DIR"} {
		if v := cfg.Env[k]; v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Dir = tmp
	// Its own process group (a session leads one), killed as a whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !cfg.Warm, Setsid: cfg.Warm}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	runErr := cmd.Start()
	if runErr == nil {
		if cfg.Warm {
			submitNice(cmd.Process.Pid)
		}
		runErr = cmd.Wait()
	}
	text := out.String()
	h := handle{V: 1, Name: cfg.KernelID, AppID: appIDRe.FindString(submittedLine(text))}
	b.log.Info().Str("kernel_id", cfg.KernelID).Str("app_id", h.AppID).Dur("took", time.Since(started)).Msg("spark-submit returned")
	if runErr != nil {
		if h.AppID != "" {
			_ = b.rm.Kill(context.Background(), h.AppID)
		}
		if strings.Contains(text, "is above the max threshold") {
			// Spark's own check against YARN's largest container: the
			// request asks for more than this cluster can ever give.
			return workers.Handle{}, broker.Errorf(broker.ErrBadRequest, "spark-submit failed (%v): %s", runErr, submitError(text))
		}
		return workers.Handle{}, fmt.Errorf("spark-submit failed (%v): %s", runErr, submitError(text))
	}
	if h.AppID == "" {
		if apps, err := b.rm.AppsByName(ctx, cfg.KernelID); err == nil && len(apps) > 0 {
			h.AppID = apps[0].ID
		}
	}
	data, _ := json.Marshal(h)
	return workers.Handle{Host: h.AppID, Data: data}, nil
}

// submitNice puts the autogroup of session leader pid at nice 10, where
// the kernel has autogroups (a process may lower its own priority). Without
// them the file is missing and nice(1) alone does it.
func submitNice(pid int) {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", pid), []byte("10"), 0)
}

func submittedLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Submitted application") {
			return l
		}
	}
	return ""
}

// submitError picks the lines of spark-submit's output that say why.
func submitError(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Exception") || strings.Contains(l, "ERROR") || strings.Contains(l, "Error:") {
			keep = append(keep, strings.TrimSpace(l))
		}
		if len(keep) == 5 {
			break
		}
	}
	if len(keep) == 0 {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		if len(lines) > 5 {
			lines = lines[len(lines)-5:]
		}
		keep = lines
	}
	return strings.Join(keep, " | ")
}

func parseMB(s string, def int64) int64 {
	s = strings.ToLower(strings.TrimSpace(s))
	mul := int64(1)
	switch {
	case strings.HasSuffix(s, "g"):
		mul, s = 1024, strings.TrimSuffix(s, "g")
	case strings.HasSuffix(s, "m"):
		s = strings.TrimSuffix(s, "m")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return def
	}
	return n * mul
}

func parse(h workers.Handle) (handle, error) {
	var yh handle
	if err := json.Unmarshal(h.Data, &yh); err != nil || (yh.AppID == "" && yh.Name == "") {
		return yh, fmt.Errorf("yarn: bad handle %s", h.Data)
	}
	return yh, nil
}

func (b *Backend) app(ctx context.Context, yh handle) (*App, error) {
	if yh.AppID != "" {
		return b.rm.App(ctx, yh.AppID)
	}
	apps, err := b.rm.AppsByName(ctx, yh.Name)
	if err != nil {
		return nil, err
	}
	if len(apps) == 0 {
		return nil, ErrAppNotFound
	}
	return &apps[0], nil
}

// Poll reports the application's state; an ended one's reason carries
// YARN's diagnostics.
func (b *Backend) Poll(ctx context.Context, h workers.Handle) (workers.Status, error) {
	yh, err := parse(h)
	if err != nil {
		return workers.Status{}, err
	}
	a, err := b.app(ctx, yh)
	if errors.Is(err, ErrAppNotFound) {
		return workers.Status{Exited: true, Reason: "YARN does not know application " + yh.AppID}, nil
	}
	if err != nil {
		return workers.Status{}, err
	}
	if a.Ended() {
		return workers.Status{Exited: true, Reason: Reason(a)}, nil
	}
	return workers.Status{Running: true}, nil
}

// Reason describes an ended application.
func Reason(a *App) string {
	r := fmt.Sprintf("YARN application %s %s (%s)", a.ID, a.State, a.FinalStatus)
	if d := strings.TrimSpace(a.Diagnostics); d != "" {
		r += ": " + d
	}
	return r
}

// Signal is not supported: interrupts reach the kernel through its launcher.
// Stop kills the application and waits up to grace for YARN to say so.
func (b *Backend) Stop(ctx context.Context, h workers.Handle, grace time.Duration) error {
	yh, err := parse(h)
	if err != nil {
		return err
	}
	a, err := b.app(ctx, yh)
	if errors.Is(err, ErrAppNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if a.Ended() {
		return nil
	}
	if err := b.rm.Kill(ctx, a.ID); err != nil {
		return err
	}
	deadline := time.Now().Add(grace + 10*time.Second)
	for time.Now().Before(deadline) {
		if cur, err := b.rm.App(ctx, a.ID); err == nil && cur.Ended() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("yarn: application %s not ended %s after the kill", a.ID, grace+10*time.Second)
}

// Follow watches the kernelbus applications (tag "kernelbus") every few
// seconds: one that ended while its kernel runs makes the kernel dead with
// YARN's diagnostics (a killed application takes its launcher with it, so
// nobody else would tell); one still running whose kernel ended is killed.
func (b *Backend) Follow(ctx context.Context, k workers.Kernels) error {
	reported := map[string]bool{}
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		apps, err := b.rm.TaggedApps(ctx, appTag)
		if err != nil {
			b.log.Debug().Err(err).Msg("yarn: listing applications")
			continue
		}
		for i := range apps {
			a := &apps[i]
			if a.Ended() {
				if !reported[a.ID] {
					if err := k.Lost(ctx, a.Name, Reason(a)); err == nil {
						reported[a.ID] = true
					}
				}
				continue
			}
			if a.State != "RUNNING" {
				continue
			}
			if ended, err := k.Ended(ctx, a.Name); err == nil && ended {
				b.log.Info().Str("kernel_id", a.Name).Str("app_id", a.ID).Msg("yarn: killing the application of an ended kernel")
				_ = b.rm.Kill(ctx, a.ID)
			}
		}
	}
}
