package launcher

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/launcher/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestRelayPerformance measures the launcher against a Go kernel that
// answers at once (synthkernel), so the numbers are the relay's and the
// bus's, not ipykernel's: an execute round trip (client publish → bus →
// launcher → kernel → launcher → bus → client) and iopub throughput. It
// logs the numbers and only checks that nothing is lost: thresholds on a
// shared 2-core CI machine would be flaky.
func TestRelayPerformance(t *testing.T) {
	if testing.Short() {
		t.Skip("performance measurement")
	}
	tb := startBus(t)
	k := launch(t, tb, []string{os.Args[0], "-test.run=^$", "{connection_file}"}, func(c *broker.LaunchConfig) {
		c.Env[fakeKernelEnv] = "1"
	})
	k.waitState(30*time.Second, broker.StateRunning)

	// Taking turns, so that a change of machine load weighs on both.
	var slat, lat []time.Duration
	for range 6 {
		k.streamOnly = true
		slat = append(slat, k.roundTrips(50)...)
		k.streamOnly = false
		lat = append(lat, k.roundTrips(50)...)
	}
	slices.Sort(slat)
	slices.Sort(lat)
	p50 := lat[len(lat)/2]
	zmqFloor, busFloor := directRoundTrip(t), busRoundTrip(t, tb)
	t.Logf("execute round trip with an instant kernel, input from the stream only: p50 %s p90 %s p99 %s", slat[len(slat)/2], slat[len(slat)*9/10], slat[len(slat)*99/100])
	t.Logf("execute round trip with an instant kernel, live input: p50 %s p90 %s p99 %s", p50, lat[len(lat)*9/10], lat[len(lat)*99/100])
	t.Logf("  of which ZMQ to the kernel and back (zmq4 client, no launcher): p50 %s", zmqFloor)
	t.Logf("  of which the bus both ways (JetStream publish → live subscription → async publish → subscriber): p50 %s", busFloor)
	t.Logf("  leaving the launcher's relay, both directions: %s", p50-zmqFloor-busFloor)

	n := int64(200_000)
	if raceEnabled {
		n = 20_000
	}
	var got atomic.Int64
	var last atomic.Int64
	all := make(chan struct{})
	sub, err := tb.nc.Subscribe(broker.SubjectOut(k.id, "iopub"), func(m *nats.Msg) {
		streams := int64(0)
		if nb := m.Header.Get(broker.HeaderBatch); nb != "" {
			c, _ := strconv.Atoi(nb)
			frames, _ := broker.SplitBatch(m.Data, c)
			for _, f := range frames {
				if fr, err := broker.DecodeV1(f); err == nil {
					if h, err := broker.ParseHeader(fr.Header); err == nil && h.MsgType == "stream" {
						streams++
					}
				}
			}
		} else if m.Header.Get(broker.HeaderMsgType) == "stream" {
			streams = 1
		}
		if streams > 0 {
			if v := got.Add(streams); v >= n && v-streams < n {
				last.Store(time.Now().UnixNano())
				close(all)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	defer sub.Unsubscribe()
	k.stopCollecting()
	t0 := time.Now()
	k.execute(fmt.Sprintf("emit n=%d size=41", n), false)
	select {
	case <-all:
	case <-time.After(60 * time.Second):
		t.Fatalf("got %d of %d iopub messages", got.Load(), n)
	}
	el := time.Duration(last.Load() - t0.UnixNano())
	t.Logf("iopub: %d messages kernel → launcher → JetStream → subscriber in %s: %.0f msg/s", n, el, float64(n)/el.Seconds())
}

// directRoundTrip is the floor: execute round trips from a zmq4 client
// straight to a fake kernel, without bus or launcher.
func directRoundTrip(t *testing.T) time.Duration {
	ci, err := newConnInfo("127.0.0.1", "fake", broker.PortRange{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "conn.json")
	if err := ci.write(path); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", path)
	cmd.Env = append(os.Environ(), fakeKernelEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	s, err := newSockets("direct", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.dial(ci); err != nil {
		t.Fatal(err)
	}
	sg := wire.NewSigner(ci.Key)
	var lat []time.Duration
	for i := 0; i < 300; i++ {
		_, h := newHeader("execute_request", "direct", "u")
		t0 := time.Now()
		if err := s.shell.send(sg.Frames(h, []byte("{}"), []byte("{}"), []byte(`{"code":"pass"}`), nil)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.shell.s.Recv(); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2]
}

// busRoundTrip is the bus's share: the same two bus hops as a relayed
// request and reply with live input and output (JetStream publish, seen
// by a core subscription; async publish, seen by a subscriber), with a Go
// function in place of launcher and kernel.
func busRoundTrip(t *testing.T, tb *testBus) time.Duration {
	id := newUUID()
	ctx := context.Background()
	nc := tb.env.Connect(t, access.RoleAdmin, "")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	in, err := nc.Subscribe(broker.SubjectIn(id), func(m *nats.Msg) {
		out := &nats.Msg{Subject: broker.SubjectOut(id, "shell"), Data: m.Data, Header: m.Header}
		if _, err := js.PublishMsgAsync(out); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	replies := make(chan struct{}, 1)
	sub, err := tb.nc.Subscribe(broker.SubjectOut(id, "shell"), func(*nats.Msg) { replies <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	body := (&broker.Frame{Channel: "shell", Header: []byte(`{"msg_id":"x","msg_type":"execute_request"}`)}).V1()
	var lat []time.Duration
	for i := 0; i < 300; i++ {
		t0 := time.Now()
		if _, err := kbjs.Publish(ctx, tb.nc, tb.bus.JS, &nats.Msg{Subject: broker.SubjectIn(id), Data: body, Header: nats.Header{}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-replies:
		case <-time.After(10 * time.Second):
			t.Fatal("bus round trip timed out")
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2]
}
