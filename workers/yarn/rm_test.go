package yarn

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// RM high availability: the client goes to whichever ResourceManager is
// active, whether the other is a standby (which redirects or says so) or
// down, stays with it, and sends user.name on writes.
func TestRMFailover(t *testing.T) {
	var standbyHits, activeHits atomic.Int32
	var lastUser atomic.Value
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		standbyHits.Add(1)
		if r.Method == http.MethodGet {
			w.Header().Set("Location", "http://elsewhere/")
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		_, _ = io.WriteString(w, "This is standby RM. The redirect url is: http://elsewhere/")
	}))
	defer standby.Close()
	active := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		activeHits.Add(1)
		lastUser.Store(r.URL.Query().Get("user.name"))
		switch r.URL.Path {
		case "/ws/v1/cluster/apps/application_1_0001":
			_, _ = io.WriteString(w, `{"app":{"id":"application_1_0001","name":"k","state":"RUNNING"}}`)
		case "/ws/v1/cluster/apps/application_1_0001/state":
			_, _ = io.WriteString(w, `{"state":"KILLED"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer active.Close()

	rm, err := NewRM(standby.URL, active.URL)
	if err != nil {
		t.Fatal(err)
	}
	rm.User = "kernelbus"
	ctx := context.Background()
	a, err := rm.App(ctx, "application_1_0001")
	if err != nil || a.State != "RUNNING" {
		t.Fatalf("app through the standby/active pair: %+v %v", a, err)
	}
	// The active one is remembered: the standby is not asked again.
	before := standbyHits.Load()
	if err := rm.Kill(ctx, "application_1_0001"); err != nil {
		t.Fatal(err)
	}
	if standbyHits.Load() != before {
		t.Fatalf("the standby was asked again")
	}
	if u, _ := lastUser.Load().(string); u != "kernelbus" {
		t.Fatalf("kill sent user.name %q", u)
	}
	if _, err := rm.App(ctx, "application_1_0002"); !errors.Is(err, ErrAppNotFound) {
		t.Fatalf("unknown app: %v", err)
	}

	// The primary is down: the alternate answers.
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	rm2, _ := NewRM(down.URL, active.URL)
	if a, err := rm2.App(ctx, "application_1_0001"); err != nil || a.ID != "application_1_0001" {
		t.Fatalf("with the primary down: %+v %v", a, err)
	}
	// Both down: an error that names them.
	rm3, _ := NewRM(down.URL, "")
	if _, err := rm3.App(ctx, "application_1_0001"); err == nil {
		t.Fatal("no error with no ResourceManager up")
	}
	if activeHits.Load() == 0 {
		t.Fatal("the active RM was never asked")
	}
}

// The largest container is the scheduler's maximum allocation (the RM's
// /conf servlet), bounded by the largest running node.
func TestMaxAllocation(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/conf" && r.URL.Query().Get("name") == "yarn.scheduler.maximum-allocation-mb":
			_, _ = io.WriteString(w, `{"property":{"key":"yarn.scheduler.maximum-allocation-mb","value":"8192","isFinal":false,"resource":"yarn-site.xml"}}`)
		case r.URL.Path == "/conf" && r.URL.Query().Get("name") == "yarn.scheduler.maximum-allocation-vcores":
			_, _ = io.WriteString(w, `{"property":{"key":"yarn.scheduler.maximum-allocation-vcores","value":"8","isFinal":false,"resource":"yarn-site.xml"}}`)
		case r.URL.Path == "/ws/v1/cluster/nodes":
			_, _ = io.WriteString(w, `{"nodes":{"node":[{"state":"RUNNING","usedMemoryMB":1024,"availMemoryMB":3072,"usedVirtualCores":1,"availableVirtualCores":15},
				{"state":"RUNNING","usedMemoryMB":0,"availMemoryMB":2048,"usedVirtualCores":0,"availableVirtualCores":2}]}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	rm, err := NewRM(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	a, err := rm.MaxAllocation(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a.MemoryMB != 4096 || a.VCores != 8 {
		t.Fatalf("largest container %+v; want 4096 MB (the largest node) and 8 vcores (the scheduler's)", a)
	}
}
