// Package helm_test checks the Helm chart deploy/helm/kernelbus with a real
// Helm (scripts/setup-helm.sh builds it from the Go module proxy; $KB_HELM_BIN
// names it): lint and render in TestChart, and in TestChartInstall an
// install onto a real Kubernetes control plane (k8stest) whose test node
// agent runs the front-end and worker pods from the kernelbus image built by
// deploy/images, and a kernel started through the installed front-end.
package helm_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

// EnvHelm names the helm binary; EnvHelmRequired makes its absence a
// failure instead of a skip (task test:helm sets both).
const (
	EnvHelm         = "KB_HELM_BIN"
	EnvHelmRequired = "KB_HELM_REQUIRED"
)

func helmBin(t *testing.T) string {
	t.Helper()
	return jstest.NeedEnv(t, EnvHelm, EnvHelmRequired, "task test:helm builds helm with scripts/setup-helm.sh and sets it")
}

func chartDir() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(f), "kernelbus")
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := helmCmd(t, &out, args...).Run()
	return out.String(), err
}

// helmCmd is helm with args, its output into out, with homes of its own.
func helmCmd(t *testing.T, out *bytes.Buffer, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

// render runs helm template with values and decodes every object.
func render(t *testing.T, sets ...string) map[string]k8sruntime.Object {
	t.Helper()
	args := []string{"template", "kb", chartDir(), "--namespace", "gw"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", sets, err, out)
	}
	dec := serializer.NewCodecFactory(scheme.Scheme).UniversalDeserializer()
	objs := map[string]k8sruntime.Object{}
	for _, doc := range strings.Split(out, "\n---") {
		if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" || !strings.Contains(doc, "kind:") {
			continue
		}
		obj, gvk, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("rendered object does not decode: %v\n%s", err, doc)
		}
		name := ""
		if m, ok := obj.(interface{ GetName() string }); ok {
			name = m.GetName()
		}
		objs[gvk.Kind+"/"+name] = obj
	}
	return objs
}

func secretKeys(spec corev1.PodSpec, volume string) []string {
	for _, v := range spec.Volumes {
		if v.Name == volume && v.Secret != nil {
			var keys []string
			for _, it := range v.Secret.Items {
				keys = append(keys, it.Key)
			}
			return keys
		}
	}
	return nil
}

func TestChart(t *testing.T) {
	for _, sets := range [][]string{
		{"nats.url=nats://nats:4222", "frontend.tokenSecret.name=t"},
		{"nats.cluster.enabled=true", "frontend.tls.secretName=gw-tls", "nats.caSecret=nats-ca", "frontend.usersSecret.name=u"},
		{"nats.url=nats://nats:4222", "workers[0].rm=kubernetes", "workers[0].kubernetes.perUserNamespaces=true", "frontend.insecureNoAuth=true"},
	} {
		args := []string{"lint", "--strict", chartDir()}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("helm lint %v: %v\n%s", sets, err, out)
		}
	}

	t.Run("existing NATS, shared kernel namespace", func(t *testing.T) {
		objs := render(t, `nats.url=nats://n1:4222\,nats://n2:4222`, "frontend.tokenSecret.name=gw-token", "workers[0].rm=kubernetes", "workers[0].kubernetes.namespace=kernels", "workers[0].metricsTokenSecret.name=prom",
			`allowedEnv=SPARK_OPTS\,FOO`, "maxEnvBytes=4096", `kernelspecs.k1.kernel\.json={}`)
		fe := objs["Deployment/kb-kernelbus-frontend"].(*appsv1.Deployment)
		ps := fe.Spec.Template.Spec
		// Each part sees its own credentials only: a front-end holding the
		// workers' creds or the launcher minter could start or impersonate kernels.
		if got := secretKeys(ps, "nats-auth"); strings.Join(got, ",") != "frontend.creds" {
			t.Errorf("front-end mounts %v of the auth Secret, want only frontend.creds", got)
		}
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Error("the front-end gets a Kubernetes API token it does not need")
		}
		c := ps.Containers[0]
		args := strings.Join(c.Args, " ")
		for _, want := range []string{"frontend", "--nats=nats://n1:4222,nats://n2:4222", "--nats-creds=/etc/kernelbus/nats/frontend.creds", "--replicas=1"} {
			if !strings.Contains(args, want) {
				t.Errorf("front-end args %q lack %q", args, want)
			}
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("front-end probes: %+v %+v", c.ReadinessProbe, c.LivenessProbe)
		}
		if len(c.Env) != 1 || c.Env[0].Name != "KB_TOKEN" || c.Env[0].ValueFrom.SecretKeyRef.Name != "gw-token" {
			t.Errorf("token from a Secret: env %+v", c.Env)
		}
		w := objs["Deployment/kb-kernelbus-worker-kubernetes"].(*appsv1.Deployment)
		if got := secretKeys(w.Spec.Template.Spec, "nats-auth"); strings.Join(got, ",") != "worker-kubernetes.creds,launcher-minter.json" {
			t.Errorf("worker mounts %v of the auth Secret", got)
		}
		if env := w.Spec.Template.Spec.Containers[0].Env; len(env) != 2 || env[1].Name != "KB_METRICS_TOKEN" || env[1].ValueFrom.SecretKeyRef.Name != "prom" {
			t.Errorf("worker env %+v: want KB_ID and the metrics token from its Secret", env)
		}
		// Workers build launches from the spec and apply the front-ends'
		// policy again: both get the same.
		for _, d := range []*appsv1.Deployment{fe, w} {
			args := strings.Join(d.Spec.Template.Spec.Containers[0].Args, " ")
			for _, want := range []string{"--kernelspec-dir=/etc/kernelbus/kernelspecs", "--allowed-env=SPARK_OPTS,FOO", "--max-env-bytes=4096"} {
				if !strings.Contains(args, want) {
					t.Errorf("%s args %q lack %q", d.Name, args, want)
				}
			}
		}
		if !strings.Contains(strings.Join(w.Spec.Template.Spec.Containers[0].Args, " "), "--k8s-namespace=kernels") {
			t.Errorf("worker args: %v", w.Spec.Template.Spec.Containers[0].Args)
		}
		role := objs["Role/kb-kernelbus-worker-kubernetes"].(*rbacv1.Role)
		if role.Namespace != "kernels" {
			t.Errorf("the worker's Role is in %q, want the kernels' namespace", role.Namespace)
		}
		if _, ok := objs["ClusterRole/kb-kernelbus-worker-kubernetes-gw"]; ok {
			t.Error("a shared kernel namespace needs no cluster-wide role")
		}
		if _, ok := objs["StatefulSet/kb-kernelbus-nats"]; ok {
			t.Error("the chart runs NATS though nats.url names a cluster")
		}
	})

	t.Run("the chart's NATS cluster, TLS, per-user namespaces", func(t *testing.T) {
		objs := render(t, "nats.cluster.enabled=true", "frontend.tls.secretName=gw-tls", "nats.caSecret=nats-ca",
			"workers[0].rm=kubernetes", "workers[0].kubernetes.perUserNamespaces=true", "frontend.usersSecret.name=gw-users")
		ss := objs["StatefulSet/kb-kernelbus-nats"].(*appsv1.StatefulSet)
		if *ss.Spec.Replicas != 3 {
			t.Errorf("NATS replicas %d", *ss.Spec.Replicas)
		}
		if got := secretKeys(ss.Spec.Template.Spec, "auth"); strings.Join(got, ",") != "nats-server-auth.conf" {
			t.Errorf("NATS servers mount %v of the auth Secret, want only the trust", got)
		}
		cm := objs["ConfigMap/kb-kernelbus-nats"].(*corev1.ConfigMap)
		for i := range 3 {
			if r := "nats://kb-kernelbus-nats-" + string(rune('0'+i)) + ".kb-kernelbus-nats.gw.svc:6222"; !strings.Contains(cm.Data["nats.conf"], r) {
				t.Errorf("nats.conf lacks route %s:\n%s", r, cm.Data["nats.conf"])
			}
		}
		fe := objs["Deployment/kb-kernelbus-frontend"].(*appsv1.Deployment)
		c := fe.Spec.Template.Spec.Containers[0]
		args := strings.Join(c.Args, " ")
		for _, want := range []string{"--tls-cert=/etc/kernelbus/tls/tls.crt", "--nats-ca=/etc/kernelbus/nats-ca/ca.crt", "--replicas=3",
			"--users-file=/etc/kernelbus/users/users.json",
			"--nats=nats://kb-kernelbus-nats-0.kb-kernelbus-nats.gw.svc:4222,"} {
			if !strings.Contains(args, want) {
				t.Errorf("front-end args %q lack %q", args, want)
			}
		}
		if string(c.ReadinessProbe.HTTPGet.Scheme) != "HTTPS" {
			t.Errorf("probe scheme %s behind TLS", c.ReadinessProbe.HTTPGet.Scheme)
		}
		cr := objs["ClusterRole/kb-kernelbus-worker-kubernetes-gw"].(*rbacv1.ClusterRole)
		var bind []string
		for _, r := range cr.Rules {
			if strings.Join(r.Verbs, ",") == "bind" {
				bind = r.ResourceNames
			}
		}
		if strings.Join(bind, ",") != "edit" {
			t.Errorf("the worker may bind %v, want only the kernels' role edit", bind)
		}
	})

	// The chart's nats.conf, with the trust nats-auth init writes, as a
	// real nats-server reads it (-t: check the configuration and exit).
	t.Run("nats-server accepts the chart's configuration", func(t *testing.T) {
		bin := jstest.NeedEnv(t, "KB_NATS_SERVER_BIN", EnvHelmRequired, "task test:helm sets it")
		dir := t.TempDir()
		inst, err := access.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if err := access.WriteFiles(filepath.Join(dir, "auth"), inst); err != nil {
			t.Fatal(err)
		}
		tf, err := access.WriteTLS(filepath.Join(dir, "tls"), []string{"kb-kernelbus-nats-0.kb-kernelbus-nats.gw.svc"})
		if err != nil {
			t.Fatal(err)
		}
		for _, extra := range []string{"", "nats.cluster.tlsSecret=nats-tls", "nats.cluster.replicas=1"} {
			sets := []string{"nats.cluster.enabled=true", "frontend.tokenSecret.name=t"}
			if extra != "" {
				sets = append(sets, extra)
			}
			conf := render(t, sets...)["ConfigMap/kb-kernelbus-nats"].(*corev1.ConfigMap).Data["nats.conf"]
			// Where the StatefulSet mounts the TLS Secret's keys.
			conf = strings.NewReplacer("/etc/nats/tls/tls.crt", tf.Cert, "/etc/nats/tls/tls.key", tf.Key, "/etc/nats/tls/ca.crt", tf.CA).Replace(conf)
			cf := filepath.Join(dir, "nats.conf")
			if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "-c", cf, "-t")
			cmd.Env = append(os.Environ(), "POD_NAME=kb-kernelbus-nats-0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("nats-server -t (%s): %v\n%s\n%s", extra, err, out, conf)
			}
		}
	})

	t.Run("no NATS", func(t *testing.T) {
		out, err := helm(t, "template", "kb", chartDir(), "--set", "frontend.tokenSecret.name=t")
		if err == nil || !strings.Contains(out, "nats.url is required") {
			t.Fatalf("helm template without a NATS: %v\n%s", err, out)
		}
	})

	// A front-end without authentication refuses to start; the chart says
	// so at install rather than leaving pods crash-looping.
	t.Run("no authentication", func(t *testing.T) {
		out, err := helm(t, "template", "kb", chartDir(), "--set", "nats.url=nats://n:4222")
		if err == nil || !strings.Contains(out, "the front-end needs authentication") {
			t.Fatalf("helm template without authentication: %v\n%s", err, out)
		}
	})
}
