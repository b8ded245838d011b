package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// defaultServeMemoryLimitMiB is serve's soft memory limit. serve holds
// the embedded NATS, whose file store keeps 8 MiB block buffers of KB_IO
// for 10 s after their last use: a burst of large outputs raises the live
// heap for a few seconds, and with GOGC=100 alone the heap goal set then
// (twice that peak) stays the goal of the quieter minutes after, so the
// process grew to ~750 MiB with ~100 MiB live (kernelbus-bench scenario 3
// then 4). The limit makes the collector run before then and the runtime
// hand freed pages back.
const defaultServeMemoryLimitMiB = 160

const memoryLimitUsage = "soft limit of the process's memory in MiB (as Go's GOMEMLIMIT, but raised with the live heap, so a large one never makes the collector run non-stop; nothing is ever refused or killed for it); 0: none; GOMEMLIMIT in the environment wins"

// keepMemoryLimit holds the Go runtime's soft memory limit at mib MiB, or
// at 1.5 × the live heap plus the runtime's other memory (stacks,
// metadata) when that is more, so that the limit never sits below what
// the process needs and makes the collector run back to back. It checks
// once a second until stop is called. With GOMEMLIMIT set, or mib 0, it
// does nothing.
func keepMemoryLimit(mib int) (stop func()) {
	if mib <= 0 || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	base := uint64(mib) << 20
	debug.SetMemoryLimit(int64(base))
	done := make(chan struct{})
	samples := memorySamples()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			debug.SetMemoryLimit(int64(memoryLimitFor(base, samples)))
		}
	}()
	return func() { close(done) }
}

// memorySamples are the runtime metrics memoryLimitFor reads, in its order.
func memorySamples() []metrics.Sample {
	return []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
}

// memoryLimitFor is max(base, 1.5 × live heap + the runtime's memory that
// is not heap objects or free heap) from a fresh reading of samples.
func memoryLimitFor(base uint64, samples []metrics.Sample) uint64 {
	metrics.Read(samples)
	v := func(i int) uint64 {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return samples[i].Value.Uint64()
	}
	live, total, released, objects, unused, free := v(0), v(1), v(2), v(3), v(4), v(5)
	var other uint64
	if heap := released + objects + unused + free; total > heap {
		other = total - heap
	}
	return max(base, live+live/2+other)
}
