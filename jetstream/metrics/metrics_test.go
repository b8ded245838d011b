package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func scrape(t *testing.T, h http.Handler, hdr http.Header) (int, Families) {
	t.Helper()
	req := httptest.NewRequest("GET", "/metrics", nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		return rec.Code, nil
	}
	f, err := Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, f
}

type fakeDuties struct {
	leader       atomic.Bool
	culled, lost atomic.Uint64
}

func (f *fakeDuties) Leader() bool   { return f.leader.Load() }
func (f *fakeDuties) Culled() uint64 { return f.culled.Load() }
func (f *fakeDuties) Lost() uint64   { return f.lost.Load() }

func TestRelayAndDuties(t *testing.T) {
	reg := NewRegistry()
	var r Relay
	reg.MustRegister(&r)
	d := &fakeDuties{}
	if err := RegisterDuties(reg, "w1", d); err != nil {
		t.Fatal(err)
	}
	r.Add(ToClient, "iopub", 100)
	r.Add(ToClient, "iopub", 50)
	r.Add(ToKernel, "shell", 7)
	r.Add(ToKernel, "bogus", 1) // counted as other, never a new series
	d.leader.Store(true)
	d.culled.Add(3)

	_, f := scrape(t, OpsMux(reg, "", NewReadiness(0)), nil)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kernelbus_relayed_messages_total", map[string]string{"channel": "iopub", "direction": "to_client"}, 2},
		{"kernelbus_relayed_bytes_total", map[string]string{"channel": "iopub", "direction": "to_client"}, 150},
		{"kernelbus_relayed_messages_total", map[string]string{"channel": "shell", "direction": "to_kernel"}, 1},
		{"kernelbus_relayed_messages_total", map[string]string{"channel": "other", "direction": "to_kernel"}, 1},
		{"kernelbus_duties_lease_held", map[string]string{"holder": "w1"}, 1},
		{"kernelbus_kernels_culled_total", map[string]string{"holder": "w1"}, 3},
		{"kernelbus_kernels_lost_total", nil, 0},
	} {
		if v, ok := f.Value(c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (%v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if len(f["kernelbus_relayed_messages_total"].GetMetric()) != 10 {
		t.Errorf("relay series: %d, want 5 channels x 2 directions", len(f["kernelbus_relayed_messages_total"].GetMetric()))
	}
	if _, ok := f.Value("go_goroutines", nil); !ok {
		t.Error("no Go runtime metrics")
	}
	if _, ok := f.Value("kernelbus_bus_retries_total", nil); !ok {
		t.Error("no kernelbus_bus_retries_total")
	}
}

func TestOpsMuxToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	ready := NewReadiness(0, Check{Name: "claiming", Fn: func(context.Context) error { return errors.New("not yet") }})
	mux := OpsMux(reg, "tok", ready)
	// Without the token, or with the wrong one, no metrics.
	for _, hdr := range []http.Header{nil, {"Authorization": {"Bearer nope"}}, {"Authorization": {"Basic dG9r"}}} {
		if code, _ := scrape(t, mux, hdr); code != 401 {
			t.Errorf("metrics with %v: %d", hdr, code)
		}
	}
	if code, _ := scrape(t, mux, http.Header{"Authorization": {"Bearer tok"}}); code != 200 {
		t.Errorf("metrics with the token: %d", code)
	}
	// Probes need no token.
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 200 {
		t.Errorf("healthz %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"claiming":"not yet"`) {
		t.Errorf("readyz %d %s", rec.Code, rec.Body)
	}
}

// BenchmarkRelayAdd is the cost the websocket hot path pays per message.
func BenchmarkRelayAdd(b *testing.B) {
	var r Relay
	b.ReportAllocs()
	for b.Loop() {
		r.Add(ToClient, "iopub", 512)
	}
}

// BenchmarkRelayAddParallel: every core relaying at once on the same
// channel, the worst case for the shared counters.
func BenchmarkRelayAddParallel(b *testing.B) {
	var r Relay
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Add(ToClient, "iopub", 512)
		}
	})
}

// BenchmarkCounterVecBaseline is the client library's labelled counter
// for comparison: what Relay avoids on the hot path.
func BenchmarkCounterVecBaseline(b *testing.B) {
	msgs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m"}, []string{"channel", "direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "b"}, []string{"channel", "direction"})
	b.ReportAllocs()
	for b.Loop() {
		msgs.WithLabelValues("iopub", "to_client").Inc()
		bytes.WithLabelValues("iopub", "to_client").Add(512)
	}
}

// /readyz is unauthenticated: a flood of probes runs the checks (bus
// requests) at most once per interval.
func TestReadinessIsCached(t *testing.T) {
	var calls atomic.Int64
	r := NewReadiness(time.Hour, Check{Name: "bus", Fn: func(context.Context) error { calls.Add(1); return nil }})
	mux := OpsMux(prometheus.NewRegistry(), "", r)
	for range 100 {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != 200 {
			t.Fatalf("readyz %d", rec.Code)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("checks ran %d times for 100 probes", calls.Load())
	}
}
