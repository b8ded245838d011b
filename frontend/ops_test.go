package frontend

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// scrape fetches /metrics and parses it with the Prometheus client's own
// parser.
func (e *testEnv) scrape(hdr http.Header) metrics.Families {
	e.t.Helper()
	resp, data := e.do("GET", "metrics", nil, hdr, nil)
	if resp.StatusCode != 200 {
		e.t.Fatalf("/metrics: %d %s", resp.StatusCode, data)
	}
	fams, err := metrics.Parse(bytes.NewReader(data))
	if err != nil {
		e.t.Fatalf("/metrics is not valid Prometheus text: %v", err)
	}
	return fams
}

func TestMetricsNeedTheAPIsAuth(t *testing.T) {
	e := newEnv(t, Config{Token: "s3cret"})
	// A client without the token learns nothing about the installation.
	for _, hdr := range []http.Header{nil, {"Authorization": {"token wrong"}}, {"Authorization": {"Bearer "}}} {
		resp, body := e.do("GET", "metrics", nil, hdr, nil)
		if resp.StatusCode != 401 || strings.Contains(string(body), "kernelbus_") {
			t.Fatalf("/metrics with %v: %d %s", hdr, resp.StatusCode, body)
		}
	}
	auth := http.Header{"Authorization": {"Bearer s3cret"}}
	fams := e.scrape(auth)
	if _, ok := fams.Value("kernelbus_websocket_connections", nil); !ok {
		t.Fatal("no kernelbus_websocket_connections")
	}
	// Health needs no token (probes have none) and says nothing private.
	for _, p := range []string{"healthz", "readyz"} {
		var out map[string]any
		resp, body := e.do("GET", p, nil, nil, &out)
		if resp.StatusCode != 200 {
			t.Fatalf("/%s: %d %s", p, resp.StatusCode, body)
		}
	}
	var rep metrics.ReadyReport
	e.do("GET", "readyz", nil, nil, &rep)
	if !rep.Ready || rep.Checks["bus"] != "ok" || rep.Checks["streams"] != "ok" || rep.Checks["buckets"] != "ok" {
		t.Fatalf("readyz: %+v", rep)
	}

	pub := newEnv(t, Config{Token: "s3cret", MetricsPublic: true, BaseURL: "/gw/"})
	pub.scrape(nil)
	// --metrics-public opens /metrics only, not the API.
	if resp, _ := pub.do("GET", "api/kernels", nil, nil, nil); resp.StatusCode != 401 {
		t.Fatalf("api with metrics public: %d", resp.StatusCode)
	}
}

func TestMetricsCountKernelsAndTraffic(t *testing.T) {
	e := newEnv(t, Config{MetricsTopUsers: 1})
	fams := e.scrape(nil)
	// Every kernelspec has a running series from the start, at 0.
	if v, ok := fams.Value("kernel_currently_running_total", map[string]string{"type": "python3"}); !ok || v != 0 {
		t.Fatalf("kernel_currently_running_total before any start: %v %v", v, ok)
	}
	var m KernelModel
	resp, _ := e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_USERNAME": "alice"}}, nil, &m)
	if resp.StatusCode != 201 {
		t.Fatal("start", resp.StatusCode)
	}
	e.startKernel()
	if resp, _ := e.do("POST", "api/kernels", map[string]any{"name": "failing"}, nil, nil); resp.StatusCode != 500 {
		t.Fatal("failing start", resp.StatusCode)
	}

	w := e.dial(m.ID, "s1", true)
	id := w.send("shell", "execute_request", map[string]any{"code": "1+1"})
	w.until(isIdleOf(id))

	jstest.WaitForNil(t, 10*time.Second, func() error {
		f := e.scrape(nil)
		for _, c := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"kernel_currently_running_total", map[string]string{"type": "python3"}, 2},
			{"kernelbus_kernels", map[string]string{"state": "running", "kernelspec": "python3", "rm": "local"}, 2},
			{"kernelbus_kernels", map[string]string{"state": "failed", "kernelspec": "failing"}, 1},
			{"kernelbus_active_users", nil, 1},
			{"kernelbus_user_kernels", map[string]string{"user": "alice"}, 1},
			{"kernelbus_websocket_connections", nil, 1},
			{"kernelbus_relayed_messages_total", map[string]string{"channel": "shell", "direction": "to_kernel"}, 1},
			{"http_request_duration_seconds", map[string]string{"method": "POST", "handler": "/api/kernels", "status_code": "201"}, 2},
			{"http_request_duration_seconds", map[string]string{"method": "POST", "handler": "/api/kernels", "status_code": "500"}, 1},
		} {
			if v, _ := f.Value(c.name, c.labels); v != c.want {
				return fmt.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
			}
		}
		// Live output's counters are there (their values depend on
		// which path won each message).
		for _, name := range []string{"kernelbus_live_output_writes_total", "kernelbus_live_output_dropped_total"} {
			if _, ok := f.Value(name, nil); !ok {
				return fmt.Errorf("no %s", name)
			}
		}
		// The fake kernel's replies: at least busy, the reply and idle.
		if v, _ := f.Value("kernelbus_relayed_messages_total", map[string]string{"channel": "iopub", "direction": "to_client"}); v < 2 {
			return fmt.Errorf("iopub to_client %v", v)
		}
		if v, _ := f.Value("kernelbus_relayed_bytes_total", map[string]string{"channel": "shell", "direction": "to_client"}); v <= 0 {
			return fmt.Errorf("shell bytes to_client %v", v)
		}
		return nil
	})
	// The route pattern labels requests, never the kernel id, and paths a
	// client makes up add no series (Fiber refuses unknown methods itself).
	e.do("GET", "api/kernels/"+m.ID, nil, nil, nil)
	before := len(e.scrape(nil)["http_request_duration_seconds"].GetMetric())
	for i := range 20 {
		e.do("GET", fmt.Sprintf("no/such/path/%d", i), nil, nil, nil)
		e.do("PUT", fmt.Sprintf("api/kernels/%d", i), nil, nil, nil)
		e.do("GET", fmt.Sprintf("api/kernels/%d-%s", i, m.ID), nil, nil, nil)
	}
	if after := len(e.scrape(nil)["http_request_duration_seconds"].GetMetric()); after > before+4 {
		t.Fatalf("60 made-up requests added %d series", after-before)
	}
	f := e.scrape(nil)
	if v, _ := f.Value("http_request_duration_seconds", map[string]string{"handler": "/api/kernels/:id"}); v < 1 {
		t.Fatal("no series for the /api/kernels/:id route")
	}
	for _, mm := range f["http_request_duration_seconds"].GetMetric() {
		for _, l := range mm.GetLabel() {
			if strings.Contains(l.GetValue(), m.ID) {
				t.Fatalf("a label carries a kernel id: %v", l)
			}
		}
	}

	if resp, _ := e.do("DELETE", "api/kernels/"+m.ID, nil, nil, nil); resp.StatusCode != 204 {
		t.Fatal("delete", resp.StatusCode)
	}
	jstest.WaitForNil(t, 10*time.Second, func() error {
		f := e.scrape(nil)
		if v, _ := f.Value("kernel_currently_running_total", map[string]string{"type": "python3"}); v != 1 {
			return fmt.Errorf("running after delete: %v", v)
		}
		if v, _ := f.Value("kernelbus_active_users", nil); v != 0 {
			return fmt.Errorf("active users after alice's kernel went: %v", v)
		}
		if _, ok := f.Value("kernelbus_user_kernels", nil); ok {
			return errors.New("a per-user series is left for a user without kernels")
		}
		return nil
	})
}

func TestReadyzFailsWithoutTheBus(t *testing.T) {
	e := newEnv(t, Config{})
	e.bus.NC.Close()
	jstest.WaitForNil(t, 10*time.Second, func() error {
		var rep metrics.ReadyReport
		resp, body := e.do("GET", "readyz", nil, nil, &rep)
		if resp.StatusCode != 503 || rep.Ready || rep.Checks["bus"] == "ok" {
			return fmt.Errorf("readyz with the bus closed: %d %s", resp.StatusCode, body)
		}
		return nil
	})
	// Alive all the same: a probe must not restart it for the bus.
	if resp, _ := e.do("GET", "healthz", nil, nil, nil); resp.StatusCode != 200 {
		t.Fatal("healthz", resp.StatusCode)
	}
}

// A client choosing many user names cannot make many series: only the
// top users get one.
func TestMetricsPerUserSeriesAreBounded(t *testing.T) {
	st := newState()
	for i := range 50 {
		user := fmt.Sprintf("user%02d", i)
		n := 1
		if i == 7 {
			n = 3 // the heaviest user
		}
		for j := range n {
			id := fmt.Sprintf("k-%d-%d", i, j)
			st.putKernel(id, &broker.Kernel{ID: id, Spec: "python3", RM: "local", User: user, State: broker.StateRunning}, 1, true)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&kernelCollector{st: st, specs: &StaticSpecs{}, topUsers: 2})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	f := metrics.Families{}
	for _, mf := range mfs {
		f[mf.GetName()] = mf
	}
	if n := len(f["kernelbus_user_kernels"].GetMetric()); n != 2 {
		t.Fatalf("%d per-user series, want 2", n)
	}
	if v, _ := f.Value("kernelbus_user_kernels", map[string]string{"user": "user07"}); v != 3 {
		t.Fatalf("top user: %v", v)
	}
	if v, _ := f.Value("kernelbus_active_users", nil); v != 50 {
		t.Fatalf("active users %v", v)
	}
}

// Two front-ends on one registry is a configuration error, reported by
// New rather than a panic.
func TestMetricsRegistryConflictIsAnError(t *testing.T) {
	bus := testBus(t)
	reg := metrics.NewRegistry()
	startFrontend(t, bus, Config{Metrics: reg})
	if _, err := New(Config{Metrics: reg}, bus, testSpecs(t), jstest.Logger(t)); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Fatalf("second front-end on the same registry: %v", err)
	}
}
