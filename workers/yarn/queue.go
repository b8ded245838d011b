package yarn

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/kernelbus/kernelbus/broker"
)

// The queue check (--yarn-queue-check) asks the ResourceManager's scheduler
// whether the application's queue can take the driver before spark-submit
// runs, so that a start the queue cannot hold fails at once with the reason
// instead of waiting in ACCEPTED until the launch timeout.

// Resources is a scheduler's memory and vcores figure.
type Resources struct {
	Memory int64 `json:"memory"`
	VCores int64 `json:"vCores"`
}

// Queue is what the check reads of one scheduler queue. Capacity
// scheduler queues carry percentages and AM figures; fair scheduler queues
// carry absolute maxima. Unset fields are zero.
type Queue struct {
	Name                string    `json:"queueName"`
	Path                string    `json:"queuePath"`
	State               string    `json:"state"`
	AbsoluteMaxCapacity float64   `json:"absoluteMaxCapacity"`
	ResourcesUsed       Resources `json:"resourcesUsed"`
	AMResourceLimit     Resources `json:"AMResourceLimit"`
	UsedAMResource      Resources `json:"usedAMResource"`
	NumActiveApps       int64     `json:"numActiveApplications"`
	// Fair scheduler.
	MaxResources  Resources `json:"maxResources"`
	UsedResources Resources `json:"usedResources"`

	Children []Queue `json:"-"`
}

// UnmarshalJSON reads the children of both schedulers' forms:
// "queues":{"queue":[...]} (capacity) and "childQueues":{"queue":[...]} (fair).
func (q *Queue) UnmarshalJSON(b []byte) error {
	type plain Queue
	var aux struct {
		plain
		Queues      *struct{ Queue []Queue } `json:"queues"`
		ChildQueues *struct{ Queue []Queue } `json:"childQueues"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*q = Queue(aux.plain)
	for _, c := range []*struct{ Queue []Queue }{aux.Queues, aux.ChildQueues} {
		if c != nil {
			q.Children = append(q.Children, c.Queue...)
		}
	}
	return nil
}

// Scheduler is the root of /ws/v1/cluster/scheduler.
type Scheduler struct {
	Type string
	Root *Queue // nil for the FIFO scheduler
}

// Scheduler returns the scheduler's type and queue tree.
func (r *RM) Scheduler(ctx context.Context) (*Scheduler, error) {
	var out struct {
		Scheduler struct {
			SchedulerInfo json.RawMessage `json:"schedulerInfo"`
		} `json:"scheduler"`
	}
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/scheduler", nil, &out); err != nil {
		return nil, err
	}
	var head struct {
		Type      string `json:"type"`
		RootQueue *Queue `json:"rootQueue"` // fair
	}
	if err := json.Unmarshal(out.Scheduler.SchedulerInfo, &head); err != nil {
		return nil, fmt.Errorf("yarn: the scheduler's answer: %w", err)
	}
	s := &Scheduler{Type: head.Type}
	switch {
	case head.RootQueue != nil:
		s.Root = head.RootQueue
	case strings.HasPrefix(head.Type, "capacityScheduler"):
		var root Queue
		if err := json.Unmarshal(out.Scheduler.SchedulerInfo, &root); err != nil {
			return nil, fmt.Errorf("yarn: the scheduler's answer: %w", err)
		}
		s.Root = &root
	}
	return s, nil
}

// Find returns the leaf queue called name (a short name or a full path
// such as root.analytics.adhoc) and the leaf names it knows.
func (s *Scheduler) Find(name string) (*Queue, []string) {
	var found *Queue
	var leaves []string
	var walk func(q *Queue, path string)
	walk = func(q *Queue, path string) {
		switch {
		case q.Path != "": // capacity scheduler
			path = q.Path
		case q.Name == "root" || strings.HasPrefix(q.Name, "root."): // fair: names are paths
			path = q.Name
		}
		if len(q.Children) == 0 {
			leaves = append(leaves, path)
			short := path[strings.LastIndexByte(path, '.')+1:]
			if found == nil && (short == name || path == name || path == "root."+name) {
				found = q
			}
			return
		}
		for i := range q.Children {
			walk(&q.Children[i], path+"."+q.Children[i].Name)
		}
	}
	if s.Root != nil {
		walk(s.Root, s.Root.Name)
	}
	sort.Strings(leaves)
	return found, leaves
}

// queueOf is the queue a submission names (--queue or spark.yarn.queue),
// or YARN's default.
func queueOf(args []string) string {
	q := "default"
	for i := 0; i+1 < len(args); i++ {
		switch {
		case args[i] == "--queue":
			q = args[i+1]
		case args[i] == "--conf" && strings.HasPrefix(args[i+1], "spark.yarn.queue="):
			q = strings.TrimPrefix(args[i+1], "spark.yarn.queue=")
		}
	}
	return q
}

// driverMB is the memory YARN allocates for the driver's container:
// spark.driver.memory plus its overhead (10 %, at least 384 MB).
func driverMB(args []string) int64 {
	mem := int64(1024)
	over := int64(-1)
	for i := 0; i+1 < len(args); i++ {
		a, v := args[i], args[i+1]
		switch {
		case a == "--driver-memory":
			mem = parseMB(v, mem)
		case a == "--conf" && strings.HasPrefix(v, "spark.driver.memory="):
			mem = parseMB(strings.TrimPrefix(v, "spark.driver.memory="), mem)
		case a == "--conf" && strings.HasPrefix(v, "spark.driver.memoryOverhead="):
			over = parseMB(strings.TrimPrefix(v, "spark.driver.memoryOverhead="), over)
		}
	}
	if over < 0 {
		over = max(384, mem/10)
	}
	return mem + over
}

// checkCapacity refuses a submission the queue cannot hold: a queue that
// does not exist or is not running, or less room left in it (or, with
// other applications running, in its share for application masters) than
// the driver needs. It reads the scheduler once; YARN stays the judge of
// anything it does not cover (node sizes, user limits).
func (b *Backend) checkCapacity(ctx context.Context, args []string) error {
	need := driverMB(args)
	queue := queueOf(args)
	m, err := b.rm.ClusterMetrics(ctx)
	if err != nil {
		return fmt.Errorf("yarn: queue check: %w", err)
	}
	s, err := b.rm.Scheduler(ctx)
	if err != nil {
		return fmt.Errorf("yarn: queue check: %w", err)
	}
	if s.Root == nil { // FIFO: one queue, the cluster
		return clusterRoom(m, need)
	}
	q, leaves := s.Find(queue)
	if q == nil {
		return broker.Errorf(broker.ErrBadRequest, "YARN has no queue %q (its queues: %s): set spark.yarn.queue to one of them", queue, strings.Join(leaves, ", "))
	}
	if q.State != "" && q.State != "RUNNING" {
		return broker.Errorf(broker.ErrConflict, "YARN queue %q is %s and takes no applications: use another queue, or ask an administrator to start it", queue, q.State)
	}
	var limit, used int64
	if q.MaxResources.Memory > 0 { // fair scheduler
		limit, used = q.MaxResources.Memory, q.UsedResources.Memory
	} else {
		limit, used = int64(q.AbsoluteMaxCapacity/100*float64(m.TotalMB)), q.ResourcesUsed.Memory
	}
	if need > limit {
		return broker.Errorf(broker.ErrBadRequest, "YARN queue %q holds at most %d MB and the driver needs %d MB: ask for less (spark.driver.memory) or use another queue", queue, limit, need)
	}
	if free := limit - used; free < need {
		return broker.Errorf(broker.ErrUnavailable, "YARN queue %q has %d MB free (%d MB used of its %d MB maximum) and the driver needs %d MB: not submitting; try again when it has room", queue, max(free, 0), used, limit, need)
	}
	// The capacity scheduler always admits a queue's first application
	// master; later ones only within the queue's AM share.
	if q.NumActiveApps > 0 && q.AMResourceLimit.Memory > 0 && q.UsedAMResource.Memory+need > q.AMResourceLimit.Memory {
		return broker.Errorf(broker.ErrUnavailable, "YARN queue %q: application masters use %d MB of the %d MB it allows them, and this driver (an application master in cluster mode) needs %d MB: not submitting (raise yarn.scheduler.capacity.maximum-am-resource-percent or use another queue)",
			queue, q.UsedAMResource.Memory, q.AMResourceLimit.Memory, need)
	}
	return clusterRoom(m, need)
}

// clusterRoom refuses a driver bigger than the cluster (400) or than what
// it has free now (503).
func clusterRoom(m *Metrics, need int64) error {
	if need > m.TotalMB {
		return broker.Errorf(broker.ErrBadRequest, "YARN has %d MB in all and the driver needs %d MB: ask for less (spark.driver.memory)", m.TotalMB, need)
	}
	if m.AvailableMB < need {
		return broker.Errorf(broker.ErrUnavailable, "YARN has %d MB free of %d MB and the driver needs %d MB: not submitting; try again when it has room", m.AvailableMB, m.TotalMB, need)
	}
	return nil
}
