package helm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/deploy/images/ociimage"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	kbk8s "github.com/kernelbus/kernelbus/workers/kubernetes"
	"github.com/kernelbus/kernelbus/workers/kubernetes/k8stest"
	"github.com/kernelbus/kernelbus/workers/kubernetes/nodeagent"
	"github.com/rs/zerolog"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

const (
	gwImage     = "kernelbus/kernelbus:test"
	kernelImage = "kernelbus/kernel-python:test"
	gwNamespace = "kernelbus"
	natsImage   = "kernelbus-test/nats-server:1"
)

// TestChartInstall installs the chart with Helm onto a real API server,
// controller-manager and scheduler. The node agent runs the front-end and
// worker pods chrooted into the kernelbus image that deploy/images built
// (its static binaries as its non-root user, the chart's Secrets, ConfigMap
// and service account token written where the pod mounts them); the
// worker's kernel pods run the host's launcher and ipykernel as in
// test:k8s. The bus is an "existing cluster": a NATS in operator mode
// whose role credentials the chart gets from a Secret, made as an operator
// makes it from `kernelbus nats-auth init`.
func TestChartInstall(t *testing.T) {
	helmBin(t)
	launcher, py := jstest.NeedEnv(t, "KERNELBUS_LAUNCHER_BIN", EnvHelmRequired, "task test:helm sets it"), jstest.NeedEnv(t, "KB_TEST_PYTHON", EnvHelmRequired, "task test:helm sets it")
	k8stest.HostPaths(t, map[string]string{"KERNELBUS_LAUNCHER_BIN": launcher, "KB_TEST_PYTHON": py})
	if os.Geteuid() != 0 {
		t.Skip("the node agent needs root to chroot pods into their image")
	}
	cl := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	work := t.TempDir()
	cs := cl.Client

	// The image, as `task images` builds it, unpacked as a node would.
	t0 := time.Now()
	root := filepath.Join(chartDir(), "..", "..", "..")
	static := filepath.Join(work, "static")
	run(t, root, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-o", static+"/", "./cmd/kernelbus", "./cmd/kernelbus-launcher")
	layouts := filepath.Join(work, "images")
	imgArgs := []string{"run", "./deploy/images", "--kernelbus", filepath.Join(static, "kernelbus"),
		"--launcher", filepath.Join(static, "kernelbus-launcher"), "--tag", "test", "--out", layouts}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err != nil {
		imgArgs = append(imgArgs, "--ca-certs=") // nothing here needs them: the test's CAs are private
	}
	run(t, root, nil, "go", imgArgs...)
	rootfs := filepath.Join(work, "rootfs")
	icfg, err := ociimage.Unpack(filepath.Join(layouts, "kernelbus"), "test", rootfs)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := imageUser(t, icfg.User)
	// The chart's NATS image: nats-server at go.mod's version, static, as
	// the only file of a root (the agent adds /etc/hosts).
	natsRoot := filepath.Join(work, "nats-root")
	run(t, root, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-o", filepath.Join(natsRoot, "usr", "local", "bin", "nats-server"), "github.com/nats-io/nats-server/v2")
	t.Logf("images built and unpacked in %s", time.Since(t0).Round(time.Millisecond))

	// The bus and its credentials Secret.
	bus := jstest.Start(t, jstest.Options{Auth: true, TLS: true})
	createNamespaces(t, ctx, cs, gwNamespace)
	authData := authSecret(t, bus.Auth, filepath.Join(work, "auth"))
	token := randomHex(16)
	// The front-end's HTTPS certificate, from a private CA the client trusts.
	feTLS, err := access.WriteTLS(filepath.Join(work, "fe-tls"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	feCert, _ := os.ReadFile(feTLS.Cert)
	feKey, _ := os.ReadFile(feTLS.Key)
	feCA, _ := os.ReadFile(feTLS.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(feCA)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for name, data := range map[string]map[string][]byte{"kernelbus-nats-auth": authData, "gw-token": {"token": []byte(token)},
		"nats-ca": {"ca.crt": bus.CA}, "gw-tls": {"tls.crt": feCert, "tls.key": feKey}} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}
		if name == "gw-tls" {
			sec.Type = corev1.SecretTypeTLS
		}
		if _, err := cs.CoreV1().Secrets(gwNamespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	api, err := url.Parse(cl.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := nodeagent.Start(ctx, nodeagent.Config{Client: cs, Node: "node-1", CPU: "8", Memory: "16Gi",
		Images: []string{gwImage, kernelImage, natsImage}, LogDir: cl.Dir, KubernetesService: api.Host, PodsDir: filepath.Join(work, "pods"),
		Rootfs: map[string]nodeagent.Rootfs{gwImage: {Dir: rootfs, Entrypoint: icfg.Entrypoint, Cmd: icfg.Cmd, Env: icfg.Env,
			WorkingDir: icfg.WorkingDir, UID: uid, GID: gid},
			natsImage: {Dir: natsRoot, Entrypoint: []string{"/usr/local/bin/nats-server"}}},
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(cl.Dir, gwNamespace+"_*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("--- %s:\n%s", filepath.Base(l), jstest.Tail(string(b), 40))
			}
		}
	})

	// Every pod shares this machine's network: free ports for the listeners.
	kernelJSON := k8sKernelJSON(py)
	ports, took := helmInstall(t, cl, "kb", gwNamespace, 2, func(ports []int) map[string]any {
		fePort, metricsPort := ports[0], ports[1]
		return map[string]any{
			"image": map[string]any{"repository": "kernelbus/kernelbus", "tag": "test"},
			"nats":  map[string]any{"url": bus.URL, "caSecret": "nats-ca"},
			"frontend": map[string]any{"replicas": 1, "port": fePort, "tokenSecret": map[string]any{"name": "gw-token", "key": "token"},
				"tls":       map[string]any{"secretName": "gw-tls"},
				"extraArgs": []string{"--launch-timeout=90s"}},
			"kernelspecs": map[string]any{"python3-k8s": map[string]string{
				"kernel.json": string(kernelJSON),
				kbk8s.TemplateFile: "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {app: kernelbus-kernel}\nspec:\n  containers:\n    - name: kernel\n" +
					"      resources:\n        requests: {cpu: 100m, memory: 128Mi}\n",
			}},
			"workers": []any{map[string]any{"rm": "kubernetes", "replicas": 1, "metricsPort": metricsPort, "logLevel": "debug",
				"kubernetes": map[string]any{"perUserNamespaces": true, "launcherPath": launcher, "opts": []string{"stop_grace=5s"}}}},
		}
	})
	t.Logf("helm install --wait took %s", took)
	fePort := ports[0]

	// --wait waited for the pods' readiness probes (/readyz over HTTPS for
	// the front-end): the front-end answers now.
	base := fmt.Sprintf("https://127.0.0.1:%d", fePort)
	if err := httpStatus(hc, base+"/readyz", "", 200); err != nil {
		t.Fatal(err)
	}
	if err := httpStatus(http.DefaultClient, "http"+strings.TrimPrefix(base, "https")+"/readyz", "", 200); err == nil {
		t.Error("the front-end answers plain HTTP though the chart gave it a certificate")
	}

	t.Run("pods run the image", func(t *testing.T) {
		pods, err := cs.CoreV1().Pods(gwNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, p := range pods.Items {
			comp := p.Labels["app.kubernetes.io/component"]
			if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
				t.Errorf("pod %s is not running: %+v", p.Name, p.Status)
				continue
			}
			pid := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "local://")
			rootLink, err := os.Readlink("/proc/" + pid + "/root")
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(work, "pods", string(p.UID), "root"); rootLink != want {
				t.Errorf("%s runs in %s, want its image root %s", p.Name, rootLink, want)
			}
			status, _ := os.ReadFile("/proc/" + pid + "/status")
			if !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t", uid)) {
				t.Errorf("%s does not run as the image's user %d", p.Name, uid)
			}
			seen[comp] = true
		}
		if !seen["frontend"] || !seen["worker-kubernetes"] {
			t.Errorf("pods seen: %v", seen)
		}
	})

	t.Run("the API wants the token from the Secret", func(t *testing.T) {
		if err := httpStatus(hc, base+"/api/kernels", "", http.StatusUnauthorized); err != nil {
			if err2 := httpStatus(hc, base+"/api/kernels", "", http.StatusForbidden); err2 != nil {
				t.Error(err)
			}
		}
		if err := httpStatus(hc, base+"/api/kernels", "wrong", http.StatusUnauthorized); err != nil {
			if err2 := httpStatus(hc, base+"/api/kernels", "wrong", http.StatusForbidden); err2 != nil {
				t.Error(err)
			}
		}
		if err := httpStatus(hc, base+"/api/kernels", token, 200); err != nil {
			t.Error(err)
		}
	})

	t.Run("the worker's RBAC", func(t *testing.T) {
		user := "system:serviceaccount:" + gwNamespace + ":kb-kernelbus-worker-kubernetes"
		for _, c := range []struct {
			attr  authzv1.ResourceAttributes
			allow bool
		}{
			{authzv1.ResourceAttributes{Namespace: "kb-alice", Verb: "create", Resource: "pods"}, true},
			{authzv1.ResourceAttributes{Verb: "create", Resource: "namespaces"}, true},
			{authzv1.ResourceAttributes{Verb: "bind", Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Name: "edit"}, true},
			// No escalation: it may bind the kernels' role only.
			{authzv1.ResourceAttributes{Verb: "bind", Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Name: "cluster-admin"}, false},
			{authzv1.ResourceAttributes{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"}, false},
			{authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "get", Resource: "configmaps"}, false},
			{authzv1.ResourceAttributes{Verb: "create", Group: "apps", Resource: "deployments", Namespace: gwNamespace}, false},
		} {
			r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + gwNamespace}, ResourceAttributes: &c.attr}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != c.allow {
				t.Errorf("worker %s %s/%s %s in %q: allowed %v, want %v", c.attr.Verb, c.attr.Group, c.attr.Resource, c.attr.Name, c.attr.Namespace, r.Status.Allowed, c.allow)
			}
		}
		fe, err := cs.CoreV1().Pods(gwNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=frontend"})
		if err != nil || len(fe.Items) != 1 {
			t.Fatalf("front-end pods: %v %d", err, len(fe.Items))
		}
		for _, v := range fe.Items[0].Spec.Volumes {
			if v.Projected != nil {
				t.Errorf("the front-end pod has an API token volume %s", v.Name)
			}
		}
		const saDir = "var/run/secrets/kubernetes.io/serviceaccount"
		if _, err := os.Stat(filepath.Join(work, "pods", string(fe.Items[0].UID), "root", saDir)); !os.IsNotExist(err) {
			t.Errorf("the front-end's root holds a service account folder (%v)", err)
		}

		// A compromised worker, with the token its pod holds, tries to
		// make itself cluster admin.
		w, err := cs.CoreV1().Pods(gwNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=worker-kubernetes"})
		if err != nil || len(w.Items) != 1 {
			t.Fatalf("worker pods: %v %d", err, len(w.Items))
		}
		tok, err := os.ReadFile(filepath.Join(work, "pods", string(w.Items[0].UID), "root", saDir, "token"))
		if err != nil {
			t.Fatalf("the worker's token: %v", err)
		}
		wc := rest.CopyConfig(cl.Config)
		wc.BearerToken = string(tok)
		wcs, err := k8s.NewForConfig(wc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kb-mallory"}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("the worker cannot make a user namespace, its job: %v", err)
		}
		subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kb-kernelbus-worker-kubernetes", Namespace: gwNamespace}}
		admin := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"}
		_, err = wcs.RbacV1().RoleBindings("kb-mallory").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "x"}, RoleRef: admin, Subjects: subj}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the worker bound cluster-admin in a namespace it made: %v", err)
		}
		_, err = wcs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "x"}, RoleRef: admin, Subjects: subj}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the worker made a cluster role binding: %v", err)
		}
		_, err = wcs.AppsV1().Deployments(gwNamespace).Get(ctx, "kb-kernelbus-frontend", metav1.GetOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the worker read the front-end's Deployment: %v", err)
		}
		_ = cs.CoreV1().Namespaces().Delete(ctx, "kb-mallory", metav1.DeleteOptions{})
	})

	t.Run("a kernel through the installed front-end", func(t *testing.T) {
		c := &client.Client{BaseURL: base, Token: token, HTTP: hc}
		id, got := runInPod(t, ctx, c, cs, "alice", "kb-alice", "import os\nprint(os.environ['KERNEL_NAMESPACE'], 6*7)")
		if got != "kb-alice 42" {
			t.Fatalf("kernel printed %q", got)
		}
		if err := c.DeleteKernel(ctx, id); err != nil {
			t.Fatalf("delete: %v", err)
		}
		jstest.WaitForNil(t, 60*time.Second, func() error {
			_, err := cs.CoreV1().Pods("kb-alice").Get(ctx, kbk8s.PodName(id), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("kernel pod still there (%v)", err)
		})
	})

	if out, err := helm(t, "uninstall", "kb", "--namespace", gwNamespace, "--kubeconfig", cl.Kubeconfig, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	jstest.WaitForNil(t, 60*time.Second, func() error {
		for _, p := range agent.Running() {
			if strings.HasPrefix(p, gwNamespace+"/") {
				return fmt.Errorf("%s still runs after helm uninstall", p)
			}
		}
		return nil
	})

	t.Run("with the chart's own NATS", func(t *testing.T) {
		installWithNATS(t, ctx, cl, py, launcher)
	})
}

// installWithNATS installs a second release whose bus is the chart's NATS
// StatefulSet (one node: every pod here shares one address, so three would
// need the same ports) and whose Kubernetes pool uses a shared kernel
// namespace, and starts a kernel through it.
func installWithNATS(t *testing.T, ctx context.Context, cl *k8stest.Cluster, py, launcher string) {
	cs := cl.Client
	const ns, kernels = "kb2", "kb2-kernels"
	createNamespaces(t, ctx, cs, ns, kernels)
	inst, err := access.Generate()
	if err != nil {
		t.Fatal(err)
	}
	authData := authSecret(t, inst, t.TempDir())
	token := randomHex(16)
	for name, data := range map[string]map[string][]byte{"kernelbus-nats-auth": authData, "gw-token": {"token": []byte(token)}} {
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kernelJSON := k8sKernelJSON(py)
	ports, took := helmInstall(t, cl, "kb2", ns, 5, func(ports []int) map[string]any {
		client1, cluster, monitor, fePort, metricsPort := ports[0], ports[1], ports[2], ports[3], ports[4]
		return map[string]any{
			"image": map[string]any{"repository": "kernelbus/kernelbus", "tag": "test"},
			"nats": map[string]any{"cluster": map[string]any{"enabled": true, "replicas": 1, "image": natsImage, "storage": "",
				"ports": map[string]any{"client": client1, "cluster": cluster, "monitor": monitor}},
				// Kernel pods run on the host here, outside the pods' /etc/hosts.
				"launcherURL": fmt.Sprintf("nats://127.0.0.1:%d", client1)},
			"frontend":    map[string]any{"replicas": 1, "port": fePort, "tokenSecret": map[string]any{"name": "gw-token"}},
			"kernelspecs": map[string]any{"python3-k8s": map[string]string{"kernel.json": string(kernelJSON)}},
			"workers": []any{map[string]any{"rm": "kubernetes", "replicas": 1, "metricsPort": metricsPort,
				"kubernetes": map[string]any{"namespace": kernels, "launcherPath": launcher, "opts": []string{"stop_grace=5s"}}}},
		}
	})
	t.Logf("helm install --wait (NATS StatefulSet, front-end, worker) took %s", took)
	fePort := ports[3]
	c := &client.Client{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", fePort), Token: token}
	id, got := runInPod(t, ctx, c, cs, "erin", kernels, "print(6*7)")
	if got != "42" {
		t.Fatalf("kernel printed %q", got)
	}
	if err := c.DeleteKernel(ctx, id); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if out, err := helm(t, "uninstall", "kb2", "--namespace", ns, "--kubeconfig", cl.Kubeconfig, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
}

// runInPod starts a python3-k8s kernel for user through the installed
// front-end c, checks that its pod is in namespace ns and runs code in it;
// it returns the kernel's id and what the code printed.
func runInPod(t *testing.T, ctx context.Context, c *client.Client, cs k8s.Interface, user, ns, code string) (id, stdout string) {
	t.Helper()
	start := time.Now()
	m, err := c.StartKernel(ctx, "python3-k8s", map[string]string{"KERNEL_USERNAME": user})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Logf("kernel started through the chart's front-end and worker in %s", time.Since(start).Round(time.Millisecond))
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, kbk8s.PodName(m.ID), metav1.GetOptions{}); err != nil {
		t.Fatalf("kernel pod in %s: %v", ns, err)
	}
	conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := conn.Execute(code, 60*time.Second)
	conn.Close()
	if err != nil || r.Status != "ok" {
		t.Fatalf("execute: %v %+v", err, r)
	}
	return m.ID, strings.TrimSpace(r.Stdout.String())
}

// authSecret writes the installation's files into dir and returns what the
// chart's README has operators put in the bus credentials Secret: the
// parts' files, not the installation's keys nor the admin's credentials.
func authSecret(t *testing.T, inst *access.Installation, dir string) map[string][]byte {
	t.Helper()
	if err := access.WriteFiles(dir, inst); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for _, f := range []string{access.FrontendCreds, access.WorkerCreds("kubernetes"), access.MinterFileName, access.ServerConfFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		data[f] = b
	}
	return data
}

func createNamespaces(t *testing.T, ctx context.Context, cs k8s.Interface, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// k8sKernelJSON is a JEG Kubernetes kernelspec whose pods run the kernel
// image with the host's Python (the node agent runs them on this machine).
func k8sKernelJSON(py string) []byte {
	b, _ := json.Marshal(map[string]any{
		"argv": []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"}, "display_name": "Python on Kubernetes", "language": "python",
		"metadata": map[string]any{"process_proxy": map[string]any{
			"class_name": "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy",
			"config":     map[string]any{"image_name": kernelImage},
		}},
	})
	return b
}

// helmInstall installs release with values(ports), for n ports on this
// machine's network that were free a moment ago: the node agent runs pods
// on the host's network, where the chart's ports are chosen beforehand.
// When a pod logs that its port was taken since the pick, the install is
// stopped, the release uninstalled, and jstest.RetryPorts installs again
// with new ports. It returns the ports of the install that held and how
// long that install took.
func helmInstall(t *testing.T, cl *k8stest.Cluster, release, namespace string, n int, values func(ports []int) map[string]any) ([]int, time.Duration) {
	t.Helper()
	var got []int
	var took time.Duration
	err := jstest.RetryPorts(n, func(ports []int) error {
		vb, err := yaml.Marshal(values(ports))
		if err != nil {
			return err
		}
		vf := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(vf, vb, 0o600); err != nil {
			return err
		}
		logs := podLogs(cl, namespace, nil)
		t0 := time.Now()
		var out bytes.Buffer
		cmd := helmCmd(t, &out, "install", release, chartDir(), "--namespace", namespace, "--kubeconfig", cl.Kubeconfig,
			"--values", vf, "--wait", "--timeout", "3m")
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var taken string
		jstest.Eventually(4*time.Minute, func() bool {
			select {
			case err = <-done:
				return true
			default:
			}
			for path, text := range podLogs(cl, namespace, logs) {
				if jstest.PortTaken(text) {
					taken = path + ": " + jstest.Tail(text, 5)
					return true
				}
			}
			return false
		})
		if taken == "" && err == nil {
			got, took = ports, time.Since(t0).Round(time.Millisecond)
			return nil
		}
		if taken != "" {
			_ = cmd.Process.Kill()
			<-done
		}
		if uout, uerr := helm(t, "uninstall", release, "--namespace", namespace, "--kubeconfig", cl.Kubeconfig, "--wait", "--timeout", "2m"); uerr != nil {
			t.Logf("helm uninstall after a failed install: %v\n%s", uerr, uout)
		}
		return fmt.Errorf("helm install: %v\n%s\n%s", err, out.String(), taken)
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, took
}

// podLogs reads the logs the node agent writes for namespace's pods, each
// from the size it had in since (all of it when since is nil), keyed by
// path: what a pod logged during one install.
func podLogs(cl *k8stest.Cluster, namespace string, since map[string]string) map[string]string {
	paths, _ := filepath.Glob(filepath.Join(cl.Dir, namespace+"_*.log"))
	out := map[string]string{}
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		out[p] = strings.TrimPrefix(string(b), since[p])
	}
	return out
}

func run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func imageUser(t *testing.T, user string) (int, int) {
	u, g, _ := strings.Cut(user, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if err1 != nil || err2 != nil {
		t.Fatalf("image user %q is not uid:gid", user)
	}
	return uid, gid
}

func httpStatus(hc *http.Client, u, token string, want int) error {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "token "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %s, want %d", u, resp.Status, want)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
