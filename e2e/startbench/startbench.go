// Package startbench measures kernel starts through a real front-end, cold
// and warm, the same way on every resource manager: the Kubernetes and SSH
// suites' start benchmarks (`task bench:rm`) use it and write their tables
// into one document, docs/benchmarks-rm.md.
//
// A start is measured as a notebook sees it: POST /api/kernels, then on a
// new websocket kernel_info_request, then one execute_request; each time is
// from the POST to the reply and the idle status that ends the request.
package startbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// Enabled reports whether the start benchmarks are asked for
// (KB_RM_BENCH=1, which `task bench:rm` sets): they are measurements, not
// tests, and take minutes.
func Enabled() bool { return os.Getenv("KB_RM_BENCH") == "1" }

// N is the number of measured starts per row: KB_RM_BENCH_N, default 10;
// 1 when the benchmarks are not asked for, for a suite that runs its
// benchmark once as a check that cold and warm starts work.
func N() (int, error) {
	if !Enabled() {
		return 1, nil
	}
	v := os.Getenv("KB_RM_BENCH_N")
	if v == "" {
		return 10, nil
	}
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil || n < 1 || n > 1000 {
		return 0, fmt.Errorf("KB_RM_BENCH_N=%q: want a number from 1 to 1000", v)
	}
	return n, nil
}

// Cell is the first cell of every measured start, and Want what it prints.
const (
	Cell = "print(6*7)"
	Want = "42"
)

// Sample is one measured start.
type Sample struct {
	// Post is POST /api/kernels → its answer; Info → the kernel_info_reply
	// over the websocket; Result → the first cell's execute_reply.
	Post, Info, Result time.Duration
	ID                 string
	// Warm: the start took a warm kernel.
	Warm bool
}

// Measure starts one kernel of spec with env through c, measures it and
// deletes it (the delete is not measured).
func Measure(ctx context.Context, c *client.Client, spec string, env map[string]string, timeout time.Duration) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var s Sample
	t0 := time.Now()
	m, err := c.StartKernel(ctx, spec, env)
	s.Post = time.Since(t0)
	if err != nil {
		return s, fmt.Errorf("start %s: %w", spec, err)
	}
	s.ID = m.ID
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer dcancel()
		_ = c.DeleteKernel(dctx, m.ID)
	}()
	ws, err := c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		return s, fmt.Errorf("websocket of %s: %w", m.ID, err)
	}
	defer ws.Close()
	left := func() time.Duration { d, _ := ctx.Deadline(); return time.Until(d) }
	id, err := ws.Send("shell", "kernel_info_request", map[string]any{})
	if err == nil {
		_, err = ws.Await(id, left())
	}
	s.Info = time.Since(t0)
	if err != nil {
		return s, fmt.Errorf("kernel_info of %s: %w", m.ID, err)
	}
	r, err := ws.Execute(Cell, left())
	s.Result = time.Since(t0)
	if err != nil {
		return s, fmt.Errorf("execute on %s: %w", m.ID, err)
	}
	if got := strings.TrimSpace(r.Stdout.String()); r.Status != "ok" || got != Want {
		return s, fmt.Errorf("execute on %s: %s, printed %q, want %q", m.ID, r.Status, got, Want)
	}
	return s, nil
}

// WarmReady reports nil once GET /api/warm lists at least want running
// warm kernels of each pool (rm/spec) in pools, else what is missing; and
// the ids of the running warm kernels, by which a start that took one is
// told from a cold start.
func WarmReady(ctx context.Context, c *client.Client, pools map[string]int) (map[string]bool, error) {
	ws, err := c.Warm(ctx)
	if err != nil {
		return nil, err
	}
	running := map[string]int{}
	ids := map[string]bool{}
	for _, w := range ws {
		if w.State == "running" {
			running[w.Pool]++
			ids[w.ID] = true
		}
	}
	var miss []string
	for p, want := range pools {
		if running[p] < want {
			miss = append(miss, fmt.Sprintf("%s: %d of %d running", p, running[p], want))
		}
	}
	if len(miss) > 0 {
		slices.Sort(miss)
		return nil, errors.New("warm pools not full: " + strings.Join(miss, "; "))
	}
	return ids, nil
}

// Row is the starts of one resource manager and mode (cold or warm).
type Row struct {
	RM, Mode, Spec string
	Samples        []Sample
}

// Run measures n rounds of starts through c, after one unmeasured round
// that warms caches up: each round one start of each row, in order, with
// env. Before every start, cold or warm, it waits until each warm pool in
// pools (rm/spec → size) has that many running kernels, so that no refill
// runs beside a measured start; a row whose Mode is "warm" must take a warm
// kernel and the others must not (else the test fails, and the sample
// says what it took).
func Run(t testing.TB, c *client.Client, rows []Row, pools map[string]int, env map[string]string, n int) {
	t.Helper()
	ctx := context.Background()
	for round := 0; round <= n; round++ {
		for i := range rows {
			var warm map[string]bool
			jstest.WaitForNil(t, 3*time.Minute, func() (err error) { warm, err = WarmReady(ctx, c, pools); return err })
			s, err := Measure(ctx, c, rows[i].Spec, env, 3*time.Minute)
			if err != nil {
				t.Fatalf("%s %s: %v", rows[i].RM, rows[i].Mode, err)
			}
			s.Warm = warm[s.ID]
			if s.Warm != (rows[i].Mode == "warm") {
				t.Errorf("round %d %s %s: took a warm kernel: %v", round, rows[i].RM, rows[i].Mode, s.Warm)
			}
			t.Logf("round %d %s %s: 201 %s, kernel_info %s, result %s (warm kernel: %v)", round, rows[i].RM, rows[i].Mode,
				Millis(s.Post), Millis(s.Info), Millis(s.Result), s.Warm)
			if round > 0 {
				rows[i].Samples = append(rows[i].Samples, s)
			}
		}
	}
}

// Finish prints the run's report and writes it as its section of
// KB_RM_BENCH_OUT when that is set.
func Finish(t testing.TB, info Info, rows []Row) {
	t.Helper()
	info.Took, info.LoadAfter = time.Since(info.Began), LoadAvg()
	md := Report(info, rows)
	fmt.Println(md)
	if out := os.Getenv("KB_RM_BENCH_OUT"); out != "" {
		if err := WriteSection(out, info.Key, md); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote its section of %s", out)
	}
}

// Info describes a run for its report.
type Info struct {
	// Key names the run's section in the document (ssh, kubernetes).
	Key, Title string
	// Began, Took, and the load average (1/5/15 min) before and after.
	Began                 time.Time
	Took                  time.Duration
	LoadBefore, LoadAfter string
	// Setup says, in prose, what ran: front-end, workers, cluster, pools.
	Setup string
	// Order says how the starts were ordered and what each waited for.
	Order string
}

// LocalWarmTarget is issue 18's target for a warm local ipykernel: POST →
// kernel_info_reply at the median.
const LocalWarmTarget = 50 * time.Millisecond

// Report is the markdown section of a run: one table row per Row.
func Report(info Info, rows []Row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## %s\n\n", info.Title)
	fmt.Fprintf(&b, "Measured %s in %s; %d cores, load average (1/5/15 min) %s before, %s after.\n\n",
		info.Began.UTC().Format("2006-01-02 15:04 MST"), info.Took.Round(time.Second), runtime.NumCPU(), info.LoadBefore, info.LoadAfter)
	b.WriteString(info.Setup + "\n\n" + info.Order + "\n\n")
	b.WriteString("| resource manager | start | n | took a warm kernel | POST → 201 p50 / p90 | POST → kernel_info_reply p50 / p90 | POST → first result p50 / p90 |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		col := func(get func(Sample) time.Duration) string {
			ds := durations(r.Samples, get)
			if len(ds) == 0 {
				return "–"
			}
			return Millis(Percentile(ds, 0.5)) + " / " + Millis(Percentile(ds, 0.9))
		}
		warm := 0
		for _, s := range r.Samples {
			if s.Warm {
				warm++
			}
		}
		fmt.Fprintf(&b, "| %s | %s (`%s`) | %d | %d | %s | %s | %s |\n", r.RM, r.Mode, r.Spec, len(r.Samples), warm,
			col(func(s Sample) time.Duration { return s.Post }), col(func(s Sample) time.Duration { return s.Info }),
			col(func(s Sample) time.Duration { return s.Result }))
	}
	for _, r := range rows {
		if r.RM != "local" || r.Mode != "warm" || len(r.Samples) == 0 {
			continue
		}
		p50 := Percentile(durations(r.Samples, func(s Sample) time.Duration { return s.Info }), 0.5)
		verdict := "meets"
		if p50 > LocalWarmTarget {
			verdict = "misses"
		}
		fmt.Fprintf(&b, "\nA warm local ipykernel answers kernel_info %s after the POST (p50), which %s issue 18's target of ≤ %s.\n",
			Millis(p50), verdict, Millis(LocalWarmTarget))
	}
	b.WriteString("\nEach start (ms: 201, kernel_info_reply, first result):\n\n")
	for _, r := range rows {
		var parts []string
		for _, s := range r.Samples {
			parts = append(parts, fmt.Sprintf("%.0f/%.0f/%.0f", ms(s.Post), ms(s.Info), ms(s.Result)))
		}
		fmt.Fprintf(&b, "- %s %s: %s\n", r.RM, r.Mode, strings.Join(parts, ", "))
	}
	return b.String()
}

func durations(ss []Sample, get func(Sample) time.Duration) []time.Duration {
	ds := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		ds = append(ds, get(s))
	}
	slices.Sort(ds)
	return ds
}

// Percentile of sorted durations, nearest rank.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Millis formats d in milliseconds, with more digits where they matter.
func Millis(d time.Duration) string {
	switch m := ms(d); {
	case m < 10:
		return fmt.Sprintf("%.1f ms", m)
	default:
		return fmt.Sprintf("%.0f ms", m)
	}
}

// LoadAvg is /proc/loadavg's 1, 5 and 15 minute averages, or "?".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// WriteSection puts md into the document at path between the markers of
// key (<!-- bench:key --> … <!-- /bench:key -->), appending them when the
// document has none, so that each suite rewrites only its own section.
func WriteSection(path, key, md string) error {
	doc, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	begin, end := "<!-- bench:"+key+" -->", "<!-- /bench:"+key+" -->"
	block := begin + "\n" + strings.TrimSpace(md) + "\n" + end
	re := regexp.MustCompile(`(?s)` + regexp.QuoteMeta(begin) + `.*?` + regexp.QuoteMeta(end))
	var out string
	if re.Match(doc) {
		out = re.ReplaceAllLiteralString(string(doc), block)
	} else {
		out = strings.TrimRight(string(doc), "\n") + "\n\n" + block + "\n"
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
