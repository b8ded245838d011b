// Command kernelbus-bench measures kernelbus side by side with Jupyter
// Enterprise Gateway (JEG) and the direct-ZMQ floor, on one machine, in one
// run: kernel starts, execute round trips, iopub throughput, many kernels
// under load, concurrent starts and memory. It prints one table and writes
// it as Markdown and JSON. `task bench` runs it with everything installed
// by the project's scripts; `--quick` is the smoke run `task test` does.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type config struct {
	kernelbusBin, launcherBin, synthBin string
	python                              string
	jegVenv                             string
	targets                             map[string]bool
	quick                               bool
	markdown, jsonOut                   string
	work                                string
	keep                                bool
	maxK                                int
	// kbArgs are extra flags for every `kernelbus serve` (e.g. --live-output=false).
	kbArgs []string
	// only, when not empty, holds the scenario numbers to run.
	only map[int]bool
}

// runs reports whether scenario n is selected.
func (c *config) runs(n int) bool { return len(c.only) == 0 || c.only[n] }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kernelbus-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	fs.StringVar(&cfg.kernelbusBin, "kernelbus", "bin/kernelbus", "kernelbus binary")
	fs.StringVar(&cfg.launcherBin, "launcher", "bin/kernelbus-launcher", "kernelbus-launcher binary")
	fs.StringVar(&cfg.synthBin, "synth", "bin/kb-synthkernel", "kb-synthkernel binary (the synthetic kernel)")
	fs.StringVar(&cfg.python, "python", "", "python with ipykernel for the ipykernel kernelspec (required)")
	fs.StringVar(&cfg.jegVenv, "jeg-venv", "", "venv of Jupyter Enterprise Gateway (scripts/setup-jeg.sh prints it); needed for the jeg target")
	targets := fs.String("targets", "", "comma-separated targets among kernelbus, jeg, floor (default: all; with --quick: kernelbus,floor)")
	fs.BoolVar(&cfg.quick, "quick", false, "tiny sizes: a smoke run that fails on any lost message or error (kernelbus and floor)")
	fs.StringVar(&cfg.markdown, "markdown", "", "write the results as Markdown here (e.g. docs/benchmarks.md)")
	fs.StringVar(&cfg.jsonOut, "json", "", "write the results as JSON here")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory (every process's log) and print where it is")
	fs.IntVar(&cfg.maxK, "max-kernels", 1000, "largest K of the many-kernels scenario")
	kbArgs := fs.String("kernelbus-args", "", "extra flags for `kernelbus serve`, space separated (e.g. --live-output=false)")
	scenarios := fs.String("scenarios", "", "comma-separated scenario numbers to run (1-7; default: all)")
	fromJSON := fs.String("from-json", "", "run nothing: render the table and --markdown again from a JSON file this command wrote")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *fromJSON != "" {
		if err := rerender(*fromJSON, cfg.markdown, stdout); err != nil {
			fmt.Fprintln(stderr, "kernelbus-bench:", err)
			return 1
		}
		return 0
	}
	cfg.kbArgs = strings.Fields(*kbArgs)
	cfg.only = map[int]bool{}
	for _, f := range strings.Split(*scenarios, ",") {
		if f = strings.TrimSpace(f); f != "" {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 || n > 7 {
				fmt.Fprintf(stderr, "kernelbus-bench: --scenarios: %q is not 1-7\n", f)
				return 2
			}
			cfg.only[n] = true
		}
	}
	if cfg.python == "" {
		fmt.Fprintln(stderr, "kernelbus-bench: --python is required (a python with ipykernel)")
		return 2
	}
	if *targets == "" {
		*targets = "kernelbus,jeg,floor"
		if cfg.quick {
			*targets = "kernelbus,floor"
		}
	}
	cfg.targets = map[string]bool{}
	for _, t := range strings.Split(*targets, ",") {
		cfg.targets[strings.TrimSpace(t)] = true
	}
	if cfg.targets[tJEG] && cfg.jegVenv == "" {
		fmt.Fprintln(stderr, "kernelbus-bench: the jeg target needs --jeg-venv (run scripts/setup-jeg.sh)")
		return 2
	}
	for _, p := range []*string{&cfg.kernelbusBin, &cfg.launcherBin, &cfg.synthBin, &cfg.python} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			fmt.Fprintln(stderr, "kernelbus-bench:", err)
			return 2
		}
		*p = abs
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	work, err := os.MkdirTemp("", "kernelbus-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "kernelbus-bench:", err)
		return 1
	}
	if cfg.keep {
		defer fmt.Fprintln(stderr, "kernelbus-bench: logs kept in", work)
	} else {
		defer os.RemoveAll(work)
	}
	cfg.work = work

	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	b := &bench{cfg: cfg, res: &results{}, log: logf}
	m := describeMachine()
	logf("machine: %s", m.oneLine())
	if dynamicallyLinked(cfg.launcherBin) {
		// `go build ./cmd/...` makes one; deployments and `task build` do not.
		logf("warning: %s is dynamically linked (cgo): such a launcher cost 4-8 ms more CPU per start in issue 18's runs than the static one `task build` makes (docs/benchmarks-notes.md)", cfg.launcherBin)
	}
	t0 := time.Now()
	if err := b.runAll(ctx); err != nil {
		fmt.Fprintln(stderr, "kernelbus-bench:", err)
		return 1
	}
	m.LoadAfter = loadAvg()
	m.Duration = time.Since(t0).Round(time.Second).String()
	checkTargets(b.res)
	table := renderTable(b.res)
	fmt.Fprintln(stdout, table)
	if cfg.markdown != "" {
		if err := writeMarkdown(cfg.markdown, m, table, cfg); err != nil {
			fmt.Fprintln(stderr, "kernelbus-bench:", err)
			return 1
		}
	}
	if cfg.jsonOut != "" {
		if err := writeJSON(cfg.jsonOut, map[string]any{"machine": m, "quick": cfg.quick, "rows": b.res.rows}); err != nil {
			fmt.Fprintln(stderr, "kernelbus-bench:", err)
			return 1
		}
	}
	if cfg.quick && len(b.failures) > 0 {
		fmt.Fprintf(stderr, "kernelbus-bench: %d failures:\n  %s\n", len(b.failures), strings.Join(b.failures, "\n  "))
		return 1
	}
	return 0
}

// sizes are the scenario parameters of a full or a quick run.
type sizes struct {
	startsPy, startsSynth int
	rtPy, rtSynth         int
	emitN, emitSize       int
	dispCount, dispSize   int
	many                  []struct{ k, r int }
	manyDur               time.Duration
	concStarts            []int
	idleKernels           int
}

func (c *config) sizes() sizes {
	if c.quick {
		return sizes{startsPy: 2, startsSynth: 5, rtPy: 30, rtSynth: 100, emitN: 20000, emitSize: 1024,
			dispCount: 2, dispSize: 1 << 20, many: []struct{ k, r int }{{10, 10}}, manyDur: 3 * time.Second,
			concStarts: []int{10}, idleKernels: 10}
	}
	s := sizes{startsPy: 10, startsSynth: 30, rtPy: 500, rtSynth: 2000, emitN: 100000, emitSize: 1024,
		dispCount: 10, dispSize: 10 << 20, manyDur: 20 * time.Second,
		concStarts: []int{10, 50, 200}, idleKernels: 100}
	for _, kr := range []struct{ k, r int }{{100, 10}, {500, 10}, {1000, 10}, {64, 100}} {
		if kr.k <= c.maxK {
			s.many = append(s.many, kr)
		}
	}
	return s
}

// runAll starts every target, runs scenarios 1 and 2 with the targets
// taking turns (they are latencies, the most sensitive to a machine whose
// load changes), then the heavy scenarios on one target at a time while
// the others sit idle.
func (b *bench) runAll(ctx context.Context) error {
	cfg := b.cfg
	jupyterPath, kernelsDir, specs, err := writeSpecs(filepath.Join(cfg.work, "specs"), cfg)
	if err != nil {
		return err
	}
	sz := cfg.sizes()
	var ts []target
	var gws []*gateway
	defer func() {
		for _, g := range gws {
			g.stop()
		}
	}()
	for _, name := range []string{tKB, tJEG} {
		if !cfg.targets[name] {
			continue
		}
		var g *gateway
		if name == tKB {
			g, err = startKernelbus(ctx, cfg, kernelsDir)
		} else {
			g, err = startJEG(ctx, cfg, jupyterPath)
		}
		if err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		gws = append(gws, g)
		ts = append(ts, g)
		idle := sampleMemory(g)
		b.res.set("6 memory", "gateway RSS, idle", "MiB", "lower", g.name, float64(idle.mainRSS)/1024)
	}
	if cfg.targets[tFloor] {
		ts = append(ts, &floorTarget{specs: specs, dir: cfg.work})
	}
	if cfg.runs(1) {
		b.startLatency(ctx, ts, specPython, sz.startsPy)
		b.startLatency(ctx, ts, specSynth, sz.startsSynth)
	}
	if cfg.runs(2) {
		b.roundTrip(ctx, ts, specPython, sz.rtPy)
		b.roundTrip(ctx, ts, specSynth, sz.rtSynth)
	}
	if cfg.runs(7) && cfg.targets[tKB] {
		b.warmStart(ctx, kernelsDir, sz.startsPy)
	}
	for _, t := range ts {
		if err := ctx.Err(); err != nil {
			return err
		}
		b.heavy(ctx, t, sz)
		if g, ok := t.(*gateway); ok {
			b.runGateway(ctx, g, sz)
		}
	}
	return ctx.Err()
}

// heavy runs the throughput scenarios every target takes part in.
func (b *bench) heavy(ctx context.Context, t target, sz sizes) {
	if b.cfg.runs(3) {
		b.throughput(ctx, t, sz.emitN, sz.emitSize, sz.dispCount, sz.dispSize)
	}
	if b.cfg.runs(5) {
		for _, s := range sz.concStarts {
			if ctx.Err() != nil {
				return
			}
			b.startThroughput(ctx, t, s)
		}
	}
}

// runGateway runs the scenarios only gateways take part in.
func (b *bench) runGateway(ctx context.Context, g *gateway, sz sizes) {
	broke := false
	for _, kr := range sz.many {
		if !b.cfg.runs(4) {
			break
		}
		if ctx.Err() != nil {
			return
		}
		scn := fmt.Sprintf("4 many kernels: K=%d × R=%d/s, %v", kr.k, kr.r, sz.manyDur)
		if broke && g.name == tJEG && kr.k >= 500 {
			b.res.note(scn, "kernels started", "", "higher", g.name, "skipped: could not start the smaller K")
			continue
		}
		if !b.manyKernels(ctx, g, g, kr.k, kr.r, sz.manyDur) {
			broke = true
		}
	}
	if !b.cfg.runs(6) {
		return
	}
	if g.name == tKB {
		if err := g.addFrontend(ctx, b.cfg, filepath.Join(b.cfg.work, "specs", "share", "jupyter", "kernels")); err != nil {
			b.fail(g.name, "separate front-end: %v", err)
		} else {
			m := sampleMemory(g)
			b.res.set("6 memory", "front-end RSS, idle (separate process)", "MiB", "lower", g.name, float64(m.feRSS)/1024)
		}
	}
	b.idleMemory(ctx, g, sz.idleKernels)
}

// rerender prints the table of a JSON result file and writes it again as
// Markdown (after the notes file changed, say).
func rerender(path, markdown string, stdout io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var saved struct {
		Machine machine `json:"machine"`
		Quick   bool    `json:"quick"`
		Rows    []*row  `json:"rows"`
	}
	if err := json.Unmarshal(data, &saved); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	res := &results{rows: saved.Rows}
	checkTargets(res)
	table := renderTable(res)
	fmt.Fprintln(stdout, table)
	if markdown == "" {
		return nil
	}
	return writeMarkdown(markdown, saved.Machine, table, &config{quick: saved.Quick})
}
