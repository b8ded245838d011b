package frontend

import (
	"context"
	_ "embed"
	"errors"
	"sort"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"
)

// The operations endpoints of a front-end:
//
//	/healthz              anyone: the process serves HTTP
//	/readyz               anyone: the bus is connected and the streams and
//	                      buckets answer (cached 1 s, so probes cannot make
//	                      the front-end flood the bus)
//	/api/swagger.yaml     anyone: the static description of this API
//	/api/swagger.json
//	/metrics              whoever may use the API (MetricsPublic: anyone)
//
// They are all under BaseURL. Kernel gauges are read from the front-end's
// mirror of kb_kernels, so a scrape costs no bus request; they describe
// the whole installation, so every front-end reports the same values
// (aggregate them with max, not sum).

//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPI returns the OpenAPI 3 document of the REST API, as YAML.
func OpenAPI() []byte { return openAPIYAML }

// ops holds the front-end's metrics and readiness.
type ops struct {
	reg      *prometheus.Registry
	relay    metrics.Relay
	httpDur  *prometheus.HistogramVec
	ready    *metrics.Readiness
	specJSON []byte
}

func newOps(s *Server) (*ops, error) {
	o := &ops{reg: s.cfg.Metrics}
	if o.reg == nil {
		o.reg = metrics.NewRegistry()
	}
	o.httpDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "http_request_duration_seconds",
		Help:    "Duration of HTTP requests, by method, route (handler) and status code, as jupyter_server's.",
		Buckets: prometheus.DefBuckets,
	}, []string{"method", "handler", "status_code"})
	wsConns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "websocket_connections",
		Help:        "Kernel websockets open on this front-end.",
		ConstLabels: prometheus.Labels{"frontend": s.cfg.FrontendID},
	}, func() float64 { return float64(s.hub.count()) })
	feLabel := prometheus.Labels{"frontend": s.cfg.FrontendID}
	liveWrites := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "live_output_writes_total",
		Help:        "Bus messages of kernel output written to websockets from the live path (core NATS), not the stream consumer.",
		ConstLabels: feLabel,
	}, func() float64 { return float64(s.liveWrites.Load()) })
	liveDropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "live_output_dropped_total",
		Help:        "Live output messages dropped by closed websockets' full live subscriptions (the stream delivered them).",
		ConstLabels: feLabel,
	}, func() float64 { return float64(s.liveDropped.Load()) })
	bodyGets := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "output_body_gets_total",
		Help:        "Kernel output bodies fetched from the stream by sequence because the live path had not written them (headers-only output consumers).",
		ConstLabels: feLabel,
	}, func() float64 { return float64(s.bodyGets.Load()) })
	for _, c := range []prometheus.Collector{o.httpDur, wsConns, liveWrites, liveDropped, bodyGets, &o.relay, &kernelCollector{st: s.state, specs: s.specs, topUsers: s.cfg.MetricsTopUsers}} {
		if err := o.reg.Register(c); err != nil {
			return nil, err
		}
	}
	js, err := yaml.YAMLToJSON(openAPIYAML)
	if err != nil {
		return nil, err
	}
	o.specJSON = js
	checks := []metrics.Check{
		metrics.Check{Name: "bus", Fn: func(context.Context) error {
			if st := s.bus.NC.Status(); st != nats.CONNECTED {
				return errors.New("NATS connection is " + st.String())
			}
			return nil
		}},
		metrics.Check{Name: "streams", Fn: func(ctx context.Context) error {
			if _, err := s.ioStream.Info(ctx); err != nil {
				return errors.New("stream " + broker.StreamIO + ": " + err.Error())
			}
			return nil
		}},
		metrics.Check{Name: "buckets", Fn: func(ctx context.Context) error {
			if _, err := s.bus.Kernels.Status(ctx); err != nil {
				return errors.New("bucket " + s.bus.Kernels.Bucket() + ": " + err.Error())
			}
			return nil
		}},
		metrics.Check{Name: "serving", Fn: func(context.Context) error {
			if s.draining.Load() || s.ctx.Err() != nil {
				return errors.New("shutting down")
			}
			return nil
		}},
	}
	o.ready = metrics.NewReadiness(time.Second, append(checks, s.cfg.ReadyChecks...)...)
	return o, nil
}

// Metrics is the registry this front-end's /metrics serves.
func (s *Server) Metrics() *prometheus.Registry { return s.ops.reg }

// publicOps registers what comes before authentication: the request
// timer (so refused requests are timed too) and the endpoints anyone may
// call.
func (s *Server) publicOps(app *fiber.App) {
	o := s.ops
	app.Use(s.timeRequest)
	p := app.Group(s.prefix())
	p.Get("/healthz", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderCacheControl, "no-store")
		return c.JSON(fiber.Map{"alive": true})
	})
	p.Get("/readyz", func(c *fiber.Ctx) error {
		rep := o.ready.Report(s.ctx)
		c.Set(fiber.HeaderCacheControl, "no-store")
		if !rep.Ready {
			c.Status(fiber.StatusServiceUnavailable)
		}
		return c.JSON(rep)
	})
	p.Get("/api/swagger.yaml", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, "application/yaml")
		return c.Send(openAPIYAML)
	})
	p.Get("/api/swagger.json", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(o.specJSON)
	})
	if s.cfg.MetricsPublic {
		p.Get("/metrics", s.serveMetrics())
	}
}

// protectedOps registers what needs the API's authentication.
func (s *Server) protectedOps(g fiber.Router) {
	if !s.cfg.MetricsPublic {
		g.Get("/metrics", s.serveMetrics())
	}
}

func (s *Server) serveMetrics() fiber.Handler {
	return adaptor.HTTPHandler(metrics.Handler(s.ops.reg))
}

func (s *Server) prefix() string {
	p := s.cfg.BaseURL
	for len(p) > 0 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	return p
}

// timeRequest observes http_request_duration_seconds. The handler label
// is the matched route's pattern (bounded: never the kernel id), or
// "unmatched" for requests no route took.
func (s *Server) timeRequest(c *fiber.Ctx) error {
	start := time.Now()
	err := c.Next()
	if err != nil {
		// Render now, so the status the client gets is the one observed.
		if herr := s.renderError(c, err); herr != nil {
			return herr
		}
	}
	handler := "unmatched"
	if r := c.Route(); r != nil && r.Method != "USE" {
		handler = r.Path
	}
	// Every label is bounded whatever clients send: route patterns, the
	// standard methods, three-digit statuses.
	method := c.Method()
	if !knownMethods[method] {
		method = "other"
	}
	s.ops.httpDur.WithLabelValues(method, handler, strconv.Itoa(c.Response().StatusCode())).Observe(time.Since(start).Seconds())
	return nil
}

var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// relayToClient counts a kernel message written to a websocket.
func (s *Server) relayToClient(h nats.Header, subject string, n int) {
	ch := h.Get(broker.HeaderChannel)
	if ch == "" {
		ch = broker.ChannelFromSubject(subject)
	}
	s.ops.relay.Add(metrics.ToClient, ch, n)
}

// kernelCollector reports the kernels of the installation from the
// front-end's mirror of kb_kernels.
type kernelCollector struct {
	st       *state
	specs    SpecSource
	topUsers int
}

var (
	kernelsDesc = prometheus.NewDesc(metrics.Namespace+"_kernels",
		"Kernel records by state, kernelspec and resource manager, across the installation.",
		[]string{"state", "kernelspec", "rm"}, nil)
	runningDesc = prometheus.NewDesc("kernel_currently_running_total",
		"Kernels starting or alive, by kernelspec (type), across the installation, as jupyter_server's.",
		[]string{"type"}, nil)
	usersDesc = prometheus.NewDesc(metrics.Namespace+"_active_users",
		"Distinct owners (KERNEL_USERNAME) of kernels starting or alive, across the installation.", nil, nil)
	userKernelsDesc = prometheus.NewDesc(metrics.Namespace+"_user_kernels",
		"Kernels starting or alive of the users with the most of them (MetricsTopUsers; off by default).",
		[]string{"user"}, nil)
)

func (k *kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- kernelsDesc
	ch <- runningDesc
	ch <- usersDesc
	ch <- userKernelsDesc
}

func (k *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ state, spec, rm string }
	byKey := map[key]int{}
	// Every known kernelspec has a series, 0 when none of its kernels
	// runs, so a query for it returns 0 rather than nothing.
	running := map[string]int{}
	for _, sp := range k.specs.Specs() {
		running[sp.Name] = 0
	}
	users := map[string]int{}
	k.st.mu.RLock()
	for _, e := range k.st.kernels {
		r := e.rec
		if r == nil {
			continue
		}
		byKey[key{string(r.State), r.Spec, r.RM}]++
		if !r.State.Terminal() {
			running[r.Spec]++
			if r.User != "" {
				users[r.User]++
			}
		}
	}
	k.st.mu.RUnlock()
	for kk, n := range byKey {
		ch <- prometheus.MustNewConstMetric(kernelsDesc, prometheus.GaugeValue, float64(n), kk.state, kk.spec, kk.rm)
	}
	for spec, n := range running {
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(n), spec)
	}
	ch <- prometheus.MustNewConstMetric(usersDesc, prometheus.GaugeValue, float64(len(users)))
	if k.topUsers <= 0 || len(users) == 0 {
		return
	}
	// Per-user series only for the top N: user names come from clients,
	// so their number is not ours to bound otherwise.
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Slice(names, func(i, j int) bool {
		if users[names[i]] != users[names[j]] {
			return users[names[i]] > users[names[j]]
		}
		return names[i] < names[j]
	})
	for _, u := range names[:min(k.topUsers, len(names))] {
		ch <- prometheus.MustNewConstMetric(userKernelsDesc, prometheus.GaugeValue, float64(users[u]), u)
	}
}
