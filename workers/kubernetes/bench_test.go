package kubernetes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/e2e/startbench"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/kubernetes/k8stest"
)

// warmPool is the size of each warm pool of the start benchmarks.
const warmPool = 2

// TestBenchKubernetesStart measures kernel starts through `kernelbus serve`
// on the test control plane: ipykernel pods (the node agent runs each
// pod's launcher) started cold and taken from a warm pool of the worker,
// and local ipykernel kernels cold and warm from serve's own pool, for
// comparison. With KB_RM_BENCH=1 (`task bench:rm`) it is a benchmark that
// writes its section of KB_RM_BENCH_OUT; in test:k8s it runs one round as
// a test: a request that names a user takes a warm pod of the shared
// namespace (never a cold start beside an idle pool), a real client runs a
// cell on it, and the pool is refilled before the next start.
func TestBenchKubernetesStart(t *testing.T) {
	kb, launcher, py := jstest.NeedEnv(t, "KERNELBUS_BIN", k8stest.EnvRequired, "task test:k8s sets it"), jstest.NeedEnv(t, "KERNELBUS_LAUNCHER_BIN", k8stest.EnvRequired, "task test:k8s sets it"), jstest.NeedEnv(t, "KB_TEST_PYTHON", k8stest.EnvRequired, "task test:k8s sets it")
	n, err := startbench.N()
	if err != nil {
		t.Fatal(err)
	}
	info := startbench.Info{Key: "kubernetes", Title: "Kubernetes (test control plane) and local, through `kernelbus serve`",
		Began: time.Now(), LoadBefore: startbench.LoadAvg()}
	cl := k8stest.Start(t)
	startAgent(t, context.Background(), cl)

	// Each warm pool has its own spec, a copy of the cold one under
	// another name, so that cold starts stay cold while the pools are up.
	specs := writeSpecs(t, py)
	copySpec(t, specs, "python3-k8s", "python3-k8s-warm")
	local, _ := json.Marshal(map[string]any{"argv": []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		"display_name": "Python (local)", "language": "python"})
	for _, name := range []string{"python3-local", "python3-local-warm"} {
		writeFile(t, filepath.Join(specs, name, "kernel.json"), local)
	}
	warm := func(spec string) string { return fmt.Sprintf("%s=%d,idle=1h", spec, warmPool) }
	gw := startServe(t, kb, launcher, specs, "--warm", warm("python3-local-warm"))
	startProc(t, "worker", kb, append(gw.workerArgs(specs, launcher, cl.Kubeconfig), "--warm", warm("python3-k8s-warm"))...)
	c := &client.Client{BaseURL: gw.url}
	pools := map[string]int{"local/python3-local-warm": warmPool, "kubernetes/python3-k8s-warm": warmPool}

	rows := []startbench.Row{
		{RM: "kubernetes", Mode: "cold", Spec: "python3-k8s"},
		{RM: "kubernetes", Mode: "warm", Spec: "python3-k8s-warm"},
		{RM: "local", Mode: "cold", Spec: "python3-local"},
		{RM: "local", Mode: "warm", Spec: "python3-local-warm"},
	}
	// The client names a user, as an authenticated one always does.
	startbench.Run(t, c, rows, pools, map[string]string{"KERNEL_USERNAME": "bench"}, n)
	info.Setup = fmt.Sprintf("`kernelbus serve` (embedded NATS, front-end, local workers, `--warm python3-local-warm=%d`) and `kernelbus worker --rm kubernetes --warm python3-k8s-warm=%d` "+
		"(shared namespace `default`) as processes; a real etcd, kube-apiserver, controller-manager and scheduler (k8stest), and the test node agent "+
		"(workers/kubernetes/nodeagent) in the kubelet's place: it runs each pod's launcher and ipykernel from the test image (the e2e venv) in pid and mount namespaces of its own, no container runtime, so a pod's image pull and container creation are not part of these times.", warmPool, warmPool)
	info.Order = fmt.Sprintf("%d rounds after one unmeasured round; each round starts kubernetes cold, kubernetes warm, local cold, local warm, each with KERNEL_USERNAME=bench, "+
		"each kernel deleted after its first result. Before every start, cold or warm, the bench waits until both warm pools have %d running kernels, so no refill runs beside a measured start.", n, warmPool)

	startbench.Finish(t, info, rows)
}

// copySpec copies kernelspec folder from to a new spec named to.
func copySpec(t *testing.T, dir, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, from))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, to, e.Name()), b)
	}
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
