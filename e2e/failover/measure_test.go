//go:build failover

package failover

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
)

// TestMeasureScaleOut measures start throughput (kernels/s) and execute
// throughput (executes/s over 8 kernels) with one worker and one front-end,
// then with two of each behind the round-robin. Not an assertion of speed:
// run it with KB_FAILOVER_MEASURE=1 to read the numbers.
func TestMeasureScaleOut(t *testing.T) {
	if os.Getenv("KB_FAILOVER_MEASURE") == "" {
		t.Skip("set KB_FAILOVER_MEASURE=1 to measure")
	}
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(label string, next func() *client.Client) {
		const kernels, conc, execs = 16, 8, 100
		ids := make(chan string, kernels)
		var wg sync.WaitGroup
		t0 := time.Now()
		sem := make(chan struct{}, conc)
		for range kernels {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				m, err := next().StartKernel(ctx, "python3", nil)
				if err != nil {
					t.Error(err)
					return
				}
				ids <- m.ID
			}()
		}
		wg.Wait()
		close(ids)
		startRate := float64(kernels) / time.Since(t0).Seconds()
		var all []string
		for id := range ids {
			all = append(all, id)
		}
		t1 := time.Now()
		for _, id := range all[:conc] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := next().Connect(ctx, id, "", true)
				if err != nil {
					t.Error(err)
					return
				}
				defer conn.Close()
				for range execs {
					if _, err := conn.Execute("1+1", 30*time.Second); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		execRate := float64(conc*execs) / time.Since(t1).Seconds()
		t.Logf("%s: start %.2f kernels/s (%d kernels, %d at once); execute %.0f/s (%d kernels x %d)", label, startRate, kernels, conc, execRate, conc, execs)
		for _, id := range all {
			_ = next().DeleteKernel(ctx, id)
		}
	}
	c.Workers[1].stop()
	c.FEs[1].stop()
	run("1 worker, 1 front-end", func() *client.Client { return c.FE(0) })
	c.RestartWorker(1)
	c.RestartFE(1)
	run("2 workers, 2 front-ends", c.LB.Next)
}
