package yarn

import (
	"context"
	"net/http"
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
