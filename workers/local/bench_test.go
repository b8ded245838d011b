package local_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/local"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// BenchmarkStart measures a start through the local pool, from the start
// request to the launcher's "running" in the record, with a synthetic
// kernel (the test binary as launcher: it connects to the bus with the
// credentials it was given and reports running). It compares launchers
// sharing the worker's credentials with launchers given credentials
// minted for their kernel, with and without TLS on the bus, so the cost
// of minting shows, and (as root) with each launcher under a uid of its
// own from the default range, as a root worker runs them by default, so
// the cost of picking a free id (a pass over /proc) and making and
// removing the kernel's home shows:
//
//	go test ./workers/local -run '^$' -bench Start -benchtime 40x
//
// p50-ms and p90-ms are the start latencies' median and 90th percentile.
func BenchmarkStart(b *testing.B) {
	for _, c := range []struct {
		name                string
		scoped, tls, ownUID bool
	}{
		{"shared-worker-creds", false, false, false},
		{"scoped-creds", true, false, false},
		{"scoped-creds+tls", true, true, false},
		{"scoped-creds+tls+own-uid", true, true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.ownUID && os.Geteuid() != 0 {
				b.Skip("needs root: only a root worker switches uids")
			}
			benchStart(b, c.scoped, c.tls, c.ownUID)
		})
	}
}

func benchStart(b *testing.B, scoped, withTLS, ownUID bool) {
	js := jstest.Start(b, jstest.Options{Auth: true, TLS: withTLS})
	cfg := workers.PoolConfig{NATSCA: string(js.CA)}
	if scoped {
		cfg.Minter = js.Minter
	} else {
		creds, err := js.Auth.Creds(access.RoleWorker, broker.RMLocal, "bench-worker", 0)
		if err != nil {
			b.Fatal(err)
		}
		cfg.NATSCreds = string(creds)
	}
	be := testBackend(b)
	pids := b.TempDir()
	if ownUID {
		var err error
		if be, err = local.NewRunAs(copyBinary(b, 0o755), local.RunAs{Range: local.DefaultRange}, zerolog.Nop()); err != nil {
			b.Fatal(err)
		}
	}
	startPool(b, js, be, cfg)
	pidfile := filepath.Join(pids, "pids")
	if ownUID {
		// The launchers, under uids of their own, append their pids.
		if err := os.Chmod(pids, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(pidfile, nil, 0o666); err != nil {
			b.Fatal(err)
		}
		if err := os.Chmod(pidfile, 0o666); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		data, _ := os.ReadFile(pidfile)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	bus := js.Bus
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		id := uuid.NewString()
		k := &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, State: broker.StateRequested,
			Created: time.Now().UTC(), Deadline: time.Now().Add(30 * time.Second),
			Env: map[string]string{"FAKE": "ok", "PIDFILE": pidfile}}
		if _, err := bus.CreateKernel(ctx, k); err != nil {
			b.Fatal(err)
		}
		w, err := bus.Kernels.Watch(ctx, id, jetstream.UpdatesOnly())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := bus.Request(ctx, broker.VerbStart, broker.RMLocal, id, broker.StartRequest{KernelID: id}); err != nil {
			b.Fatal(err)
		}
		timeout := time.After(30 * time.Second)
	wait:
		for {
			select {
			case e := <-w.Updates():
				if e == nil {
					continue
				}
				var rec broker.Kernel
				if err := json.Unmarshal(e.Value(), &rec); err == nil && rec.State == broker.StateRunning {
					break wait
				}
			case <-timeout:
				b.Fatalf("kernel %s not running within 30s", id)
			}
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		_ = w.Stop()
		if err := bus.Request(ctx, broker.VerbStop, broker.RMLocal, id+":stop", broker.StopRequest{KernelID: id, Reason: "bench"}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
}
