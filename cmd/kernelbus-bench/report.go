package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// checkTargets marks the rows issue 17 sets targets on (and the start,
// memory and warm-start targets of the issues before it, which it keeps).
// It also adds the derived row "largest K at 10/s with ≥ 99 % completed".
func checkTargets(r *results) {
	mark := func(scn, metric, target string, ok, known bool) {
		for _, x := range r.rows {
			if x.Scenario == scn && x.Metric == metric {
				x.Target = target
				if known {
					x.Met = &ok
				}
			}
		}
	}
	kb := func(scn, metric string) (float64, bool) { return r.value(scn, metric, tKB) }
	two := func(scn, metric, other string) (float64, float64, bool) {
		a, ok1 := r.value(scn, metric, tKB)
		b, ok2 := r.value(scn, metric, other)
		return a, b, ok1 && ok2
	}
	a, f, ok := two("2 trivial execute round trip (ipykernel)", "p50", tFloor)
	mark("2 trivial execute round trip (ipykernel)", "p50", "≤ 1.15 × floor", a <= 1.15*f, ok)
	a, f, ok = two("2 trivial execute round trip (synthetic)", "p50", tFloor)
	mark("2 trivial execute round trip (synthetic)", "p50", "≤ floor + 0.3 ms", a-f <= 0.3, ok)
	a, f, ok = two("2 trivial execute round trip (synthetic)", "p99", tFloor)
	mark("2 trivial execute round trip (synthetic)", "p99", "≤ floor + 1 ms", a-f <= 1, ok)
	largestK(r)
	for _, x := range r.rows {
		var k, rate int
		many := strings.HasPrefix(x.Scenario, "4 many kernels:")
		if many {
			_, _ = fmt.Sscanf(x.Scenario, "4 many kernels: K=%d × R=%d/s", &k, &rate)
		}
		switch {
		case strings.HasPrefix(x.Scenario, "3 iopub:") && strings.Contains(x.Scenario, "stream") && x.Metric == "msgs/s":
			a, f, ok := two(x.Scenario, x.Metric, tFloor)
			mark(x.Scenario, x.Metric, "≥ 0.7 × floor", a >= 0.7*f, ok)
		case strings.HasPrefix(x.Scenario, "3 iopub:") && strings.Contains(x.Scenario, "display_data") && x.Metric == "MB/s received":
			a, f, okf := two(x.Scenario, x.Metric, tFloor)
			_, j, okj := two(x.Scenario, x.Metric, tJEG)
			mark(x.Scenario, x.Metric, "≥ 0.7 × floor and > JEG", a >= 0.7*f && a > j, okf && okj)
		case strings.HasPrefix(x.Scenario, "3 iopub:") && strings.Contains(x.Scenario, "display_data") && x.Metric == "CPU per msg: gateway":
			a, j, ok := two(x.Scenario, x.Metric, tJEG)
			mark(x.Scenario, x.Metric, "< JEG", a < j, ok)
		case many && x.Metric == "gateway RSS":
			a, j, ok := two(x.Scenario, x.Metric, tJEG)
			mark(x.Scenario, x.Metric, "≤ JEG", a <= j, ok)
		case many && k == 100 && rate == 10 && x.Metric == "completed / scheduled":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "≥ 99 %", a >= 99, ok)
		case many && k == 100 && rate == 10 && x.Metric == "p99":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "≤ 100 ms", a <= 100, ok)
		case many && k == 1000 && rate == 10 && (x.Metric == "websocket disconnects" || x.Metric == "lost replies"):
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "0", a == 0, ok)
		case many && k == 1000 && rate == 10 && x.Metric == "kernels started":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "1000", a == 1000, ok)
		case x.Scenario == scnLargestK:
			a, j, ok := two(x.Scenario, x.Metric, tJEG)
			mark(x.Scenario, x.Metric, "≥ 3 × JEG", a > 0 && a >= 3*j, ok)
		case strings.HasPrefix(x.Scenario, "6 memory:") && x.Metric == "front-end per kernel (RSS Δ)":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "≤ 64 KiB", a <= 64, ok)
		case strings.HasPrefix(x.Scenario, "1 start") && x.Metric == "p50":
			a, f, ok := two(x.Scenario, x.Metric, tFloor)
			mark(x.Scenario, x.Metric, "≤ floor + 30 ms", a-f <= 30, ok)
		case strings.HasPrefix(x.Scenario, "5 concurrent starts") && x.Metric == "starts/s":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "≥ 100/s", a >= 100, ok)
		case strings.HasPrefix(x.Scenario, "5 concurrent starts") && x.Metric == "failures":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "0", a == 0, ok)
		case strings.HasPrefix(x.Scenario, "7 warm start") && x.Metric == "p50":
			a, ok := kb(x.Scenario, x.Metric)
			mark(x.Scenario, x.Metric, "≤ 50 ms", a <= 50, ok)
		}
	}
}

// scnLargestK names the derived row of issue 17's capacity target.
const scnLargestK = "4 many kernels: largest K at R=10/s"

// largestK adds, for each gateway, the largest K of the many-kernels runs
// at 10 executes/s that completed at least 99 % of what was scheduled (0
// when none did). A gateway that ran no such K gets no value.
func largestK(r *results) {
	best := map[string]float64{}
	for _, x := range append([]*row(nil), r.rows...) {
		var k, rate int
		if x.Metric != "completed / scheduled" {
			continue
		}
		if n, _ := fmt.Sscanf(x.Scenario, "4 many kernels: K=%d × R=%d/s", &k, &rate); n != 2 || rate != 10 {
			continue
		}
		for _, t := range []string{tKB, tJEG} {
			v := x.Values[t]
			if v == nil {
				continue
			}
			if _, seen := best[t]; !seen {
				best[t] = 0
			}
			if *v >= 99 && float64(k) > best[t] {
				best[t] = float64(k)
			}
		}
	}
	for t, k := range best {
		r.set(scnLargestK, "≥ 99 % completed", "kernels", "higher", t, k)
	}
}

func fmtVal(v *float64) string {
	if v == nil {
		return "–"
	}
	x := *v
	switch a := math.Abs(x); {
	case x == math.Trunc(x) && a < 1e9:
		return fmt.Sprintf("%.0f", x)
	case a >= 1000:
		return fmt.Sprintf("%.0f", x)
	case a >= 100:
		return fmt.Sprintf("%.1f", x)
	case a >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}

func ratio(x *row, other string) string {
	a, b := x.Values[tKB], x.Values[other]
	if a == nil || b == nil || *b == 0 || x.Better == "" {
		return ""
	}
	return fmt.Sprintf("%.2f×", *a / *b)
}

// renderTable is the one table, in Markdown, with the notes below it.
func renderTable(r *results) string {
	var sb strings.Builder
	sb.WriteString("| scenario | metric | unit | kernelbus | JEG | floor | kb ÷ JEG | kb ÷ floor | target | met |\n")
	sb.WriteString("|---|---|---|---:|---:|---:|---:|---:|---|---|\n")
	var notes []string
	for _, x := range r.rows {
		met := ""
		if x.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*x.Met]
		} else if x.Target != "" {
			met = "n/a"
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.Scenario, x.Metric, x.Unit,
			fmtVal(x.Values[tKB]), fmtVal(x.Values[tJEG]), fmtVal(x.Values[tFloor]), ratio(x, tJEG), ratio(x, tFloor), x.Target, met)
		for _, t := range []string{tKB, tJEG, tFloor} {
			if n := x.Notes[t]; n != "" {
				notes = append(notes, fmt.Sprintf("- %s / %s / %s: %s", x.Scenario, x.Metric, t, n))
			}
		}
	}
	if len(notes) > 0 {
		sb.WriteString("\nNotes from the run:\n\n" + strings.Join(notes, "\n") + "\n")
	}
	return sb.String()
}

// machine describes where the run happened.
type machine struct {
	CPU       string `json:"cpu"`
	NProc     int    `json:"nproc"`
	Memory    string `json:"memory"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	LoadStart string `json:"load_start"`
	LoadAfter string `json:"load_after"`
	Date      string `json:"date"`
	Duration  string `json:"duration"`
}

func describeMachine() machine {
	m := machine{NProc: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg(), Date: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("free", "-h").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Mem:") {
				f := strings.Fields(l)
				if len(f) > 6 {
					m.Memory = f[1] + " total, " + f[6] + " available"
				}
			}
		}
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	return m
}

func (m machine) oneLine() string {
	return fmt.Sprintf("%s, %d CPUs, %s, %s, load %s", m.CPU, m.NProc, m.Memory, m.Kernel, m.LoadStart)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// writeMarkdown regenerates docs/benchmarks.md: the run's facts, the
// table, then the analysis kept in docs/benchmarks-notes.md (hand-written,
// appended as it is).
func writeMarkdown(path string, m machine, table string, cfg *config) error {
	var sb strings.Builder
	sb.WriteString("# Benchmarks: kernelbus, Jupyter Enterprise Gateway and the direct-ZMQ floor\n\n")
	sb.WriteString("Generated by `go tool -modfile=tools/go.mod task bench` (cmd/kernelbus-bench); do not edit the table by hand.\n\n")
	fmt.Fprintf(&sb, "- date: %s, duration %s%s\n", m.Date, m.Duration, map[bool]string{true: " (**--quick**)", false: ""}[cfg.quick])
	fmt.Fprintf(&sb, "- machine: %s, `nproc` %d, memory %s, %s, %s\n", m.CPU, m.NProc, m.Memory, m.Kernel, m.Go)
	fmt.Fprintf(&sb, "- load average (1, 5, 15 min) at start: %s; at end: %s\n", m.LoadStart, m.LoadAfter)
	sb.WriteString("- targets: kernelbus (`kernelbus serve`: embedded NATS, front-end, local workers; one `kernelbus-launcher` per kernel), " +
		"JEG 3.3.0 from PyPI (LocalProcessProxy, own venv), floor (a Go client speaking ZMQ straight to the kernel, signing with `launcher/wire`)\n")
	sb.WriteString("- kernels: ipykernel from the e2e venv, and `kb-synthkernel` (Go, zmq4); the same kernelspecs for every target\n")
	sb.WriteString("- client: `frontend/client` over the websocket (v1 protocol where the gateway offers it) for both gateways; ratios are within this run\n\n")
	sb.WriteString(table)
	notes, err := os.ReadFile(strings.TrimSuffix(path, ".md") + "-notes.md")
	if err == nil {
		sb.WriteString("\n")
		sb.Write(notes)
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
