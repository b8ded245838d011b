// Package metrics holds the Prometheus pieces every kernelbus process
// shares: the registry, the relay counters of the websocket hot path, the
// bus connection's collector, the duties' collector and the HTTP handlers
// for /metrics, /healthz and /readyz.
//
// Names follow Prometheus conventions under the kernelbus_ prefix, except
// where jupyter_server already exports the same quantity
// (kernel_currently_running_total, http_request_duration_seconds): those
// keep jupyter_server's names and labels, so dashboards built for it work.
package metrics

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every kernelbus-specific metric.
const Namespace = "kernelbus"

// NewRegistry returns a registry with the Go runtime and process
// collectors. One registry serves every part of a process (serve runs
// front-end, worker and duties in one).
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: Namespace, Name: "bus_retries_total",
			Help: "Bus operations (publishes, reads, record updates) this process tried again after a failure, such as while NATS elected a stream leader.",
		}, func() float64 { return float64(kbjs.Retries()) }))
	return r
}

// RegisterBuildInfo registers kernelbus_build_info{version,goversion} 1,
// so dashboards can tell the releases of a rolling upgrade apart.
func RegisterBuildInfo(r prometheus.Registerer, version string) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the labels name the kernelbus release and its Go version.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	return r.Register(g)
}

// Handler serves g in the Prometheus text format (or OpenMetrics when
// the scraper asks for it).
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true, ErrorHandling: promhttp.ContinueOnError})
}

// Direction of a relayed message.
type Direction int

const (
	// ToClient is kernel output written to a websocket.
	ToClient Direction = iota
	// ToKernel is client input published to the kernel.
	ToKernel
	nDirections
)

var directionNames = [nDirections]string{"to_client", "to_kernel"}

// Channels the relay counts; anything else is counted as "other".
var channelNames = [...]string{"shell", "iopub", "stdin", "control", "other"}

const nChannels = len(channelNames)

func channelIndex(ch string) int {
	switch ch {
	case "shell":
		return 0
	case "iopub":
		return 1
	case "stdin":
		return 2
	case "control":
		return 3
	}
	return 4
}

// relayCell is one channel's counters in one direction, alone on its
// cache line, so that connections relaying on different channels do not
// slow each other down.
type relayCell struct {
	msgs  atomic.Uint64
	bytes atomic.Uint64
	_     [48]byte
}

// Relay counts the messages and bytes a front-end relays per channel and
// direction. Add is on the path of every kernel message, so it is two
// atomic adds on a fixed array: no map, no label lookup, no lock. The
// counters become Prometheus series only when scraped. The zero value is
// ready to use.
type Relay struct {
	cells [nDirections][nChannels]relayCell
}

// Add counts one message of n bytes on channel in direction d.
func (r *Relay) Add(d Direction, channel string, n int) {
	c := &r.cells[d][channelIndex(channel)]
	c.msgs.Add(1)
	c.bytes.Add(uint64(n))
}

// Messages returns the messages counted on channel in direction d.
func (r *Relay) Messages(d Direction, channel string) uint64 {
	return r.cells[d][channelIndex(channel)].msgs.Load()
}

var (
	relayMsgsDesc = prometheus.NewDesc(Namespace+"_relayed_messages_total",
		"Kernel messages relayed between websockets and the bus, by channel and direction (to_client, to_kernel).",
		[]string{"channel", "direction"}, nil)
	relayBytesDesc = prometheus.NewDesc(Namespace+"_relayed_bytes_total",
		"Bytes of kernel messages (the v1 envelope) relayed between websockets and the bus, by channel and direction.",
		[]string{"channel", "direction"}, nil)
)

// Describe implements prometheus.Collector.
func (r *Relay) Describe(ch chan<- *prometheus.Desc) {
	ch <- relayMsgsDesc
	ch <- relayBytesDesc
}

// Collect implements prometheus.Collector.
func (r *Relay) Collect(ch chan<- prometheus.Metric) {
	for d := range nDirections {
		for i, name := range channelNames {
			c := &r.cells[d][i]
			ch <- prometheus.MustNewConstMetric(relayMsgsDesc, prometheus.CounterValue, float64(c.msgs.Load()), name, directionNames[d])
			ch <- prometheus.MustNewConstMetric(relayBytesDesc, prometheus.CounterValue, float64(c.bytes.Load()), name, directionNames[d])
		}
	}
}

// funcs is one collector made of several, registered (and refused) as
// one: metrics whose values are read when scraped.
type funcs []prometheus.Collector

func (fs funcs) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range fs {
		c.Describe(ch)
	}
}

func (fs funcs) Collect(ch chan<- prometheus.Metric) {
	for _, c := range fs {
		c.Collect(ch)
	}
}

func gaugeFunc(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f)
}

func counterFunc(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// RegisterBus registers the state of nc, labelled part (frontend, worker,
// serve...), from the client's own statistics, so nothing has to hook the
// connection's callbacks: kernelbus_bus_connected,
// kernelbus_bus_reconnects_total and kernelbus_bus_messages_total.
func RegisterBus(r prometheus.Registerer, part string, nc *nats.Conn) error {
	labels := prometheus.Labels{"part": part}
	msgs := func(direction string, n func(nats.Statistics) uint64) prometheus.Collector {
		return counterFunc(Namespace+"_bus_messages_total", "Messages on the part's NATS connection, by direction (in, out).",
			prometheus.Labels{"part": part, "direction": direction}, func() float64 { return float64(n(nc.Stats())) })
	}
	return r.Register(funcs{
		gaugeFunc(Namespace+"_bus_connected", "1 when the part's NATS connection is up.", labels,
			func() float64 { return one(nc.IsConnected()) }),
		counterFunc(Namespace+"_bus_reconnects_total", "Times the part's NATS connection was re-established.", labels,
			func() float64 { return float64(nc.Stats().Reconnects) }),
		msgs("in", func(st nats.Statistics) uint64 { return st.InMsgs }),
		msgs("out", func(st nats.Statistics) uint64 { return st.OutMsgs }),
	})
}

// DutiesState is what the duties collector reads: package duties'
// *Duties satisfies it.
type DutiesState interface {
	Leader() bool
	Culled() uint64
	Lost() uint64
}

// RegisterDuties registers the duties lease and what its holder did.
// holder names this process in the lease.
func RegisterDuties(r prometheus.Registerer, holder string, d DutiesState) error {
	labels := prometheus.Labels{"holder": holder}
	return r.Register(funcs{
		gaugeFunc(Namespace+"_duties_lease_held", "1 while this process holds the duties lease (idle culler, lost-kernel detector).", labels,
			func() float64 { return one(d.Leader()) }),
		counterFunc(Namespace+"_kernels_culled_total", "Idle kernels this process culled while it held the duties lease.", labels,
			func() float64 { return float64(d.Culled()) }),
		counterFunc(Namespace+"_kernels_lost_total", "Kernels this process declared lost (their launcher stopped answering) while it held the duties lease.", labels,
			func() float64 { return float64(d.Lost()) }),
	})
}

// StartBuckets are the start-latency histogram buckets, in seconds: a
// local kernel starts in about a second, a cluster's in tens of seconds.
var StartBuckets = []float64{0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 120, 300}

// Check is one readiness condition: nil when met.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Readiness runs checks for /readyz, at most once per interval: the
// endpoint is unauthenticated, so a flood of probes must not become a
// flood of bus requests.
type Readiness struct {
	checks   []Check
	interval time.Duration

	mu     sync.Mutex
	at     time.Time
	report ReadyReport
}

// ReadyReport is the /readyz body.
type ReadyReport struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

// NewReadiness returns a Readiness that caches results for interval
// (default 1s).
func NewReadiness(interval time.Duration, checks ...Check) *Readiness {
	if interval <= 0 {
		interval = time.Second
	}
	return &Readiness{checks: checks, interval: interval}
}

// Report runs the checks (or returns the cached report).
func (r *Readiness) Report(ctx context.Context) ReadyReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < r.interval {
		return r.report
	}
	rep := ReadyReport{Ready: true, Checks: make(map[string]string, len(r.checks))}
	for _, c := range r.checks {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := c.Fn(cctx)
		cancel()
		if err != nil {
			rep.Ready = false
			rep.Checks[c.Name] = err.Error()
		} else {
			rep.Checks[c.Name] = "ok"
		}
	}
	r.report, r.at = rep, time.Now()
	return rep
}

// ServeReady writes rep as /readyz does: 200 when ready, else 503.
func ServeReady(w http.ResponseWriter, rep ReadyReport) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !rep.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(rep)
}

// OpsMux serves /metrics (behind token when not empty), /healthz and
// /readyz on a plain net/http server, for processes without the REST API
// (workers).
func OpsMux(g prometheus.Gatherer, token string, ready *Readiness) *http.ServeMux {
	mux := http.NewServeMux()
	metrics := Handler(g)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if token != "" && !TokenMatches(r, token) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"reason":"Unauthorized","message":"/metrics needs the metrics token: send Authorization: Bearer <token>"}` + "\n"))
			return
		}
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"alive":true}` + "\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ServeReady(w, ready.Report(r.Context()))
	})
	return mux
}

// TokenMatches reports whether r carries token as "Authorization: Bearer
// T" or "token T" (what Prometheus' authorization setting sends).
func TokenMatches(r *http.Request, token string) bool {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	switch strings.ToLower(scheme) {
	case "bearer", "token":
		return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(rest)), []byte(token)) == 1
	}
	return false
}
