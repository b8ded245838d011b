package workers

import (
	"os"
	"runtime"
	"strconv"
	"strings"
)

// hostStats are what a worker's presence tells about its host, for the
// cluster overview: the CPUs, the 1-minute load and the memory (Linux
// /proc; fields it cannot read are left out).
func hostStats() map[string]any {
	out := map[string]any{"cpus": runtime.NumCPU()}
	if h, err := os.Hostname(); err == nil {
		out["host"] = h
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				out["load1"] = v
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				continue
			}
			switch f[0] {
			case "MemTotal:":
				out["mem_total_mb"] = kb / 1024
			case "MemAvailable:":
				out["mem_available_mb"] = kb / 1024
			}
		}
	}
	return out
}
