package kubernetes

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/workers"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config is the worker's Kubernetes configuration. Every field can be set
// as a worker option (workers.BackendConfig.Options) under the name in its
// `opt` tag, e.g. `kernelbus worker --rm kubernetes --rm-opt per_user_namespaces=true`.
type Config struct {
	// Kubeconfig is the kubeconfig file to use. Default: the in-cluster
	// service account, else $KUBECONFIG, else ~/.kube/config.
	Kubeconfig string `opt:"kubeconfig"`
	// Namespace is the shared namespace kernel pods run in. Default "default".
	Namespace string `opt:"namespace"`
	// PerUserNamespaces puts each user's kernels in a namespace of their
	// own (NamespacePrefix + user), created with a service account and a
	// role binding at the user's first kernel and deleted with the last.
	// Default false.
	PerUserNamespaces bool `opt:"per_user_namespaces"`
	// NamespacePrefix prefixes per-user namespaces. Default "kb-".
	NamespacePrefix string `opt:"namespace_prefix"`
	// AllowKernelNamespace lets clients choose an existing namespace with
	// KERNEL_NAMESPACE. Default false.
	AllowKernelNamespace bool `opt:"allow_kernel_namespace"`
	// KernelClusterRole is the ClusterRole bound to the kernel service
	// account in per-user namespaces (JEG's EG_KERNEL_CLUSTER_ROLE). Default "edit".
	KernelClusterRole string `opt:"kernel_cluster_role"`
	// ServiceAccount kernel pods run as: in per-user namespaces it is
	// created there. Default "kernel" in per-user namespaces, the
	// namespace's default elsewhere.
	ServiceAccount string `opt:"service_account"`
	// AllowKernelServiceAccount lets clients choose the service account
	// with KERNEL_SERVICE_ACCOUNT_NAME. Default false.
	AllowKernelServiceAccount bool `opt:"allow_kernel_service_account"`
	// Image is the kernel image when neither the spec (config.image_name)
	// nor the pod template names one. Default "".
	Image string `opt:"image"`
	// AllowKernelImage lets clients choose the image with KERNEL_IMAGE.
	// Default false.
	AllowKernelImage bool `opt:"allow_kernel_image"`
	// PodTemplate is a YAML or JSON Pod manifest every kernel pod starts
	// from, unless its kernelspec brings its own (config.pod_template, or a
	// pod-template.yaml beside kernel.json). Default: a pod with one
	// container named "kernel".
	PodTemplate string `opt:"pod_template"`
	// LauncherPath is kernelbus-launcher inside the kernel image: the
	// container's entrypoint. Default "/usr/local/bin/kernelbus-launcher".
	LauncherPath string `opt:"launcher_path"`
	// AllowKernelResources lets clients size pods with KERNEL_CPUS,
	// KERNEL_MEMORY, KERNEL_GPUS and their _LIMIT forms, as JEG's pod
	// template does. Default true.
	AllowKernelResources bool `opt:"allow_kernel_resources"`
	// AllowUserIDs lets clients set KERNEL_UID and KERNEL_GID (the pod's
	// runAsUser and runAsGroup). Default false.
	AllowUserIDs bool `opt:"allow_user_ids"`
	// ProhibitedUIDs and ProhibitedGIDs are refused even when allowed
	// (JEG's EG_PROHIBITED_UIDS/GIDS). Default "0".
	ProhibitedUIDs string `opt:"prohibited_uids"`
	ProhibitedGIDs string `opt:"prohibited_gids"`
	// KernelUID and KernelGID run a kernel pod whose template names no
	// runAsUser/runAsGroup (and whose client set no KERNEL_UID): never
	// root, as the image's USER may be. Default "1000" and "100" (the
	// Jupyter images' jovyan:users).
	KernelUID string `opt:"kernel_uid"`
	KernelGID string `opt:"kernel_gid"`
	// AllowWorkingDir honours KERNEL_WORKING_DIR (JEG's
	// EG_MIRROR_WORKING_DIRS). Default false.
	AllowWorkingDir bool `opt:"allow_working_dir"`
	// AllowVolumes honours KERNEL_VOLUMES and KERNEL_VOLUME_MOUNTS (JSON
	// lists of Kubernetes volumes and volume mounts). Default false.
	AllowVolumes bool `opt:"allow_volumes"`
	// FailUnschedulable fails a start as soon as Kubernetes reports the pod
	// unschedulable; false waits for the launch timeout (for clusters that
	// autoscale). Default true.
	FailUnschedulable bool `opt:"fail_unschedulable"`
	// StopGrace is the pod's termination grace period. Default 10s.
	StopGrace time.Duration `opt:"stop_grace"`
}

func (c *Config) defaults() {
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.NamespacePrefix == "" {
		c.NamespacePrefix = "kb-"
	}
	if c.KernelClusterRole == "" {
		c.KernelClusterRole = "edit"
	}
	if c.LauncherPath == "" {
		c.LauncherPath = "/usr/local/bin/kernelbus-launcher"
	}
	if c.ProhibitedUIDs == "" {
		c.ProhibitedUIDs = "0"
	}
	if c.ProhibitedGIDs == "" {
		c.ProhibitedGIDs = "0"
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 10 * time.Second
	}
	if c.KernelUID == "" {
		c.KernelUID = "1000"
	}
	if c.KernelGID == "" {
		c.KernelGID = "100"
	}
}

// ParseOptions reads a Config from worker options; unknown keys and bad
// values are errors.
func ParseOptions(opts map[string]string) (Config, error) {
	c := Config{AllowKernelResources: true, FailUnschedulable: true}
	o := workers.ReadOptions("kubernetes", opts)
	o.String("kubeconfig", &c.Kubeconfig)
	o.String("namespace", &c.Namespace)
	o.Bool("per_user_namespaces", &c.PerUserNamespaces)
	o.String("namespace_prefix", &c.NamespacePrefix)
	o.Bool("allow_kernel_namespace", &c.AllowKernelNamespace)
	o.String("kernel_cluster_role", &c.KernelClusterRole)
	o.String("service_account", &c.ServiceAccount)
	o.Bool("allow_kernel_service_account", &c.AllowKernelServiceAccount)
	o.String("image", &c.Image)
	o.Bool("allow_kernel_image", &c.AllowKernelImage)
	o.String("pod_template", &c.PodTemplate)
	o.String("launcher_path", &c.LauncherPath)
	o.Bool("allow_kernel_resources", &c.AllowKernelResources)
	o.Bool("allow_user_ids", &c.AllowUserIDs)
	o.String("prohibited_uids", &c.ProhibitedUIDs)
	o.String("prohibited_gids", &c.ProhibitedGIDs)
	o.String("kernel_uid", &c.KernelUID)
	o.String("kernel_gid", &c.KernelGID)
	o.Bool("allow_working_dir", &c.AllowWorkingDir)
	o.Bool("allow_volumes", &c.AllowVolumes)
	o.Bool("fail_unschedulable", &c.FailUnschedulable)
	o.Duration("stop_grace", &c.StopGrace)
	return c, o.Err()
}

// restConfig finds the cluster: an explicit kubeconfig, in-cluster, then
// the usual kubeconfig loading rules.
func (c *Config) restConfig() (*rest.Config, error) {
	if c.Kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return rest.InClusterConfig()
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
}

// prohibited reports whether id is in the comma-separated list.
func prohibited(list string, id int64) bool {
	for _, f := range strings.Split(list, ",") {
		if n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64); err == nil && n == id {
			return true
		}
	}
	return false
}
