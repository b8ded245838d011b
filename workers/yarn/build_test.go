package yarn

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/rs/zerolog"
)

// A JEG spec's SPARK_OPTS are written for run.sh's shell: names the
// kernel's env lacks come from the worker's environment, JEG's own
// --master/--deploy-mode/--name give way to kernelbus's, and the client's
// KERNEL_EXTRA_SPARK_OPTS appear once and cannot read the worker's env.
func TestBuildJEGSparkOpts(t *testing.T) {
	t.Setenv("KB_TEST_WORKER_ONLY", "worker-secret")
	t.Setenv("PATH", "/usr/bin:/bin")
	b := testBackend(t, Config{})
	cfg := &broker.LaunchConfig{
		KernelID: "k-1",
		Argv:     []string{"/jeg/bin/run.sh", "--RemoteProcessProxy.kernel-id", "{kernel_id}", "--RemoteProcessProxy.spark-context-initialization-mode", "eager"},
		Env: map[string]string{
			"KERNEL_USERNAME": "alice",
			"SPARK_OPTS": "--master yarn --deploy-mode cluster --name ${KERNEL_ID:-ERROR} " +
				"--conf spark.yarn.appMasterEnv.PYTHONUSERBASE=/home/${KERNEL_USERNAME}/.local " +
				"--conf spark.yarn.appMasterEnv.PATH=/venv/bin:$PATH ${KERNEL_EXTRA_SPARK_OPTS}",
			"KERNEL_EXTRA_SPARK_OPTS": "--conf spark.executor.instances=2 --conf spark.x=${KB_TEST_WORKER_ONLY}",
		},
	}
	sub, err := b.Build(cfg, filepath.Join(t.TempDir(), "launch.json"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(sub.Args, " ")
	for _, want := range []string{
		"--name k-1 ",
		"spark.yarn.appMasterEnv.PYTHONUSERBASE=/home/alice/.local",
		"spark.yarn.appMasterEnv.PATH=/venv/bin:/usr/bin:/bin",
		"--conf spark.executor.instances=2",
		"--conf spark.x=${KB_TEST_WORKER_ONLY} ", // left as the client wrote it
	} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	if strings.Contains(args, "worker-secret") {
		t.Errorf("the client's options read the worker's environment:\n%s", args)
	}
	if n := strings.Count(args, "spark.executor.instances=2"); n != 1 {
		t.Errorf("KERNEL_EXTRA_SPARK_OPTS appear %d times:\n%s", n, args)
	}
	if slices.Contains(sub.Args, "ERROR") || strings.Count(args, "--master") != 1 || strings.Count(args, "--deploy-mode") != 1 {
		t.Errorf("JEG's master/deploy-mode/name not replaced:\n%s", args)
	}
}

// JEG's advisories as regression tests for spark-submit: the client's
// KERNEL_EXTRA_SPARK_OPTS never go through a shell, so metacharacters are
// passed inertly as argument text; options that would change the Hadoop
// identity or ship the worker's files into the kernel's container are
// refused with 400, naming the option.
func TestClientSparkOptsInjection(t *testing.T) {
	b := testBackend(t, Config{Impersonation: true})
	build := func(extra string) ([]string, error) {
		cfg := &broker.LaunchConfig{KernelID: "k-1", User: "alice", Argv: []string{"python", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			Env: map[string]string{"KERNEL_USERNAME": "alice", "KERNEL_EXTRA_SPARK_OPTS": extra}}
		sub, err := b.Build(cfg, filepath.Join(t.TempDir(), "launch.json"))
		if err != nil {
			return nil, err
		}
		return sub.Args, nil
	}
	// Inert: each stays one argument, exactly as written.
	for _, v := range []string{"x;touch /tmp/pwned", "x|id", "x&&id", "$(id)", "`id`", "x>/etc/passwd"} {
		args, err := build("--conf 'spark.app.note=" + v + "'")
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if !slices.Contains(args, "spark.app.note="+v) {
			t.Errorf("%q did not arrive as one argument: %q", v, args)
		}
	}
	for _, ok := range []string{"--conf spark.executor.instances=2", "--conf=spark.yarn.queue=q1", "--driver-memory 2g --queue q1"} {
		if _, err := build(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"--proxy-user hdfs", "--conf spark.x=1 --proxy-user=hdfs", "--principal hdfs@REALM", "--keytab /etc/krb5.keytab",
		"--files /var/lib/kernelbus/auth/launcher-minter.json", "--py-files /etc/shadow", "--jars /etc/shadow",
		"--archives /etc/shadow", "--properties-file /etc/kernelbus/kernelbus.env", "--master local[*]",
		"--conf spark.yarn.dist.files=/etc/shadow", "--conf spark.files=/etc/shadow", "--conf spark.jars.packages=evil:evil:1",
		"--conf spark.kerberos.keytab=/k", "--conf spark.yarn.submit.waitAppCompletion=true", "--conf SPARK.FILES=/etc/shadow",
		"--conf spark.yarn.tags=other", "--conf", "spark.app.x=1",
	} {
		_, err := build(bad)
		if !errors.Is(err, broker.ErrBadEnv) || !strings.Contains(err.Error(), "KERNEL_EXTRA_SPARK_OPTS") {
			t.Errorf("%q: want a 400 naming KERNEL_EXTRA_SPARK_OPTS, got %v", bad, err)
		}
	}
	// The proxy user is the kernel's owner, once.
	args, _ := build("")
	if i := slices.Index(args, "--proxy-user"); i < 0 || args[i+1] != "alice" || strings.Count(strings.Join(args, " "), "--proxy-user") != 1 {
		t.Errorf("proxy user: %q", args)
	}
}

// FuzzClientSparkOpts: whatever a client writes in KERNEL_EXTRA_SPARK_OPTS,
// the spark-submit command kernelbus builds keeps its own identity and
// files: one --proxy-user (the owner), one --files (kernelbus's), the
// master and deploy mode it chose, no properties file.
func FuzzClientSparkOpts(f *testing.F) {
	for _, s := range []string{"--conf spark.x=1", "--proxy-user hdfs", "--conf=spark.files=/etc/shadow", "--driver-memory 2g --queue q",
		"'--files' /x", "--conf \"spark.yarn.dist.files=/x\"", "--conf spark.app.note='a;b'", "--conf\\ spark.files=/x"} {
		f.Add(s)
	}
	b := testBackend(f, Config{Impersonation: true})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, extra string) {
		cfg := &broker.LaunchConfig{KernelID: "k-1", User: "alice", Argv: []string{"python", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			Env: map[string]string{"KERNEL_USERNAME": "alice", "KERNEL_EXTRA_SPARK_OPTS": extra}}
		sub, err := b.Build(cfg, filepath.Join(dir, "launch.json"))
		if err != nil {
			return
		}
		count := func(flag string) int {
			n := 0
			for _, a := range sub.Args {
				if a == flag || strings.HasPrefix(a, flag+"=") {
					n++
				}
			}
			return n
		}
		if i := slices.Index(sub.Args, "--proxy-user"); count("--proxy-user") != 1 || sub.Args[i+1] != "alice" {
			t.Fatalf("%q: proxy user changed: %q", extra, sub.Args)
		}
		if count("--files") != 1 || count("--master") != 1 || count("--deploy-mode") != 1 || count("--properties-file") != 0 ||
			count("--py-files") != 0 || count("--jars") != 0 || count("--keytab") != 0 || count("--principal") != 0 {
			t.Fatalf("%q: the command's own options changed: %q", extra, sub.Args)
		}
		for i, a := range sub.Args {
			if a == "--conf" && i+1 < len(sub.Args) {
				k := strings.ToLower(strings.SplitN(sub.Args[i+1], "=", 2)[0])
				if strings.HasPrefix(k, "spark.yarn.dist.") && k != "spark.yarn.dist.archives" || k == "spark.files" || strings.HasPrefix(k, "spark.kerberos.") {
					t.Fatalf("%q: a client set %s: %q", extra, k, sub.Args)
				}
			}
		}
	})
}

// A warm kernel builds its SparkContext before it answers (and so before
// a request can take it); a spec's lazy mode stays lazy for cold starts,
// and a spec that wants no context gets none, warm or not.
func TestBuildWarmSparkContext(t *testing.T) {
	b := testBackend(t, Config{})
	for _, c := range []struct {
		spec string
		warm bool
		want string
	}{
		{"", false, "lazy"}, {"", true, "eager"},
		{"lazy", false, "lazy"}, {"lazy", true, "eager"},
		{"eager", false, "eager"}, {"eager", true, "eager"},
		{"none", false, "none"}, {"none", true, "none"},
	} {
		cfg := &broker.LaunchConfig{KernelID: "k-1", Warm: c.warm, Argv: []string{"python"}, Env: map[string]string{}}
		if c.spec != "" {
			cfg.RMConfig = map[string]any{"spark_context": c.spec}
		}
		launch := filepath.Join(t.TempDir(), "launch.json")
		sub, err := b.Build(cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(launch)
		var got broker.LaunchConfig
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if m := got.Env["KERNELBUS_SPARK_CONTEXT"]; m != c.want {
			t.Errorf("spec mode %q, warm %v: the kernel builds its context %q, want %q", c.spec, c.warm, m, c.want)
		}
		if w := got.Env["KERNELBUS_SPARK_WARMUP"] == "1"; w != c.warm {
			t.Errorf("spec mode %q, warm %v: warm-up job %v", c.spec, c.warm, w)
		}
		// A warm kernel keeps an executor under dynamic allocation.
		if k := strings.Contains(strings.Join(sub.Args, " "), "spark.dynamicAllocation.minExecutors=1"); k != c.warm {
			t.Errorf("spec mode %q, warm %v: minExecutors=1 %v", c.spec, c.warm, k)
		}
		if c.spec != "" && cfg.RMConfig["spark_context"] != c.spec {
			t.Errorf("Build changed the spec's settings: %v", cfg.RMConfig)
		}
	}
}

// A kernel of an environment spec ships the archive the worker fetched
// (spark.yarn.dist.archives=<archive>#kbenv) and runs its python in the
// driver and the executors, whatever the site's and the client's settings
// say; the environment's resources become spark-submit's sizes.
func TestBuildEnvironment(t *testing.T) {
	b := testBackend(t, Config{SparkConf: []string{"spark.pyspark.python=/site/python"}})
	es := broker.EnvSpec{Name: "tab", Python: "3.11", RM: broker.RMYarn, Digest: "sha256-" + strings.Repeat("a", 64),
		Resources: broker.EnvResources{MemoryMB: 768, CPUs: 2, Executors: 3}}
	cfg := broker.NewLaunchConfig(es.KernelSpec(), "k-1", "alice", map[string]string{"KERNEL_EXTRA_SPARK_OPTS": "--conf spark.pyspark.python=/client/python"}, 0)
	prefix, err := b.EnvPrefix(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.EnvArchive = "/cache/.archives/" + es.Digest + ".tar.gz"
	cfg.FillEnvPrefix(prefix)
	launch := filepath.Join(t.TempDir(), "launch.json")
	sub, err := b.Build(cfg, launch)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(sub.Args, " ")
	for _, want := range []string{
		"--driver-memory 768m", "--driver-cores 2", "--num-executors 3",
		"spark.yarn.dist.archives=" + cfg.EnvArchive + "#kbenv",
		"spark.yarn.appMasterEnv.PYSPARK_PYTHON=./kbenv/bin/python",
		"spark.executorEnv.PYSPARK_PYTHON=./kbenv/bin/python",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	// The environment's python is the last word on spark.pyspark.python.
	last := ""
	for i, a := range sub.Args {
		if i > 0 && sub.Args[i-1] == "--conf" && strings.HasPrefix(a, "spark.pyspark.python=") {
			last = a
		}
	}
	if last != "spark.pyspark.python=./kbenv/bin/python" {
		t.Errorf("the last spark.pyspark.python is %q:\n%s", last, args)
	}
	// The launcher is told the archive's folder in the container, never
	// the worker's path of the archive.
	data, _ := os.ReadFile(launch)
	var lc broker.LaunchConfig
	if err := json.Unmarshal(data, &lc); err != nil {
		t.Fatal(err)
	}
	if lc.Argv[0] != "{container_dir}/kbenv/bin/python" || lc.Env["VIRTUAL_ENV"] != "{container_dir}/kbenv" || strings.Contains(string(data), "/cache/") {
		t.Errorf("launch config: argv %v, env %v\n%s", lc.Argv, lc.Env, data)
	}
	cfg.EnvArchive = "/cache/archive.zip"
	if _, err := b.Build(cfg, launch); err == nil {
		t.Error("an archive YARN would not unpack was shipped")
	}
}

// testBackend is a Backend of cfg for tests that build commands: a stub
// launcher, a resource manager at http://rm:8088 and Spark in /opt/spark.
func testBackend(tb testing.TB, cfg Config) *Backend {
	tb.Helper()
	cfg.Launcher = filepath.Join(tb.TempDir(), "kernelbus-launcher")
	if err := os.WriteFile(cfg.Launcher, []byte("#!/bin/sh\n"), 0o755); err != nil {
		tb.Fatal(err)
	}
	cfg.Endpoint, cfg.SparkHome = "http://rm:8088", "/opt/spark"
	b, err := New(cfg, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
