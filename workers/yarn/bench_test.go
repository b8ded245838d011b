package yarn_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/yarn"
)

// sparkSum is the first cell of each measured start: it needs a working
// SparkSession and an executor.
const sparkSum = "print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])"

// benchGateway is one gateway under measurement, driven by the same client.
type benchGateway struct {
	name, spec string
	c          *client.Client
	// warm: the gateway's worker keeps one warm kernel of spec; each
	// start waits for it to be ready (its application the only one).
	warm bool
}

// gwWarm is the report's name of kernelbus with a warm pool.
const gwWarm = "kernelbus (warm pool)"

// benchRun is one measured start.
type benchRun struct {
	gateway     string
	round       int
	post, ready time.Duration
	app         string
	load        string // the load average (1/5/15 min) at the POST
}

// TestBenchYARNStart measures PySpark kernel starts in YARN cluster mode
// through kernelbus (pyspark_yarn, eager SparkSession) and through Jupyter
// Enterprise Gateway (its own spark_python_yarn_cluster spec and launcher, laid
// out by scripts/setup-jeg-yarn.sh) on one MiniYARNCluster: N starts each,
// alternating, each kernel deleted and its application ended before the next.
// For each start: POST /api/kernels → 201, and POST → the first execute of
// sparkSum printing 499500 over the kernel websocket. A benchmark, not a test:
// it runs only with KB_YARN_BENCH=1 (`task bench:yarn`).
//
// Env: KB_YARN_ENV (scripts/yarn-setup.sh), KB_JEG_VENV (scripts/setup-jeg.sh),
// KB_JEG_YARN_KERNELS (scripts/setup-jeg-yarn.sh), KB_YARN_BENCH_N (default 3),
// KB_YARN_BENCH_OUT (markdown file to write; none by default).
func TestBenchYARNStart(t *testing.T) {
	if os.Getenv("KB_YARN_BENCH") != "1" {
		t.Skip("a benchmark: set KB_YARN_BENCH=1 (`task bench:yarn`)")
	}
	env := setupEnv(t)
	jegVenv, jegKernels := os.Getenv("KB_JEG_VENV"), os.Getenv("KB_JEG_YARN_KERNELS")
	if jegVenv == "" || jegKernels == "" {
		t.Fatal("KB_JEG_VENV and KB_JEG_YARN_KERNELS must be set (scripts/setup-jeg.sh, scripts/setup-jeg-yarn.sh)")
	}
	n := 3
	if v := os.Getenv("KB_YARN_BENCH_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("KB_YARN_BENCH_N=%q", v)
		}
	}
	loadBefore := loadAvg()
	began := time.Now()

	confDir, rmURL := startYARN(t, env)
	kb := startGateway(t, env, confDir, rmURL, nil)
	gws := []benchGateway{
		{name: "kernelbus", spec: "pyspark_yarn", c: kb.Client},
		{name: "JEG", spec: "spark_python_yarn_cluster", c: startJEGYARN(t, jegVenv, jegKernels, confDir, rmURL)},
	}
	rm, err := yarn.NewRM(rmURL, "")
	if err != nil {
		t.Fatal(err)
	}

	// A fresh cluster's first starts are slower (cold page cache, JIT): one
	// unmeasured start per gateway first, so the order within a round does
	// not favour the second gateway.
	for _, g := range gws {
		r := measureYARNStart(t, rm, rmURL, g)
		t.Logf("warm-up %s (not counted): 201 after %s, 499500 after %s", g.name, r.post.Round(time.Millisecond), r.ready.Round(time.Millisecond))
	}
	var runs []benchRun
	for i := 1; i <= n; i++ {
		for _, g := range gws {
			r := measureYARNStart(t, rm, rmURL, g)
			r.round = i
			t.Logf("round %d %s: 201 after %s, 499500 after %s (%s)", i, g.name, r.post.Round(time.Millisecond), r.ready.Round(time.Millisecond), r.app)
			runs = append(runs, r)
		}
	}

	// Warm starts last, so that the warm pool's idle application never
	// shares the cluster with a cold start: the kernelbus worker restarts
	// with a pool of one kernel of the same spec.
	kb.restartWorker("--warm", "pyspark_yarn=1,timeout=10m")
	wg := benchGateway{name: gwWarm, spec: "pyspark_yarn", c: kb.Client, warm: true}
	r := measureYARNStart(t, rm, rmURL, wg)
	t.Logf("warm-up %s (not counted): 201 after %s, 499500 after %s", wg.name, r.post.Round(time.Millisecond), r.ready.Round(time.Millisecond))
	for i := 1; i <= n; i++ {
		r := measureYARNStart(t, rm, rmURL, wg)
		r.round = i
		t.Logf("round %d %s: 201 after %s, 499500 after %s (%s)", i, wg.name, r.post.Round(time.Millisecond), r.ready.Round(time.Millisecond), r.app)
		runs = append(runs, r)
	}

	md := yarnBenchReport(runs, n, yarnBenchInfo{
		date: began, took: time.Since(began), loadBefore: loadBefore, loadAfter: loadAvg(),
		spark: pySparkVersion(env), hadoop: filepath.Base(env["KB_YARN_HARNESS"]), jeg: jegVersion(jegVenv),
	})
	fmt.Println(md)
	if out := os.Getenv("KB_YARN_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", out)
	}
}

// startJEGYARN runs Jupyter Enterprise Gateway from its venv on a free port,
// with the kernelspecs under kernels and the minicluster's RM and conf dir,
// and returns a client once it answers.
func startJEGYARN(t *testing.T, venv, kernels, confDir, rmURL string) *client.Client {
	home := t.TempDir()
	var c *client.Client
	// JEG cannot listen on port 0 and say where: a port taken between its
	// pick and JEG's bind costs a retry with new ones.
	err := jstest.RetryPorts(2, func(ports []int) error {
		port, respPort := strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
		stop, _, log := startGroup(t, false, []string{
			// JEG finds kernelspecs in <JUPYTER_PATH>/kernels; its own data,
			// runtime and config folders are this run's.
			"JUPYTER_PATH=" + filepath.Dir(kernels),
			"JUPYTER_DATA_DIR=" + filepath.Join(home, "data"),
			"JUPYTER_RUNTIME_DIR=" + filepath.Join(home, "runtime"),
			"JUPYTER_CONFIG_DIR=" + filepath.Join(home, "config"),
			// run.sh's spark-submit needs the minicluster's conf; JEG hands a
			// kernel only the variables of its own environment it is told to.
			"HADOOP_CONF_DIR=" + confDir,
			"EG_INHERITED_ENVS=HADOOP_CONF_DIR",
			// The launcher in the application master sends the connection info
			// back here. JEG's defaults are the first public address and port
			// 8877; this machine's cluster and gateway are on the loopback.
			"EG_RESPONSE_IP=127.0.0.1",
			"EG_RESPONSE_PORT=" + respPort,
		}, filepath.Join(venv, "bin", "jupyter"), "enterprisegateway",
			"--ip", "127.0.0.1", "--port", port, "--port_retries", "0",
			"--EnterpriseGatewayApp.yarn_endpoint="+rmURL,
			// GET /api/kernels (the readiness poll) is 403 unless listing is on.
			"--EnterpriseGatewayApp.list_kernels=True",
			"--log-level", "DEBUG")
		c = &client.Client{BaseURL: "http://127.0.0.1:" + port}
		var out []byte
		if jstest.Eventually(2*time.Minute, func() bool {
			_, err := c.Kernels(context.Background())
			out, _ = os.ReadFile(log)
			return err == nil || jstest.PortTaken(string(out))
		}) && !jstest.PortTaken(string(out)) {
			return nil
		}
		stop()
		return fmt.Errorf("JEG did not answer:\n%s", jstest.Tail(string(out), 30))
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// measureYARNStart starts one kernel of g.spec, runs sparkSum, deletes the
// kernel and waits for its YARN application to end.
func measureYARNStart(t *testing.T, rm *yarn.RM, rmURL string, g benchGateway) benchRun {
	ctx := context.Background()
	if g.warm {
		// The pool's kernel is ready (running: its SparkContext built and
		// its warm-up job done) and its application is the only one.
		jstest.WaitFor(t, 10*time.Minute, "a ready warm kernel, and no other application", func() bool {
			var warm []struct{ State string }
			err := getJSON(strings.TrimRight(g.c.BaseURL, "/")+"/api/warm", &warm)
			return err == nil && len(warm) == 1 && warm[0].State == "running" && liveApps(rmURL) == 1
		})
	} else {
		jstest.WaitFor(t, 2*time.Minute, "no application running before a start", func() bool { return liveApps(rmURL) == 0 })
	}
	// JEG refuses root (its default unauthorized_users), so both get a user.
	kenv := map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360", "KERNEL_USERNAME": "bench"}
	load := loadAvg()
	t0 := time.Now()
	k, err := g.c.StartKernel(ctx, g.spec, kenv)
	post := time.Since(t0)
	if err != nil {
		t.Fatalf("%s: start: %v", g.name, err)
	}
	ws, err := g.c.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatalf("%s: websocket: %v", g.name, err)
	}
	// What a notebook does on opening: kernel_info, then the cell.
	id, err := ws.Send("shell", "kernel_info_request", map[string]any{})
	if err == nil {
		_, err = ws.Await(id, 5*time.Minute)
	}
	if err != nil {
		t.Fatalf("%s: kernel_info: %v", g.name, err)
	}
	r, err := ws.Execute(sparkSum, 5*time.Minute)
	ready := time.Since(t0)
	if err != nil || r.Status != "ok" || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("%s: first execute: %v %q %+v", g.name, err, r.Stdout.String(), r)
	}
	ws.Close()

	apps, err := rm.AppsByName(ctx, k.ID)
	if err != nil || len(apps) != 1 {
		t.Fatalf("%s: YARN applications named %s: %+v %v", g.name, k.ID, apps, err)
	}
	if err := g.c.DeleteKernel(ctx, k.ID); err != nil {
		t.Fatalf("%s: delete: %v", g.name, err)
	}
	jstest.WaitFor(t, 3*time.Minute, g.name+"'s application to end", func() bool {
		a, err := rm.App(ctx, apps[0].ID)
		return err == nil && a.Ended()
	})
	return benchRun{gateway: g.name, post: post, ready: ready, app: apps[0].ID, load: load}
}

// liveApps counts the cluster's applications not yet ended (-1 on error).
func liveApps(rmURL string) int {
	apps, err := liveAppList(rmURL)
	if err != nil {
		return -1
	}
	return len(apps)
}

type yarnBenchInfo struct {
	date                  time.Time
	took                  time.Duration
	loadBefore, loadAfter string
	spark, hadoop, jeg    string
}

// yarnBenchReport is docs/benchmarks-yarn.md.
func yarnBenchReport(runs []benchRun, n int, info yarnBenchInfo) string {
	var b strings.Builder
	sec := func(d time.Duration) string {
		if d < 2*time.Second { // warm starts: tenths would hide them
			return fmt.Sprintf("%.2f s", d.Seconds())
		}
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	fmt.Fprintf(&b, "# PySpark kernel start in YARN cluster mode: kernelbus and JEG\n\n")
	fmt.Fprintf(&b, "Measured %s by `TestBenchYARNStart` (workers/yarn/bench_test.go) in %s; %d cores, load average (1/5/15 min) %s before, %s after.\n",
		info.date.UTC().Format("2006-01-02 15:04 MST"), info.took.Round(time.Second), runtime.NumCPU(), info.loadBefore, info.loadAfter)
	fmt.Fprintf(&b, "Spark %s (pip pyspark), Hadoop %s MiniYARNCluster (one ResourceManager, one NodeManager, in one JVM on this machine), JEG %s from PyPI.\n\n", info.spark, info.hadoop, info.jeg)
	fmt.Fprintf(&b, "%d starts per gateway, alternating kernelbus, JEG, kernelbus, …, after one unmeasured warm-up start each; each kernel is deleted and its YARN application has ended before the next start. Then %d starts that take kernelbus's warm kernel, after one unmeasured one.\n\n", n, n)
	b.WriteString("| gateway | measure | median | min | max |\n|---|---|---:|---:|---:|\n")
	for _, g := range []string{"kernelbus", "JEG", gwWarm} {
		for _, m := range []struct {
			name string
			get  func(benchRun) time.Duration
		}{
			{"POST /api/kernels → 201", func(r benchRun) time.Duration { return r.post }},
			{"POST → first Spark result (499500)", func(r benchRun) time.Duration { return r.ready }},
		} {
			var ds []time.Duration
			for _, r := range runs {
				if r.gateway == g {
					ds = append(ds, m.get(r))
				}
			}
			if len(ds) == 0 {
				continue
			}
			slices.Sort(ds)
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", g, m.name, sec(median(ds)), sec(ds[0]), sec(ds[len(ds)-1]))
		}
	}
	if kb, jeg := pick(runs, "kernelbus"), pick(runs, "JEG"); len(kb) > 0 && len(jeg) > 0 {
		mk, mj := median(kb), median(jeg)
		overlap := "overlap"
		if kb[len(kb)-1] < jeg[0] || jeg[len(jeg)-1] < kb[0] {
			overlap = "do not overlap"
		}
		fmt.Fprintf(&b, "\nReading: to a usable Spark (first result), kernelbus's median is %s, JEG's %s (kernelbus − JEG = %+.1f s); their min–max ranges %s. "+
			"The 201 rows mark different points: kernelbus answers once the SparkSession exists, JEG as soon as ipykernel is up, with the session still starting (below).\n",
			sec(mk), sec(mj), (mk - mj).Seconds(), overlap)
	}
	if w := pick(runs, gwWarm); len(w) > 0 {
		target := "meets"
		if median(w) > time.Second {
			target = "misses"
		}
		fmt.Fprintf(&b, "\nWarm pool: a start that takes kernelbus's warm kernel has its first Spark result after %s (median; min %s, max %s), which %s the 1 s target; JEG has no warm kernels.\n",
			sec(median(w)), sec(w[0]), sec(w[len(w)-1]), target)
	}
	b.WriteString("\nEach start, in order (load average at its POST):\n\n| round | gateway | 201 | first result | YARN application | load |\n|---:|---|---:|---:|---|---|\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", r.round, r.gateway, sec(r.post), sec(r.ready), r.app, r.load)
	}
	b.WriteString(`
## What is measured

- Both gateways get the same requests from the same client (frontend/client, the
  Kernel Gateway REST API and kernel websocket): POST /api/kernels with
  KERNEL_USERNAME and KERNEL_LAUNCH_TIMEOUT=360, then on the websocket
  kernel_info_request and one execute_request of
  ` + "`" + sparkSum + "`" + `.
  "first result" is from the POST to that cell's reply with 499500 on stdout: the
  time until a notebook has a usable Spark.
- kernelbus: ` + "`kernelbus serve`" + ` plus ` + "`kernelbus worker --rm yarn`" + `, spec pyspark_yarn
  with ` + "`spark_context: eager`" + `: the SparkSession is built before the kernel
  answers, so at the 201 the session exists; the first job still waits for its
  executor container.
- kernelbus (warm pool): after the cold rounds, the same gateway's yarn worker
  restarts with ` + "`--warm pyspark_yarn=1`" + `; before each start the bench waits
  until the pool's kernel is ready (` + "`GET /api/warm`" + ` says running, its
  application the only one). A warm YARN kernel builds its SparkContext and runs
  small Spark jobs (the measured cell's query, a Python RDD job, then the query
  up to 7 times more, so that both JVMs have compiled its paths) before it
  answers kernel_info, so it is running only when Spark is usable; while it
  waits it repeats the query and the Python job every 20 s, until its first
  cell. The request (the same as the cold
  ones: KERNEL_USERNAME is no obstacle without impersonation) takes it; the
  pool then starts the next one at once (its spark-submit at nice 10), whose
  JVMs share this machine's cores with the measured cell: not part of the
  measure, but its load is.
- JEG: the spark_python_yarn_cluster kernelspec, bin/run.sh and
  launch_ipykernel.py from the jupyter_enterprise_gateway sdist, unmodified but
  for kernel.json's paths and Spark options (scripts/setup-jeg-yarn.sh). Its
  launcher (in either of its lazy and eager modes) sends the connection info
  and starts ipykernel while the SparkSession is still being built in a thread,
  so JEG's 201 comes before Spark is usable; the first cell waits for it.
- Same Spark settings for both (spark.yarn.jars from the pip Spark, the spark
  venv's python, 512m driver and executor, one executor, loopback, no UI).

## JEG on this minicluster

- JEG 3.3.0's launcher sets ` + "`sqlContext = spark._wrapped`" + `; Spark 3.3 removed
  SparkSession._wrapped, so on pyspark 4 the session starts but ` + "`spark`" + ` stays a
  placeholder that raises on use. The application master gets a sitecustomize
  (spark.yarn.appMasterEnv.PYTHONPATH) that gives SparkSession a _wrapped (its
  SQLContext); the launcher itself is unchanged.
- The launcher's imports (pycryptodomex, jupyter_client, ipykernel) are
  installed into the spark venv it runs under in the application master.
- EG_RESPONSE_IP=127.0.0.1 and a free EG_RESPONSE_PORT: JEG's defaults are the
  first public address and port 8877.
- HADOOP_CONF_DIR (the minicluster's) is set in JEG's environment and passed
  on to run.sh with EG_INHERITED_ENVS=HADOOP_CONF_DIR (JEG gives a kernel only
  the variables it is told to inherit); the RM is given by
  ` + "`--EnterpriseGatewayApp.yarn_endpoint`" + `.
- GET /api/kernels (the bench's readiness poll) needs
  ` + "`--EnterpriseGatewayApp.list_kernels=True`" + `.
- JEG refuses kernels for root (unauthorized_users), so both gateways get
  KERNEL_USERNAME=bench (no impersonation).

## Rerun

    go tool -modfile=tools/go.mod task bench:yarn                      # N=3
    KB_YARN_BENCH_N=5 go tool -modfile=tools/go.mod task bench:yarn    # N=5

It sets up the minicluster harness and spark venv (scripts/yarn-setup.sh), JEG's
venv (scripts/setup-jeg.sh) and JEG's YARN kernelspec (scripts/setup-jeg-yarn.sh),
builds kernelbus, runs TestBenchYARNStart, prints this file and rewrites it.
`)
	return b.String()
}

// pick is the sorted first-result times of gateway g.
func pick(runs []benchRun, g string) []time.Duration {
	var ds []time.Duration
	for _, r := range runs {
		if r.gateway == g {
			ds = append(ds, r.ready)
		}
	}
	slices.Sort(ds)
	return ds
}

func median(sorted []time.Duration) time.Duration {
	m := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[m]
	}
	return time.Duration(math.Round(float64(sorted[m-1]+sorted[m]) / 2))
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if err != nil || len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func pySparkVersion(env map[string]string) string {
	out, err := exec.Command(env["KB_SPARK_PYTHON"], "-c", "import pyspark; print(pyspark.__version__)").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func jegVersion(venv string) string {
	out, err := exec.Command(filepath.Join(venv, "bin", "jupyter-enterprisegateway"), "--version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
