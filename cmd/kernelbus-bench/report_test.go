package main

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// TestCheckTargetsIssue17 judges a made-up result set against issue 17's
// targets: each target's row is marked met or not from the values.
func TestCheckTargetsIssue17(t *testing.T) {
	r := &results{}
	set := func(scn, metric string, kb, jeg, floor float64) {
		for tg, v := range map[string]float64{tKB: kb, tJEG: jeg, tFloor: floor} {
			if v >= 0 {
				r.set(scn, metric, "", "lower", tg, v)
			}
		}
	}
	set("2 trivial execute round trip (ipykernel)", "p50", 4.0, 40, 3.6)    // 1.11 × floor: met
	set("2 trivial execute round trip (synthetic)", "p50", 0.5, 40, 0.1)    // +0.4 ms: missed
	set("2 trivial execute round trip (synthetic)", "p99", 1.5, 40, 1.0)    // +0.5 ms: met
	set("3 iopub: 100000 × 1024 B stream", "msgs/s", 60000, 3000, 90000)    // 0.67 × floor: missed
	set("3 iopub: 10 × 10 MB display_data", "MB/s received", 400, 190, 520) // met
	set("3 iopub: 10 × 10 MB display_data", "CPU per msg: gateway", 40000, 34000, -1)
	set("4 many kernels: K=100 × R=10/s, 20s", "completed / scheduled", 99.5, 46, -1)
	set("4 many kernels: K=100 × R=10/s, 20s", "p99", 120, 318, -1)
	set("4 many kernels: K=100 × R=10/s, 20s", "gateway RSS", 150, 165, -1)
	set("4 many kernels: K=500 × R=10/s, 20s", "completed / scheduled", 99.2, 20, -1)
	set("4 many kernels: K=1000 × R=10/s, 20s", "completed / scheduled", 80, -1, -1)
	set("4 many kernels: K=1000 × R=10/s, 20s", "kernels started", 1000, -1, -1)
	checkTargets(r)
	want := map[[2]string]bool{
		{"2 trivial execute round trip (ipykernel)", "p50"}:              true,
		{"2 trivial execute round trip (synthetic)", "p50"}:              false,
		{"2 trivial execute round trip (synthetic)", "p99"}:              true,
		{"3 iopub: 100000 × 1024 B stream", "msgs/s"}:                    false,
		{"3 iopub: 10 × 10 MB display_data", "MB/s received"}:            true,
		{"3 iopub: 10 × 10 MB display_data", "CPU per msg: gateway"}:     false,
		{"4 many kernels: K=100 × R=10/s, 20s", "completed / scheduled"}: true,
		{"4 many kernels: K=100 × R=10/s, 20s", "p99"}:                   false,
		{"4 many kernels: K=100 × R=10/s, 20s", "gateway RSS"}:           true,
		{"4 many kernels: K=1000 × R=10/s, 20s", "kernels started"}:      true,
		{scnLargestK, "≥ 99 % completed"}:                                true,  // 500 against JEG's 0
		{"4 many kernels: K=500 × R=10/s, 20s", "completed / scheduled"}: false, // no target: unmarked
	}
	for k, met := range want {
		var x *row
		for _, y := range r.rows {
			if y.Scenario == k[0] && y.Metric == k[1] {
				x = y
			}
		}
		if x == nil {
			t.Errorf("%s / %s: no row", k[0], k[1])
			continue
		}
		if k[0] == "4 many kernels: K=500 × R=10/s, 20s" {
			if x.Met != nil || x.Target != "" {
				t.Errorf("%s / %s: marked (%q), but issue 17 sets no target on it", k[0], k[1], x.Target)
			}
			continue
		}
		if x.Met == nil || *x.Met != met {
			t.Errorf("%s / %s: target %q met %v, want %v", k[0], k[1], x.Target, x.Met, met)
		}
	}
	if v, _ := r.value(scnLargestK, "≥ 99 % completed", tKB); v != 500 {
		t.Errorf("largest K for kernelbus: %v, want 500", v)
	}
	if v, _ := r.value(scnLargestK, "≥ 99 % completed", tJEG); v != 0 {
		t.Errorf("largest K for JEG: %v, want 0", v)
	}
}

// The bench tells a static launcher from a dynamically linked one. The
// test binary is either; the loader's path, which a dynamically linked
// ELF names near its start, says which.
func TestDynamicallyLinked(t *testing.T) {
	if dynamicallyLinked("/nonexistent") {
		t.Fatal("a missing file is not a dynamically linked binary")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, _ := io.ReadFull(f, head)
	want := bytes.Contains(head[:n], []byte("/ld-"))
	if got := dynamicallyLinked(exe); got != want {
		t.Fatalf("dynamicallyLinked(test binary) = %v, its header names a loader: %v", got, want)
	}
}
