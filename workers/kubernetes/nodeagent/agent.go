// Package nodeagent is a stand-in kubelet for tests against a real API
// server where no kubelet can run containers. It registers a Node, watches
// the pods bound to it, runs each pod's first container command with its
// env as a local process (the "image" is whatever is installed here, or an
// unpacked image root the process is chrooted into, with the pod's volumes
// written inside it), and reports phase, pod IP and container state back
// through the API, as a kubelet would. Deleting a pod sends SIGTERM to its process group, SIGKILL
// after the grace period, then finalizes the deletion.
package nodeagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	k8s "k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
)

// Config of an agent.
type Config struct {
	// Client talks to the API server.
	Client k8s.Interface
	// Node is the node's name. Default "node-1".
	Node string
	// CPU, Memory and Pods are the node's allocatable resources, which the
	// scheduler fits pods into. Default "4", "8Gi", 110.
	CPU, Memory string
	Pods        int
	// BaseEnv is the environment every process starts with before its
	// container's env (PATH, HOME...). Default: PATH and HOME of this process.
	BaseEnv []string
	// Images the node can "pull"; a pod naming another image waits with
	// ErrImagePull. Empty: every image.
	Images []string
	// LogDir receives each container's output as <namespace>_<pod>.log.
	// Default: discarded.
	LogDir string
	// Rootfs are unpacked images by image name. A pod of one of them runs
	// chrooted into a copy of the image's files with its volumes (Secrets,
	// ConfigMaps, emptyDirs, the projected service account token) written at
	// their mount paths, as the image's user or the pod's runAsUser, and
	// with the image's entrypoint when the container names no command: what
	// the kernelbus chart's pods need. Other images run on the host as
	// before, volumes ignored. Needs root.
	Rootfs map[string]Rootfs
	// PodsDir holds the pods' roots (default: a temporary folder).
	PodsDir string
	// KubernetesService is the API server's host:port given to every
	// container as KUBERNETES_SERVICE_HOST/PORT, as a kubelet does with the
	// kubernetes Service's address (unroutable here), so that in-cluster
	// clients find the API server. Empty: not set.
	KubernetesService string
	// SharedHost runs pods of host images as before: as the agent's user,
	// in its pid and mount namespaces, where each can see, read and signal
	// the others. By default a root agent runs each in a pid and mount
	// namespace of its own (its own /proc, /tmp and /dev/shm) as its
	// runAsUser/runAsGroup and fsGroup, as a kubelet would (sandboxArgv);
	// an agent that is not root cannot, and shares.
	SharedHost bool
	// Log for the agent's own messages.
	Log zerolog.Logger
}

// Rootfs is an image unpacked in a folder (ociimage.Unpack).
type Rootfs struct {
	Dir                  string
	Entrypoint, Cmd, Env []string
	WorkingDir           string
	// UID and GID the image's config names (its USER).
	UID, GID int
}

// IP every pod of the agent gets: processes run on this machine.
const IP = "127.0.0.1"

// Agent is one running node agent.
type Agent struct {
	cfg    Config
	client k8s.Interface
	pods   corelisters.PodLister
	q      workqueue.TypedRateLimitingInterface[string]
	ctx    context.Context // until Stop
	stop   context.CancelFunc
	wg     sync.WaitGroup

	// ownDir is PodsDir when the agent made it (removed by Stop).
	ownDir string

	mu    sync.Mutex
	procs map[types.UID]*proc
}

type proc struct {
	key     string
	root    string // the pod's root folder, removed when the pod goes
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	exit    error
	exited  time.Time
	// restarts counts the container's earlier runs in this pod.
	restarts int
	termed   bool
	killer   *time.Timer
}

// Start registers the node and starts following its pods.
func Start(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Client == nil {
		return nil, errors.New("nodeagent: a client is required")
	}
	if cfg.Node == "" {
		cfg.Node = "node-1"
	}
	if cfg.CPU == "" {
		cfg.CPU = "4"
	}
	if cfg.Memory == "" {
		cfg.Memory = "8Gi"
	}
	if cfg.Pods == 0 {
		cfg.Pods = 110
	}
	if cfg.BaseEnv == nil {
		for _, k := range []string{"PATH", "HOME", "LANG", "TMPDIR"} {
			if v, ok := os.LookupEnv(k); ok {
				cfg.BaseEnv = append(cfg.BaseEnv, k+"="+v)
			}
		}
	}
	ownDir := ""
	if len(cfg.Rootfs) > 0 && cfg.PodsDir == "" {
		d, err := os.MkdirTemp("", "kb-nodeagent-pods-")
		if err != nil {
			return nil, err
		}
		cfg.PodsDir, ownDir = d, d
	}
	a := &Agent{cfg: cfg, client: cfg.Client, procs: map[types.UID]*proc{}, ownDir: ownDir}
	if err := a.register(ctx); err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(context.Background())
	a.ctx, a.stop = actx, cancel
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
	}))
	inf := factory.Core().V1().Pods()
	a.q = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodeagent"})
	enqueue := func(o any) {
		if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = t.Obj
		}
		if p, ok := o.(*corev1.Pod); ok {
			a.q.Add(p.Namespace + "/" + p.Name)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		cancel()
		return nil, err
	}
	a.pods = inf.Lister()
	factory.Start(actx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		cancel()
		factory.Shutdown()
		return nil, errors.New("nodeagent: pod cache did not sync")
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for a.next(actx) {
		}
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		<-actx.Done()
		a.q.ShutDown()
		factory.Shutdown()
	}()
	return a, nil
}

// Stop kills every process the agent runs and waits for them.
func (a *Agent) Stop() {
	a.stop()
	a.wg.Wait()
	a.mu.Lock()
	procs := make([]*proc, 0, len(a.procs))
	for _, p := range a.procs {
		procs = append(procs, p)
	}
	a.mu.Unlock()
	for _, p := range procs {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if a.ownDir != "" {
		_ = os.RemoveAll(a.ownDir)
	}
}

// Running lists the pods ("namespace/name") whose process is alive.
func (a *Agent) Running() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, p := range a.procs {
		select {
		case <-p.done:
		default:
			out = append(out, p.key)
		}
	}
	slices.Sort(out)
	return out
}

func (a *Agent) register(ctx context.Context) error {
	list := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(a.cfg.CPU),
		corev1.ResourceMemory: resource.MustParse(a.cfg.Memory),
		corev1.ResourcePods:   *resource.NewQuantity(int64(a.cfg.Pods), resource.DecimalSI),
	}
	now := metav1.Now()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.Node, Labels: map[string]string{"kubernetes.io/hostname": a.cfg.Node, "kubernetes.io/os": "linux"}},
		Status: corev1.NodeStatus{
			Capacity: list, Allocatable: list,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "kernelbus test node agent is ready", LastHeartbeatTime: now, LastTransitionTime: now}},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: IP}, {Type: corev1.NodeHostName, Address: a.cfg.Node}},
			NodeInfo:  corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "kernelbus-nodeagent"},
		},
	}
	created, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("nodeagent: register node %s: %w", a.cfg.Node, err)
	}
	created.Status = node.Status
	updated, err := a.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("nodeagent: node %s status: %w", a.cfg.Node, err)
	}
	// Admission taints new nodes not-ready; the node lifecycle controller
	// (not run here) lifts that once the node reports Ready.
	if len(updated.Spec.Taints) > 0 {
		updated.Spec.Taints = nil
		if _, err := a.client.CoreV1().Nodes().Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("nodeagent: node %s taints: %w", a.cfg.Node, err)
		}
	}
	return nil
}

func (a *Agent) next(ctx context.Context) bool {
	key, quit := a.q.Get()
	if quit {
		return false
	}
	defer a.q.Done(key)
	if err := a.sync(ctx, key); err != nil && ctx.Err() == nil {
		a.cfg.Log.Debug().Err(err).Str("pod", key).Msg("nodeagent: retrying")
		a.q.AddRateLimited(key)
		return true
	}
	a.q.Forget(key)
	return true
}

func (a *Agent) procFor(key string) *proc {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.procs {
		if p.key == key {
			return p
		}
	}
	return nil
}

func (a *Agent) sync(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Gone from the API: nothing may keep running for it.
		if p := a.procFor(key); p != nil {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
		return nil
	}
	if err != nil {
		return err
	}
	a.mu.Lock()
	p := a.procs[pod.UID]
	a.mu.Unlock()

	if pod.DeletionTimestamp != nil {
		return a.terminate(ctx, pod, p)
	}
	if p != nil {
		select {
		case <-p.done:
			if restarts(pod, p) {
				// As a kubelet's crash loop: the same pod, its
				// container started again after a growing back-off.
				wait := time.Duration(1<<min(p.restarts, 5))*time.Second - time.Since(p.exited)
				if wait > 0 {
					a.q.AddAfter(key, wait)
					now := metav1.Now()
					return a.updateStatus(ctx, pod, func(s *corev1.PodStatus) {
						setReady(s, false, now)
						for i := range s.ContainerStatuses {
							s.ContainerStatuses[i].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
								Message: "back-off restarting the failed container"}}
						}
					})
				}
				a.forget(pod.UID)
				return a.runRestarted(ctx, pod, p.restarts+1)
			}
			return a.reportExit(ctx, pod, p)
		default:
			return nil
		}
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	return a.run(ctx, pod)
}

// restarts says whether the pod's restart policy starts its container again
// after this exit (Always, the default, or OnFailure after a failure).
func restarts(pod *corev1.Pod, p *proc) bool {
	switch pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return p.exit != nil
	}
	return true
}

// runRestarted starts a restarted container and records its restart count.
func (a *Agent) runRestarted(ctx context.Context, pod *corev1.Pod, n int) error {
	if err := a.run(ctx, pod); err != nil {
		return err
	}
	a.mu.Lock()
	if p := a.procs[pod.UID]; p != nil {
		p.restarts = n
	}
	a.mu.Unlock()
	return a.updateStatus(ctx, pod, func(s *corev1.PodStatus) {
		for i := range s.ContainerStatuses {
			s.ContainerStatuses[i].RestartCount = int32(n)
		}
	})
}

// terminate handles a pod being deleted: SIGTERM, SIGKILL after its grace
// period, then the final delete that a kubelet sends.
func (a *Agent) terminate(ctx context.Context, pod *corev1.Pod, p *proc) error {
	if p != nil {
		select {
		case <-p.done:
		default:
			a.mu.Lock()
			if !p.termed {
				p.termed = true
				pid := p.cmd.Process.Pid
				_ = syscall.Kill(-pid, syscall.SIGTERM)
				grace := 30 * time.Second
				if pod.DeletionGracePeriodSeconds != nil {
					grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
				}
				p.killer = time.AfterFunc(grace, func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
			}
			a.mu.Unlock()
			return nil // the exit enqueues the pod again
		}
	}
	zero := int64(0)
	uid := pod.UID
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return err
	}
	a.forget(pod.UID)
	return nil
}

func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.procs[uid]; p != nil {
		if p.killer != nil {
			p.killer.Stop()
		}
		if p.root != "" {
			_ = os.RemoveAll(filepath.Dir(p.root))
		}
		delete(a.procs, uid)
	}
}

// run starts the pod's first container as a local process.
func (a *Agent) run(ctx context.Context, pod *corev1.Pod) error {
	if len(pod.Spec.Containers) == 0 {
		return nil
	}
	c := pod.Spec.Containers[0]
	if len(a.cfg.Images) > 0 && !slices.Contains(a.cfg.Images, c.Image) {
		return a.setWaiting(ctx, pod, "ErrImagePull", fmt.Sprintf("failed to pull image %q: not found on this node", c.Image))
	}
	img, inRoot := a.cfg.Rootfs[c.Image]
	argv := append(append([]string{}, c.Command...), c.Args...)
	if inRoot && len(c.Command) == 0 {
		args := c.Args
		if len(args) == 0 {
			args = img.Cmd
		}
		argv = append(append([]string{}, img.Entrypoint...), args...)
	}
	if len(argv) == 0 || (!inRoot && len(c.Command) == 0) {
		return a.setWaiting(ctx, pod, "CreateContainerError", "the test node agent runs only containers with a command (or an image it has unpacked)")
	}
	env, err := a.env(ctx, pod, c)
	if err != nil {
		_ = a.setWaiting(ctx, pod, "CreateContainerConfigError", err.Error())
		return err // retried, as a kubelet does
	}
	if host, port, ok := strings.Cut(a.cfg.KubernetesService, ":"); ok {
		env = append([]string{"KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port}, env...)
	}
	base := a.cfg.BaseEnv
	var root string
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	dir := c.WorkingDir
	if inRoot {
		uid, gid := podUser(pod, c, img)
		if root, err = a.podRoot(ctx, pod, c, img, uid, gid); err != nil {
			_ = a.setWaiting(ctx, pod, "CreateContainerConfigError", err.Error())
			return err
		}
		base = img.Env
		attr.Chroot = root
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if dir == "" {
			dir = img.WorkingDir
		}
		if dir == "" {
			dir = "/"
		}
	}
	sandboxed := !inRoot && !a.cfg.SharedHost && canSandbox()
	if sandboxed {
		uid, gid, fsGroup := hostUser(pod, c)
		if uid != 0 {
			// The agent's HOME (root's) is closed to the pod's user; a
			// container's env may still name its own.
			base = append(append([]string{}, base...), "HOME=/tmp")
		}
		argv = sandboxArgv(argv, uid, gid, fsGroup, dir)
		dir = "/"
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if inRoot {
		// The path is the image's, resolved after the chroot: whatever
		// exec.Command found (or failed to find) on the host does not count.
		cmd.Path, cmd.Err = argv[0], nil
	}
	cmd.Env = append(append([]string{}, base...), env...)
	cmd.Dir = dir
	cmd.SysProcAttr = attr
	var logf *os.File
	if a.cfg.LogDir != "" {
		logf, err = os.OpenFile(filepath.Join(a.cfg.LogDir, pod.Namespace+"_"+pod.Name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err == nil {
			cmd.Stdout, cmd.Stderr = logf, logf
		}
	}
	if err := cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		if root != "" {
			_ = os.RemoveAll(filepath.Dir(root))
		}
		return a.setWaiting(ctx, pod, "RunContainerError", err.Error())
	}
	p := &proc{key: pod.Namespace + "/" + pod.Name, root: root, cmd: cmd, started: time.Now(), done: make(chan struct{})}
	a.mu.Lock()
	a.procs[pod.UID] = p
	a.mu.Unlock()
	go func() {
		p.exit = cmd.Wait()
		p.exited = time.Now()
		if logf != nil {
			logf.Close()
		}
		close(p.done)
		a.q.Add(p.key)
	}()
	a.cfg.Log.Info().Str("pod", p.key).Int("pid", cmd.Process.Pid).Msg("nodeagent: container started")
	started := metav1.NewTime(p.started)
	// A container with an HTTP readiness probe is ready once the probe
	// answers 2xx/3xx (probed until then); any other at once.
	probe := c.ReadinessProbe
	ready := probe == nil || probe.HTTPGet == nil
	err = a.updateStatus(ctx, pod, func(s *corev1.PodStatus) {
		s.Phase, s.PodIP, s.HostIP = corev1.PodRunning, IP, IP
		s.PodIPs, s.HostIPs = []corev1.PodIP{{IP: IP}}, []corev1.HostIP{{IP: IP}}
		s.StartTime = &started
		for _, t := range []corev1.PodConditionType{corev1.PodInitialized, corev1.PodScheduled} {
			setCondition(s, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: started})
		}
		setReady(s, ready, started)
		yes := true
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: ready, Started: &yes,
			ContainerID: fmt.Sprintf("local://%d", cmd.Process.Pid), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}}
	})
	if err == nil && !ready {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.probeReady(pod, c, p)
		}()
	}
	return err
}

func setReady(s *corev1.PodStatus, ready bool, at metav1.Time) {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	for _, t := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		setCondition(s, corev1.PodCondition{Type: t, Status: st, LastTransitionTime: at})
	}
	for i := range s.ContainerStatuses {
		s.ContainerStatuses[i].Ready = ready
	}
}

// probeReady runs c's HTTP readiness probe until it passes, then marks the
// pod ready; it gives up when the process ends or the agent stops. Unlike a
// kubelet it probes only until the first success, every 200ms at most.
func (a *Agent) probeReady(pod *corev1.Pod, c corev1.Container, p *proc) {
	g := c.ReadinessProbe.HTTPGet
	port := g.Port.IntValue()
	if g.Port.Type == intstr.String {
		for _, cp := range c.Ports {
			if cp.Name == g.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
	}
	scheme := "http"
	if g.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	u := fmt.Sprintf("%s://%s:%d%s", scheme, IP, port, g.Path)
	// A kubelet does not verify a probed pod's certificate either.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer hc.CloseIdleConnections()
	period := time.Duration(c.ReadinessProbe.PeriodSeconds) * time.Second
	period = min(max(period, 50*time.Millisecond), 200*time.Millisecond)
	for {
		req, _ := http.NewRequestWithContext(a.ctx, http.MethodGet, u, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 400 {
				break
			}
		}
		select {
		case <-p.done:
			return
		case <-a.ctx.Done():
			return
		case <-time.After(period):
		}
	}
	now := metav1.Now()
	if err := a.updateStatus(a.ctx, pod, func(s *corev1.PodStatus) { setReady(s, true, now) }); err != nil {
		a.cfg.Log.Warn().Err(err).Str("pod", p.key).Msg("nodeagent: marking the pod ready")
		return
	}
	a.cfg.Log.Info().Str("pod", p.key).Str("probe", u).Msg("nodeagent: container ready")
}

// reportExit writes the final phase of a pod whose process ended.
func (a *Agent) reportExit(ctx context.Context, pod *corev1.Pod, p *proc) error {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	code, reason := 0, "Completed"
	var ee *exec.ExitError
	if errors.As(p.exit, &ee) {
		code, reason = ee.ExitCode(), "Error"
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	phase := corev1.PodSucceeded
	if code != 0 {
		phase = corev1.PodFailed
	}
	a.cfg.Log.Info().Str("pod", p.key).Int("exit_code", code).Msg("nodeagent: container exited")
	now := metav1.Now()
	return a.updateStatus(ctx, pod, func(s *corev1.PodStatus) {
		s.Phase = phase
		setCondition(s, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now})
		setCondition(s, corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now})
		for i := range s.ContainerStatuses {
			cs := &s.ContainerStatuses[i]
			var startedAt metav1.Time
			if cs.State.Running != nil {
				startedAt = cs.State.Running.StartedAt
			}
			cs.Ready = false
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason,
				StartedAt: startedAt, FinishedAt: now, ContainerID: cs.ContainerID}}
		}
	})
}

func (a *Agent) setWaiting(ctx context.Context, pod *corev1.Pod, reason, msg string) error {
	c := pod.Spec.Containers[0]
	return a.updateStatus(ctx, pod, func(s *corev1.PodStatus) {
		s.Phase, s.HostIP = corev1.PodPending, IP
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}}
	})
}

func (a *Agent) updateStatus(ctx context.Context, pod *corev1.Pod, fn func(*corev1.PodStatus)) error {
	pods := a.client.CoreV1().Pods(pod.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != pod.UID {
			return nil
		}
		before := cur.Status.DeepCopy()
		fn(&cur.Status)
		if equality.Semantic.DeepEqual(before, &cur.Status) {
			return nil // nothing new: no update, so no event that loops back here
		}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

func setCondition(s *corev1.PodStatus, c corev1.PodCondition) {
	for i := range s.Conditions {
		if s.Conditions[i].Type == c.Type {
			s.Conditions[i] = c
			return
		}
	}
	s.Conditions = append(s.Conditions, c)
}

// fieldValue is the value of a pod field an env fieldRef or a downward API
// file names; ok is false for a field the agent does not support.
func fieldValue(pod *corev1.Pod, path string) (v string, ok bool) {
	switch path {
	case "metadata.name":
		return pod.Name, true
	case "metadata.namespace":
		return pod.Namespace, true
	case "metadata.uid":
		return string(pod.UID), true
	case "spec.nodeName":
		return pod.Spec.NodeName, true
	case "status.podIP", "status.hostIP":
		return IP, true
	}
	return "", false
}

// env resolves a container's env as a kubelet does: values, Secret and
// ConfigMap keys, and the pod fields tests need.
func (a *Agent) env(ctx context.Context, pod *corev1.Pod, c corev1.Container) ([]string, error) {
	var out []string
	for _, e := range c.Env {
		v := e.Value
		if src := e.ValueFrom; src != nil {
			switch {
			case src.SecretKeyRef != nil:
				s, err := a.client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.SecretKeyRef.Name, metav1.GetOptions{})
				if err != nil {
					return nil, fmt.Errorf("env %s: secret %q: %w", e.Name, src.SecretKeyRef.Name, err)
				}
				b, ok := s.Data[src.SecretKeyRef.Key]
				if !ok {
					return nil, fmt.Errorf("env %s: secret %q has no key %q", e.Name, src.SecretKeyRef.Name, src.SecretKeyRef.Key)
				}
				v = string(b)
			case src.ConfigMapKeyRef != nil:
				cm, err := a.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMapKeyRef.Name, metav1.GetOptions{})
				if err != nil {
					return nil, fmt.Errorf("env %s: config map %q: %w", e.Name, src.ConfigMapKeyRef.Name, err)
				}
				v = cm.Data[src.ConfigMapKeyRef.Key]
			case src.FieldRef != nil:
				var ok bool
				if v, ok = fieldValue(pod, src.FieldRef.FieldPath); !ok {
					return nil, fmt.Errorf("env %s: field %s is not supported by the test node agent", e.Name, src.FieldRef.FieldPath)
				}
			}
		}
		if strings.ContainsRune(e.Name, '=') {
			continue
		}
		out = append(out, e.Name+"="+v)
	}
	return out, nil
}
