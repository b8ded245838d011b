// Package kubernetes runs each kernel's launcher in a pod of its own. The
// launcher dials out to the bus, so a kernel pod needs no Service and no
// inbound port; the worker creates the pod (from a template operators can
// override), follows it through a watch and deletes it when the kernel ends.
package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	k8s "k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
)

// Name is the resource manager's name.
const Name = broker.RMKubernetes

// handle is the saved form of a kernel pod.
type handle struct {
	V         int    `json:"v"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	UID       string `json:"uid,omitempty"`
	// PerUser is true when the namespace is one kernelbus manages for the
	// kernel's user (and deletes with the user's last kernel).
	PerUser bool `json:"per_user,omitempty"`
}

// Backend creates kernel pods.
type Backend struct {
	cfg    Config
	client k8s.Interface
	log    zerolog.Logger

	// pods is the watch cache while Follow runs (nil otherwise).
	mu   sync.RWMutex
	pods corelisters.PodLister
}

// Register adds the kubernetes backend to r.
func Register(r *workers.Registry, log zerolog.Logger) {
	r.Register(Name, func(bc workers.BackendConfig) (workers.Backend, error) {
		cfg, err := ParseOptions(bc.Options)
		if err != nil {
			return nil, err
		}
		return New(cfg, log)
	})
}

// New connects to the cluster named by cfg.
func New(cfg Config, log zerolog.Logger) (*Backend, error) {
	cfg.defaults()
	rc, err := cfg.restConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes: cluster configuration: %w", err)
	}
	return NewWithConfig(cfg, rc, log)
}

// NewWithConfig uses an explicit client configuration.
func NewWithConfig(cfg Config, rc *rest.Config, log zerolog.Logger) (*Backend, error) {
	cfg.defaults()
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "kernelbus-worker"
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 50, 100
	}
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: client: %w", err)
	}
	return &Backend{cfg: cfg, client: cs, log: log.With().Str("rm", Name).Logger()}, nil
}

func (b *Backend) Name() string { return Name }

// EnvPrefix implements workers.EnvShipper: no worker can write into a pod,
// so {env_prefix} stays; the pod's launcher fetches the archive its
// kernel's trusted handle names from the workers over its own bus
// credentials (workers/envserve.go) and unpacks it before the kernel
// starts. The worker keeps the archive in its cache to serve it.
func (b *Backend) EnvPrefix(cfg *broker.LaunchConfig) (string, error) {
	return "{" + broker.EnvPrefixVar + "}", nil
}

var _ workers.EnvShipper = (*Backend)(nil)

// RunsAsUser: with per-user namespaces a kernel pod runs in its user's
// namespace, as its service account, which a warm pod, created before
// anyone asked, cannot be moved to. In a shared namespace every user's pod
// runs as the same service account and uid; the user is only the pod's
// kernelbus.io/user annotation (empty on a warm pod) and its
// KERNEL_USERNAME (absent, as on a warm local kernel), so a warm pod
// serves a request that names a user.
func (b *Backend) RunsAsUser() bool { return b.cfg.PerUserNamespaces }

// What the kubernetes backend offers beyond workers.Backend.
var (
	_ workers.Backend  = (*Backend)(nil)
	_ workers.Follower = (*Backend)(nil)
)

// Start creates the kernel's namespace (per-user mode), Secret and pod. It
// is idempotent on the kernel id: a pod this kernel already has is adopted.
func (b *Backend) Start(ctx context.Context, cfg *broker.LaunchConfig) (workers.Handle, error) {
	p, err := b.cfg.place(cfg)
	if err != nil {
		return workers.Handle{}, refusal(err)
	}
	pod, secret, err := b.cfg.buildPod(cfg, p)
	if err != nil {
		return workers.Handle{}, refusal(err)
	}
	for attempt := 0; ; attempt++ {
		if p.PerUser {
			if err := b.ensureNamespace(ctx, p); err != nil {
				return workers.Handle{}, err
			}
		}
		created, err := b.createPod(ctx, pod, secret)
		if err != nil && attempt == 0 && p.PerUser && isNamespaceTerminating(err) {
			// The user's last kernel just ended and took the namespace
			// with it: wait for it to go and make it again.
			continue
		}
		if err != nil {
			return workers.Handle{}, err
		}
		h := handle{V: 1, Namespace: created.Namespace, Pod: created.Name, UID: string(created.UID), PerUser: p.PerUser}
		data, _ := json.Marshal(h)
		b.log.Info().Str("kernel_id", cfg.KernelID).Str("pod", h.Namespace+"/"+h.Pod).Msg("kernel pod created")
		return workers.Handle{Host: h.Namespace + "/" + h.Pod, Data: data}, nil
	}
}

func (b *Backend) createPod(ctx context.Context, pod *corev1.Pod, secret *corev1.Secret) (*corev1.Pod, error) {
	ns := pod.Namespace
	secrets := b.client.CoreV1().Secrets(ns)
	if _, err := secrets.Create(ctx, secret, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		cur, gerr := secrets.Get(ctx, secret.Name, metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", ns, secret.Name, gerr)
		}
		cur.StringData, cur.Data = secret.StringData, nil
		if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", ns, secret.Name, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, secret.Name, err)
	}
	created, err := b.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A redelivered start: the pod of the first attempt is ours if it
		// carries this kernel's id and is not on its way out.
		cur, gerr := b.client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", ns, pod.Name, gerr)
		}
		if cur.Labels[LabelKernelID] != pod.Labels[LabelKernelID] || cur.DeletionTimestamp != nil {
			return nil, fmt.Errorf("pod %s/%s exists already and is not this kernel's", ns, pod.Name)
		}
		created, err = cur, nil
	}
	if err != nil {
		_ = secrets.Delete(context.Background(), secret.Name, metav1.DeleteOptions{})
		return nil, fmt.Errorf("pod %s/%s: %w", ns, pod.Name, err)
	}
	// The pod owns its Secret, so Kubernetes' garbage collector removes the
	// Secret with the pod, whoever deletes it.
	owner := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":%q,"uid":%q}]}}`, created.Name, created.UID)
	if _, err := secrets.Patch(ctx, secret.Name, types.MergePatchType, []byte(owner), metav1.PatchOptions{}); err != nil {
		b.log.Warn().Err(err).Str("secret", ns+"/"+secret.Name).Msg("could not make the pod own its secret")
	}
	return created, nil
}

func parse(h workers.Handle) (handle, error) {
	var kh handle
	if err := json.Unmarshal(h.Data, &kh); err != nil || kh.Pod == "" || kh.Namespace == "" {
		return kh, fmt.Errorf("kubernetes: bad handle %s", h.Data)
	}
	return kh, nil
}

// getPod reads the pod from the watch cache when Follow runs, else from
// the API server. Nil when it is gone (or replaced by another pod).
func (b *Backend) getPod(ctx context.Context, kh handle) (*corev1.Pod, error) {
	b.mu.RLock()
	lister := b.pods
	b.mu.RUnlock()
	var pod *corev1.Pod
	var err error
	if lister != nil {
		pod, err = lister.Pods(kh.Namespace).Get(kh.Pod)
	} else {
		pod, err = b.client.CoreV1().Pods(kh.Namespace).Get(ctx, kh.Pod, metav1.GetOptions{})
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if kh.UID != "" && string(pod.UID) != kh.UID {
		return nil, nil
	}
	return pod, nil
}

// Poll reports on the kernel's pod.
func (b *Backend) Poll(ctx context.Context, h workers.Handle) (workers.Status, error) {
	kh, err := parse(h)
	if err != nil {
		return workers.Status{}, err
	}
	pod, err := b.getPod(ctx, kh)
	if err != nil {
		return workers.Status{}, err
	}
	if pod == nil {
		return workers.Status{Exited: true, Reason: fmt.Sprintf("pod %s/%s is gone", kh.Namespace, kh.Pod)}, nil
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return workers.Status{Exited: true, Reason: podEnded(pod)}, nil
	}
	return workers.Status{Running: true}, nil
}

// Stop deletes the kernel's pod (its grace period lets the launcher shut
// the kernel down), its Secret, and the user's namespace with the last pod.
func (b *Backend) Stop(ctx context.Context, h workers.Handle, grace time.Duration) error {
	kh, err := parse(h)
	if err != nil {
		return err
	}
	if err := b.deletePod(ctx, kh.Namespace, kh.Pod, types.UID(kh.UID), grace, "stopped by kernelbus"); err != nil {
		return err
	}
	if kh.PerUser {
		b.removeNamespaceIfUnused(ctx, kh.Namespace, kh.Pod)
	}
	return nil
}

// deletePod marks the pod as stopped by kernelbus (so the watch does not
// report it lost), then deletes it and its Secret.
func (b *Backend) deletePod(ctx context.Context, ns, name string, uid types.UID, grace time.Duration, why string) error {
	pods := b.client.CoreV1().Pods(ns)
	mark := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, AnnotationStopped, why)
	_, err := pods.Patch(ctx, name, types.MergePatchType, []byte(mark), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("pod %s/%s: %w", ns, name, err)
	}
	if err == nil {
		secs := int64(grace.Seconds())
		opts := metav1.DeleteOptions{GracePeriodSeconds: &secs}
		if uid != "" {
			opts.Preconditions = &metav1.Preconditions{UID: &uid}
		}
		err = pods.Delete(ctx, name, opts)
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
		}
	}
	err = b.client.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		b.log.Warn().Err(err).Str("secret", ns+"/"+name).Msg("could not delete the kernel's secret")
	}
	return nil
}

// podEnded explains how a finished pod ended.
func podEnded(pod *corev1.Pod) string {
	where := pod.Namespace + "/" + pod.Name
	if pod.Status.Reason == "Evicted" {
		return fmt.Sprintf("pod %s was evicted: %s", where, pod.Status.Message)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			s := fmt.Sprintf("pod %s %s: container %s exited with code %d", where, strings.ToLower(string(pod.Status.Phase)), cs.Name, t.ExitCode)
			if t.Reason != "" {
				s += " (" + t.Reason + ")"
			}
			if t.Message != "" {
				s += ": " + t.Message
			}
			return s
		}
	}
	s := fmt.Sprintf("pod %s %s", where, strings.ToLower(string(pod.Status.Phase)))
	if pod.Status.Reason != "" {
		s += ": " + pod.Status.Reason
	}
	if pod.Status.Message != "" {
		s += ": " + pod.Status.Message
	}
	return s
}

// fatalWaiting are container waiting reasons that will not fix themselves
// before a launch timeout.
var fatalWaiting = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true, "ErrImageNeverPull": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// pendingProblem says why a pending pod cannot start, or "" if it may.
func (b *Backend) pendingProblem(pod *corev1.Pod) string {
	where := pod.Namespace + "/" + pod.Name
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable && b.cfg.FailUnschedulable {
			return fmt.Sprintf("Kubernetes cannot schedule kernel pod %s: %s", where, c.Message)
		}
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && fatalWaiting[w.Reason] {
			return fmt.Sprintf("kernel pod %s cannot start: container %s: %s: %s", where, cs.Name, w.Reason, w.Message)
		}
	}
	return ""
}

// refusal is a start the request itself made impossible: 403 when the
// worker's configuration does not allow what it asks (ErrRefused), else
// 400 (a value that is not valid), so the client's start says so rather
// than 500.
func refusal(err error) error {
	kind := broker.ErrBadRequest
	if errors.Is(err, ErrRefused) {
		kind = broker.ErrForbidden
	}
	return &broker.Error{Status: kind.Status, Code: kind.Code, Message: err.Error()}
}
