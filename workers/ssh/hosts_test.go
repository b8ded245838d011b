package ssh

import (
	"context"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestOrderRoundRobinAndLeastConnection(t *testing.T) {
	h := newHosts(time.Minute)
	pool := []string{"a:22", "b:22", "c:22"}
	var firsts []string
	for range 4 {
		firsts = append(firsts, h.order(pool, nil)[0])
	}
	if !reflect.DeepEqual(firsts, []string{"a:22", "b:22", "c:22", "a:22"}) {
		t.Fatalf("round-robin firsts: %v", firsts)
	}
	// Unhealthy hosts go last, in order.
	h.markUnhealthy("b:22", "down")
	if got := h.order(pool, nil); !reflect.DeepEqual(got, []string{"c:22", "a:22", "b:22"}) {
		t.Fatalf("with b unhealthy: %v", got)
	}
	// The mark expires.
	now := time.Now()
	h.now = func() time.Time { return now.Add(2 * time.Minute) }
	if r := h.unhealthy("b:22"); r != "" {
		t.Fatalf("b should be healthy again, is %q", r)
	}
	h.now = time.Now
	h.markHealthy("b:22")
	// Least connection: fewest first, starts in flight count.
	load := map[string]int{"a:22": 3, "b:22": 1, "c:22": 1}
	h.begin("b:22")
	if got := h.order(pool, load); got[0] != "c:22" || got[2] != "a:22" {
		t.Fatalf("least-connection order: %v", got)
	}
	h.end("b:22")
}

func TestConfigFromOptions(t *testing.T) {
	c, err := ConfigFromOptions(map[string]string{"hosts": "h1, h2:2222,[::1]:22", "placement": "least-connection",
		"impersonate": "true", "unhealthy-for": "5s", "key": "/k"})
	if err != nil {
		t.Fatal(err)
	}
	c.User = "root"
	c, err = c.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Hosts, []string{"h1:22", "h2:2222", "[::1]:22"}) || !c.Impersonate || c.UnhealthyFor != 5*time.Second || c.ForbidRemoteHost {
		t.Fatalf("config: %+v", c)
	}
	for opts, want := range map[string]string{
		"hostz=x":             "unknown options [hostz]",
		"agent=maybe":         "agent",
		"connect-timeout=-1s": "connect-timeout",
		"placement=random":    "placement",
		"hosts=bad host!":     "not a host name",
		"hosts=h:99999":       "bad port",
		"user=bad;user":       "not a valid user name",
	} {
		k, v, _ := strings.Cut(opts, "=")
		o := map[string]string{k: v, "key": "/k"}
		if k != "user" {
			o["user"] = "root"
		}
		c, err := ConfigFromOptions(o)
		if err == nil {
			_, err = c.withDefaults()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error about %q, got %v", opts, want, err)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"plain", "it's", "$(rm -rf /)", "a b\tc", `"; echo pwned; "`, "'", ""} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("quote %q: sh printed %q (%v)", s, out, err)
		}
	}
}

// TestReportHealth: the overview's host list follows placement's health.
func TestReportHealth(t *testing.T) {
	b := &Backend{cfg: Config{Hosts: []string{"a:22", "b:2222"}}, hosts: newHosts(time.Minute)}
	b.hosts.markUnhealthy("b:2222", "connection refused")
	v, err := b.Report(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hs := v.(map[string]any)["hosts"].([]HostHealth)
	if len(hs) != 2 || !hs[0].Healthy || hs[1].Healthy || hs[1].Reason != "connection refused" {
		t.Errorf("report: %+v", hs)
	}
}
