package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// The cluster's largest container. An environment (and a start of one)
// asking more memory or cores than its resource manager can ever give one
// kernel is refused with 400 before anything is built or submitted. The
// front-end learns the size from the workers' presence records in
// kb_workers (it talks to nothing but the bus): a YARN worker reports the
// ResourceManager's yarn.scheduler.maximum-allocation-mb/-vcores (bounded
// by its largest node), a local worker its host's memory and CPUs.
// A Kubernetes worker reports its nodes' allocatable memory and CPUs. SSH
// hosts and a resource manager no worker reports for are not checked here.

// largest is the largest container of one resource manager.
type largest struct {
	MemoryMB int64
	VCores   int64
	// MemoryFrom and VCoresFrom say where the numbers come from.
	MemoryFrom, VCoresFrom string
	// SparkOverhead: the driver's container also holds Spark's memory
	// overhead, max(384 MB, 10%).
	SparkOverhead bool
}

// largestCache keeps the answer for a few seconds, so that starts do not
// each read every presence record.
type largestCache struct {
	mu   sync.Mutex
	at   map[string]time.Time
	vals map[string]*largest
}

const largestTTL = 5 * time.Second

// largestContainer reads what rm's workers report; nil when none does.
func (s *Server) largestContainer(ctx context.Context, rm string) (*largest, error) {
	c := &s.largest
	c.mu.Lock()
	if t, ok := c.at[rm]; ok && time.Since(t) < largestTTL {
		v := c.vals[rm]
		c.mu.Unlock()
		return v, nil
	}
	c.mu.Unlock()
	var out *largest
	err := s.eachWorker(ctx, func(rec []byte) {
		var w struct {
			RM         string `json:"rm"`
			CPUs       int64  `json:"cpus"`
			MemTotalMB int64  `json:"mem_total_mb"`
			Cluster    struct {
				MaxAllocation *struct {
					MemoryMB int64 `json:"memory_mb"`
					VCores   int64 `json:"vcores"`
				} `json:"max_allocation"`
				Nodes []struct {
					Ready  bool   `json:"ready"`
					CPU    string `json:"allocatable_cpu"`
					Memory string `json:"allocatable_memory"`
				} `json:"nodes"`
			} `json:"cluster"`
		}
		if json.Unmarshal(rec, &w) != nil || w.RM != rm {
			return
		}
		var l *largest
		switch {
		case rm == broker.RMYarn && w.Cluster.MaxAllocation != nil:
			m := w.Cluster.MaxAllocation
			l = &largest{MemoryMB: m.MemoryMB, VCores: m.VCores, SparkOverhead: true,
				MemoryFrom: "YARN's largest container, yarn.scheduler.maximum-allocation-mb", VCoresFrom: "YARN's largest container, yarn.scheduler.maximum-allocation-vcores"}
		case rm == broker.RMKubernetes && len(w.Cluster.Nodes) > 0:
			l = &largest{MemoryFrom: "the largest node's allocatable memory", VCoresFrom: "the largest node's allocatable CPUs"}
			for _, n := range w.Cluster.Nodes {
				mb, _ := parseMemMB(n.Memory)
				if n.Ready {
					l.MemoryMB, l.VCores = max(l.MemoryMB, int64(mb)), max(l.VCores, cpuCores(n.CPU))
				}
			}
		case rm == broker.RMLocal && w.MemTotalMB > 0:
			l = &largest{MemoryMB: w.MemTotalMB, VCores: w.CPUs,
				MemoryFrom: "the memory of the largest local worker's machine", VCoresFrom: "the CPUs of the largest local worker's machine"}
		}
		switch {
		case l == nil:
		case out == nil:
			out = l
		default:
			out.MemoryMB, out.VCores = max(out.MemoryMB, l.MemoryMB), max(out.VCores, l.VCores)
		}
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.at == nil {
		c.at, c.vals = map[string]time.Time{}, map[string]*largest{}
	}
	c.at[rm], c.vals[rm] = time.Now(), out
	c.mu.Unlock()
	return out, nil
}

// sparkOverheadMB is what Spark adds to a YARN driver's memory for its
// container (spark.driver.memoryOverhead's default).
func sparkOverheadMB(mb int64) int64 { return max(384, mb/10) }

// checkLargest refuses memory (MB) or cores beyond rm's largest container
// with a 400 naming field (memField, coresField) and the limit.
func (s *Server) checkLargest(ctx context.Context, rm string, memMB, cores int64, memField, coresField string) error {
	if memMB <= 0 && cores <= 0 {
		return nil
	}
	l, err := s.largestContainer(ctx, rm)
	if err != nil || l == nil {
		return err
	}
	if memMB > 0 && l.MemoryMB > 0 {
		need, extra := memMB, ""
		if l.SparkOverhead {
			need += sparkOverheadMB(memMB)
			extra = fmt.Sprintf(" (+ %d MB Spark memory overhead)", need-memMB)
		}
		if need > l.MemoryMB {
			return bad("%s: %d MB%s is above the cluster's largest container on %s: %d MB (%s)", memField, memMB, extra, rm, l.MemoryMB, l.MemoryFrom)
		}
	}
	if cores > 0 && l.VCores > 0 && cores > l.VCores {
		return bad("%s: %d is above the cluster's largest container on %s: %d cores (%s)", coresField, cores, rm, l.VCores, l.VCoresFrom)
	}
	return nil
}

// eachWorker calls fn with every worker's presence record in kb_workers.
func (s *Server) eachWorker(ctx context.Context, fn func(rec []byte)) error {
	kl, err := s.bus.Workers.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "could not read the workers' presence")
	}
	for key := range kl.Keys() {
		if e, err := s.bus.Workers.Get(ctx, key); err == nil {
			fn(e.Value())
		}
	}
	return nil
}

// cpuCores reads a Kubernetes CPU quantity ("4", "3500m") as whole cores,
// rounded down (a kernel cannot use a part of a core it asks for whole).
func cpuCores(q string) int64 {
	q = strings.TrimSpace(q)
	if m, ok := strings.CutSuffix(q, "m"); ok {
		n, _ := strconv.ParseInt(m, 10, 64)
		return n / 1000
	}
	f, _ := strconv.ParseFloat(q, 64)
	return int64(f)
}
