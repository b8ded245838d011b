package workers

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Start outcomes, as counted by the worker that claimed the start.
const (
	OutcomeStarted   = "started"   // the kernel reported running
	OutcomeFailed    = "failed"    // the launch or the kernel failed
	OutcomeRefused   = "refused"   // the resource manager refused the request (4xx, 503)
	OutcomeTimeout   = "timeout"   // the launch timeout passed
	OutcomeCancelled = "cancelled" // shut down or removed while it started
)

// poolMetrics are a pool's collectors. Several pools in one process share
// them through the registry (each series is labelled by rm).
type poolMetrics struct {
	starts   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	warm     *prometheus.CounterVec
	rm       string
}

func newPoolMetrics(r prometheus.Registerer, p *Pool) (*poolMetrics, error) {
	m := &poolMetrics{
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "kernel_starts_total",
			Help: "Kernel starts a worker saw through, by resource manager and outcome (started, failed, refused, timeout, cancelled).",
		}, []string{"rm", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "kernel_start_duration_seconds",
			Help:    "Time from a kernel's request to its launcher reporting it running, for starts that succeeded, by resource manager.",
			Buckets: metrics.StartBuckets,
		}, []string{"rm"}),
		warm: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "warm_kernels_total",
			Help: "Warm kernels a worker's warm keeper started and reaped (idle lifetime passed, spec changed or gone, keeper gone), by resource manager.",
		}, []string{"rm", "event"}),
		rm: p.be.Name(),
	}
	if r == nil {
		return m, nil
	}
	var err error
	if m.starts, err = register(r, m.starts); err != nil {
		return nil, err
	}
	if m.duration, err = register(r, m.duration); err != nil {
		return nil, err
	}
	if m.warm, err = register(r, m.warm); err != nil {
		return nil, err
	}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "worker_requests_in_flight",
		Help:        "Start and stop requests a worker is handling now.",
		ConstLabels: prometheus.Labels{"rm": p.be.Name(), "worker": p.cfg.ID},
	}, func() float64 { return float64(len(p.sem)) })
	if err := r.Register(inFlight); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector of the same description
// already registered (another pool of the same process).
func register[C prometheus.Collector](r prometheus.Registerer, c C) (C, error) {
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(C); ok {
				return ex, nil
			}
		}
		return c, err
	}
	return c, nil
}

// countStart records the outcome of a start of k, as of now.
func (p *Pool) countStart(k *broker.Kernel, outcome string) { p.countStartAt(k, outcome, time.Now()) }

// countStartAt records the outcome of a start of k that ended at end (the
// record's update time when the worker polled it).
func (p *Pool) countStartAt(k *broker.Kernel, outcome string, end time.Time) {
	rm := p.be.Name()
	p.met.starts.WithLabelValues(rm, outcome).Inc()
	if outcome == OutcomeStarted && k != nil && !k.Created.IsZero() {
		if end.IsZero() || end.After(time.Now()) {
			end = time.Now()
		}
		p.met.duration.WithLabelValues(rm).Observe(max(end.Sub(k.Created), 0).Seconds())
	}
}

// endOutcome names how a start ended from the record's final state.
func endOutcome(k *broker.Kernel) string {
	switch {
	case k.State == broker.StateRunning || k.State == broker.StateRestarting:
		return OutcomeStarted
	case k.State == broker.StateTerminated:
		return OutcomeCancelled
	case k.FailStatus != 0:
		return OutcomeRefused
	case strings.HasPrefix(k.Reason, "timeout"):
		// The front-end gave up first (its startTimedOut).
		return OutcomeTimeout
	}
	return OutcomeFailed
}

// Ready reports whether the pool claims requests: it was started and not
// stopped, its bus connection is up and its consumer exists on the bus.
func (p *Pool) Ready(ctx context.Context) error {
	if !p.claiming.Load() {
		return errors.New("the worker pool is not claiming requests (not started, or stopped)")
	}
	if p.ctx.Err() != nil {
		return errors.New("the worker pool is stopping")
	}
	if st := p.bus.NC.Status(); st != nats.CONNECTED {
		return errors.New("NATS connection is " + st.String())
	}
	if _, err := p.bus.JS.Consumer(ctx, broker.StreamRequests, broker.WorkerConsumer(p.be.Name())); err != nil {
		return errors.New("consumer " + broker.WorkerConsumer(p.be.Name()) + ": " + err.Error())
	}
	return nil
}

func (m *poolMetrics) warmStarted() { m.warm.WithLabelValues(m.rm, "started").Inc() }
func (m *poolMetrics) warmReaped()  { m.warm.WithLabelValues(m.rm, "reaped").Inc() }
