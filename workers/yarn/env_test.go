package yarn_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// TestEnvironmentOnYARN: an environment with a small real PyPI package
// (tabulate), built by serve's build worker for the yarn resource manager,
// runs as a Spark driver in YARN cluster mode on the MiniYARNCluster: the
// yarn worker ships the archive with spark.yarn.dist.archives, YARN
// unpacks it into the driver's and the executor's containers, and both
// import the package from it (the site's spark.pyspark.python notwithstanding).
// Requests beyond the cluster's largest container are refused before
// anything is built.
func TestEnvironmentOnYARN(t *testing.T) {
	env := setupEnv(t)
	confDir, rmURL := startYARN(t, env)
	kb, launcher := bins(t)
	out, err := exec.Command(env["KB_SPARK_PYTHON"], "-c", "import sys; print('%d.%d' % sys.version_info[:2])").Output()
	if err != nil {
		t.Fatal(err)
	}
	pyVer := strings.TrimSpace(string(out))

	data, specs := t.TempDir(), t.TempDir()
	_, url := runServing(t, "kernelbus serving", kb, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--kernelspec-dir", specs, "--launcher", launcher,
		"--launch-timeout", "6m", "--insecure-no-auth", "--env-rms", "local,yarn")
	conn := filepath.Join(data, "nats.conn")
	jstest.WaitFor(t, time.Minute, "nats.conn", func() bool {
		c, err := os.ReadFile(conn)
		return err == nil && strings.Contains(string(c), "auth=")
	})
	// The site's settings, as an operator gives them to the yarn workers:
	// environment specs carry none.
	args := []string{"worker", "--rm", "yarn", "--nats-conn", conn, "--kernelspec-dir", specs, "--launcher", launcher,
		"--yarn-endpoint", rmURL, "--spark-home", env["KB_SPARK_HOME"], "--env-cache", t.TempDir()}
	for _, c := range []string{
		"spark.yarn.jars=local:" + env["KB_SPARK_HOME"] + "/jars/*",
		"spark.pyspark.python=" + env["KB_SPARK_PYTHON"],
		"spark.executor.memory=512m", "spark.executor.instances=1",
		"spark.yarn.appMasterEnv.SPARK_LOCAL_IP=127.0.0.1", "spark.executorEnv.SPARK_LOCAL_IP=127.0.0.1",
		"spark.ui.enabled=false",
	} {
		args = append(args, "--yarn-spark-conf", c)
	}
	runEnv(t, []string{"HADOOP_CONF_DIR=" + confDir, "PYSPARK_ARCHIVES_PATH=" + env["KB_PYSPARK_ARCHIVES"]}, kb, args...)
	c := &client.Client{BaseURL: url}
	ctx := context.Background()
	jstest.WaitFor(t, time.Minute, "the gateway", func() bool { _, err := c.Kernels(ctx); return err == nil })

	// Beyond the largest container YARN can give (the minicluster's
	// yarn.scheduler.maximum-allocation-mb / -vcores, read by the yarn
	// worker from the ResourceManager): 400 naming the field and the limit.
	jstest.WaitFor(t, time.Minute, "the yarn worker's report", func() bool {
		reps, err := c.ClusterReports(ctx, "yarn")
		return err == nil && len(reps) > 0 && strings.Contains(string(reps[0]), "max_allocation")
	})
	for _, tc := range []struct {
		res   map[string]any
		field string
	}{
		{map[string]any{"memory_mb": 1 << 20}, "resources.memory_mb"},
		{map[string]any{"cpus": 4096}, "resources.cpus"},
	} {
		_, err := c.CreateEnvironment(ctx, map[string]any{"name": "huge", "python": pyVer, "rm": "yarn", "resources": tc.res})
		if apiStatus(err) != 400 || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "largest container") {
			t.Fatalf("%v beyond the largest container: %v; want a 400 naming %s and the largest container", tc.res, err, tc.field)
		}
	}

	if _, err := c.CreateEnvironment(ctx, map[string]any{"name": "tab", "python": pyVer, "rm": "yarn",
		"pip": []string{"tabulate"}, "resources": map[string]any{"memory_mb": 512, "cpus": 1}}); err != nil {
		t.Fatalf("create: %v", err)
	}
	var e *client.Environment
	jstest.WaitFor(t, 10*time.Minute, "the environment's build", func() bool {
		e, err = c.Environment(ctx, "tab")
		return err == nil && (e.State == broker.EnvReady || e.State == broker.EnvFailed)
	})
	if e.State != broker.EnvReady {
		t.Fatalf("build: %+v", e)
	}
	t.Logf("environment %s: %d bytes", e.Digest, e.Size)

	t0 := time.Now()
	k, err := c.StartKernel(ctx, "tab", map[string]string{"KERNEL_LAUNCH_TIMEOUT": "360"})
	if err != nil {
		t.Fatalf("start a kernel of the environment on YARN: %v", err)
	}
	t.Logf("MEASURED: start of an environment's kernel in YARN cluster mode (archive shipped) took %s", time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() { _ = c.DeleteKernel(context.Background(), k.ID) })
	ws, err := c.Connect(ctx, k.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// The driver (the kernel, in the application master's container).
	r, err := ws.Execute("import sys, tabulate\nprint(sys.prefix)\nprint(tabulate.tabulate([[1, 2]], tablefmt='plain'))", 3*time.Minute)
	if err != nil || r.Status != "ok" || !strings.Contains(r.Stdout.String(), "1  2") {
		t.Fatalf("the driver does not import tabulate: %v %q %+v", err, r.Stdout.String(), r)
	}
	driverPrefix := strings.SplitN(r.Stdout.String(), "\n", 2)[0]
	// An executor, in a container of its own.
	r, err = ws.Execute("print(sc.parallelize([1], 1).map(lambda _: __import__('tabulate').__name__ + ' ' + __import__('sys').prefix).collect()[0])", 3*time.Minute)
	if err != nil || r.Status != "ok" || !strings.HasPrefix(r.Stdout.String(), "tabulate ") {
		t.Fatalf("the executor does not import tabulate: %v %q %+v", err, r.Stdout.String(), r)
	}
	executorPrefix := strings.TrimSpace(strings.TrimPrefix(r.Stdout.String(), "tabulate "))
	t.Logf("driver's sys.prefix %s, executor's %s", driverPrefix, executorPrefix)
	for _, p := range []string{driverPrefix, executorPrefix} {
		if !strings.Contains(p, "kbenv") && !strings.Contains(p, e.Digest) {
			t.Errorf("sys.prefix %s is not the shipped environment", p)
		}
	}

	// Deleting the environment removes its spec, not the running kernel.
	if err := c.DeleteEnvironment(ctx, "tab"); err != nil {
		t.Fatal(err)
	}
	r, err = ws.Execute("print(tabulate.__name__)", time.Minute)
	if err != nil || !strings.Contains(r.Stdout.String(), "tabulate") {
		t.Fatalf("the running kernel did not survive the deletion: %v %+v", err, r)
	}
	if err := c.DeleteKernel(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	noAppRunning(t, rmURL)
}
