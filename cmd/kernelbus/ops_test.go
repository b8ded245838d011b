package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
)

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"-h"}, {"help"}, {"serve", "-h"}, {"frontend", "-h"}, {"worker", "-h"}, {"events", "-h"},
		{"kernels", "-h"}, {"kernels", "list", "-h"}, {"kernels", "delete", "--help"}, {"serve", "--help"},
	} {
		code, out, errOut := runCLI(args...)
		if code != 0 {
			t.Errorf("kernelbus %v: exit %d", args, code)
		}
		if !strings.Contains(out+errOut, "Usage") && !strings.Contains(out+errOut, "-") {
			t.Errorf("kernelbus %v printed no help", args)
		}
	}
	// Wrong flags are still a usage error.
	for _, args := range [][]string{{"serve", "--no-such-flag"}, {"kernels"}, {"kernels", "frobnicate"}, {"nope"}} {
		if code, _, _ := runCLI(args...); code != 2 {
			t.Errorf("kernelbus %v: exit %d, want 2", args, code)
		}
	}
	// A missing id says what to pass.
	if code, _, errOut := runCLI("kernels", "show"); code != 1 || !strings.Contains(errOut, "needs a kernel id") {
		t.Errorf("kernels show without id: %d %s", code, errOut)
	}
}

// TestOperations runs a real `kernelbus serve` with a token and real
// ipykernel kernels, and checks what an operator sees: the kernels CLI,
// /metrics (refused without the token, right numbers with it), /readyz
// with the worker's check, and a real Prometheus server scraping it.
func TestOperations(t *testing.T) {
	se := newServeEnv(t)
	bin := se.bin
	const token = "ops-s3cret"
	srv := launchServe(t, bin, se.data, se.logPath, append(se.args, "--token", token)...)
	c := &client.Client{BaseURL: srv.url, Token: token}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	a, err := c.StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "bob"})
	if err != nil {
		t.Fatal(err)
	}

	// The CLI.
	cli := func(args ...string) (int, string, string) {
		return runCLI(append([]string{"kernels"}, append(args, "--url", srv.url, "--token", token)...)...)
	}
	code, out, errOut := cli("list")
	if code != 0 || !strings.Contains(out, a.ID) || !strings.Contains(out, b.ID) || !strings.Contains(out, "KERNELSPEC") {
		t.Fatalf("kernels list: %d %s %s", code, out, errOut)
	}
	code, out, _ = cli("list", "--json")
	var listed []client.Model
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 2 {
		t.Fatalf("kernels list --json: %d %s", code, out)
	}
	code, out, _ = cli("show", a.ID)
	var shown client.Model
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil || shown.ID != a.ID || shown.Name != "python3" {
		t.Fatalf("kernels show: %d %s", code, out)
	}
	if code, out, errOut := cli("interrupt", a.ID); code != 0 || !strings.Contains(out, "interrupted") {
		t.Fatalf("kernels interrupt: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := cli("restart", a.ID); code != 0 || !strings.Contains(out, "restarted "+a.ID) {
		t.Fatalf("kernels restart: %d %s %s", code, out, errOut)
	}
	// Without the token the CLI is refused and says how to fix it.
	code, _, errOut = runCLI("kernels", "list", "--url", srv.url)
	if code != 1 || !strings.Contains(errOut, "--token") {
		t.Fatalf("kernels list without token: %d %s", code, errOut)
	}
	if code, _, errOut := cli("show", "00000000-0000-4000-8000-000000000000"); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("kernels show of no kernel: %d %s", code, errOut)
	}

	// /metrics: refused without the token, one registry for every part.
	if resp, err := http.Get(srv.url + "/metrics"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("/metrics without the token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	jstest.WaitForNil(t, 30*time.Second, func() error {
		f, err := scrapeWith(srv.url+"/metrics", token)
		if err != nil {
			return err
		}
		for _, c := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"kernel_currently_running_total", map[string]string{"type": "python3"}, 2},
			{"kernelbus_active_users", nil, 2},
			{"kernelbus_kernel_starts_total", map[string]string{"rm": "local", "outcome": "started"}, 2},
			{"kernelbus_kernel_start_duration_seconds", map[string]string{"rm": "local"}, 2},
			{"kernelbus_duties_lease_held", nil, 1},
			{"kernelbus_bus_connected", map[string]string{"part": "frontend"}, 1},
			{"kernelbus_bus_connected", map[string]string{"part": "worker"}, 1},
			{"kernelbus_build_info", nil, 1}, // its version is the binary's -X main.version
		} {
			if v, _ := f.Value(c.name, c.labels); v != c.want {
				return fmt.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
			}
		}
		return nil
	})
	promtoolCheck(t, srv.url+"/metrics", token)
	var rep metrics.ReadyReport
	if err := getJSON(srv.url+"/readyz", &rep); err != nil || !rep.Ready || rep.Checks["worker"] != "ok" {
		t.Fatalf("readyz: %+v %v", rep, err)
	}

	// A worker process beside serve serves its own /metrics (behind its
	// token) and /readyz, which says ready once its consumer claims.
	workerURL := startWorker(t, bin, filepath.Join(se.data, "nats.conn"), "w-token", filepath.Join(filepath.Dir(se.logPath), "worker.log"))
	if resp, err := http.Get(workerURL + "/metrics"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("worker /metrics without its token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	f, err := scrapeWith(workerURL+"/metrics", "w-token")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Value("kernelbus_worker_requests_in_flight", map[string]string{"rm": "local"}); !ok || v != 0 {
		t.Fatalf("worker in flight: %v %v", v, ok)
	}
	if v, _ := f.Value("kernelbus_bus_connected", map[string]string{"part": "worker"}); v != 1 {
		t.Fatal("worker bus not connected in metrics")
	}

	// A real Prometheus scrapes serve, with the token, and counts the
	// running kernels.
	prom := startPrometheus(t, srv.url, token)
	waitQuery := func(q string, want float64) {
		t.Helper()
		jstest.WaitForNil(t, 90*time.Second, func() error {
			v, err := promQuery(prom, q)
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("%s = %v, want %v", q, v, want)
			}
			return nil
		})
	}
	waitQuery(`sum(kernel_currently_running_total)`, 2)
	waitQuery(`sum(up{job="kernelbus"})`, 1)

	if code, out, errOut := cli("delete", b.ID); code != 0 || !strings.Contains(out, "deleted "+b.ID) {
		t.Fatalf("kernels delete: %d %s %s", code, out, errOut)
	}
	waitQuery(`sum(kernel_currently_running_total)`, 1)
	waitQuery(`kernelbus_active_users`, 1)
	if code, _, _ := cli("delete", a.ID); code != 0 {
		t.Fatal("delete", a.ID)
	}
	waitQuery(`sum(kernel_currently_running_total)`, 0)
}

// startWorker runs `kernelbus worker` on serve's bus with --metrics-listen
// and returns the base URL of its operations endpoints once it is ready.
func startWorker(t *testing.T, bin, natsConn, token, logPath string) string {
	t.Helper()
	args := withLauncher([]string{"worker", "--nats-conn", natsConn, "--rm", "local", "--setup=false", "--metrics-listen", "127.0.0.1:0", "--metrics-token", token})
	p, addr := startProc(t, bin, args, logPath, "worker metrics and health serving", "addr")
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("worker log:\n%s", log)
		}
	})
	base := "http://" + addr
	jstest.WaitFor(t, 60*time.Second, "the worker to be ready", func() bool {
		p.failIfExited(t)
		var rep metrics.ReadyReport
		return getJSON(base+"/readyz", &rep) == nil && rep.Ready && rep.Checks["claiming"] == "ok"
	})
	if err := jstest.GetOK(base + "/healthz"); err != nil {
		t.Fatalf("worker healthz: %v", err)
	}
	return base
}

// promtoolCheck lints a scrape with Prometheus' promtool (installed with
// Prometheus), when there is one. The only finding allowed is the "_total"
// suffix of kernel_currently_running_total, a gauge whose name is
// jupyter_server's.
func promtoolCheck(t *testing.T, u, token string) {
	t.Helper()
	bin := "promtool"
	if p := os.Getenv("PROMETHEUS_BIN"); p != "" {
		bin = filepath.Join(filepath.Dir(p), "promtool")
	}
	if _, err := exec.LookPath(bin); err != nil {
		t.Logf("no promtool (%v): scrape checked with the client library's parser only", err)
		return
	}
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(body))
	out, _ := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !strings.HasPrefix(line, "kernel_currently_running_total ") {
			t.Errorf("promtool check metrics: %s", line)
		}
	}
}

func scrapeWith(u, token string) (metrics.Families, error) {
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %d", u, resp.StatusCode)
	}
	return metrics.Parse(resp.Body)
}

func getJSON(u string, out any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// startPrometheus runs a real Prometheus server (PROMETHEUS_BIN, or
// prometheus on PATH; scripts/setup-prometheus.sh installs it) that
// scrapes target's /metrics every second with the API token, and returns
// its URL.
func startPrometheus(t *testing.T, target, token string) string {
	t.Helper()
	bin := os.Getenv("PROMETHEUS_BIN")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("prometheus"); err != nil {
			jstest.MissingSetup(t, "no prometheus binary: run scripts/setup-prometheus.sh (task test:go sets PROMETHEUS_BIN from it)")
		}
	}
	dir := t.TempDir()
	u, _ := url.Parse(target)
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kernelbus
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: %s
    static_configs:
      - targets: [%q]
`, filepath.Join(dir, "token"), u.Host)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Prometheus is told its address: one taken between its pick and the
	// bind costs a start on another port.
	var promURL string
	err := jstest.RetryPorts(1, func(ports []int) error {
		promURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		logPath := filepath.Join(dir, "prometheus.log")
		logf, err := os.Create(logPath)
		if err != nil {
			return err
		}
		cmd := exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "data"),
			"--web.listen-address", strings.TrimPrefix(promURL, "http://"), "--log.level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return err
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
		exited := false
		if jstest.Eventually(60*time.Second, func() bool {
			select {
			case <-done:
				exited = true
				return true
			default:
			}
			return jstest.GetOK(promURL+"/-/ready") == nil
		}) && !exited {
			t.Cleanup(func() {
				jstest.Stop(cmd.Process.Pid, done, 30*time.Second)
				if t.Failed() {
					log, _ := os.ReadFile(logPath)
					t.Logf("prometheus log:\n%s", log)
				}
			})
			return nil
		}
		jstest.Stop(cmd.Process.Pid, done, 30*time.Second)
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("prometheus did not get ready (exited: %v):\n%s", exited, log)
	})
	if err != nil {
		t.Fatal(err)
	}
	return promURL
}

// promQuery runs an instant query that returns one number.
func promQuery(base, q string) (float64, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("%s: %s", q, body)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s: %s", q, r.Error)
	}
	if len(r.Data.Result) != 1 || len(r.Data.Result[0].Value) != 2 {
		return 0, fmt.Errorf("%s: no single result yet: %s", q, body)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}
