package frontend

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestWSIdleMemory measures what an idle connected kernel costs: the
// front-end's connection and output consumer plus the embedded server's
// side of that consumer (about 36 KiB and 3 goroutines of the total, which
// a front-end using a separate NATS cluster does not carry).
func TestWSIdleMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	n := 200
	if s := os.Getenv("KB_MEM_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	e := newEnv(t, Config{WSPingInterval: time.Minute})
	ids := make([]string, n)
	now := time.Now().UTC()
	for i := range ids {
		ids[i] = uuid.NewString()
		k := &broker.Kernel{ID: ids[i], Spec: "python3", RM: "local", State: broker.StateRunning, Created: now, Deadline: now.Add(time.Minute)}
		if _, err := e.bus.CreateKernel(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	measure := func() (heap, stack uint64, g int) {
		for i := 0; i < 3; i++ {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
	}
	h0, s0, g0 := measure()
	// Raw handshakes: the client side costs one socket, so the numbers
	// are the front-end's (plus the in-process server's consumers).
	clients := make([]net.Conn, 0, n)
	addr := strings.TrimSuffix(strings.TrimPrefix(e.base, "http://"), "/")
	for _, id := range ids {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /api/kernels/%s/channels?session_id=s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", id, addr)
		buf := make([]byte, 512)
		got := ""
		for !strings.Contains(got, "\r\n\r\n") {
			k, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += string(buf[:k])
		}
		if !strings.HasPrefix(got, "HTTP/1.1 101") {
			t.Fatalf("handshake: %s", got)
		}
		clients = append(clients, c)
	}
	jstest.WaitForNil(t, 10*time.Second, func() error {
		if e.fe.hub.count() != n {
			return errString("not all registered")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // let consumers settle their first pulls
	h1, s1, g1 := measure()
	per := (float64(h1-h0) + float64(s1-s0)) / float64(n)
	t.Logf("%d idle connected kernels: %.1f KiB each (heap %.1f KiB, stacks %.1f KiB), %.1f goroutines each",
		n, per/1024, float64(h1-h0)/float64(n)/1024, float64(s1-s0)/float64(n)/1024, float64(g1-g0)/float64(n))
	if os.Getenv("KB_MEM_PROFILE") != "" {
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
	}
	for _, c := range clients {
		_ = c.Close()
	}
}

// TestWSRelayLatency measures the front-end's share of a client message's
// trip: from the client's write to its arrival on the kernel's input
// subject (websocket read, decode, JetStream publish and store).
func TestWSRelayLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	e := newEnv(t, Config{})
	k := e.startKernel()
	got := make(chan time.Time, 1)
	sub, err := e.bus.NC.Subscribe(broker.SubjectIn(k.ID), func(*nats.Msg) { got <- time.Now() })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for _, v1 := range []bool{false, true} {
		c := e.dial(k.ID, "lat", v1)
		var ds []time.Duration
		for i := 0; i < 300; i++ {
			start := time.Now()
			c.send("shell", "comm_info_request", map[string]any{})
			select {
			case at := <-got:
				ds = append(ds, at.Sub(start))
			case <-time.After(5 * time.Second):
				t.Fatal("message not relayed")
			}
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		t.Logf("v1=%v client->bus: p50 %s p90 %s p99 %s", v1, ds[len(ds)/2], ds[len(ds)*9/10], ds[len(ds)*99/100])
	}
	// And the way back: bus -> client.
	l := e.worker.launcher(k.ID)
	c := e.dial(k.ID, "lat-out", true)
	var ds []time.Duration
	for i := 0; i < 300; i++ {
		start := time.Now()
		publishRun(l, "x", 1)
		if _, err := c.read(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	t.Logf("launcher publish (acked) -> v1 client: p50 %s p90 %s", ds[len(ds)/2], ds[len(ds)*9/10])
	_ = jetstream.MsgIDHeader
}
