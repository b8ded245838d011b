package kubernetes

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/kernelbus/kernelbus/broker"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Labels and annotations kernel pods carry. kernel_id and component are
// JEG's, so tools written for JEG find kernelbus pods the same way.
const (
	LabelKernelID  = "kernel_id"
	LabelComponent = "component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// LabelPerUser marks namespaces kernelbus created for one user.
	LabelPerUser = "kernelbus.io/per-user"

	ComponentKernel = "kernel"
	ManagedBy       = "kernelbus"

	// AnnotationUser and AnnotationSpec say whose kernel a pod runs.
	AnnotationUser = "kernelbus.io/user"
	AnnotationSpec = "kernelbus.io/spec"
	// AnnotationStopped is set by kernelbus before it deletes a pod, so
	// that a deletion without it is known to come from someone else.
	AnnotationStopped = "kernelbus.io/stopped"

	// ContainerName is the container the launcher runs in.
	ContainerName = "kernel"
	// SecretKey holds the launch config in the kernel's Secret.
	SecretKey = "launch-config"
	// TemplateFile is the pod template beside a kernelspec's kernel.json.
	TemplateFile = "pod-template.yaml"
)

// Client-settable variables this backend reads (JEG's names).
const (
	EnvImage          = "KERNEL_IMAGE"
	EnvNamespace      = "KERNEL_NAMESPACE"
	EnvServiceAccount = "KERNEL_SERVICE_ACCOUNT_NAME"
	EnvUID            = "KERNEL_UID"
	EnvGID            = "KERNEL_GID"
	EnvWorkingDir     = "KERNEL_WORKING_DIR"
	EnvVolumes        = "KERNEL_VOLUMES"
	EnvVolumeMounts   = "KERNEL_VOLUME_MOUNTS"
	EnvPodName        = "KERNEL_POD_NAME"
)

// kernelResources maps JEG's sizing variables to resource names.
var kernelResources = []struct {
	env   string
	name  corev1.ResourceName
	limit bool
}{
	{"KERNEL_CPUS", corev1.ResourceCPU, false},
	{"KERNEL_MEMORY", corev1.ResourceMemory, false},
	{"KERNEL_GPUS", "nvidia.com/gpu", false},
	{"KERNEL_CPUS_LIMIT", corev1.ResourceCPU, true},
	{"KERNEL_MEMORY_LIMIT", corev1.ResourceMemory, true},
	{"KERNEL_GPUS_LIMIT", "nvidia.com/gpu", true},
}

// ErrRefused marks launch settings the configuration does not allow.
var ErrRefused = errors.New("refused by the kubernetes worker's configuration")

// placement is where a kernel's pod goes.
type placement struct {
	Namespace string
	// PerUser is true for a namespace kernelbus manages for one user.
	PerUser bool
	// ServiceAccount the pod runs as ("" for the namespace's default).
	ServiceAccount string
}

// PodName is the pod (and Secret) of a kernel: stable, so a redelivered
// start request finds the pod of the first attempt.
func PodName(kernelID string) string { return "kernel-" + strings.ToLower(kernelID) }

var dnsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// userNamespace turns a user name into a namespace name.
func (c *Config) userNamespace(user string) string {
	s := dnsUnsafe.ReplaceAllString(strings.ToLower(user), "-")
	s = strings.Trim(s, "-")
	if s == "" {
		s = "anonymous"
	}
	ns := c.NamespacePrefix + s
	if len(ns) > 63 {
		ns = strings.TrimRight(ns[:63], "-")
	}
	return ns
}

func (c *Config) place(cfg *broker.LaunchConfig) (placement, error) {
	var p placement
	if c.PerUserNamespaces {
		p.Namespace, p.PerUser = c.userNamespace(cfg.User), true
	} else {
		p.Namespace = c.Namespace
	}
	if ns := cfg.Env[EnvNamespace]; ns != "" && ns != p.Namespace {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return p, fmt.Errorf("%s=%q is not a namespace name: %s", EnvNamespace, ns, strings.Join(errs, "; "))
		}
		if !c.AllowKernelNamespace {
			return p, fmt.Errorf("%s=%s: %w (allow_kernel_namespace is off)", EnvNamespace, ns, ErrRefused)
		}
		// A namespace the client names is the client's: kernelbus
		// neither creates nor deletes it (as JEG).
		p.Namespace, p.PerUser = ns, false
	}
	p.ServiceAccount = c.ServiceAccount
	if p.PerUser && p.ServiceAccount == "" {
		p.ServiceAccount = "kernel"
	}
	if sa := cfg.Env[EnvServiceAccount]; sa != "" {
		if errs := validation.IsDNS1123Subdomain(sa); len(errs) > 0 {
			return p, fmt.Errorf("%s=%q is not a service account name: %s", EnvServiceAccount, sa, strings.Join(errs, "; "))
		}
		if !c.AllowKernelServiceAccount {
			return p, fmt.Errorf("%s: %w (allow_kernel_service_account is off)", EnvServiceAccount, ErrRefused)
		}
		p.ServiceAccount = sa
	}
	return p, nil
}

// loadTemplate finds the pod template: the spec's config.pod_template
// (a file, relative to the spec's folder, or an inline manifest), then
// pod-template.yaml beside kernel.json, then the worker's, then a bare pod.
func (c *Config) loadTemplate(cfg *broker.LaunchConfig) (*corev1.Pod, error) {
	var data []byte
	var from string
	switch t := cfg.RMConfig["pod_template"].(type) {
	case string:
		path := t
		if !filepath.IsAbs(path) && cfg.ResourceDir != "" {
			path = filepath.Join(cfg.ResourceDir, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("the kernelspec's pod template: %w", err)
		}
		data, from = b, path
	case map[string]any:
		b, err := json.Marshal(t)
		if err != nil {
			return nil, err
		}
		data, from = b, "the kernelspec's inline pod_template"
	case nil:
	default:
		return nil, fmt.Errorf("the kernelspec's config.pod_template is a %T, neither a file name nor a manifest", t)
	}
	if data == nil && cfg.ResourceDir != "" {
		path := filepath.Join(cfg.ResourceDir, TemplateFile)
		if b, err := os.ReadFile(path); err == nil {
			data, from = b, path
		}
	}
	if data == nil && c.PodTemplate != "" {
		b, err := os.ReadFile(c.PodTemplate)
		if err != nil {
			return nil, fmt.Errorf("the worker's pod template: %w", err)
		}
		data, from = b, c.PodTemplate
	}
	pod := &corev1.Pod{}
	if data != nil {
		if err := yaml.UnmarshalStrict(data, pod); err != nil {
			return nil, fmt.Errorf("pod template %s: %w", from, err)
		}
		if pod.Kind != "" && pod.Kind != "Pod" {
			return nil, fmt.Errorf("pod template %s: kind is %s, not Pod", from, pod.Kind)
		}
	}
	return pod, nil
}

// buildPod turns a launch config into the kernel's pod and Secret.
func (c *Config) buildPod(cfg *broker.LaunchConfig, p placement) (*corev1.Pod, *corev1.Secret, error) {
	pod, err := c.loadTemplate(cfg)
	if err != nil {
		return nil, nil, err
	}
	name := PodName(cfg.KernelID)
	pod.TypeMeta = metav1.TypeMeta{}
	pod.Name, pod.GenerateName, pod.Namespace = name, "", p.Namespace
	pod.ResourceVersion, pod.UID = "", ""
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[LabelKernelID] = cfg.KernelID
	pod.Labels[LabelComponent] = ComponentKernel
	pod.Labels[LabelManagedBy] = ManagedBy
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationUser] = cfg.User
	pod.Annotations[AnnotationSpec] = cfg.Spec
	// The launcher restarts the kernel itself; a pod that ends is over.
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	if p.ServiceAccount != "" {
		pod.Spec.ServiceAccountName = p.ServiceAccount
	}
	grace := int64(c.StopGrace.Seconds())
	pod.Spec.TerminationGracePeriodSeconds = &grace

	ci := -1
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == ContainerName {
			ci = i
		}
	}
	if ci < 0 && len(pod.Spec.Containers) > 0 {
		ci = 0
	}
	if ci < 0 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: ContainerName})
		ci = 0
	}
	ctr := &pod.Spec.Containers[ci]

	// Image: the client's (when allowed), the spec's, the template's, the worker's.
	if img := cfg.Env[EnvImage]; img != "" {
		if !c.AllowKernelImage {
			return nil, nil, fmt.Errorf("%s: %w (allow_kernel_image is off)", EnvImage, ErrRefused)
		}
		ctr.Image = img
	} else if img, _ := cfg.RMConfig["image_name"].(string); img != "" {
		ctr.Image = img
	} else if ctr.Image == "" {
		ctr.Image = c.Image
	}
	if ctr.Image == "" {
		return nil, nil, errors.New("no kernel image: set config.image_name in the kernelspec, an image in its pod template, or the worker's image option")
	}

	// The launcher wraps the kernel: it reads its config from the Secret.
	ctr.Command, ctr.Args = []string{c.LauncherPath}, nil
	keys := make([]string, 0, len(cfg.Env))
	for k := range cfg.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ctr.Env = setEnv(ctr.Env, corev1.EnvVar{Name: k, Value: cfg.Env[k]})
	}
	ctr.Env = setEnv(ctr.Env, corev1.EnvVar{Name: EnvPodName, Value: name})
	ctr.Env = setEnv(ctr.Env, corev1.EnvVar{Name: EnvNamespace, Value: p.Namespace})
	ctr.Env = setEnv(ctr.Env, corev1.EnvVar{Name: broker.EnvLaunchConfig, ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: SecretKey},
	}})

	if err := c.resources(cfg, ctr); err != nil {
		return nil, nil, err
	}
	if err := c.identity(cfg, pod); err != nil {
		return nil, nil, err
	}
	if err := c.nonRoot(pod, ctr); err != nil {
		return nil, nil, err
	}
	if wd := cfg.Env[EnvWorkingDir]; wd != "" {
		if !c.AllowWorkingDir {
			return nil, nil, fmt.Errorf("%s: %w (allow_working_dir is off)", EnvWorkingDir, ErrRefused)
		}
		ctr.WorkingDir = wd
	}
	if err := c.volumes(cfg, pod, ctr); err != nil {
		return nil, nil, err
	}

	// The kernel sees where it runs, as JEG kernels do.
	lc := *cfg
	lc.Env = make(map[string]string, len(cfg.Env)+2)
	for k, v := range cfg.Env {
		lc.Env[k] = v
	}
	lc.Env[EnvPodName], lc.Env[EnvNamespace] = name, p.Namespace
	enc, err := lc.Encode()
	if err != nil {
		return nil, nil, err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.Namespace, Labels: map[string]string{
			LabelKernelID: cfg.KernelID, LabelComponent: ComponentKernel, LabelManagedBy: ManagedBy,
		}},
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{SecretKey: enc},
	}
	return pod, secret, nil
}

func setEnv(env []corev1.EnvVar, v corev1.EnvVar) []corev1.EnvVar {
	for i := range env {
		if env[i].Name == v.Name {
			env[i] = v
			return env
		}
	}
	return append(env, v)
}

// resources applies the spec's config.resources ({requests:{...},
// limits:{...}}, Kubernetes quantities) and, when allowed, JEG's
// KERNEL_CPUS / KERNEL_MEMORY / KERNEL_GPUS (and _LIMIT) variables.
func (c *Config) resources(cfg *broker.LaunchConfig, ctr *corev1.Container) error {
	set := func(limit bool, name corev1.ResourceName, val, from string) error {
		q, err := resource.ParseQuantity(strings.TrimSpace(val))
		if err != nil {
			return fmt.Errorf("%s: %q is not a Kubernetes quantity: %w", from, val, err)
		}
		if limit {
			if ctr.Resources.Limits == nil {
				ctr.Resources.Limits = corev1.ResourceList{}
			}
			ctr.Resources.Limits[name] = q
		} else {
			if ctr.Resources.Requests == nil {
				ctr.Resources.Requests = corev1.ResourceList{}
			}
			ctr.Resources.Requests[name] = q
		}
		return nil
	}
	if r, ok := cfg.RMConfig["resources"].(map[string]any); ok {
		for _, kind := range []string{"requests", "limits"} {
			m, _ := r[kind].(map[string]any)
			for name, v := range m {
				if err := set(kind == "limits", corev1.ResourceName(name), fmt.Sprint(v), "config.resources."+kind+"."+name); err != nil {
					return err
				}
			}
		}
	}
	for _, kr := range kernelResources {
		v := cfg.Env[kr.env]
		if v == "" {
			continue
		}
		if !c.AllowKernelResources {
			return fmt.Errorf("%s: %w (allow_kernel_resources is off)", kr.env, ErrRefused)
		}
		if err := set(kr.limit, kr.name, v, kr.env); err != nil {
			return err
		}
	}
	return nil
}

// identity applies KERNEL_UID and KERNEL_GID as the pod's runAsUser and
// runAsGroup (and fsGroup), refusing the prohibited ids.
func (c *Config) identity(cfg *broker.LaunchConfig, pod *corev1.Pod) error {
	for _, v := range []struct {
		env, list string
		set       func(*corev1.PodSecurityContext, int64)
	}{
		{EnvUID, c.ProhibitedUIDs, func(sc *corev1.PodSecurityContext, id int64) { sc.RunAsUser = &id }},
		{EnvGID, c.ProhibitedGIDs, func(sc *corev1.PodSecurityContext, id int64) { sc.RunAsGroup, sc.FSGroup = &id, &id }},
	} {
		s := cfg.Env[v.env]
		if s == "" {
			continue
		}
		if !c.AllowUserIDs {
			return fmt.Errorf("%s: %w (allow_user_ids is off)", v.env, ErrRefused)
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id < 0 || id > math.MaxInt32 {
			return fmt.Errorf("%s: %q is not a user or group id (0 to %d)", v.env, s, math.MaxInt32)
		}
		// Root is refused whatever the prohibited lists say: a list
		// set to other ids must not let a client run kernels as root.
		if id == 0 || prohibited(v.list, id) {
			return fmt.Errorf("%s=%d: %w (the id is prohibited)", v.env, id, ErrRefused)
		}
		if pod.Spec.SecurityContext == nil {
			pod.Spec.SecurityContext = &corev1.PodSecurityContext{}
		}
		v.set(pod.Spec.SecurityContext, id)
	}
	return nil
}

// nonRoot gives the pod KernelUID/KernelGID where neither the pod nor
// the kernel container names a user or group, and runAsNonRoot, so that
// kernel code never runs as root whatever the image's USER: root in a
// container is one kernel bug away from the node. A template may still
// name other ids; the pod then runs as it says.
func (c *Config) nonRoot(pod *corev1.Pod, ctr *corev1.Container) error {
	uid, err1 := strconv.ParseInt(c.KernelUID, 10, 64)
	gid, err2 := strconv.ParseInt(c.KernelGID, 10, 64)
	if err1 != nil || err2 != nil || uid <= 0 || gid <= 0 || uid > math.MaxInt32 || gid > math.MaxInt32 {
		return fmt.Errorf("kernel_uid %q / kernel_gid %q: want ids from 1 to %d (kernels never run as root)", c.KernelUID, c.KernelGID, math.MaxInt32)
	}
	sc := pod.Spec.SecurityContext
	if sc == nil {
		sc = &corev1.PodSecurityContext{}
		pod.Spec.SecurityContext = sc
	}
	csc := ctr.SecurityContext
	if sc.RunAsUser == nil && (csc == nil || csc.RunAsUser == nil) {
		sc.RunAsUser = &uid
	}
	if sc.RunAsGroup == nil && (csc == nil || csc.RunAsGroup == nil) {
		sc.RunAsGroup = &gid
		if sc.FSGroup == nil {
			sc.FSGroup = &gid
		}
	}
	if sc.RunAsNonRoot == nil && (csc == nil || csc.RunAsNonRoot == nil) {
		yes := true
		sc.RunAsNonRoot = &yes
	}
	return nil
}

// volumes adds KERNEL_VOLUMES and KERNEL_VOLUME_MOUNTS: lists of
// Kubernetes volumes and mounts in JSON or YAML flow style, as JEG's pod
// template takes them.
func (c *Config) volumes(cfg *broker.LaunchConfig, pod *corev1.Pod, ctr *corev1.Container) error {
	vs, ms := cfg.Env[EnvVolumes], cfg.Env[EnvVolumeMounts]
	if vs == "" && ms == "" {
		return nil
	}
	if !c.AllowVolumes {
		return fmt.Errorf("%s/%s: %w (allow_volumes is off)", EnvVolumes, EnvVolumeMounts, ErrRefused)
	}
	if vs != "" {
		var v []corev1.Volume
		if err := yaml.UnmarshalStrict([]byte(vs), &v); err != nil {
			return fmt.Errorf("%s: %w", EnvVolumes, err)
		}
		for _, vol := range v {
			// A hostPath volume is the node's own files (its kubelet
			// credentials, the container runtime's socket): only an
			// operator's pod template may have one.
			if vol.HostPath != nil {
				return fmt.Errorf("%s: volume %q is a hostPath volume: %w (put host volumes in the kernelspec's pod template)", EnvVolumes, vol.Name, ErrRefused)
			}
		}
		pod.Spec.Volumes = append(pod.Spec.Volumes, v...)
	}
	if ms != "" {
		var m []corev1.VolumeMount
		if err := yaml.UnmarshalStrict([]byte(ms), &m); err != nil {
			return fmt.Errorf("%s: %w", EnvVolumeMounts, err)
		}
		ctr.VolumeMounts = append(ctr.VolumeMounts, m...)
	}
	return nil
}
