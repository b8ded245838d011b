package kubernetes

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/workers"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Follow watches every kernel pod kernelbus manages (by label, so a
// restarted worker adopts the pods of the one before it) and reports what
// the launcher inside cannot: a pod that cannot be scheduled or pull its
// image fails the start, a pod deleted, evicted or failed makes its kernel
// dead. Pods whose kernel ended are deleted, with the user's namespace
// after their last one.
func (b *Backend) Follow(ctx context.Context, k workers.Kernels) error {
	sel := labels.SelectorFromSet(labels.Set{LabelComponent: ComponentKernel, LabelManagedBy: ManagedBy}).String()
	ns := metav1.NamespaceAll
	if !b.cfg.PerUserNamespaces && !b.cfg.AllowKernelNamespace {
		ns = b.cfg.Namespace // a worker with rights in one namespace only
	}
	factory := informers.NewSharedInformerFactoryWithOptions(b.client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }))
	inf := factory.Core().V1().Pods()
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "kernel-pods"})
	f := &follower{b: b, k: k, q: q, gone: map[string]*corev1.Pod{}}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { f.enqueue(o, false) },
		UpdateFunc: func(_, o any) { f.enqueue(o, false) },
		DeleteFunc: func(o any) { f.enqueue(o, true) },
	}); err != nil {
		return err
	}
	lister := inf.Lister()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	factory.Start(fctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(fctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	b.mu.Lock()
	b.pods = lister
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.pods = nil
		b.mu.Unlock()
	}()
	b.log.Info().Str("namespace", ns).Msg("following kernel pods")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for f.next(fctx) {
		}
	}()
	<-ctx.Done()
	q.ShutDown()
	wg.Wait()
	return nil
}

type follower struct {
	b *Backend
	k workers.Kernels
	q workqueue.TypedRateLimitingInterface[string]

	mu   sync.Mutex
	gone map[string]*corev1.Pod // last state of deleted pods, by key
}

func (f *follower) enqueue(o any, deleted bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	if deleted {
		f.mu.Lock()
		f.gone[key] = pod
		f.mu.Unlock()
	}
	f.q.Add(key)
}

func (f *follower) next(ctx context.Context) bool {
	key, quit := f.q.Get()
	if quit {
		return false
	}
	defer f.q.Done(key)
	if err := f.sync(ctx, key); err != nil && ctx.Err() == nil {
		f.b.log.Warn().Err(err).Str("pod", key).Msg("kernel pod: will retry")
		f.q.AddRateLimited(key)
		return true
	}
	f.q.Forget(key)
	return true
}

// sync acts on the current state of one kernel pod.
func (f *follower) sync(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	b := f.b
	pod, err := b.pods.Pods(ns).Get(name)
	if err != nil {
		// Deleted: report it unless kernelbus deleted it.
		f.mu.Lock()
		last := f.gone[key]
		delete(f.gone, key)
		f.mu.Unlock()
		if last == nil {
			return nil
		}
		if last.Annotations[AnnotationStopped] == "" {
			if err := f.k.Lost(ctx, last.Labels[LabelKernelID], deletedReason(last)); err != nil {
				return err
			}
		}
		if b.perUser(ctx, ns) {
			b.removeNamespaceIfUnused(ctx, ns, name)
		}
		return nil
	}
	id := pod.Labels[LabelKernelID]
	if id == "" {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		if pod.Annotations[AnnotationStopped] == "" {
			return f.k.Lost(ctx, id, deletedReason(pod))
		}
		return nil
	}
	over := false
	switch pod.Status.Phase {
	case corev1.PodPending:
		if why := b.pendingProblem(pod); why != "" {
			if err := f.k.Lost(ctx, id, why); err != nil {
				return err
			}
			over = true
		}
	case corev1.PodSucceeded, corev1.PodFailed:
		if err := f.k.Lost(ctx, id, podEnded(pod)); err != nil {
			return err
		}
		over = true
	}
	if !over && pod.Status.Phase == corev1.PodPending {
		return nil
	}
	// A pod whose kernel ended (shut down through the launcher, failed,
	// or lost) has nothing left to do.
	ended, err := f.k.Ended(ctx, id)
	if err != nil {
		return err
	}
	if !ended {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return b.deletePod(dctx, pod.Namespace, pod.Name, pod.UID, b.cfg.StopGrace, "the kernel ended")
}

func deletedReason(pod *corev1.Pod) string {
	return fmt.Sprintf("kernel pod %s/%s was deleted outside kernelbus", pod.Namespace, pod.Name)
}

// perUser reports whether ns is a namespace kernelbus made for one user.
func (b *Backend) perUser(ctx context.Context, ns string) bool {
	n, err := b.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	return err == nil && n.Labels[LabelPerUser] == "true" && n.Labels[LabelManagedBy] == ManagedBy
}
