package kubernetes

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/broker"
	corev1 "k8s.io/api/core/v1"
)

func launchCfg(env map[string]string) *broker.LaunchConfig {
	e := map[string]string{"KERNEL_ID": "ABC-1", "KERNEL_USERNAME": "Jo.Doe@x"}
	for k, v := range env {
		e[k] = v
	}
	return &broker.LaunchConfig{V: 1, KernelID: "ABC-1", Spec: "py", User: "Jo.Doe@x", Argv: []string{"python"}, Env: e,
		NATSURLs: "nats://127.0.0.1:4222", RMConfig: map[string]any{"image_name": "spec/image:1"}}
}

func build(t *testing.T, c Config, cfg *broker.LaunchConfig) (*corev1.Pod, *corev1.Secret, error) {
	t.Helper()
	c.AllowKernelResources = true
	c.defaults()
	p, err := c.place(cfg)
	if err != nil {
		return nil, nil, err
	}
	return c.buildPod(cfg, p)
}

func TestBuildPod(t *testing.T) {
	pod, sec, err := build(t, Config{PerUserNamespaces: true}, launchCfg(map[string]string{"KERNEL_CPUS": "500m", "KERNEL_MEMORY_LIMIT": "1Gi"}))
	if err != nil {
		t.Fatal(err)
	}
	if pod.Name != "kernel-abc-1" || pod.Namespace != "kb-jo-doe-x" || sec.Name != pod.Name || sec.Namespace != pod.Namespace {
		t.Fatalf("pod %s/%s secret %s/%s", pod.Namespace, pod.Name, sec.Namespace, sec.Name)
	}
	if pod.Labels[LabelKernelID] != "ABC-1" || pod.Labels[LabelComponent] != "kernel" || pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Fatalf("labels %v restart %s", pod.Labels, pod.Spec.RestartPolicy)
	}
	ctr := pod.Spec.Containers[0]
	if ctr.Image != "spec/image:1" || ctr.Command[0] != "/usr/local/bin/kernelbus-launcher" || pod.Spec.ServiceAccountName != "kernel" {
		t.Fatalf("image %q command %v sa %q", ctr.Image, ctr.Command, pod.Spec.ServiceAccountName)
	}
	if q := ctr.Resources.Requests[corev1.ResourceCPU]; q.String() != "500m" {
		t.Fatalf("requests %v", ctr.Resources.Requests)
	}
	if q := ctr.Resources.Limits[corev1.ResourceMemory]; q.String() != "1Gi" {
		t.Fatalf("limits %v", ctr.Resources.Limits)
	}
	enc := sec.StringData[SecretKey]
	got, err := broker.DecodeLaunchConfig(enc)
	if err != nil || got.KernelID != "ABC-1" {
		t.Fatalf("secret holds %v %v", got, err)
	}
	for _, e := range ctr.Env {
		if e.Name == broker.EnvLaunchConfig && (e.Value != "" || e.ValueFrom.SecretKeyRef.Name != sec.Name) {
			t.Fatalf("launch config env %+v", e)
		}
	}
}

func TestBuildPodGates(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		env  map[string]string
		ok   bool
	}{
		{"image refused", Config{}, map[string]string{EnvImage: "x/y"}, false},
		{"image allowed", Config{AllowKernelImage: true}, map[string]string{EnvImage: "x/y"}, true},
		{"namespace refused", Config{}, map[string]string{EnvNamespace: "other"}, false},
		{"namespace allowed", Config{AllowKernelNamespace: true}, map[string]string{EnvNamespace: "other"}, true},
		{"uid refused", Config{}, map[string]string{EnvUID: "1000"}, false},
		{"uid allowed", Config{AllowUserIDs: true}, map[string]string{EnvUID: "1000", EnvGID: "100"}, true},
		{"uid 0 prohibited", Config{AllowUserIDs: true}, map[string]string{EnvUID: "0"}, false},
		{"working dir refused", Config{}, map[string]string{EnvWorkingDir: "/home/jo"}, false},
		{"working dir allowed", Config{AllowWorkingDir: true}, map[string]string{EnvWorkingDir: "/home/jo"}, true},
		{"volumes refused", Config{}, map[string]string{EnvVolumes: `[{name: data, emptyDir: {}}]`}, false},
		{"volumes allowed", Config{AllowVolumes: true}, map[string]string{EnvVolumes: `[{name: data, emptyDir: {}}]`, EnvVolumeMounts: `[{"name": "data", "mountPath": "/data"}]`}, true},
		{"bad volumes", Config{AllowVolumes: true}, map[string]string{EnvVolumes: `[{name: data, bogus: 1}]`}, false},
		{"bad quantity", Config{}, map[string]string{"KERNEL_MEMORY": "lots"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod, _, err := build(t, tc.c, launchCfg(tc.env))
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			switch {
			case tc.env[EnvNamespace] != "" && pod.Namespace != "other":
				t.Fatalf("namespace %s", pod.Namespace)
			case tc.env[EnvUID] != "" && *pod.Spec.SecurityContext.RunAsUser != 1000:
				t.Fatalf("security context %+v", pod.Spec.SecurityContext)
			case tc.env[EnvWorkingDir] != "" && pod.Spec.Containers[0].WorkingDir != "/home/jo":
				t.Fatalf("working dir %q", pod.Spec.Containers[0].WorkingDir)
			case tc.env[EnvVolumes] != "" && (len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].EmptyDir == nil || pod.Spec.Containers[0].VolumeMounts[0].MountPath != "/data"):
				t.Fatalf("volumes %+v mounts %+v", pod.Spec.Volumes, pod.Spec.Containers[0].VolumeMounts)
			}
		})
	}
	_, _, err := build(t, Config{}, launchCfg(map[string]string{EnvImage: "x"}))
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("refusals wrap ErrRefused: %v", err)
	}
}

func TestPodTemplates(t *testing.T) {
	dir := t.TempDir()
	tmpl := "apiVersion: v1\nkind: Pod\nmetadata: {labels: {team: a}}\nspec:\n  nodeSelector: {pool: kernels}\n  containers:\n  - name: sidecar\n    image: side:1\n  - name: kernel\n    image: tmpl/image:2\n"
	if err := os.WriteFile(filepath.Join(dir, TemplateFile), []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := launchCfg(nil)
	cfg.ResourceDir = dir
	pod, _, err := build(t, Config{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pod.Labels["team"] != "a" || pod.Spec.NodeSelector["pool"] != "kernels" || len(pod.Spec.Containers) != 2 {
		t.Fatalf("template not applied: %+v", pod)
	}
	if k := pod.Spec.Containers[1]; k.Image != "spec/image:1" || k.Command[0] != "/usr/local/bin/kernelbus-launcher" {
		t.Fatalf("kernel container %+v", k)
	}
	if pod.Spec.Containers[0].Command != nil {
		t.Fatal("the sidecar was changed")
	}
	// Inline template in the spec's config wins over the file.
	cfg.RMConfig = map[string]any{"pod_template": map[string]any{"metadata": map[string]any{"labels": map[string]any{"team": "b"}}}}
	pod, _, err = build(t, Config{Image: "worker/image:3"}, cfg)
	if err != nil || pod.Labels["team"] != "b" || pod.Spec.Containers[0].Image != "worker/image:3" {
		t.Fatalf("inline template: %v %+v", err, pod)
	}
	cfg.RMConfig = map[string]any{"pod_template": "missing.yaml"}
	if _, _, err := build(t, Config{}, cfg); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing template: %v", err)
	}
}

// JEG's advisories (GHSA-cfw7-6c5v-2wjq: KERNEL_* values rendered into a
// pod manifest) as regression tests: kernelbus builds pods as objects, so
// a value never becomes YAML; names are checked as Kubernetes names, root
// is refused whatever the prohibited lists say, and a client cannot mount
// the node's files. Each refusal is asserted, not assumed.
func TestBuildPodInjection(t *testing.T) {
	all := Config{AllowKernelNamespace: true, AllowKernelServiceAccount: true, AllowUserIDs: true, AllowVolumes: true,
		AllowWorkingDir: true, ProhibitedUIDs: "1", ProhibitedGIDs: "1"}
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"namespace with YAML", map[string]string{EnvNamespace: "x\n  hostNetwork: true"}},
		{"namespace with a slash", map[string]string{EnvNamespace: "../kube-system"}},
		{"namespace with NEL", map[string]string{EnvNamespace: "a\u0085b"}},
		{"namespace too long", map[string]string{EnvNamespace: strings.Repeat("a", 64)}},
		{"service account with YAML", map[string]string{EnvServiceAccount: "sa\nautomountServiceAccountToken: true"}},
		{"uid 0 with a custom list", map[string]string{EnvUID: "0"}},
		{"gid 0 with a custom list", map[string]string{EnvGID: "0"}},
		{"uid +0", map[string]string{EnvUID: "+0"}},
		{"uid 00", map[string]string{EnvUID: "00"}},
		{"uid that wraps to 0", map[string]string{EnvUID: "4294967296"}},
		{"uid with YAML", map[string]string{EnvUID: "1000\nrunAsUser: 0"}},
		{"uid prohibited by the list", map[string]string{EnvUID: "1"}},
		{"hostPath volume", map[string]string{EnvVolumes: `[{name: root, hostPath: {path: /}}]`}},
		{"volumes smuggling fields", map[string]string{EnvVolumes: `[{name: x, emptyDir: {}, privileged: true}]`}},
		{"memory with YAML", map[string]string{"KERNEL_MEMORY": "1Gi\n  limits: {}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := build(t, all, launchCfg(tc.env))
			if err == nil {
				t.Fatalf("%v accepted", tc.env)
			}
		})
	}
	// Values that are data stay data: a working dir or pod-visible env
	// with metacharacters is passed as one string, never interpreted.
	odd := "/home/jo; rm -rf / $(id) `id` {{.Values}}"
	pod, _, err := build(t, all, launchCfg(map[string]string{EnvWorkingDir: odd}))
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.Containers[0].WorkingDir != odd {
		t.Fatalf("working dir %q", pod.Spec.Containers[0].WorkingDir)
	}
	// The pod name comes from the kernel id, not from any client value.
	pod, _, err = build(t, all, launchCfg(map[string]string{EnvPodName: "kube-apiserver"}))
	if err != nil || pod.Name != "kernel-abc-1" {
		t.Fatalf("pod name %q: %v", pod.Name, err)
	}
	// A per-user namespace is derived from the owner, never a system one.
	for _, user := range []string{"kube-system", "../default", "a\nb"} {
		cfg := launchCfg(nil)
		cfg.User = user
		pod, _, err := build(t, Config{PerUserNamespaces: true}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(pod.Namespace, "kb-") || strings.ContainsAny(pod.Namespace, "./\n") {
			t.Fatalf("user %q got namespace %q", user, pod.Namespace)
		}
	}
}

// A refusal reaches the client as 403 (the configuration does not allow
// it) or 400 (not a valid value), not 500.
func TestRefusalStatus(t *testing.T) {
	b := &Backend{cfg: Config{}}
	b.cfg.defaults()
	for env, want := range map[string]int{EnvImage: 403, EnvUID: 403} {
		_, err := b.Start(t.Context(), launchCfg(map[string]string{env: "1000"}))
		var be *broker.Error
		if !errors.As(err, &be) || be.Status != want {
			t.Errorf("%s: want %d, got %v", env, want, err)
		}
	}
	b.cfg.AllowKernelNamespace = true
	_, err := b.Start(t.Context(), launchCfg(map[string]string{EnvNamespace: "Not_A_Name"}))
	var be *broker.Error
	if !errors.As(err, &be) || be.Status != 400 {
		t.Errorf("bad namespace: want 400, got %v", err)
	}
}

// A kernel pod runs as a non-root user whatever its image says: the
// worker's kernel_uid/kernel_gid where nothing names one, KERNEL_UID when
// allowed, the template's own ids when it names them; kernel_uid 0 is a
// configuration error, not a root pod.
func TestBuildPodNonRoot(t *testing.T) {
	ids := func(pod *corev1.Pod) (uid, gid, fs int64, nonRoot bool) {
		sc := pod.Spec.SecurityContext
		if sc == nil || sc.RunAsUser == nil || sc.RunAsGroup == nil || sc.FSGroup == nil || sc.RunAsNonRoot == nil {
			t.Fatalf("security context %+v", sc)
		}
		return *sc.RunAsUser, *sc.RunAsGroup, *sc.FSGroup, *sc.RunAsNonRoot
	}
	pod, _, err := build(t, Config{}, launchCfg(nil))
	if err != nil {
		t.Fatal(err)
	}
	if u, g, f, nr := ids(pod); u != 1000 || g != 100 || f != 100 || !nr {
		t.Fatalf("default: uid %d gid %d fsGroup %d runAsNonRoot %v, want 1000 100 100 true", u, g, f, nr)
	}
	pod, _, err = build(t, Config{KernelUID: "2000", KernelGID: "3000"}, launchCfg(nil))
	if err != nil {
		t.Fatal(err)
	}
	if u, g, f, _ := ids(pod); u != 2000 || g != 3000 || f != 3000 {
		t.Fatalf("kernel_uid 2000 kernel_gid 3000: got %d %d %d", u, g, f)
	}
	pod, _, err = build(t, Config{AllowUserIDs: true}, launchCfg(map[string]string{EnvUID: "4242", EnvGID: "4343"}))
	if err != nil {
		t.Fatal(err)
	}
	if u, g, f, _ := ids(pod); u != 4242 || g != 4343 || f != 4343 {
		t.Fatalf("KERNEL_UID 4242 KERNEL_GID 4343: got %d %d %d", u, g, f)
	}
	tmpl := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(tmpl, []byte("spec:\n  containers:\n  - name: kernel\n    securityContext: {runAsUser: 555, runAsGroup: 556}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pod, _, err = build(t, Config{PodTemplate: tmpl}, launchCfg(nil))
	if err != nil {
		t.Fatal(err)
	}
	if sc := pod.Spec.SecurityContext; sc.RunAsUser != nil || sc.RunAsGroup != nil || *pod.Spec.Containers[0].SecurityContext.RunAsUser != 555 {
		t.Fatalf("a template's container ids were overridden: pod %+v container %+v", sc, pod.Spec.Containers[0].SecurityContext)
	}
	for _, bad := range []Config{{KernelUID: "0"}, {KernelGID: "0"}, {KernelUID: "-1"}, {KernelUID: "root"}} {
		if _, _, err := build(t, bad, launchCfg(nil)); err == nil || !strings.Contains(err.Error(), "never run as root") {
			t.Errorf("%+v: want an error, got %v", bad, err)
		}
	}
}

// An environment's resources become its kernel pods' requests and limits;
// the pod's launcher is left {env_prefix} to fill in (it fetches the
// archive itself).
func TestBuildPodOfEnvironment(t *testing.T) {
	es := broker.EnvSpec{Name: "tab", RM: broker.RMKubernetes, Digest: "sha256-" + strings.Repeat("b", 64),
		Resources: broker.EnvResources{MemoryMB: 1024, CPUs: 2}}
	cfg := broker.NewLaunchConfig(es.KernelSpec(), "ABC-1", "jo", nil, 0)
	cfg.NATSURLs = "nats://127.0.0.1:4222"
	prefix, err := (&Backend{}).EnvPrefix(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.FillEnvPrefix(prefix)
	pod, sec, err := build(t, Config{Image: "img:1"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := pod.Spec.Containers[0].Resources
	if q := r.Requests[corev1.ResourceMemory]; q.String() != "1Gi" {
		t.Errorf("memory request %v", r.Requests)
	}
	if q := r.Limits[corev1.ResourceCPU]; q.String() != "2" {
		t.Errorf("cpu limit %v", r.Limits)
	}
	got, err := broker.DecodeLaunchConfig(sec.StringData[SecretKey])
	if err != nil || got.Environment == nil || got.Environment.Digest != es.Digest || got.Argv[0] != "{env_prefix}/bin/python" {
		t.Fatalf("the pod's launch config: %+v %v", got, err)
	}
}

// TestWarmPodServesNamedUsers: in a shared namespace, the pod of a warm
// kernel (no user) and that of a user's cold start differ only in the user
// annotation and KERNEL_USERNAME: same namespace, service account, uid and
// security context; so a warm pod may serve a request that names a user
// (RunsAsUser false). With per-user namespaces they differ in namespace
// and service account, and it may not.
func TestWarmPodServesNamedUsers(t *testing.T) {
	warm := launchCfg(nil)
	warm.User = ""
	delete(warm.Env, broker.EnvUsername)
	for _, perUser := range []bool{false, true} {
		c := Config{PerUserNamespaces: perUser}
		wp, _, err := build(t, c, warm)
		if err != nil {
			t.Fatal(err)
		}
		up, _, err := build(t, c, launchCfg(nil))
		if err != nil {
			t.Fatal(err)
		}
		// The user's pod without what names its user.
		ctr := &up.Spec.Containers[0]
		ctr.Env = slices.DeleteFunc(ctr.Env, func(e corev1.EnvVar) bool { return e.Name == broker.EnvUsername })
		up.Annotations[AnnotationUser] = ""
		same := wp.Namespace == up.Namespace && reflect.DeepEqual(wp.Spec, up.Spec) && reflect.DeepEqual(wp.ObjectMeta, up.ObjectMeta)
		if b := (&Backend{cfg: c}); same == b.RunsAsUser() {
			t.Errorf("per_user_namespaces=%v: the pods are alike but for the user: %v; yet RunsAsUser() = %v", perUser, same, b.RunsAsUser())
		}
		if !perUser && !same {
			t.Errorf("shared namespace: a warm pod differs from a user's in more than its user:\n%+v\n%+v", wp, up)
		}
	}
}
