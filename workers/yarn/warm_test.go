package yarn_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/yarn"
)

// startWarmWorker runs a yarn worker of gateway g with extra flags in its
// own process group and returns a kill that ends the group with SIGKILL (a
// worker that dies without a word); cleanup ends it too.
func startWarmWorker(t *testing.T, g *gateway, extra ...string) (kill func()) {
	_, kill = runGroup(t, true, g.workerEnv, g.kb, append(append([]string{}, g.workerArgs...), extra...)...)
	return kill
}

// warmKernel waits for the one warm kernel of the gateway that is not
// among not, to be running with a RUNNING application, and returns its id.
func warmKernel(t *testing.T, g *gateway, rm *yarn.RM, not ...string) string {
	t.Helper()
	id := ""
	jstest.WaitFor(t, 10*time.Minute, "a running warm YARN kernel", func() bool {
		var warm []struct{ ID, State, Pool string }
		if err := getJSON(strings.TrimRight(g.BaseURL, "/")+"/api/warm", &warm); err != nil {
			return false
		}
		for _, w := range warm {
			if w.State != "running" || w.Pool != "yarn/pyspark_yarn" || contains(not, w.ID) {
				continue
			}
			apps, err := rm.AppsByName(context.Background(), w.ID)
			if err == nil && len(apps) == 1 && apps[0].State == "RUNNING" {
				id = w.ID
				return true
			}
		}
		return false
	})
	return id
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// appEnded waits for the application named id to end.
func appEnded(t *testing.T, rm *yarn.RM, id string, within time.Duration) {
	t.Helper()
	jstest.WaitFor(t, within, "the application of kernel "+id+" to end", func() bool {
		apps, err := rm.AppsByName(context.Background(), id)
		return err == nil && len(apps) == 1 && apps[0].Ended()
	})
}

// TestWarmPySparkOnYARN: a worker with a warm pool keeps a PySpark kernel
// running as the Spark driver in its application master, SparkContext
// built; a start request takes it and its first Spark job runs at once, and
// the pool starts a new application in its place. A request with env the
// warm kernel was not started with gets a cold start with that env. A worker
// that dies holding the pool leaves no application behind: the worker that
// takes the pool over reaps it.
func TestWarmPySparkOnYARN(t *testing.T) {
	env := setupEnv(t)
	confDir, rmURL := startYARN(t, env)
	g := startGateway(t, env, confDir, rmURL, nil)
	// The gateway's own worker has no pool; this one has, and is killed later.
	g.stopWorker()
	kill1 := startWarmWorker(t, g, "--warm", "pyspark_yarn=1,timeout=10m")
	ctx := context.Background()
	rm, _ := yarn.NewRM(rmURL, "")
	rm.User = "yarn-admin"

	first := warmKernel(t, g, rm)

	// Taken: the kernel is the warm one, and a real client gets a Spark
	// result from it without waiting for a driver.
	t0 := time.Now()
	k, err := g.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360"})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if k.ID != first {
		t.Fatalf("start got kernel %s, not the warm one %s", k.ID, first)
	}
	startTook := time.Since(t0)
	ws, err := g.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	connected := time.Since(t0)
	r, err := ws.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 3*time.Minute)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("sum in the warm kernel: %v %q %+v", err, r.Stdout.String(), r)
	}
	t.Logf("MEASURED: warm YARN kernel: POST %s, websocket %s, POST to the first Spark result %s (load %s)",
		startTook.Round(time.Millisecond), connected.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), loadAvg())
	t1 := time.Now()
	if r, err := ws.Execute("print(spark.range(1000).selectExpr('sum(id)').collect()[0][0])", 3*time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "499500" {
		t.Fatalf("second sum in the warm kernel: %v %+v", err, r)
	}
	t.Logf("the second Spark result took %s", time.Since(t1).Round(time.Millisecond))
	// Where a result's time goes: a cell without Spark (the round trip
	// through the gateway and the bus), and the Spark job timed inside
	// the kernel.
	t2 := time.Now()
	if r, err := ws.Execute("pass", time.Minute); err != nil || r.Status != "ok" {
		t.Fatalf("an empty cell: %v %+v", err, r)
	}
	t.Logf("an empty cell took %s", time.Since(t2).Round(time.Millisecond))
	logSparkJobTimes(t, ws, "while the pool refills")
	sparkLog(t, filepath.Dir(confDir), "kernelbus-spark:", "SparkContext built ahead")
	ws.Close()

	// Replaced: a new application is started for the pool.
	second := warmKernel(t, g, rm, first)
	ws, err = g.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	logSparkJobTimes(t, ws, "once the refill is ready (load "+loadAvg()+")")
	ws.Close()
	if err := g.DeleteKernel(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	appEnded(t, rm, first, 2*time.Minute)

	// Env the warm kernel lacks: a cold start, with that env; the warm
	// kernel stays in the pool.
	k2, err := g.StartKernel(ctx, "pyspark_yarn", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360", "KERNEL_KB_MARK": "cold-start"})
	if err != nil {
		t.Fatalf("start with env: %v", err)
	}
	if k2.ID == second || k2.ID == first {
		t.Fatalf("a request with env the warm kernel lacks got warm kernel %s", k2.ID)
	}
	ws2, err := g.Connect(ctx, k2.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err = ws2.Execute("import os; print(os.environ.get('KERNEL_KB_MARK'))", 3*time.Minute)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "cold-start" {
		t.Fatalf("env in the cold kernel: %v %q", err, r.Stdout.String())
	}
	ws2.Close()
	if again := warmKernel(t, g, rm); again != second {
		t.Fatalf("the warm kernel is %s after the cold start, was %s", again, second)
	}
	// Waiting in the pool through the cold start, the warm kernel has
	// kept its JVMs warm with a round of small jobs (startup.py's
	// _KbKeepWarm, every 20 s).
	jstest.WaitFor(t, 2*time.Minute, "a keep-warm round in warm kernel "+second, func() bool {
		for _, l := range containerLines(filepath.Dir(confDir)) {
			if strings.Contains(l, second) && strings.Contains(l, "kernelbus-spark: keep-warm: first round") {
				t.Log(l)
				return true
			}
		}
		return false
	})
	if err := g.DeleteKernel(ctx, k2.ID); err != nil {
		t.Fatal(err)
	}
	appEnded(t, rm, k2.ID, 2*time.Minute)

	// The worker holding the pool dies. Another worker with the pool takes
	// the lease once the first one's presence is gone, reaps the warm
	// kernel the dead one started (its application ends) and starts its own.
	kill1()
	startWarmWorker(t, g, "--warm", "pyspark_yarn=1,timeout=10m")
	appEnded(t, rm, second, 3*time.Minute)
	third := warmKernel(t, g, rm, first, second)
	t.Logf("the dead worker's warm kernel %s was reaped; the new keeper started %s", second, third)
}

// logSparkJobTimes logs how long the first cell's Spark job takes, three
// times, timed inside the kernel.
func logSparkJobTimes(t *testing.T, ws *client.Conn, when string) {
	t.Helper()
	r, err := ws.Execute("import time as _t\nfor _ in range(3):\n    _t0 = _t.perf_counter(); spark.range(1000).selectExpr('sum(id)').collect(); print('%.3f' % (_t.perf_counter() - _t0))", 3*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("timed Spark jobs: %v %+v", err, r)
	}
	t.Logf("the Spark job inside the kernel, %s: %s s", when, strings.Join(strings.Fields(r.Stdout.String()), " s, "))
}
