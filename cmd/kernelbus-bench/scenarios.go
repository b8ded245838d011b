package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Target names as they appear in the table.
const (
	tKB    = "kernelbus"
	tJEG   = "jeg"
	tFloor = "floor"
)

// row is one line of the table: one metric, a value per target.
type row struct {
	Scenario string              `json:"scenario"`
	Metric   string              `json:"metric"`
	Unit     string              `json:"unit"`
	Values   map[string]*float64 `json:"values"`
	Notes    map[string]string   `json:"notes,omitempty"`
	Target   string              `json:"target,omitempty"`
	Met      *bool               `json:"met,omitempty"`
	// better says which way is good for ratios: "lower" or "higher".
	Better string `json:"better,omitempty"`
}

type results struct {
	mu   sync.Mutex
	rows []*row
}

func (r *results) get(scenario, metric, unit, better string) *row {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.rows {
		if x.Scenario == scenario && x.Metric == metric {
			return x
		}
	}
	x := &row{Scenario: scenario, Metric: metric, Unit: unit, Values: map[string]*float64{}, Notes: map[string]string{}, Better: better}
	r.rows = append(r.rows, x)
	return x
}

func (r *results) set(scenario, metric, unit, better, target string, v float64) {
	x := r.get(scenario, metric, unit, better)
	r.mu.Lock()
	x.Values[target] = &v
	r.mu.Unlock()
}

func (r *results) note(scenario, metric, unit, better, target, note string) {
	x := r.get(scenario, metric, unit, better)
	r.mu.Lock()
	if old := x.Notes[target]; old != "" {
		note = old + "; " + note
	}
	x.Notes[target] = note
	r.mu.Unlock()
}

func (r *results) value(scenario, metric, target string) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.rows {
		if x.Scenario == scenario && x.Metric == metric {
			if v := x.Values[target]; v != nil {
				return *v, true
			}
		}
	}
	return 0, false
}

// percentile of sorted-in-place samples (nearest rank).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	i := int(p*float64(len(xs))+0.999999) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// setLatency records the p50 and p99 of samples xs (ms) as target's in
// scenario scn and returns them.
func (b *bench) setLatency(scn, target string, xs []float64) (p50, p99 float64) {
	p50, p99 = percentile(xs, 0.5), percentile(xs, 0.99)
	b.res.set(scn, "p50", "ms", "lower", target, p50)
	b.res.set(scn, "p99", "ms", "lower", target, p99)
	return p50, p99
}

// startTimed starts a kernel of spec on t, allowing it two minutes, and
// says how long the start took.
func startTimed(ctx context.Context, t target, spec string) (session, time.Duration, error) {
	sctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	t0 := time.Now()
	s, err := t.Start(sctx, spec)
	return s, time.Since(t0), err
}

// start is startTimed for a latency scenario scn: a failed start fails
// the target and notes why in its p50 cell, and gives a nil session.
func (b *bench) start(ctx context.Context, t target, spec, scn string) (session, time.Duration) {
	s, d, err := startTimed(ctx, t, spec)
	if err != nil {
		b.fail(t.Name(), "start %s: %v", spec, err)
		b.res.note(scn, "p50", "ms", "lower", t.Name(), "start failed: "+short(err))
		return nil, 0
	}
	return s, d
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// bench runs the scenarios against one target at a time.
type bench struct {
	cfg *config
	res *results
	log func(format string, args ...any)
	// failures are what --quick turns into a non-zero exit: lost messages
	// or errors on kernelbus or the floor.
	failures []string
}

func (b *bench) fail(target, format string, args ...any) {
	msg := target + ": " + fmt.Sprintf(format, args...)
	b.log("FAIL %s", msg)
	if target != tJEG {
		b.failures = append(b.failures, msg)
	}
}

func specLabel(spec string) string {
	if spec == specPython {
		return "ipykernel"
	}
	return "synthetic"
}

// startLatency: scenario 1, kernel start to the first kernel_info_reply,
// n sequential starts per target. The targets take turns, start by start,
// so that a machine whose load changes (CI, other jobs) weighs on all of
// them alike and the ratios stay fair.
func (b *bench) startLatency(ctx context.Context, ts []target, spec string, n int) {
	scn := "1 start → kernel_info_reply (" + specLabel(spec) + ")"
	xs := make([][]float64, len(ts))
	for i := 0; i < n; i++ {
		for ti, t := range ts {
			s, d := b.start(ctx, t, spec, scn)
			if s == nil {
				continue
			}
			xs[ti] = append(xs[ti], ms(d))
			_ = s.Close(ctx)
		}
	}
	for ti, t := range ts {
		if len(xs[ti]) == 0 {
			continue
		}
		p50, p99 := b.setLatency(scn, t.Name(), xs[ti])
		b.log("%s %s: starts p50 %.1f ms p99 %.1f ms (n=%d)", t.Name(), scn, p50, p99, len(xs[ti]))
	}
}

// roundTrip: scenario 2, trivial execute round trips, one kernel per
// target; the targets take turns in batches of 50 (see startLatency).
func (b *bench) roundTrip(ctx context.Context, ts []target, spec string, n int) {
	scn := "2 trivial execute round trip (" + specLabel(spec) + ")"
	ss := make([]session, len(ts))
	for ti, t := range ts {
		s, _ := b.start(ctx, t, spec, scn)
		if s == nil {
			continue
		}
		ss[ti] = s
		defer s.Close(ctx)
		for range max(n/10, 5) { // warm-up
			if _, err := okStatus(s.Execute("pass", 30*time.Second)); err != nil {
				break
			}
		}
	}
	const batch = 50
	xs := make([][]float64, len(ts))
	for done := 0; done < n; done += batch {
		for ti, s := range ss {
			if s == nil {
				continue
			}
			for i := 0; i < min(batch, n-done); i++ {
				t0 := time.Now()
				if _, err := okStatus(s.Execute("pass", 30*time.Second)); err != nil {
					b.fail(ts[ti].Name(), "execute: %v", err)
					b.res.note(scn, "p50", "ms", "lower", ts[ti].Name(), "execute failed: "+short(err))
					ss[ti] = nil
					break
				}
				xs[ti] = append(xs[ti], ms(time.Since(t0)))
			}
		}
	}
	for ti, t := range ts {
		if len(xs[ti]) == 0 {
			continue
		}
		p50, p99 := b.setLatency(scn, t.Name(), xs[ti])
		b.log("%s %s: p50 %.3f ms p99 %.3f ms (n=%d)", t.Name(), scn, p50, p99, len(xs[ti]))
	}
}

// throughput: scenario 3, one execute that floods iopub.
func (b *bench) throughput(ctx context.Context, t target, n, size, dcount, dsize int) {
	s, _, err := startTimed(ctx, t, specSynth)
	if err != nil {
		b.fail(t.Name(), "start: %v", err)
		b.res.note("3 iopub throughput", "stream msgs/s", "msg/s", "higher", t.Name(), "start failed: "+short(err))
		return
	}
	defer s.Close(ctx)
	run := func(scn, code string, want int, rateMetric string) {
		cpu0 := cpuByRole(t)
		t0 := time.Now()
		r, err := s.Execute(code, 10*time.Minute)
		d := time.Since(t0)
		cpu1 := cpuByRole(t)
		if err != nil {
			b.fail(t.Name(), "%s: %v", code, err)
			b.res.note(scn, rateMetric, "msg/s", "higher", t.Name(), "failed: "+short(err))
			return
		}
		lost := want - r.Outputs
		// Where the CPU goes, per message received: what limits the rate
		// on a machine of two cores.
		for _, role := range []string{"gateway", "launcher", "kernel", "client"} {
			if c1, ok := cpu1[role]; ok && r.Outputs > 0 {
				b.res.set(scn, "CPU per msg: "+role, "µs", "lower", t.Name(), (c1-cpu0[role])*1e6/float64(r.Outputs))
			}
		}
		b.res.set(scn, rateMetric, "msg/s", "higher", t.Name(), float64(r.Outputs)/d.Seconds())
		b.res.set(scn, "MB/s received", "MB/s", "higher", t.Name(), float64(r.Bytes)/1e6/d.Seconds())
		b.res.set(scn, "lost", "msgs", "", t.Name(), float64(lost))
		b.log("%s %s: %d/%d msgs in %v, %.0f msg/s, %.1f MB/s", t.Name(), scn, r.Outputs, want, d.Round(time.Millisecond),
			float64(r.Outputs)/d.Seconds(), float64(r.Bytes)/1e6/d.Seconds())
		if lost != 0 {
			b.fail(t.Name(), "%s: %d of %d messages lost", scn, lost, want)
		}
	}
	run(fmt.Sprintf("3 iopub: %d × %d B stream", n, size), fmt.Sprintf("emit n=%d size=%d", n, size), n, "msgs/s")
	run(fmt.Sprintf("3 iopub: %d × %d MB display_data", dcount, dsize>>20), fmt.Sprintf("display size=%d count=%d", dsize, dcount), dcount, "msgs/s")
}

// startMany starts k kernels with at most conc starts at once. With
// failFast it stops starting after the first failure.
func startMany(ctx context.Context, t target, spec string, k, conc int, failFast bool) ([]session, int, error) {
	var (
		mu       sync.Mutex
		sessions []session
		failed   int
		firstErr error
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, conc)
	for i := 0; i < k; i++ {
		if stop.Load() {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sctx, cancel := context.WithTimeout(ctx, 120*time.Second)
			defer cancel()
			s, err := t.Start(sctx, spec)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				if failFast {
					stop.Store(true)
				}
				return
			}
			sessions = append(sessions, s)
		}()
	}
	wg.Wait()
	return sessions, failed, firstErr
}

func closeAll(ctx context.Context, ss []session, conc int) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for _, s := range ss {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = s.Close(ctx)
		}()
	}
	wg.Wait()
}

// manyKernels: scenario 4, k synthetic kernels each sent r executes/s for
// dur. It returns false when the target could not start them all.
func (b *bench) manyKernels(ctx context.Context, t target, g *gateway, k, r int, dur time.Duration) bool {
	scn := fmt.Sprintf("4 many kernels: K=%d × R=%d/s, %v", k, r, dur)
	t0 := time.Now()
	ss, failed, err := startMany(ctx, t, specSynth, k, 16, t.Name() == tJEG)
	b.res.set(scn, "kernels started", "", "higher", t.Name(), float64(len(ss)))
	b.log("%s %s: %d started, %d failed in %v", t.Name(), scn, len(ss), failed, time.Since(t0).Round(time.Millisecond))
	if failed > 0 {
		b.res.note(scn, "kernels started", "", "higher", t.Name(), fmt.Sprintf("%d failed, first: %s", failed, short(err)))
		b.fail(t.Name(), "%s: %d starts failed: %v", scn, failed, err)
	}
	if g != nil && len(ss) > 0 {
		m := sampleMemory(g)
		b.res.set(scn, "launcher PSS each", "MiB", "lower", t.Name(), m.launcherPSS/1024)
		b.res.set(scn, "kernel PSS each", "MiB", "lower", t.Name(), m.kernelPSS/1024)
		b.res.set(scn, "gateway RSS", "MiB", "lower", t.Name(), float64(m.mainRSS)/1024)
	}
	var (
		completed, lost, disconnects, errs atomic.Int64
		scheduled                          atomic.Int64
		mu                                 sync.Mutex
		lat                                []float64
		wg                                 sync.WaitGroup
	)
	period := time.Second / time.Duration(r)
	start := time.Now().Add(100 * time.Millisecond)
	end := start.Add(dur)
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			offset := time.Duration(rand.Int64N(int64(period)))
			scheduled.Add(int64((end.Sub(start)-offset)/period) + 1)
			var mine []float64
			defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
			for i := 0; ; i++ {
				next := start.Add(offset + time.Duration(i)*period)
				if next.After(end) {
					return
				}
				// A kernel that fell behind by more than a period when the
				// run ends sends no more: what it did not send counts as
				// not completed, and the run stays as long as asked.
				if time.Now().After(end.Add(period)) || ctx.Err() != nil {
					return
				}
				if w := time.Until(next); w > 0 {
					select {
					case <-time.After(w): // pacing the load, not waiting for a condition
					case <-ctx.Done():
						return
					}
				}
				t0 := time.Now()
				_, err := okStatus(s.Execute("pass", 10*time.Second))
				switch {
				case err == nil:
					completed.Add(1)
					mine = append(mine, ms(time.Since(t0)))
				case isTimeout(err):
					lost.Add(1)
					return // a timed-out websocket read cannot be resumed
				case errors.Is(err, errReplyStatus):
					errs.Add(1)
				default:
					if disconnects.Add(1) <= 3 {
						b.log("%s %s: websocket ended: %v", t.Name(), scn, err)
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	if g != nil && len(ss) > 0 {
		// Memory under load: the larger of the samples after the starts
		// and at the end of the load, with every kernel still connected.
		if os.Getenv("KB_HEAPPROFILE") != "" {
			g.main.signal(syscall.SIGUSR1) // serve writes a heap profile (cmd/kernelbus)
		}
		m := sampleMemory(g)
		if v, ok := b.res.value(scn, "gateway RSS", t.Name()); !ok || float64(m.mainRSS)/1024 > v {
			b.res.set(scn, "gateway RSS", "MiB", "lower", t.Name(), float64(m.mainRSS)/1024)
		}
	}
	expected := scheduled.Load()
	b.res.set(scn, "completed / scheduled", "%", "higher", t.Name(), 100*float64(completed.Load())/float64(max(expected, 1)))
	b.res.set(scn, "executes/s", "exec/s", "higher", t.Name(), float64(completed.Load())/dur.Seconds())
	p50, p99 := b.setLatency(scn, t.Name(), lat)
	b.res.set(scn, "websocket disconnects", "", "", t.Name(), float64(disconnects.Load()))
	b.res.set(scn, "lost replies", "", "", t.Name(), float64(lost.Load()))
	b.log("%s %s: %d/%d completed, p50 %.2f ms p99 %.2f ms, %d disconnects, %d lost, %d error replies", t.Name(), scn,
		completed.Load(), expected, p50, p99, disconnects.Load(), lost.Load(), errs.Load())
	if disconnects.Load()+lost.Load()+errs.Load() > 0 {
		b.fail(t.Name(), "%s: %d disconnects, %d lost replies, %d error replies", scn, disconnects.Load(), lost.Load(), errs.Load())
	}
	t1 := time.Now()
	closeAll(ctx, ss, 32)
	b.log("%s: %d kernels stopped in %v", t.Name(), len(ss), time.Since(t1).Round(time.Millisecond))
	return failed == 0
}

// startThroughput: scenario 5, s concurrent starts.
func (b *bench) startThroughput(ctx context.Context, t target, s int) {
	scn := fmt.Sprintf("5 concurrent starts: S=%d (synthetic)", s)
	g, isGateway := t.(*gateway)
	var gw0 float64
	var before map[int]bool
	if isGateway {
		gw0, before = gatewayCPU(g), pidSet(descendants(g.main.pid()))
	}
	t0 := time.Now()
	ss, failed, err := startMany(ctx, t, specSynth, s, s, false)
	d := time.Since(t0)
	b.res.set(scn, "starts/s", "1/s", "higher", t.Name(), float64(len(ss))/d.Seconds())
	b.res.set(scn, "failures", "", "", t.Name(), float64(failed))
	if isGateway && len(ss) > 0 {
		// What a start costs in CPU, whatever else the machine runs: the
		// gateway's and the new launchers' and kernels' (still running,
		// so their CPU is their own), not the client's. Cores over it is
		// the rate a quiet machine allows.
		gw := gatewayCPU(g) - gw0
		// serve's children are the launchers (the local backend), theirs the kernels.
		var launchers, kernels float64
		for _, pid := range children()[g.main.pid()] {
			if !before[pid] {
				launchers += cpuSeconds(pid)
			}
		}
		for _, pid := range descendants(g.main.pid()) {
			if !before[pid] {
				kernels += cpuSeconds(pid)
			}
		}
		kernels -= launchers
		n := float64(len(ss))
		per := (gw + launchers + kernels) * 1000 / n
		b.res.set(scn, "server CPU per start", "ms", "lower", t.Name(), per)
		// Its parts: which process to make cheaper.
		b.res.set(scn, "of which gateway", "ms", "lower", t.Name(), gw*1000/n)
		b.res.set(scn, "of which launchers", "ms", "lower", t.Name(), launchers*1000/n)
		b.res.set(scn, "of which kernels", "ms", "lower", t.Name(), kernels*1000/n)
		if per > 0 {
			b.res.set(scn, "CPU-bound starts/s on this machine's cores", "1/s", "higher", t.Name(), float64(runtime.NumCPU())*1000/per)
		}
	}
	b.log("%s %s: %d ok, %d failed in %v (%.1f/s)", t.Name(), scn, len(ss), failed, d.Round(time.Millisecond), float64(len(ss))/d.Seconds())
	if failed > 0 {
		b.res.note(scn, "failures", "", "", t.Name(), short(err))
		b.fail(t.Name(), "%s: %d failed: %v", scn, failed, err)
	}
	closeAll(ctx, ss, 50)
}

// idleMemory: scenario 6, memory per connected idle kernel.
func (b *bench) idleMemory(ctx context.Context, g *gateway, n int) {
	scn := fmt.Sprintf("6 memory: %d connected idle kernels", n)
	before := sampleMemory(g)
	ss, failed, err := startMany(ctx, g, specSynth, n, 16, false)
	if failed > 0 {
		b.fail(g.name, "%s: %d starts failed: %v", scn, failed, err)
	}
	defer closeAll(ctx, ss, 32)
	if len(ss) == 0 {
		return
	}
	after := sampleMemory(g)
	per := func(a, b int64) float64 { return float64(a-b) / float64(len(ss)) }
	if g.fe != nil {
		b.res.set(scn, "front-end per kernel (RSS Δ)", "KiB", "lower", g.name, per(after.feRSS, before.feRSS))
		b.res.set(scn, "bus + workers per kernel (RSS Δ)", "KiB", "lower", g.name, per(after.mainRSS, before.mainRSS))
	} else {
		b.res.set(scn, "front-end per kernel (RSS Δ)", "KiB", "lower", g.name, per(after.mainRSS, before.mainRSS))
	}
	if after.launchers > 0 {
		b.res.set(scn, "launcher per kernel (PSS)", "KiB", "lower", g.name, after.launcherPSS)
		b.res.set(scn, "launcher per kernel (RSS)", "KiB", "lower", g.name, after.launcherRSS)
	}
	b.res.set(scn, "kernel process (PSS)", "KiB", "lower", g.name, after.kernelPSS)
	b.log("%s %s: front-end Δ %.1f KiB/kernel, gateway Δ %.1f KiB/kernel, launcher PSS %.0f KiB, kernel PSS %.0f KiB",
		g.name, scn, per(after.feRSS, before.feRSS), per(after.mainRSS, before.mainRSS), after.launcherPSS, after.kernelPSS)
}

// memSample is one look at a gateway's processes (KiB).
type memSample struct {
	mainRSS, feRSS           int64
	launchers, kernels       int
	launcherPSS, launcherRSS float64
	kernelPSS, kernelRSS     float64
}

func sampleMemory(g *gateway) memSample {
	var m memSample
	m.mainRSS, _ = memKB(g.main.pid())
	if g.fe != nil {
		m.feRSS, _ = memKB(g.fe.pid())
	}
	var lp, lr, kp, kr int64
	for _, pid := range descendants(g.main.pid()) {
		rss, pss := memKB(pid)
		switch c := comm(pid); {
		case strings.HasPrefix(c, "kernelbus-launc"):
			m.launchers++
			lp += pss
			lr += rss
		case strings.HasPrefix(c, "kb-synthkernel"):
			m.kernels++
			kp += pss
			kr += rss
		}
	}
	if m.launchers > 0 {
		m.launcherPSS, m.launcherRSS = float64(lp)/float64(m.launchers), float64(lr)/float64(m.launchers)
	}
	if m.kernels > 0 {
		m.kernelPSS, m.kernelRSS = float64(kp)/float64(m.kernels), float64(kr)/float64(m.kernels)
	}
	return m
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTimeout)
}

var errTimeout = errors.New("timeout")

func short(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// cpuByRole sums the CPU seconds used so far by the processes of target t,
// by role: the gateway process, launchers, kernels, and this client.
func cpuByRole(t target) map[string]float64 {
	self := os.Getpid()
	m := map[string]float64{"client": cpuSeconds(self), "kernel": 0}
	root := self
	if g, ok := t.(*gateway); ok {
		root = g.main.pid()
		m["gateway"] = cpuSeconds(root)
		if g.fe != nil {
			m["gateway"] += cpuSeconds(g.fe.pid())
		}
	}
	for _, pid := range descendants(root) {
		switch c := comm(pid); {
		case strings.HasPrefix(c, "kernelbus-launc"):
			m["launcher"] += cpuSeconds(pid)
		case strings.HasPrefix(c, "kb-synthkernel"):
			m["kernel"] += cpuSeconds(pid)
		}
	}
	return m
}

// warmStart: scenario 7, POST /api/kernels to the first kernel_info_reply
// through the websocket when a warm ipykernel kernel waits (`kernelbus
// serve --warm`), n sequential starts. Its own gateway, so that the other
// scenarios' starts stay cold. Between starts it waits, unmeasured, for
// the pool to refill: what is measured is a request that finds a warm
// kernel, which is what an operator sizes the pool for.
func (b *bench) warmStart(ctx context.Context, specDir string, n int) {
	scn := "7 warm start → kernel_info_reply (ipykernel)"
	const pool = 2
	g, err := startKernelbus(ctx, b.cfg, specDir, "--warm", fmt.Sprintf("%s=%d,idle=1h", specPython, pool))
	if err != nil {
		b.fail(tKB, "%s: start the gateway: %v", scn, err)
		return
	}
	defer g.stop()
	waitPool := func() error {
		wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		for {
			var warm []struct {
				State string `json:"state"`
			}
			if err := getJSON(wctx, g.c.HTTP, g.c.BaseURL+"/api/warm", &warm); err != nil {
				return err
			}
			running := 0
			for _, w := range warm {
				if w.State == "running" {
					running++
				}
			}
			if running >= pool {
				return nil
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("the warm pool did not refill: %d of %d running", running, pool)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	var xs []float64
	for i := 0; i < n; i++ {
		if err := waitPool(); err != nil {
			b.fail(tKB, "%s: %v", scn, err)
			b.res.note(scn, "p50", "ms", "lower", tKB, short(err))
			return
		}
		s, d := b.start(ctx, g, specPython, scn)
		if s == nil {
			continue
		}
		xs = append(xs, ms(d))
		_ = s.Close(ctx)
	}
	if len(xs) == 0 {
		return
	}
	p50, p99 := b.setLatency(scn, tKB, xs)
	b.log("%s %s: p50 %.1f ms p99 %.1f ms (n=%d, pool of %d)", tKB, scn, p50, p99, len(xs), pool)
}

// getJSON GETs u into out.
func getJSON(ctx context.Context, c *http.Client, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// gatewayCPU is the CPU seconds a gateway's own processes used so far.
func gatewayCPU(g *gateway) float64 {
	c := cpuSeconds(g.main.pid())
	if g.fe != nil {
		c += cpuSeconds(g.fe.pid())
	}
	return c
}

func pidSet(pids []int) map[int]bool {
	m := make(map[int]bool, len(pids))
	for _, p := range pids {
		m[p] = true
	}
	return m
}
