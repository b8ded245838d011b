package yarn

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// ClusterMetrics is what the overview shows of /ws/v1/cluster/metrics.
type ClusterMetrics struct {
	AppsRunning         int64 `json:"appsRunning"`
	AppsPending         int64 `json:"appsPending"`
	ContainersAllocated int64 `json:"containersAllocated"`
	AllocatedMB         int64 `json:"allocatedMB"`
	TotalMB             int64 `json:"totalMB"`
	AvailableMB         int64 `json:"availableMB"`
	AllocatedVCores     int64 `json:"allocatedVirtualCores"`
	TotalVCores         int64 `json:"totalVirtualCores"`
	ActiveNodes         int64 `json:"activeNodes"`
	UnhealthyNodes      int64 `json:"unhealthyNodes"`
	LostNodes           int64 `json:"lostNodes"`
}

// QueueUse is one leaf queue in the overview.
type QueueUse struct {
	Path        string  `json:"path"`
	State       string  `json:"state,omitempty"`
	MaxCapacity float64 `json:"abs_max_capacity,omitempty"`
	UsedMB      int64   `json:"used_mb"`
	UsedVCores  int64   `json:"used_vcores"`
	ActiveApps  int64   `json:"active_apps"`
	MaxMB       int64   `json:"max_mb,omitempty"`
	MaxVCores   int64   `json:"max_vcores,omitempty"`
}

// Metrics reads the cluster metrics.
func (r *RM) Metrics(ctx context.Context) (*ClusterMetrics, error) {
	var out struct {
		ClusterMetrics ClusterMetrics `json:"clusterMetrics"`
	}
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/metrics", nil, &out); err != nil {
		return nil, err
	}
	return &out.ClusterMetrics, nil
}

// Allocation is the largest container the ResourceManager grants.
type Allocation struct {
	MemoryMB int64 `json:"memory_mb"`
	VCores   int64 `json:"vcores"`
}

// confProperty reads one setting of the ResourceManager's running
// configuration (its /conf servlet, JSON).
func (r *RM) confProperty(ctx context.Context, name string) (int64, error) {
	var out struct {
		Property *struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"property"`
	}
	if err := r.do(ctx, http.MethodGet, "/conf?format=json&name="+name, nil, &out); err != nil {
		return 0, err
	}
	if out.Property == nil {
		return 0, fmt.Errorf("yarn: the ResourceManager's configuration has no %s", name)
	}
	return strconv.ParseInt(strings.TrimSpace(out.Property.Value), 10, 64)
}

// MaxAllocation is the largest container YARN grants:
// yarn.scheduler.maximum-allocation-mb and -vcores, bounded, as the
// scheduler does, by the largest running node.
func (r *RM) MaxAllocation(ctx context.Context) (*Allocation, error) {
	mb, err := r.confProperty(ctx, "yarn.scheduler.maximum-allocation-mb")
	if err != nil {
		return nil, err
	}
	vc, err := r.confProperty(ctx, "yarn.scheduler.maximum-allocation-vcores")
	if err != nil {
		return nil, err
	}
	var nodes struct {
		Nodes *struct {
			Node []struct {
				State         string `json:"state"`
				UsedMemoryMB  int64  `json:"usedMemoryMB"`
				AvailMemoryMB int64  `json:"availMemoryMB"`
				UsedVCores    int64  `json:"usedVirtualCores"`
				AvailVCores   int64  `json:"availableVirtualCores"`
			} `json:"node"`
		} `json:"nodes"`
	}
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/nodes?states=RUNNING", nil, &nodes); err == nil && nodes.Nodes != nil && len(nodes.Nodes.Node) > 0 {
		var nmb, nvc int64
		for _, n := range nodes.Nodes.Node {
			nmb, nvc = max(nmb, n.UsedMemoryMB+n.AvailMemoryMB), max(nvc, n.UsedVCores+n.AvailVCores)
		}
		if nmb > 0 {
			mb = min(mb, nmb)
		}
		if nvc > 0 {
			vc = min(vc, nvc)
		}
	}
	return &Allocation{MemoryMB: mb, VCores: vc}, nil
}

// Web is the ResourceManager's web address in use.
func (r *RM) Web() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.endpoints[r.cur]
}

// Report implements workers.Reporter: the cluster metrics and the leaf
// queues' use, and the RM's web address (for links to applications).
func (b *Backend) Report(ctx context.Context) (any, error) {
	m, err := b.rm.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"web": b.rm.Web(), "metrics": m}
	// The largest container: front-ends refuse environments and starts
	// that ask more (frontend/largest.go).
	if a, err := b.rm.MaxAllocation(ctx); err == nil {
		out["max_allocation"] = a
	}
	if s, err := b.rm.Scheduler(ctx); err == nil {
		queues := []QueueUse{}
		var walk func(q *Queue, path string)
		walk = func(q *Queue, path string) {
			switch {
			case q.Path != "":
				path = q.Path
			case q.Name == "root" || strings.HasPrefix(q.Name, "root."):
				path = q.Name
			}
			if len(q.Children) == 0 {
				u := QueueUse{Path: path, State: q.State, MaxCapacity: q.AbsoluteMaxCapacity, UsedMB: q.ResourcesUsed.Memory,
					UsedVCores: q.ResourcesUsed.VCores, ActiveApps: q.NumActiveApps, MaxMB: q.MaxResources.Memory, MaxVCores: q.MaxResources.VCores}
				if q.UsedResources.Memory > 0 {
					u.UsedMB, u.UsedVCores = q.UsedResources.Memory, q.UsedResources.VCores
				}
				queues = append(queues, u)
				return
			}
			for i := range q.Children {
				walk(&q.Children[i], path+"."+q.Children[i].Name)
			}
		}
		if s.Root != nil {
			walk(s.Root, s.Root.Name)
		}
		out["scheduler"], out["queues"] = s.Type, queues
	}
	return out, nil
}
