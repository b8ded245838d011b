package yarn_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/workerstest"
	"github.com/kernelbus/kernelbus/workers/yarn"
	"github.com/rs/zerolog"
)

// The YARN suite runs on a real MiniYARNCluster with a real pip-installed
// Spark, both installed by scripts/yarn-setup.sh; `task test:yarn` sets
// KB_YARN_ENV to the env file it writes.
func setupEnv(t *testing.T) map[string]string {
	f := os.Getenv("KB_YARN_ENV")
	if f == "" {
		t.Skip("KB_YARN_ENV not set: run `task test:yarn` (scripts/yarn-setup.sh installs YARN and Spark)")
	}
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	return env
}

// The suite's MiniYARNCluster: one harness JVM for every test of the package
// that needs a cluster, started by the first of them and stopped by TestMain
// (a cluster start costs tens of seconds on 2 cores). Tests run one at a
// time and each ends every application it leaves (startYARN's cleanup), so
// the next test finds the cluster idle, as a cluster of its own would be.
var suiteYARN struct {
	once         sync.Once
	out          string // the harness's folder: conf, logs, containers
	confDir, url string
	stdin        io.Closer
	cmd          *exec.Cmd
	err          error
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopSuiteYARN()
	os.Exit(code)
}

// startYARN returns the suite cluster's conf dir and RM web URL, starting
// the cluster on first use. At the test's cleanup, after the test's own
// (its gateway and workers stop first), every application still live is
// killed and has ended; on failure the harness log and container logs are
// shown.
func startYARN(t *testing.T, env map[string]string) (confDir, rmURL string) {
	t.Helper()
	c := &suiteYARN
	c.once.Do(func() { c.err = launchYARN(env) })
	if c.err != nil {
		if c.out != "" {
			tailFile(t, filepath.Join(c.out, "harness.log"), 40)
		}
		t.Fatalf("the YARN harness: %v", c.err)
	}
	t.Cleanup(func() {
		endApps(t, c.url)
		if t.Failed() {
			tailFile(t, filepath.Join(c.out, "harness.log"), 40)
			containerLogs(t, c.out)
		}
	})
	return c.confDir, c.url
}

// launchYARN runs the harness in a folder of its own and waits until it is
// ready.
func launchYARN(env map[string]string) error {
	c := &suiteYARN
	out, err := os.MkdirTemp("", "kb-yarn-suite-")
	if err != nil {
		return err
	}
	c.out = out
	h := env["KB_YARN_HARNESS"]
	cmd := exec.Command("java", "--add-opens", "java.base/java.lang=ALL-UNNAMED", "--add-opens", "java.base/java.util=ALL-UNNAMED",
		"--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED", "--add-opens", "java.base/java.io=ALL-UNNAMED",
		"--add-opens", "java.base/java.net=ALL-UNNAMED", "--add-opens", "java.base/java.nio=ALL-UNNAMED",
		"--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
		"-cp", filepath.Join(h, "kernelbus-yarn-harness.jar")+":"+filepath.Join(h, "lib", "*"),
		"io.kernelbus.yarn.Harness", out)
	cmd.Dir = out
	stdin, _ := cmd.StdinPipe() // closing it stops the cluster
	logf, _ := os.Create(filepath.Join(out, "harness.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd, c.stdin = cmd, stdin
	if !jstest.Eventually(3*time.Minute, func() bool {
		_, err := os.Stat(filepath.Join(out, "ready"))
		return err == nil
	}) {
		return errors.New("not ready within 3m")
	}
	web, _ := os.ReadFile(filepath.Join(out, "rm-web"))
	c.confDir, c.url = filepath.Join(out, "conf"), "http://"+strings.TrimSpace(string(web))
	return nil
}

// stopSuiteYARN stops the suite's cluster, if one was started, and every
// process it left (containers run in their own sessions).
func stopSuiteYARN() {
	c := &suiteYARN
	if c.cmd != nil {
		c.stdin.Close()
		waitOrKill(c.cmd, 30*time.Second)
	}
	if c.out != "" {
		killUnder(c.out)
		_ = os.RemoveAll(c.out)
	}
}

// endApps kills, as an administrator, every application of the cluster not
// yet ended, and waits until none is live.
func endApps(t *testing.T, rmURL string) {
	t.Helper()
	rm, err := yarn.NewRM(rmURL, "")
	if err != nil {
		t.Fatal(err)
	}
	rm.User = "yarn-admin"
	killed := map[string]bool{}
	jstest.WaitFor(t, 2*time.Minute, "every application of the test to end", func() bool {
		apps, err := liveAppList(rmURL)
		if err != nil {
			return false
		}
		for _, a := range apps {
			if !killed[a.ID] {
				t.Logf("ending application %s (%s, %s), left by the test", a.ID, a.Name, a.State)
			}
			killed[a.ID] = true
			_ = rm.Kill(context.Background(), a.ID)
		}
		return len(apps) == 0
	})
}

// waitOrKill waits for cmd to exit, killing its process group after d.
func waitOrKill(cmd *exec.Cmd, d time.Duration) {
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// killUnder kills processes whose command line or cwd is below dir.
func killUnder(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if strings.Contains(string(cl), dir) || strings.HasPrefix(cwd, dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func tailFile(t *testing.T, path string, n int) {
	data, _ := os.ReadFile(path)
	lines := strings.Split(string(data), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("--- %s\n%s", path, strings.Join(lines, "\n"))
}

func containerLogs(t *testing.T, root string) {
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && (fi.Name() == "stderr" || fi.Name() == "stdout") && strings.Contains(p, "container_") {
			tailFile(t, p, 30)
		}
		return nil
	})
}

func bins(t *testing.T) (kb, launcher string) {
	kb, launcher = os.Getenv("KERNELBUS_BIN"), os.Getenv("KERNELBUS_LAUNCHER_BIN")
	if kb != "" && launcher != "" {
		return kb, launcher
	}
	dir := t.TempDir()
	kb, launcher = filepath.Join(dir, "kernelbus"), filepath.Join(dir, "kernelbus-launcher")
	for _, b := range [][]string{{kb, "../../cmd/kernelbus"}, {launcher, "../../cmd/kernelbus-launcher"}} {
		c := exec.Command("go", "build", "-o", b[0], b[1])
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	return kb, launcher
}

func run(t *testing.T, name string, args ...string) (stop func()) {
	return runEnv(t, nil, name, args...)
}

// runEnv runs a process in its own group, with env added to this one's, in a
// temporary folder that also holds its log. stop (also run at cleanup, once)
// ends the group: SIGTERM, then SIGKILL after 20 s.
func runEnv(t *testing.T, env []string, name string, args ...string) (stop func()) {
	stop, _ = runGroup(t, false, env, name, args...)
	return stop
}

// runGroup is runEnv that also returns kill, which ends the group with
// SIGKILL at once (a process that dies without a word); stop and kill run
// at most once between them, and cleanup runs kill when hard, else stop.
func runGroup(t *testing.T, hard bool, env []string, name string, args ...string) (stop, kill func()) {
	stop, kill, _ = startGroup(t, hard, env, name, args...)
	return stop, kill
}

// runServing is run for a kernelbus server told to listen on 127.0.0.1:0:
// it waits for the line the server logs once it listens (msg: "kernelbus
// serving", "kernelbus front-end serving") and returns the url in it, so
// no port is picked ahead for another process to take first.
func runServing(t *testing.T, msg, name string, args ...string) (stop func(), url string) {
	stop, _, log := startGroup(t, false, nil, name, args...)
	jstest.WaitForNil(t, time.Minute, func() error {
		var err error
		url, err = jstest.LogField(log, 0, msg, "url")
		return err
	})
	return stop, strings.TrimSuffix(url, "/")
}

// startGroup is runGroup that also returns the path of the process's log.
func startGroup(t *testing.T, hard bool, env []string, name string, args ...string) (stop, kill func(), log string) {
	cmd := exec.Command(name, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	logf, _ := os.Create(filepath.Join(cmd.Dir, "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			waitOrKill(cmd, 20*time.Second)
		})
	}
	kill = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	t.Cleanup(func() {
		if hard {
			kill()
		} else {
			stop()
		}
		if t.Failed() {
			tailFile(t, logf.Name(), 40)
		}
	})
	return stop, kill, logf.Name()
}

func getJSON(url string, out any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.Unmarshal(data, out)
}

// sparkOpts are the minicluster's Spark settings for a PySpark spec: jars from
// SPARK_HOME, the spark venv's python, small driver and one executor, loopback,
// no UI. scripts/setup-jeg-yarn.sh gives JEG's spec for the benchmark the same.
func sparkOpts(env map[string]string) string {
	return strings.Join([]string{
		"--conf spark.yarn.jars=local:" + env["KB_SPARK_HOME"] + "/jars/*",
		"--conf spark.pyspark.python=" + env["KB_SPARK_PYTHON"],
		"--conf spark.driver.memory=512m --conf spark.executor.memory=512m --conf spark.executor.instances=1",
		"--conf spark.yarn.appMasterEnv.SPARK_LOCAL_IP=127.0.0.1 --conf spark.executorEnv.SPARK_LOCAL_IP=127.0.0.1",
		"--conf spark.ui.enabled=false ${KERNEL_EXTRA_SPARK_OPTS}",
	}, " ")
}

// startKernelbus runs `kernelbus serve` and a yarn worker for the cluster, with
// one spec, pyspark_yarn (eager SparkSession), and returns a client once the
// gateway answers.
func startKernelbus(t *testing.T, env map[string]string, confDir, rmURL string) *client.Client {
	return startGateway(t, env, confDir, rmURL, nil).Client
}

// gateway is a `kernelbus serve` with a yarn worker process beside it.
type gateway struct {
	*client.Client
	t          *testing.T
	kb         string
	workerArgs []string
	workerEnv  []string
	stopWorker func()
}

// restartWorker stops the yarn worker and starts a new one with extra flags.
// It knows nothing of the old one: kernels are re-adopted from their records.
func (g *gateway) restartWorker(extra ...string) {
	g.stopWorker()
	g.stopWorker = runEnv(g.t, g.workerEnv, g.kb, append(append([]string{}, g.workerArgs...), extra...)...)
}

// startGateway is startKernelbus with extra kernelspec folders (copied in
// beside pyspark_yarn) and the gateway's parts to hand. The worker gets
// HADOOP_CONF_DIR, as a site would give it, for specs that do not set it.
func startGateway(t *testing.T, env map[string]string, confDir, rmURL string, extraSpecs []string) *gateway {
	kb, launcher := bins(t)
	data := t.TempDir()
	specs := t.TempDir()
	spec := map[string]any{
		"display_name": "PySpark YARN", "language": "python",
		"argv": []string{"python", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		"env": map[string]string{"SPARK_HOME": env["KB_SPARK_HOME"], "HADOOP_CONF_DIR": confDir,
			"PYSPARK_ARCHIVES_PATH": env["KB_PYSPARK_ARCHIVES"], "SPARK_OPTS": sparkOpts(env)},
		"metadata": map[string]any{"kernelbus": map[string]any{"rm": "yarn", "config": map[string]any{"spark_context": "eager"}}},
	}
	b, _ := json.Marshal(spec)
	_ = os.MkdirAll(filepath.Join(specs, "pyspark_yarn"), 0o755)
	_ = os.WriteFile(filepath.Join(specs, "pyspark_yarn", "kernel.json"), b, 0o644)
	for _, d := range extraSpecs {
		if out, err := exec.Command("cp", "-r", d, specs).CombinedOutput(); err != nil {
			t.Fatalf("copying spec %s: %v %s", d, err, out)
		}
	}

	_, url := runServing(t, "kernelbus serving", kb, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--kernelspec-dir", specs, "--launcher", launcher, "--launch-timeout", "6m", "--insecure-no-auth")
	// serve writes nats.conn (its NATS URL and role credentials) once its
	// NATS is up; the worker connects with the yarn workers' role.
	conn := filepath.Join(data, "nats.conn")
	jstest.WaitFor(t, time.Minute, "nats.conn", func() bool {
		c, err := os.ReadFile(conn)
		return err == nil && strings.Contains(string(c), "auth=")
	})
	g := &gateway{t: t, kb: kb, workerEnv: []string{"HADOOP_CONF_DIR=" + confDir},
		workerArgs: []string{"worker", "--rm", "yarn", "--nats-conn", conn, "--kernelspec-dir", specs, "--launcher", launcher, "--yarn-endpoint", rmURL}}
	g.stopWorker = runEnv(t, g.workerEnv, kb, g.workerArgs...)

	g.Client = &client.Client{BaseURL: url}
	jstest.WaitFor(t, time.Minute, "the gateway", func() bool { _, err := g.Kernels(context.Background()); return err == nil })
	return g
}

// TestPySparkOnYARN: a notebook client runs Spark code in a kernel that is
// the Spark driver in YARN cluster mode, through the gateway.
func TestPySparkOnYARN(t *testing.T) {
	env := setupEnv(t)
	confDir, rmURL := startYARN(t, env)
	var extra []string
	jegSpec := ""
	if d := os.Getenv("KB_JEG_YARN_KERNELS"); d != "" {
		jegSpec = "spark_python_yarn_cluster"
		extra = append(extra, filepath.Join(d, jegSpec))
	}
	c := startGateway(t, env, confDir, rmURL, extra)
	ctx := context.Background()
	// The overview (GET /api/cluster) shows the MiniYARNCluster's metrics,
	// which the yarn worker reports in its presence.
	jstest.WaitFor(t, time.Minute, "YARN's cluster metrics in /api/cluster", func() bool {
		reps, err := c.ClusterReports(ctx, "yarn")
		var rep struct {
			Metrics struct {
				ActiveNodes int `json:"activeNodes"`
				TotalMB     int `json:"totalMB"`
			} `json:"metrics"`
		}
		return err == nil && len(reps) > 0 && json.Unmarshal(reps[0], &rep) == nil && rep.Metrics.ActiveNodes >= 1 && rep.Metrics.TotalMB > 0
	})
	t.Run("backend contract", func(t *testing.T) {
		var r workers.Registry
		yarn.Register(&r, zerolog.Nop())
		be, err := r.New(yarn.Name, workers.BackendConfig{LauncherPath: os.Getenv("KERNELBUS_LAUNCHER_BIN"), Options: map[string]string{"endpoint": rmURL}})
		if err != nil {
			t.Fatal(err)
		}
		workerstest.Harness{Backend: be}.Run(t)
	})

	// The test's own RM client kills as a named administrator.
	rm, _ := yarn.NewRM(rmURL, "")
	rm.User = "yarn-admin"
	t0 := time.Now()
	k, err := c.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360"})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	startTook := time.Since(t0)
	t.Logf("MEASURED: kernel start in YARN cluster mode (eager SparkSession) took %s", startTook.Round(time.Millisecond))
	apps, err := rm.AppsByName(ctx, k.ID)
	if err != nil || len(apps) != 1 || apps[0].State != "RUNNING" {
		t.Fatalf("YARN apps named %s: %+v, %v", k.ID, apps, err)
	}
	ws, err := c.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ws.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 3*time.Minute)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("sum: %v %q %+v", err, r.Stdout.String(), r)
	}
	// While the kernel runs, an administrator's overview in a browser
	// shows YARN's numbers and links its application.
	t.Run("overview in browser", func(t *testing.T) { overviewInBrowser(t, c, rmURL, apps[0].ID) })

	// Interrupt cancels a long Spark job, once its tasks run and again while
	// the cell is still submitting it; the kernel stays usable.
	took := interruptLongJob(t, c.Client, ws, k.ID, confDir, -1)
	t.Logf("MEASURED: interrupt of a running Spark job to no active job: %s", took.Round(time.Millisecond))
	took = interruptLongJob(t, c.Client, ws, k.ID, confDir, 0)
	t.Logf("interrupt of a Spark job being submitted to no active job: %s", took.Round(time.Millisecond))
	// What an interrupt looks like when PySpark's clean-up after the
	// interrupted Py4J call fails in turn (rare; seen in loops of
	// TestSparkInterruptLoop) is still an interrupt to the user.
	chained, err := ws.Send("shell", "execute_request", map[string]any{"code": "from py4j.protocol import Py4JNetworkError\n" +
		"try:\n    raise KeyboardInterrupt()\nexcept KeyboardInterrupt:\n    raise Py4JNetworkError('Answer from Java side is empty')",
		"silent": false, "store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true})
	if err != nil {
		t.Fatal(err)
	}
	if st, ename := awaitError(t, ws, chained); st != "error" || ename != "KeyboardInterrupt" {
		t.Fatalf("interrupt behind a Py4J error: reply %q, error %q; want an error, KeyboardInterrupt", st, ename)
	}
	r, err = ws.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 3*time.Minute)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("sum after interrupt: %v %q", err, r.Stdout.String())
	}
	ws.Close()

	// Restart: the new kernel process attaches to the same Spark driver.
	if _, err := c.Restart(ctx, k.ID); err != nil {
		t.Fatalf("restart: %v", err)
	}
	ws, err = c.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 2*time.Minute, "a sum after restart", func() bool {
		r, err := ws.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 2*time.Minute)
		return err == nil && strings.TrimSpace(r.Stdout.String()) == "499500"
	})
	ws.Close()

	// Delete ends the application.
	if err := c.DeleteKernel(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 2*time.Minute, "the application to end", func() bool {
		a, err := rm.App(ctx, apps[0].ID)
		return err == nil && a.Ended()
	})

	// A submission YARN refuses fails the start quickly, with YARN's words.
	t1 := time.Now()
	_, err = c.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360", "KERNEL_EXTRA_SPARK_OPTS": "--conf spark.driver.memory=64g"})
	if err == nil || !strings.Contains(err.Error(), "max threshold") || apiStatus(err) != 400 {
		t.Fatalf("oversized start: %v; want a 400 with YARN's words", err)
	}
	t.Logf("refused in %s: %v", time.Since(t1).Round(time.Millisecond), err)
	if time.Since(t1) > 2*time.Minute {
		t.Errorf("the refusal took %s", time.Since(t1))
	}
	noAppRunning(t, rmURL)

	// JEG's own YarnClusterProcessProxy spec (from its sdist, laid out by
	// scripts/setup-jeg-yarn.sh) runs unchanged: its run.sh only calls
	// spark-submit, so kernelbus takes its SPARK_OPTS and lazy mode.
	var k2 *client.Model
	if jegSpec != "" {
		k2, err = c.StartKernel(ctx, jegSpec, map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360", "KERNEL_USERNAME": "alice"})
		if err != nil {
			t.Fatalf("start of JEG's spec: %v", err)
		}
	} else {
		t.Log("KB_JEG_YARN_KERNELS not set (task test:yarn sets it): JEG's own spec not tried; the next part uses pyspark_yarn")
		k2, err = c.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360"})
		if err != nil {
			t.Fatalf("start 2: %v", err)
		}
	}
	// A lazy session: the kernel answers first, and the application master
	// registers (RUNNING) once the background SparkContext exists.
	var apps2 []yarn.App
	jstest.WaitFor(t, 3*time.Minute, "kernel 2's application to run", func() bool {
		apps2, err = rm.AppsByName(ctx, k2.ID)
		return err == nil && len(apps2) == 1 && apps2[0].State == "RUNNING"
	})
	ws2, err := c.Connect(ctx, k2.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ws2.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 3*time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("sum in kernel 2: %v %+v", err, r)
	}

	// The worker restarts (now checking queues first); the kernel goes on,
	// and the new worker, which knows it only from its record, follows it.
	c.restartWorker("--yarn-queue-check")
	if r, err := ws2.Execute("print(6*7)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "42" {
		t.Fatalf("kernel 2 after the worker restart: %v %+v", err, r)
	}

	// The queue check refuses a queue YARN does not have, before submitting.
	t2 := time.Now()
	_, err = c.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360", "KERNEL_EXTRA_SPARK_OPTS": "--conf spark.yarn.queue=nosuch"})
	if err == nil || !strings.Contains(err.Error(), `no queue "nosuch"`) || !strings.Contains(err.Error(), "root.default") || apiStatus(err) != 400 {
		t.Fatalf("start on a missing queue: %v; want a 400 naming the queues", err)
	}
	t.Logf("missing queue refused in %s: %v", time.Since(t2).Round(time.Millisecond), err)

	// Killed through YARN: the connected client gets the iopub status
	// "dead" and a close that gives YARN's reason; the model says dead, why.
	if err := rm.Kill(ctx, apps2[0].ID); err != nil {
		t.Fatalf("kill through YARN: %v", err)
	}
	sawDead := false
	var closeErr error
	for closeErr == nil {
		m, err := ws2.Recv(time.Now().Add(2 * time.Minute))
		switch {
		case err != nil:
			closeErr = err
		case m.Channel == "iopub" && m.Header.MsgType == "status" && strings.Contains(string(m.Content), `"dead"`):
			sawDead = true
		}
	}
	if !sawDead || !strings.Contains(closeErr.Error(), "1000") || !strings.Contains(closeErr.Error(), "kernel died") {
		t.Fatalf("client of the killed kernel: dead status %v, close %v", sawDead, closeErr)
	}
	// The launcher only knew it was signalled; the worker, following the
	// application, gives YARN's account.
	var m2 *client.Model
	jstest.WaitFor(t, time.Minute, "YARN's reason in the kernel model", func() bool {
		m2, err = c.Kernel(ctx, k2.ID)
		return err == nil && m2.ExecutionState == "dead" && strings.Contains(m2.Reason, "KILLED") && strings.Contains(m2.Reason, "yarn-admin")
	})
	t.Logf("killed through YARN: %s", m2.Reason)
	noAppRunning(t, rmURL)
}

// apiStatus is the HTTP status of a gateway error, 0 if err is not one.
func apiStatus(err error) int {
	var e *client.APIError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// noAppRunning waits until YARN runs no application.
func noAppRunning(t *testing.T, rmURL string) {
	t.Helper()
	jstest.WaitFor(t, time.Minute, "no application running", func() bool {
		apps, err := liveAppList(rmURL)
		return err == nil && len(apps) == 0
	})
}

// liveAppList is the cluster's applications not yet ended.
func liveAppList(rmURL string) ([]yarn.App, error) {
	var out struct {
		Apps *struct{ App []yarn.App } `json:"apps"`
	}
	if err := getJSON(rmURL+"/ws/v1/cluster/apps?states=NEW,NEW_SAVING,SUBMITTED,ACCEPTED,RUNNING", &out); err != nil {
		return nil, err
	}
	if out.Apps == nil {
		return nil, nil
	}
	return out.Apps.App, nil
}

// TestSparkInterruptLoop interrupts a long Spark job again and again in one
// kernel, to hunt an interrupt that leaves the job running. Developer only:
// KB_YARN_INTERRUPT_LOOPS=N.
func TestSparkInterruptLoop(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("KB_YARN_INTERRUPT_LOOPS"))
	if n == 0 {
		t.Skip("set KB_YARN_INTERRUPT_LOOPS=N")
	}
	env := setupEnv(t)
	confDir, rmURL := startYARN(t, env)
	c := startGateway(t, env, confDir, rmURL, nil)
	ctx := context.Background()
	k, err := c.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360"})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	ws, err := c.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// Odd trials interrupt while the cell may still be submitting its job:
	// 0 to 500 ms after the cell's first line ran. A job left behind by one
	// trial shows as an active job in the next.
	for i := range n {
		after := time.Duration(-1)
		if i%2 == 1 {
			after = time.Duration(i/2%6) * 100 * time.Millisecond
		}
		took := interruptLongJob(t, c.Client, ws, k.ID, confDir, after)
		t.Logf("trial %d (interrupt at %v): no active job %s after the interrupt", i, after, took.Round(time.Millisecond))
	}
	sparkLog(t, filepath.Dir(confDir), "trying again", "shown as KeyboardInterrupt")
}

// interruptLongJob runs a long Spark job in the kernel, interrupts it, and
// returns how long after the interrupt Spark had no active job. The
// interrupt comes once the job's tasks run or, if after >= 0, that long
// after the cell's first line printed. The cell must end with an error.
func interruptLongJob(t *testing.T, c *client.Client, ws *client.Conn, kernelID, confDir string, after time.Duration) time.Duration {
	t.Helper()
	marks := t.TempDir()
	long, err := ws.Send("shell", "execute_request", map[string]any{"code": longSparkJob(marks),
		"silent": false, "store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true})
	if err != nil {
		t.Fatal(err)
	}
	if after < 0 {
		jstest.WaitFor(t, 2*time.Minute, "the long job's tasks to run", func() bool { return tasksRunning(marks) })
	} else {
		for {
			m, err := ws.Recv(time.Now().Add(time.Minute))
			if err != nil {
				t.Fatalf("waiting for the cell to run: %v", err)
			}
			if m.ParentHeader.MsgID == long && m.Header.MsgType == "stream" && strings.Contains(string(m.Content), "kb-cell-runs") {
				break
			}
		}
		time.Sleep(after) // the point in the cell to interrupt at, not a wait for a condition
	}
	tInt := time.Now()
	if err := c.Interrupt(context.Background(), kernelID); err != nil {
		t.Fatal(err)
	}
	// The user sees the interrupt, whatever PySpark's clean-up ran into.
	if st, ename := awaitError(t, ws, long); st != "error" || ename != "KeyboardInterrupt" {
		t.Fatalf("interrupted cell: reply %q, error %q; want an error, KeyboardInterrupt", st, ename)
	}
	// The kernel stays usable: every cell after the interrupt works, and
	// Spark soon has no active job.
	active := ""
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		r, err := ws.Execute("print(len(sc.statusTracker().getActiveJobsIds()))", time.Minute)
		if err != nil || r.Status != "ok" {
			sparkLog(t, filepath.Dir(confDir), "kernelbus-spark", "cancel", "Interrupt")
			t.Fatalf("a cell after the interrupt: %v, reply %q", err, r.Status)
		}
		if active = strings.TrimSpace(r.Stdout.String()); active == "0" {
			return time.Since(tInt)
		}
	}
	sparkLog(t, filepath.Dir(confDir), "kernelbus-spark", "cancel", "Interrupt")
	t.Fatalf("the interrupted Spark job still runs a minute later (%s active jobs)", active)
	return 0
}

// awaitError waits for the reply to request id and returns its status and
// the name of the error it showed.
func awaitError(t *testing.T, ws *client.Conn, id string) (status, ename string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	replied, idle := false, false
	for !replied || !idle {
		m, err := ws.Recv(deadline)
		if err != nil {
			t.Fatalf("awaiting the interrupted cell: %v", err)
		}
		if m.ParentHeader.MsgID != id {
			continue
		}
		switch m.Header.MsgType {
		case "execute_reply":
			var c struct{ Status string }
			_ = json.Unmarshal(m.Content, &c)
			status, replied = c.Status, true
		case "error":
			var c struct{ Ename string }
			_ = json.Unmarshal(m.Content, &c)
			ename = c.Ename
		case "status":
			idle = idle || strings.Contains(string(m.Content), `"idle"`)
		}
	}
	return status, ename
}

// sparkLog logs the lines of the containers' stderr and stdout below root
// that contain one of words (the kernel's own stderr, such as startup.py's
// lines, reaches the container's stdout through the launcher's log).
func sparkLog(t *testing.T, root string, words ...string) {
	for _, l := range containerLines(root) {
		for _, w := range words {
			if strings.Contains(l, w) {
				t.Log(l)
				break
			}
		}
	}
}

// containerLines returns the lines of every container's stderr and stdout
// below root.
func containerLines(root string) []string {
	var lines []string
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || (fi.Name() != "stderr" && fi.Name() != "stdout") || !strings.Contains(p, "container_") {
			return nil
		}
		data, _ := os.ReadFile(p)
		lines = append(lines, strings.Split(string(data), "\n")...)
		return nil
	})
	return lines
}

// longSparkJob is a cell whose Spark job runs two tasks of ten minutes; each
// task first creates a file in marks (executors run on this machine).
func longSparkJob(marks string) string {
	return fmt.Sprintf("print('kb-cell-runs', flush=True)\ndef _task(x):\n    import time\n    open(%q + '/task-%%d' %% x, 'w').close()\n    time.sleep(600)\n"+
		"sc.range(0, 2, numSlices=2).map(_task).count()", marks)
}

// tasksRunning reports whether a longSparkJob task has started.
func tasksRunning(marks string) bool {
	ents, _ := os.ReadDir(marks)
	return len(ents) > 0
}
