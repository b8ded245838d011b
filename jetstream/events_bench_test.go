package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkStartPath measures the bus work of one kernel start as the
// front-end, a worker and the launcher do it (record create, start
// request, claim, submission, running), with and without the four events
// they write on the way (requested, claimed, submitted, started), each
// written synchronously as they are. The kernel's own boot (~0.5 s for
// ipykernel) is left out: this is the cost the audit log adds.
//
//	go test ./jetstream -run - -bench StartPath -benchtime 2000x
func BenchmarkStartPath(b *testing.B) {
	for _, withEvents := range []bool{false, true} {
		name := "no-events"
		if withEvents {
			name = "events"
		}
		b.Run(name, func(b *testing.B) {
			env := jstest.Start(b, jstest.Options{})
			bus := env.Bus
			ctx := context.Background()
			emit := func(typ string, k *broker.Kernel) {
				if !withEvents {
					return
				}
				ev := broker.NewEvent(typ, k)
				ev.ID = broker.EventID(k.ID, typ)
				if err := bus.Emit(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
			set := func(id string, fn func(*broker.Kernel)) *broker.Kernel {
				k, err := bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error { fn(k); return nil })
				if err != nil {
					b.Fatal(err)
				}
				return k
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := &broker.Kernel{ID: uuid.NewString(), Spec: "python3", RM: "local", User: "alice", State: broker.StateRequested, Created: time.Now()}
				if _, err := bus.CreateKernel(ctx, k); err != nil {
					b.Fatal(err)
				}
				emit(broker.EvRequested, k)
				if err := bus.Request(ctx, broker.VerbStart, "local", k.ID, broker.StartRequest{KernelID: k.ID}); err != nil {
					b.Fatal(err)
				}
				k = set(k.ID, func(k *broker.Kernel) { k.State, k.Worker = broker.StateClaimed, "w1" })
				emit(broker.EvClaimed, k)
				emit(broker.EvSubmitted, k)
				k = set(k.ID, func(k *broker.Kernel) {
					k.State, k.Host, k.Handle = broker.StateSubmitted, "node1", json.RawMessage(`{"pid":1234}`)
				})
				k = set(k.ID, func(k *broker.Kernel) { k.State = broker.StateRunning })
				emit(broker.EvStarted, k)
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/start")
		})
	}
}

// BenchmarkReplay measures how replay time grows with the size of the
// audit log: the full replay that `kernelbus events --json` does, and the
// replay of one kernel, which the server filters by subject and so does
// not grow with the log. The 1M case takes a minute to set up.
//
//	go test ./jetstream -run - -bench Replay -benchtime 1x
func BenchmarkReplay(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			env := jstest.Start(b, jstest.Options{})
			kernels := seedLog(b, env.NC, n)
			ctx := context.Background()
			b.Run("all", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					got := 0
					if err := kbjs.ReadEvents(ctx, env.Bus.JS, broker.EventFilter{}, false, func(broker.Event) error { got++; return nil }); err != nil {
						b.Fatal(err)
					}
					if got != n {
						b.Fatalf("replayed %d of %d", got, n)
					}
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
			b.Run("one-kernel", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					got := 0
					f := broker.EventFilter{Kernel: kernels[i%len(kernels)]}
					if err := kbjs.ReadEvents(ctx, env.Bus.JS, f, false, func(broker.Event) error { got++; return nil }); err != nil {
						b.Fatal(err)
					}
					if got != 10 {
						b.Fatalf("replayed %d events of one kernel, want 10", got)
					}
				}
			})
			b.Run("one-user", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					got := 0
					if err := kbjs.ReadEvents(ctx, env.Bus.JS, broker.EventFilter{User: "u7"}, false, func(broker.Event) error { got++; return nil }); err != nil {
						b.Fatal(err)
					}
					if got == 0 {
						b.Fatal("no events of u7")
					}
				}
			})
		})
	}
}

// seedLog writes n events, 10 per kernel, like a real lifecycle, with
// async publishes, and returns the kernel ids.
func seedLog(b *testing.B, nc *nats.Conn, n int) []string {
	b.Helper()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		b.Fatal(err)
	}
	types := []string{broker.EvRequested, broker.EvClaimed, broker.EvSubmitted, broker.EvStarted, broker.EvClientConnected,
		broker.EvInterrupted, broker.EvRestartRequested, broker.EvRestarted, broker.EvShutdownRequest, broker.EvTerminated}
	var kernels []string
	t0 := time.Now().Add(-24 * time.Hour)
	var k string
	for i := 0; i < n; i++ {
		if i%10 == 0 {
			k = uuid.NewString()
			kernels = append(kernels, k)
		}
		ev := broker.Event{V: 1, ID: fmt.Sprint(k, ":", i), Time: t0.Add(time.Duration(i) * time.Millisecond), Type: types[i%10],
			Kernel: k, Spec: "python3", User: fmt.Sprint("u", (i/10)%50), RM: "local", Worker: "local-w1", Host: "node1",
			Handle: json.RawMessage(`{"v":1,"pid":12345,"pgid":12345,"start_time":987654}`), RequestID: uuid.NewString(), Source: "worker"}
		data, _ := json.Marshal(ev)
		m := &nats.Msg{Subject: broker.SubjectEvent(k, ev.Type), Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, ev.ID)
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("seeding did not finish")
	}
	return kernels
}

// benchSizes are the log sizes of BenchmarkReplay; KB_BENCH_MAX_EVENTS
// caps them for a quicker run.
func benchSizes() []int {
	sizes := []int{10_000, 100_000, 1_000_000}
	if m, err := strconv.Atoi(os.Getenv("KB_BENCH_MAX_EVENTS")); err == nil {
		for i, s := range sizes {
			if s > m {
				return sizes[:i]
			}
		}
	}
	return sizes
}
