package kubernetes

import (
	"context"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// NodeUse is one node in the cluster overview: what it can give and what
// kernel pods ask of it.
type NodeUse struct {
	Name            string `json:"name"`
	Ready           bool   `json:"ready"`
	AllocatableCPU  string `json:"allocatable_cpu"`
	AllocatableMem  string `json:"allocatable_memory"`
	KernelCPUMilli  int64  `json:"kernel_cpu_requested_milli"`
	KernelMemMB     int64  `json:"kernel_memory_requested_mb"`
	KernelPods      int    `json:"kernel_pods"`
	AllocatableGPUs string `json:"allocatable_gpus,omitempty"`
}

// Report implements workers.Reporter: kernel pods per namespace and
// phase (from the pods the worker follows), and the nodes with their
// allocatable resources and what kernel pods request of them. A worker
// whose RBAC does not let it list nodes reports the pods and why the
// nodes are missing.
func (b *Backend) Report(ctx context.Context) (any, error) {
	out := map[string]any{}
	b.mu.RLock()
	lister := b.pods
	b.mu.RUnlock()
	perNode := map[string]*NodeUse{}
	if lister != nil {
		pods, err := lister.List(labels.Everything())
		if err != nil {
			return nil, err
		}
		byNS := map[string]map[string]int{}
		for _, p := range pods {
			if byNS[p.Namespace] == nil {
				byNS[p.Namespace] = map[string]int{}
			}
			byNS[p.Namespace][string(p.Status.Phase)]++
			if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			n := perNode[p.Spec.NodeName]
			if n == nil {
				n = &NodeUse{Name: p.Spec.NodeName}
				perNode[n.Name] = n
			}
			n.KernelPods++
			for _, c := range p.Spec.Containers {
				n.KernelCPUMilli += c.Resources.Requests.Cpu().MilliValue()
				n.KernelMemMB += c.Resources.Requests.Memory().Value() >> 20
			}
		}
		out["kernel_pods"] = byNS
	}
	nodes, err := b.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		out["nodes_error"] = err.Error()
	} else {
		list := make([]NodeUse, 0, len(nodes.Items))
		for _, nd := range nodes.Items {
			u := NodeUse{Name: nd.Name}
			if n := perNode[nd.Name]; n != nil {
				u = *n
			}
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady {
					u.Ready = c.Status == corev1.ConditionTrue
				}
			}
			a := nd.Status.Allocatable
			u.AllocatableCPU, u.AllocatableMem = a.Cpu().String(), a.Memory().String()
			if g, ok := a["nvidia.com/gpu"]; ok {
				u.AllocatableGPUs = g.String()
			}
			list = append(list, u)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
		out["nodes"] = list
	}
	return out, nil
}
