package yarn

import (
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
	launcher := filepath.Join(t.TempDir(), "kernelbus-launcher")
	if err := os.WriteFile(launcher, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KB_TEST_WORKER_ONLY", "worker-secret")
	t.Setenv("PATH", "/usr/bin:/bin")
	b, err := New(Config{Launcher: launcher, Endpoint: "http://rm:8088", SparkHome: "/opt/spark"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
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
