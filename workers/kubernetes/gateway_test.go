package kubernetes_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/e2e/attack"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/envs"
	kbk8s "github.com/kernelbus/kernelbus/workers/kubernetes"
	"github.com/kernelbus/kernelbus/workers/kubernetes/k8stest"
	"github.com/kernelbus/kernelbus/workers/kubernetes/nodeagent"
	"github.com/kernelbus/kernelbus/workers/workerstest"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	toolswatch "k8s.io/client-go/tools/watch"
)

const testImage = "kernelbus/kernel-python:test"

// TestGatewayOnKubernetes drives kernels through the real gateway
// (`kernelbus serve`) and a separate `kernelbus worker --rm kubernetes`
// against a real kube-apiserver, controller-manager and scheduler, with
// the test node agent running each pod's launcher and a real ipykernel.
func TestGatewayOnKubernetes(t *testing.T) {
	kb, launcher, py := jstest.NeedEnv(t, "KERNELBUS_BIN", k8stest.EnvRequired, "task test:k8s sets it"), jstest.NeedEnv(t, "KERNELBUS_LAUNCHER_BIN", k8stest.EnvRequired, "task test:k8s sets it"), jstest.NeedEnv(t, "KB_TEST_PYTHON", k8stest.EnvRequired, "task test:k8s sets it")
	k8stest.HostPaths(t, map[string]string{"KERNELBUS_LAUNCHER_BIN": launcher, "KB_TEST_PYTHON": py})
	t0 := time.Now()
	cl := k8stest.Start(t)
	t.Logf("control plane ready in %s", time.Since(t0).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()

	agent := startAgent(t, ctx, cl)

	specs := writeSpecs(t, py)
	gw := startServe(t, kb, launcher, specs)
	workerArgs := append(gw.workerArgs(specs, launcher, cl.Kubeconfig), "--k8s-per-user-namespaces")
	worker := startProc(t, "worker", kb, workerArgs...)
	c := &client.Client{BaseURL: gw.url}
	cs := cl.Client

	t.Run("backend contract", func(t *testing.T) {
		var r workers.Registry
		kbk8s.Register(&r, zerolog.Nop())
		be, err := r.New(kbk8s.Name, workers.BackendConfig{LauncherPath: launcher, Options: map[string]string{"kubeconfig": cl.Kubeconfig}})
		if err != nil {
			t.Fatal(err)
		}
		workerstest.Harness{Backend: be}.Run(t)
	})

	t.Run("lifecycle", func(t *testing.T) {
		var latencies []time.Duration
		var ids []string
		for i := range 3 {
			start := time.Now()
			m, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": "Alice"})
			if err != nil {
				t.Fatalf("start %d: %v", i, err)
			}
			latencies = append(latencies, time.Since(start))
			ids = append(ids, m.ID)
		}
		t.Logf("start latency on Kubernetes (POST /api/kernels until the kernel answered kernel_info; first one creates the user's namespace): %v", latencies)
		id := ids[0]
		ns, name := "kb-alice", kbk8s.PodName(id)

		pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkPod(t, pod, id, launcher)
		// The overview (GET /api/cluster) shows the node and the kernel
		// pods, as the worker reports them in its presence.
		jstest.WaitForNil(t, 60*time.Second, func() error {
			reps, err := (&client.Client{BaseURL: gw.url}).ClusterReports(ctx, "kubernetes")
			if err != nil {
				return err
			}
			if len(reps) == 0 {
				return errors.New("no kubernetes report yet")
			}
			var c struct {
				Nodes      []kbk8s.NodeUse           `json:"nodes"`
				KernelPods map[string]map[string]int `json:"kernel_pods"`
			}
			if err := json.Unmarshal(reps[0], &c); err != nil {
				return err
			}
			if len(c.Nodes) != 1 || c.Nodes[0].Name != "node-1" || c.Nodes[0].AllocatableCPU != "4" || c.Nodes[0].KernelPods < 1 {
				return fmt.Errorf("nodes: %+v", c.Nodes)
			}
			if c.KernelPods[ns]["Running"] < 1 {
				return fmt.Errorf("kernel pods: %+v", c.KernelPods)
			}
			return nil
		})
		sec, err := cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != pod.UID {
			t.Errorf("the launch-config secret is not owned by the pod: %+v", sec.OwnerReferences)
		}
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "kernel", metav1.GetOptions{}); err != nil {
			t.Errorf("per-user service account: %v", err)
		}
		rb, err := cs.RbacV1().RoleBindings(ns).Get(ctx, "kernelbus-kernel", metav1.GetOptions{})
		if err != nil || rb.RoleRef.Name != "edit" {
			t.Errorf("per-user role binding: %v %+v", err, rb)
		}

		conn, err := c.Connect(ctx, id, client.NewID(), true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r, err := conn.Execute("import os\ntry:\n print(os.environ['KERNEL_POD_NAME'], os.environ['KERNEL_NAMESPACE'], 6*7)\nexcept Exception as e:\n print(repr(e), sorted(os.environ))", 30*time.Second)
		if err != nil || r.Status != "ok" {
			t.Fatalf("execute: %v %+v", err, r)
		}
		if got, want := strings.TrimSpace(r.Stdout.String()), name+" "+ns+" 42"; got != want {
			t.Fatalf("kernel printed %q, want %q", got, want)
		}

		// Interrupt a busy kernel: the launcher in the pod signals it.
		msgID, err := conn.SendExecute("import time; print('sleeping', flush=True); time.sleep(120)")
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.AwaitOutput(msgID, "sleeping", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.Interrupt(ctx, id); err != nil {
			t.Fatalf("interrupt: %v", err)
		}
		r, err = conn.Await(msgID, 30*time.Second)
		if err != nil || r.Status != "error" {
			t.Fatalf("interrupted execute: %v %+v", err, r)
		}

		// Restart in place: same pod, a fresh interpreter.
		if _, err := conn.Execute("x = 1", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Restart(ctx, id); err != nil {
			t.Fatalf("restart: %v", err)
		}
		conn2, err := c.Connect(ctx, id, client.NewID(), true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn2.Close()
		r, err = conn2.Execute("print('x' in globals())", 30*time.Second)
		if err != nil || strings.TrimSpace(r.Stdout.String()) != "False" {
			t.Fatalf("after restart: %v %+v", err, r)
		}
		if p2, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil || p2.UID != pod.UID {
			t.Fatalf("restart replaced the pod: %v", err)
		}

		// Delete every kernel: pods, secrets and the user's namespace go.
		for _, id := range ids {
			if err := c.DeleteKernel(ctx, id); err != nil {
				t.Fatalf("delete %s: %v", id, err)
			}
		}
		for _, id := range ids {
			waitGone(t, ctx, cs, "pods", ns, kbk8s.PodName(id))
		}
		waitGone(t, ctx, cs, "namespaces", "", ns)
	})

	t.Run("a hostile kernel against another user's", func(t *testing.T) {
		hostileKernel(t, ctx, c, cs, gw)
	})

	t.Run("unschedulable", func(t *testing.T) {
		start := time.Now()
		_, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": "carol", "KERNEL_MEMORY": "1Ti", "KERNEL_LAUNCH_TIMEOUT": "120"})
		took := time.Since(start)
		var ae *client.APIError
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, "Insufficient memory") || !strings.Contains(ae.Message, "cannot schedule") {
			t.Fatalf("start of an unschedulable kernel: got %v, want the scheduler's reason", err)
		}
		if took > 60*time.Second {
			t.Fatalf("the unschedulable start failed after %s, not before its launch timeout", took)
		}
		t.Logf("unschedulable start failed in %s: %s", took.Round(time.Millisecond), ae.Message)
		waitGone(t, ctx, cs, "namespaces", "", "kb-carol")
	})

	t.Run("image pull error", func(t *testing.T) {
		_, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": "dave", "KERNEL_IMAGE": "nowhere/missing:1"})
		var ae *client.APIError
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, "ErrImagePull") {
			t.Fatalf("start with a missing image: got %v, want ErrImagePull", err)
		}
		waitGone(t, ctx, cs, "namespaces", "", "kb-dave")
	})

	// An environment built for Kubernetes (a small real PyPI package): the
	// pod's launcher fetches the archive its kernel's trusted handle names
	// from the workers over its own bus credentials, unpacks it in the pod
	// and runs its python.
	t.Run("environment", func(t *testing.T) {
		pythons := envs.DetectPythons(context.Background())
		if len(pythons) == 0 {
			t.Skip("no python3 with venv on PATH")
		}
		ectx, ecancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer ecancel()
		if _, err := c.CreateEnvironment(ectx, map[string]any{"name": "tabk", "python": envs.Versions(pythons)[0], "rm": "kubernetes", "pip": []string{"tabulate"}}); err != nil {
			t.Fatalf("create: %v", err)
		}
		var e *client.Environment
		jstest.WaitFor(t, 8*time.Minute, "the environment's build", func() bool {
			var err error
			e, err = c.Environment(ectx, "tabk")
			return err == nil && (e.State == "ready" || e.State == "failed")
		})
		if e.State != "ready" {
			t.Fatalf("build: %+v", e)
		}
		m, err := c.StartKernel(ectx, "tabk", nil)
		if err != nil {
			t.Fatalf("start a kernel of the environment: %v", err)
		}
		pods, err := cs.CoreV1().Pods("").List(ectx, metav1.ListOptions{LabelSelector: kbk8s.LabelKernelID + "=" + m.ID})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("the kernel's pod: %v %v", pods, err)
		}
		defer func() {
			_ = c.DeleteKernel(ectx, m.ID)
			waitGone(t, ectx, cs, "pods", pods.Items[0].Namespace, pods.Items[0].Name)
		}()
		conn, err := c.Connect(ectx, m.ID, client.NewID(), true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r, err := conn.Execute("import sys, os, tabulate\nprint(sys.prefix)\nprint(os.environ.get('KERNEL_POD_NAME'))\nprint(tabulate.tabulate([[1, 2]], tablefmt='plain'))", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		out := r.Stdout.String()
		if r.Status != "ok" || !strings.Contains(out, "kernelbus-envs/"+e.Digest) || !strings.Contains(out, kbk8s.PodName(m.ID)) || !strings.Contains(out, "1  2") {
			t.Fatalf("kernel output %q (%s); want the pod's unpacked environment, the pod's name and a table", out, r.Status)
		}
	})

	t.Run("pod deleted behind the gateway's back, after a worker restart", func(t *testing.T) {
		m, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": "bob"})
		if err != nil {
			t.Fatal(err)
		}
		ns, name := "kb-bob", kbk8s.PodName(m.ID)
		// A new worker adopts the pod by its labels.
		worker.stop(t)
		worker = startProc(t, "worker", kb, workerArgs...)
		// The pod goes once the new worker follows pods: on a loaded
		// machine the launcher's own report (killed by a signal) would
		// otherwise come first.
		worker.waitLog(t, "following kernel pods")

		if err := cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		var last *client.Model
		jstest.WaitForNil(t, 60*time.Second, func() error {
			km, err := c.Kernel(ctx, m.ID)
			if err != nil {
				return err
			}
			last = km
			if km.ExecutionState != "dead" {
				return fmt.Errorf("kernel is %s", km.ExecutionState)
			}
			return nil
		})
		if !strings.Contains(last.Reason, "deleted outside kernelbus") {
			t.Fatalf("dead kernel's reason %q does not say its pod was deleted", last.Reason)
		}
		waitGone(t, ctx, cs, "pods", ns, name)
		waitGone(t, ctx, cs, "namespaces", "", ns)
		_ = c.DeleteKernel(ctx, m.ID)
	})

	if left := agent.Running(); len(left) > 0 {
		t.Errorf("kernel processes still running: %v", left)
	}
}

// viewCell is what kernel A sees of the node from inside its pod: its
// uid, the processes in its /proc (with their command lines) and /tmp;
// and what it gets trying B's connection file (%[1]q, B's path in B's
// pod) and B's kernel process (host pid %[2]d): read its environment,
// signal it; and the gateway's data folder (%[3]q: its nats.conn, role
// credentials, stream files). Each try is "ok" or the error's type.
const viewCell = attack.TryIt + `procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            procs[p] = open("/proc/%%s/cmdline" %% p, "rb").read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except Exception as e:
            procs[p] = type(e).__name__
tryit("read B's connection file", lambda: open(%[1]q).read())
tryit("list B's connection folder", lambda: os.listdir(os.path.dirname(%[1]q)))
tryit("read B's environ", lambda: open("/proc/%[2]d/environ").read())
tryit("signal 0 B", lambda: os.kill(%[2]d, 0))
tryit("list the gateway's data folder", lambda: os.listdir(%[3]q))
tryit("read nats.conn", lambda: open(%[3]q + "/nats.conn").read())
tryit("read admin creds", lambda: open(%[3]q + "/auth/admin.creds").read())
print("VIEW" + json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "procs": procs, "tmp": os.listdir("/tmp"), "tries": tries}))
`

// hostileKernel: two users' kernels A and B on the Kubernetes pool, each
// in its user's namespace. Their pods run as a non-root user (the
// backend's default) in pid and mount namespaces of their own (the node
// agent's, as a kubelet's): code in A sees only its own pod's processes
// and /tmp, not B's kernel or connection file, and what it sends to B's
// ZMQ ports (the stand-in's pods share the host's network) runs nothing
// without B's key. It then reads everything it can (environments, /proc,
// its launcher's files and memory) and the test tries every credential
// found, and A's own launcher credentials, with a real NATS client against
// B: every attempt is denied (attack.RunAll), and B ran nothing.
func hostileKernel(t *testing.T, ctx context.Context, c *client.Client, cs k8s.Interface, gw gateway) {
	start := func(user string) (string, *client.Conn) {
		m, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": user})
		if err != nil {
			t.Fatalf("%s's kernel: %v", user, err)
		}
		t.Cleanup(func() {
			_ = c.DeleteKernel(context.Background(), m.ID)
			waitGone(t, context.Background(), cs, "pods", "kb-"+user, kbk8s.PodName(m.ID))
		})
		conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		pod, err := cs.CoreV1().Pods("kb-"+user).Get(ctx, kbk8s.PodName(m.ID), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sc := pod.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser == 0 || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Fatalf("%s's kernel pod has no non-root user: %+v", user, sc)
		}
		return m.ID, conn
	}
	a, connA := start("eve")
	b, connB := start("frank")
	if r, err := connB.Execute("secret = 'frank-' + str(6*7); print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "frank-42" {
		t.Fatalf("B: %+v %v", r, err)
	}
	// B's kernel process and connection file, as the host sees them (the
	// file is in B's own /tmp: the host reads it through B's /proc root).
	pidB, connFileB := attack.KernelProc(t, b)
	var portsB struct {
		Shell   int `json:"shell_port"`
		Control int `json:"control_port"`
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", pidB, connFileB)); err != nil || json.Unmarshal(data, &portsB) != nil || portsB.Shell == 0 {
		t.Fatalf("B's connection file %s: %v", connFileB, err)
	}

	r, err := connA.Execute(fmt.Sprintf(viewCell, connFileB, pidB, filepath.Dir(gw.natsConn)), time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the view cell: %+v %v", r, err)
	}
	out := r.Stdout.String()
	i := strings.Index(out, "VIEW")
	var view struct {
		UID, GID int
		Groups   []int
		Procs    map[string]string
		Tmp      []string
		Tries    map[string]string
	}
	if i < 0 || json.Unmarshal([]byte(strings.TrimSpace(out[i+len("VIEW"):])), &view) != nil {
		t.Fatalf("the view cell printed %q", out)
	}
	t.Logf("kernel A's view of the node: uid %d gid %d groups %v, processes %v, /tmp %v; against B: %v", view.UID, view.GID, view.Groups, view.Procs, view.Tmp, view.Tries)
	if view.UID != 1000 || view.GID != 100 {
		t.Errorf("kernel A runs as %d:%d, want the backend's default 1000:100", view.UID, view.GID)
	}
	for pid, cmd := range view.Procs {
		if strings.Contains(cmd, b) || strings.Contains(cmd, "kernelbus serve") || strings.Contains(cmd, "kube-apiserver") {
			t.Errorf("kernel A sees process %s %q outside its pod", pid, cmd)
		}
	}
	if len(view.Procs) > 8 {
		t.Errorf("kernel A sees %d processes: its pod has a launcher and a kernel", len(view.Procs))
	}
	for _, f := range view.Tmp {
		if strings.Contains(f, b) {
			t.Errorf("kernel A sees B's %s in /tmp", f)
		}
	}
	// Not there at all in A's pod (B's pid, were it one of A's own, would
	// be A's process, not B's).
	want := map[string]string{"read B's connection file": "FileNotFoundError", "list B's connection folder": "FileNotFoundError",
		"read B's environ": "FileNotFoundError", "signal 0 B": "ProcessLookupError"}
	if _, mine := view.Procs[strconv.Itoa(pidB)]; mine {
		delete(want, "read B's environ")
		delete(want, "signal 0 B")
	}
	for k, w := range want {
		if view.Tries[k] != w {
			t.Errorf("kernel A: %s: got %q, want %s", k, view.Tries[k], w)
		}
	}
	// The data folder is in the test's /tmp (not in A's pod) or, with
	// another TMPDIR, closed to A (mode 0700).
	for _, k := range []string{"list the gateway's data folder", "read nats.conn", "read admin creds"} {
		if v := view.Tries[k]; v != "FileNotFoundError" && v != "PermissionError" {
			t.Errorf("kernel A: %s: got %q, want FileNotFoundError or PermissionError", k, v)
		}
	}

	// B's ZMQ ports, without B's key.
	selfMark := attack.PwnedFile(a) + "-self"
	tried := attack.ZMQ(t, connA, attack.PwnedFile(b), selfMark)
	if !tried[portsB.Shell] || !tried[portsB.Control] {
		t.Fatalf("kernel A's ZMQ attempts missed B's shell and control ports %d, %d (tried %v)", portsB.Shell, portsB.Control, tried)
	}
	jstest.WaitForNil(t, time.Minute, func() error {
		r, err := connA.Execute(fmt.Sprintf("import os; print(os.path.exists(%q))", selfMark), time.Minute)
		if err != nil {
			return err
		}
		if strings.TrimSpace(r.Stdout.String()) != "True" {
			return errors.New("the control: A's message to its own shell port has not run")
		}
		return nil
	})

	// Bus credentials, wherever A can find them.
	l := attack.Steal(t, connA)
	cf, err := access.ReadConnFile(gw.natsConn)
	if err != nil {
		t.Fatal(err)
	}
	attack.RunAll(t, cf.URL, cf.CA, append(l.Creds(), attack.Minted(t, filepath.Join(cf.AuthDir, access.MinterFileName), a)), a, b, nil)

	// B is untouched: alive, its state, nothing run.
	if k, err := c.Kernel(ctx, b); err != nil || k.ExecutionState == "dead" {
		t.Fatalf("B's record after the attacks: %+v %v", k, err)
	}
	r, err = connB.Execute(fmt.Sprintf("import os; print(secret, os.path.exists(%q), 'pwned_by_a' in globals())", attack.PwnedFile(b)), time.Minute)
	if err != nil || strings.TrimSpace(r.Stdout.String()) != "frank-42 False False" {
		t.Fatalf("B after the attacks (want its secret, no pwned file, no code run): %+v %v", r, err)
	}
}

func checkPod(t *testing.T, pod *corev1.Pod, id, launcher string) {
	t.Helper()
	if pod.Labels["kernel_id"] != id || pod.Labels["component"] != "kernel" || pod.Labels["app"] != "kernelbus-kernel" {
		t.Errorf("pod labels %v", pod.Labels)
	}
	if pod.Annotations[kbk8s.AnnotationUser] != "Alice" {
		t.Errorf("pod annotations %v", pod.Annotations)
	}
	if pod.Spec.ServiceAccountName != "kernel" || pod.Spec.NodeName != "node-1" {
		t.Errorf("pod service account %q node %q", pod.Spec.ServiceAccountName, pod.Spec.NodeName)
	}
	ctr := pod.Spec.Containers[0]
	if ctr.Image != testImage || len(ctr.Command) != 1 || ctr.Command[0] != launcher {
		t.Errorf("container image %q command %v", ctr.Image, ctr.Command)
	}
	if q := ctr.Resources.Requests[corev1.ResourceMemory]; q.String() != "128Mi" {
		t.Errorf("memory request from the pod template: %v", ctr.Resources.Requests)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range ctr.Env {
		env[e.Name] = e
	}
	if env["KERNEL_ID"].Value != id || env["SPEC_VAR"].Value != "from-spec" {
		t.Errorf("kernel env missing from the pod: %v", ctr.Env)
	}
	lc := env["KB_LAUNCH_CONFIG"]
	if lc.Value != "" || lc.ValueFrom == nil || lc.ValueFrom.SecretKeyRef == nil {
		t.Errorf("the launch config (with the bus credentials) must come from a secret: %+v", lc)
	}
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
		t.Errorf("pod status %s ip %q", pod.Status.Phase, pod.Status.PodIP)
	}
}

// writeSpecs makes a JEG-style kernelspec for the venv's ipykernel, with
// a pod template beside it.
func writeSpecs(t *testing.T, py string) string {
	dir := filepath.Join(t.TempDir(), "kernels")
	spec := filepath.Join(dir, "python3-k8s")
	if err := os.MkdirAll(spec, 0o755); err != nil {
		t.Fatal(err)
	}
	kj, _ := json.Marshal(map[string]any{
		"argv": []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"}, "display_name": "Python on Kubernetes", "language": "python",
		"env": map[string]string{"SPEC_VAR": "from-spec"},
		"metadata": map[string]any{"process_proxy": map[string]any{
			"class_name": "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy",
			"config":     map[string]any{"image_name": testImage},
		}},
	})
	tmpl := `apiVersion: v1
kind: Pod
metadata:
  labels: {app: kernelbus-kernel}
spec:
  containers:
    - name: kernel
      resources:
        requests: {cpu: 100m, memory: 128Mi}
`
	for f, data := range map[string][]byte{"kernel.json": kj, kbk8s.TemplateFile: []byte(tmpl)} {
		if err := os.WriteFile(filepath.Join(spec, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startAgent runs the test node agent (node-1, 4 CPUs, 8Gi, the test
// image) until the test ends.
func startAgent(t *testing.T, ctx context.Context, cl *k8stest.Cluster) *nodeagent.Agent {
	t.Helper()
	agent, err := nodeagent.Start(ctx, nodeagent.Config{Client: cl.Client, Node: "node-1", CPU: "4", Memory: "8Gi",
		Images: []string{testImage}, LogDir: cl.Dir, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	return agent
}

type gateway struct {
	url, natsConn string
}

// workerArgs is `kernelbus worker --rm kubernetes` on g's bus, with the
// test image and a short stop grace.
func (g gateway) workerArgs(specs, launcher, kubeconfig string) []string {
	return []string{"worker", "--rm", "kubernetes", "--nats-conn", g.natsConn, "--kernelspec-dir", specs,
		"--launcher", launcher, "--kubeconfig", kubeconfig,
		"--k8s-launcher-path", launcher, "--k8s-opt", "allow_kernel_image=true", "--k8s-opt", "stop_grace=5s", "--k8s-opt", "image=" + testImage}
}

// startServe runs `kernelbus serve` (with a local pool; extra are more
// flags) on port 0, without authentication; its "kernelbus serving" log
// line (info level for it) says where.
func startServe(t *testing.T, kb, launcher, specs string, extra ...string) gateway {
	data := t.TempDir()
	p := startProc(t, "serve", kb, append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--kernelspec-dir", specs, "--launcher", launcher, "--log-level", "info", "--insecure-no-auth", "--env-rms", "local,kubernetes"}, extra...)...)
	var g gateway
	jstest.WaitForNil(t, 30*time.Second, func() error {
		u, err := jstest.LogField(p.log, 0, "kernelbus serving", "url")
		g.url = strings.TrimSuffix(u, "/")
		return err
	})
	// serve writes nats.conn (its NATS URL and role credentials) once its
	// NATS is up; the worker connects with the kubernetes workers' role.
	g.natsConn = filepath.Join(data, "nats.conn")
	jstest.WaitForNil(t, 30*time.Second, func() error {
		c, err := os.ReadFile(g.natsConn)
		if err != nil {
			return err
		}
		if !strings.Contains(string(c), "auth=") {
			return errors.New("nats.conn incomplete")
		}
		return nil
	})
	c := &client.Client{BaseURL: g.url}
	jstest.WaitForNil(t, 30*time.Second, func() error {
		_, err := c.Kernels(context.Background())
		return err
	})
	return g
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// waitLog waits until the process has logged what.
func (p *proc) waitLog(t *testing.T, what string) {
	t.Helper()
	jstest.WaitFor(t, time.Minute, fmt.Sprintf("%s to log %q", p.cmd.Path, what), func() bool {
		b, _ := os.ReadFile(p.log)
		return strings.Contains(string(b), what)
	})
}

// startProc runs a kernelbus part; the test's end (or its own death) stops it.
func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logf.Name()}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("--- %s log:\n%s", name, jstest.Tail(string(b), 60))
			}
		}
		logf.Close()
	})
	return p
}

func (p *proc) stop(t *testing.T) {
	if jstest.Stop(-p.cmd.Process.Pid, p.done, 20*time.Second) {
		t.Errorf("%s ignored SIGTERM for 20s", p.cmd.Path)
	}
}

// waitGone watches kind/name until the API server deletes it.
func waitGone(t *testing.T, ctx context.Context, cs k8s.Interface, resource, ns, name string) {
	t.Helper()
	var obj runtime.Object
	switch resource {
	case "pods":
		obj = &corev1.Pod{}
	case "namespaces":
		obj = &corev1.Namespace{}
	}
	lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), resource, ns, fields.OneTermEqualSelector("metadata.name", name))
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, err := toolswatch.UntilWithSync(wctx, lw, obj, func(store cache.Store) (bool, error) {
		return len(store.List()) == 0, nil
	}, func(e watch.Event) (bool, error) {
		return e.Type == watch.Deleted, nil
	})
	if err != nil {
		var left []string
		if resource == "namespaces" {
			if n, gerr := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); gerr == nil {
				left = append(left, fmt.Sprintf("phase %s, conditions %+v", n.Status.Phase, n.Status.Conditions))
			} else if apierrors.IsNotFound(gerr) {
				return
			}
		}
		sort.Strings(left)
		t.Fatalf("%s %s/%s is still there: %v %v", resource, ns, name, err, left)
	}
}
