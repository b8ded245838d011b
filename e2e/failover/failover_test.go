//go:build failover

package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go/jetstream"
)

// counterCode prints n=0 .. n=count-1, one flushed line every ms
// milliseconds, so each number is its own stream message.
func counterCode(count, ms int) string {
	return fmt.Sprintf("import time, sys\nfor i in range(%d):\n    print(f'n={i}', flush=True)\n    time.sleep(%g)\n", count, float64(ms)/1000)
}

// counter collects the numbers of counterCode's output and the end of the
// request that prints them.
type counter struct {
	req     string
	nums    []int
	replied bool
	idle    bool
}

func (c *counter) feed(m *client.Msg) {
	if m.ParentHeader.MsgID != c.req {
		return
	}
	switch m.Header.MsgType {
	case "stream":
		var st struct{ Text string }
		_ = json.Unmarshal(m.Content, &st)
		for _, line := range strings.Split(st.Text, "\n") {
			if v, ok := strings.CutPrefix(line, "n="); ok {
				if n, err := strconv.Atoi(v); err == nil {
					c.nums = append(c.nums, n)
				}
			}
		}
	case "execute_reply":
		c.replied = true
	case "status":
		c.idle = c.idle || strings.Contains(string(m.Content), `"idle"`)
	}
}

func (c *counter) done() bool { return c.replied && c.idle }

// exactlyOnce fails unless nums is 0..count-1, in order.
func exactlyOnce(t *testing.T, nums []int, count int) {
	t.Helper()
	seen := map[int]int{}
	for _, n := range nums {
		seen[n]++
	}
	var dup, missing []int
	for i := range count {
		switch seen[i] {
		case 0:
			missing = append(missing, i)
		case 1:
		default:
			dup = append(dup, i)
		}
	}
	if len(dup) > 0 || len(missing) > 0 || len(nums) != count {
		t.Fatalf("got %d numbers for %d: duplicated %v, missing %v", len(nums), count, dup, missing)
	}
	for i, n := range nums {
		if n != i {
			t.Fatalf("out of order at %d: %v", i, nums[max(0, i-3):min(len(nums), i+3)])
		}
	}
}

// Scenario 1: the front-end a client is connected to is SIGKILLed while
// the kernel prints a counter every few ms; the client reconnects through
// the other front-end with the same session_id and resume_after (the last
// msg_id it received) and receives every number exactly once, in order.
// Twice, so both front-ends die once.
func TestFrontendKilled(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := c.StartKernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const count = 1500
	session := client.NewID()
	cur := 0
	conn, err := c.FE(cur).Connect(ctx, k.ID, session, true)
	if err != nil {
		t.Fatal(err)
	}
	req, err := conn.SendExecute(counterCode(count, 3))
	if err != nil {
		t.Fatal(err)
	}
	cnt := &counter{req: req}
	killAt := []int{300, 900}
	kills := 0
	for !cnt.done() {
		m, err := conn.Recv(time.Now().Add(30 * time.Second))
		if err != nil {
			if kills == 0 || !strings.Contains(err.Error(), "EOF") && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "close") {
				t.Fatalf("after %d numbers and %d kills: %v", len(cnt.nums), kills, err)
			}
			conn.Close()
			cur = 1 - cur
			conn, err = c.FE(cur).Resume(ctx, k.ID, session, conn.LastMsgID(), true)
			if err != nil {
				t.Fatalf("reconnecting through front-end %d: %v", cur, err)
			}
			t.Logf("resumed through front-end %d after %d numbers, after msg_id %s", cur, len(cnt.nums), conn.LastMsgID())
			continue
		}
		cnt.feed(m)
		if kills < len(killAt) && len(cnt.nums) >= killAt[kills] {
			if kills > 0 {
				c.RestartFE(1 - cur) // the one killed before
			}
			c.FEs[cur].kill()
			kills++
			t.Logf("killed front-end %d after %d numbers", cur, len(cnt.nums))
		}
	}
	conn.Close()
	if kills != len(killAt) {
		t.Fatalf("only %d kills happened", kills)
	}
	exactlyOnce(t, cnt.nums, count)
}

// Scenario 2: a worker is killed while it launches a kernel; the start
// still succeeds through the other worker within the launch timeout, and
// no second kernel is left running.
func TestWorkerKilledWhileLaunching(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := c.Bus.Kernels.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	killed := make(chan string, 1)
	go func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var k broker.Kernel
			if json.Unmarshal(e.Value(), &k) != nil || k.Worker == "" || !k.State.Starting() {
				continue
			}
			for i, id := range c.WorkerIDs {
				if id == k.Worker {
					c.Workers[i].kill()
					killed <- fmt.Sprintf("%s (kernel %s, %s)", id, k.ID, k.State)
					return
				}
			}
		}
	}()
	t0 := time.Now()
	m, err := c.StartKernel(ctx)
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("start after %s: %v", took, err)
	}
	select {
	case who := <-killed:
		t.Logf("killed worker %s; start took %s", who, took.Round(time.Millisecond))
	default:
		t.Fatal("no worker was killed during the launch")
	}
	if took > 40*time.Second {
		t.Fatalf("start took %s, more than the launch timeout", took)
	}
	conn, err := c.Connect(ctx, m.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := conn.Execute("print(6*7)", 30*time.Second)
	if err != nil || !strings.Contains(r.Stdout.String(), "42") {
		t.Fatalf("execute: %v %q", err, r.Stdout.String())
	}
	// A redelivered request that a worker took over after the kill must
	// not have started a second launcher: give it past AckWait plus a
	// Nak delay, then count.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		if n := kernelsOf(m.ID); n != 1 {
			t.Fatalf("%d kernel processes run kernel %s", n, m.ID)
		}
		time.Sleep(500 * time.Millisecond) // observing over a span of time, not waiting for a condition
	}
}

// Scenario 3: the workers are killed while kernels run; the kernels keep
// running and can still be interrupted, restarted and deleted.
func TestWorkerKilledWhileRunning(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var ids []string
	for range 2 {
		m, err := c.StartKernel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	for _, w := range c.Workers {
		w.kill()
	}
	for _, id := range ids {
		pid := c.launcherPID(id)
		if pid <= 0 || syscall.Kill(pid, 0) != nil {
			t.Fatalf("launcher of %s (pid %d) did not survive its worker", id, pid)
		}
		conn, err := c.Connect(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		r, err := conn.Execute("x = 41\nprint(x+1)", 30*time.Second)
		if err != nil || !strings.Contains(r.Stdout.String(), "42") {
			t.Fatalf("execute after the workers died: %v %q", err, r.Stdout.String())
		}
		// Interrupt a long sleep through the REST API (the other front-end).
		req, err := conn.SendExecute("import time\nprint('sleeping', flush=True)\ntime.sleep(120)")
		if err != nil {
			t.Fatal(err)
		}
		// Interrupt once the code runs: before that, ipykernel ignores SIGINT.
		if err := conn.AwaitOutput(req, "sleeping", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := c.LB.Next().Interrupt(ctx, id); err != nil {
			t.Fatal(err)
		}
		r, err = conn.Await(req, 30*time.Second)
		if err != nil || r.Status != "error" {
			t.Fatalf("interrupted request: %v status %q", err, r.Status)
		}
		t.Logf("interrupt answered in %s", time.Since(t0).Round(time.Millisecond))
		if _, err := c.LB.Next().Restart(ctx, id); err != nil {
			t.Fatalf("restart: %v", err)
		}
		r, err = conn.Execute("print('x' in dir())", 60*time.Second)
		if err != nil || !strings.Contains(r.Stdout.String(), "False") {
			t.Fatalf("execute after restart: %v %q (the restart should have cleared x)", err, r.Stdout.String())
		}
		conn.Close()
		if err := c.LB.Next().DeleteKernel(ctx, id); err != nil {
			t.Fatalf("delete: %v", err)
		}
		jstest.WaitForNil(t, 20*time.Second, func() error {
			if syscall.Kill(pid, 0) == nil {
				if kernelsOf(id) > 0 {
					return fmt.Errorf("launcher %d still runs", pid)
				}
			}
			return nil
		})
	}
}

// Scenario 4: one NATS node (the leader of the kernel traffic stream) is
// killed under load, starts and executes in a loop, then comes back; no
// start request, event or kernel message is lost.
func TestNATSNodeKilledUnderLoad(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		stop     atomic.Bool
		mu       sync.Mutex
		problems []string
		started  []string
		execs    atomic.Int64
	)
	fail := func(f string, a ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	// Lifecycle loops: start, connect, execute, delete.
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				m, err := c.StartKernel(ctx)
				if err != nil {
					fail("start %d/%d: %v", g, i, err)
					continue
				}
				mu.Lock()
				started = append(started, m.ID)
				mu.Unlock()
				conn, err := c.Connect(ctx, m.ID, "")
				if err != nil {
					fail("connect %s: %v", m.ID, err)
					continue
				}
				tok := fmt.Sprintf("tok-%d-%d", g, i)
				r, err := conn.Execute(fmt.Sprintf("print(%q)", tok), 60*time.Second)
				conn.Close()
				if err != nil || !strings.Contains(r.Stdout.String(), tok) {
					fail("execute on %s: %v %q", m.ID, err, r.Stdout.String())
				}
				if err := c.LB.Next().DeleteKernel(ctx, m.ID); err != nil {
					fail("delete %s: %v", m.ID, err)
				}
			}
		}()
	}
	// Execute loops on long-lived kernels.
	for g := range 2 {
		m, err := c.StartKernel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Connect(ctx, m.ID, "")
			if err != nil {
				fail("connect: %v", err)
				return
			}
			defer conn.Close()
			for i := 0; !stop.Load(); i++ {
				code := fmt.Sprintf("for j in range(5): print('e%d-%d-%%d' %% j)", g, i)
				r, err := conn.Execute(code, 60*time.Second)
				want := ""
				for j := range 5 {
					want += fmt.Sprintf("e%d-%d-%d\n", g, i, j)
				}
				if err != nil || r.Stdout.String() != want {
					fail("execute %d on %s: %v %q", i, m.ID, err, r.Stdout.String())
					return
				}
				execs.Add(1)
			}
		}()
	}
	// A counter printed every 5 ms across the node's death: every number
	// once and in order, so output resent after the leader change keeps
	// its place.
	const count = 3000
	var counted []int
	{
		_, conn := c.StartConnected(ctx)
		req, err := conn.SendExecute(counterCode(count, 5))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			cnt := &counter{req: req}
			for !cnt.done() {
				m, err := conn.Recv(time.Now().Add(60 * time.Second))
				if err != nil {
					fail("counter after %d numbers: %v", len(cnt.nums), err)
					return
				}
				cnt.feed(m)
			}
			counted = cnt.nums
		}()
	}
	letLoadRun(5 * time.Second)
	victim := 0
	if st, err := c.Bus.JS.Stream(ctx, broker.StreamIO); err == nil && st.CachedInfo().Cluster != nil {
		fmt.Sscanf(st.CachedInfo().Cluster.Leader, "n%d", &victim)
	}
	before := execs.Load()
	c.Nodes[victim].kill()
	t.Logf("killed NATS node n%d (leader of %s) after %d executes", victim, broker.StreamIO, before)
	letLoadRun(10 * time.Second)
	c.RestartNode(victim)
	t.Logf("node n%d back after %d executes", victim, execs.Load())
	letLoadRun(5 * time.Second)
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d kernels started and deleted, %d executes", len(started), execs.Load())
	if len(problems) > 0 {
		t.Fatalf("%d problems:\n%s", len(problems), strings.Join(problems, "\n"))
	}
	if execs.Load() <= before {
		t.Fatal("no execute completed after the node was killed")
	}
	exactlyOnce(t, counted, count)
	// Every kernel's lifecycle is in the audit log.
	evs, err := c.Bus.JS.Stream(ctx, broker.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range started {
		for _, typ := range []string{broker.EvRequested, broker.EvClaimed, broker.EvSubmitted, broker.EvStarted, broker.EvTerminated} {
			if _, err := evs.GetLastMsgForSubject(ctx, broker.SubjectEvent(id, typ)); err != nil {
				t.Errorf("kernel %s: no %s event: %v", id, typ, err)
			}
		}
	}
}

// letLoadRun lets load run for d: the scenario's time line, not a wait for a
// condition.
func letLoadRun(d time.Duration) { time.Sleep(d) }

// cutProxy forwards TCP to one address and can cut every connection
// through it, refusing new ones, for a while.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *cutProxy) serve() {
	defer p.wg.Done()
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			a.Close()
			continue
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			a.Close()
			continue
		}
		p.mu.Lock()
		p.conns[a], p.conns[b] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(a, b)
		go pipe(b, a)
	}
}

// cut closes every connection through the proxy and refuses new ones
// until heal.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for cn := range p.conns {
		if tc, ok := cn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // abrupt, as a broken link
		}
		cn.Close()
		delete(p.conns, cn)
	}
}

func (p *cutProxy) heal() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// Scenario 5: the bus connection of a launcher is cut for 10 s while its
// kernel prints and the client sends requests; afterwards no input or
// output is missing, and none is repeated.
func TestLauncherCutFromBus(t *testing.T) {
	// The proxy's target is node 0's client port, known once the cluster
	// runs; the workers need the proxy's address at start. So the proxy
	// listens first and learns its target after.
	px := &lateProxy{}
	px.listen(t)
	c := NewCluster(t, Options{LauncherNATS: px.url()})
	px.setTarget(t, c.Nodes[0].url())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, conn := c.StartConnected(ctx)
	defer conn.Close()
	const count = 600
	req, err := conn.SendExecute(counterCode(count, 20))
	if err != nil {
		t.Fatal(err)
	}
	cnt := &counter{req: req}
	var later []string // requests sent while the launcher is cut off
	for len(cnt.nums) < 50 {
		m, err := conn.Recv(time.Now().Add(30 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		cnt.feed(m)
	}
	px.p.cut()
	t.Logf("launcher cut off after %d numbers", len(cnt.nums))
	cutAt := time.Now()
	for i := range 5 {
		id, err := conn.SendExecute(fmt.Sprintf("print('later-%d')", i))
		if err != nil {
			t.Fatal(err)
		}
		later = append(later, id)
	}
	healed := false
	// A print may reach the client as several stream messages ("later-2",
	// then "\n"), so texts are joined per request and judged at the end;
	// a request that ran twice would show its line twice.
	replies := map[string]string{}
	complete := func() int {
		n := 0
		for _, txt := range replies {
			if strings.HasSuffix(txt, "\n") {
				n++
			}
		}
		return n
	}
	for !cnt.done() || complete() < len(later) {
		if !healed && time.Since(cutAt) >= 10*time.Second {
			px.p.heal()
			healed = true
			t.Logf("launcher link restored after %d numbers", len(cnt.nums))
		}
		m, err := conn.Recv(time.Now().Add(time.Second))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(cutAt) < 90*time.Second {
				// gorilla-style connections cannot read after a timeout:
				// reconnect with the same session, saying what arrived
				// last (a message the server wrote after the timeout
				// and before the close would be lost to a client that
				// did not say), which resumes exactly.
				conn.Close()
				if conn, err = c.LB.Next().Resume(ctx, k.ID, conn.Session(), conn.LastMsgID(), true); err != nil {
					t.Fatal(err)
				}
				continue
			}
			t.Fatalf("after %d numbers: %v", len(cnt.nums), err)
		}
		cnt.feed(m)
		for _, id := range later {
			if m.ParentHeader.MsgID == id && m.Header.MsgType == "stream" {
				var st struct{ Text string }
				_ = json.Unmarshal(m.Content, &st)
				replies[id] += st.Text
			}
		}
	}
	if !healed {
		t.Fatal("the counter ended before the link came back: nothing was tested")
	}
	for i, id := range later {
		if want := fmt.Sprintf("later-%d\n", i); replies[id] != want {
			t.Fatalf("request %d printed %q, want %q exactly once", i, replies[id], want)
		}
	}
	exactlyOnce(t, cnt.nums, count)
}

// lateProxy is a cutProxy whose listener exists before its target is known.
type lateProxy struct {
	ln net.Listener
	p  *cutProxy
}

func (l *lateProxy) listen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.ln = ln
}

func (l *lateProxy) url() string { return "nats://" + l.ln.Addr().String() }

func (l *lateProxy) setTarget(t *testing.T, natsURL string) {
	p := &cutProxy{ln: l.ln, target: strings.TrimPrefix(natsURL, "nats://"), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.ln.Close()
		p.cut()
		p.wg.Wait()
	})
	l.p = p
}

// Scenario 6: idle culling runs exactly once per kernel although every
// front-end and worker campaigns for the duties lease, and when the
// lease holder is SIGKILLed another process takes the duties over. A
// kernel with a connected websocket is left alone (cull_connected off).
func TestIdleCulledOnce(t *testing.T) {
	const idle = 4 * time.Second
	c := NewCluster(t, Options{PartArgs: []string{"--cull-idle-timeout", idle.String(), "--cull-interval", "1s"}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	leases, err := c.Bus.JS.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	holder := func() (string, *proc) {
		var h string
		jstest.WaitForNil(t, 60*time.Second, func() error {
			e, err := leases.Get(ctx, "duties")
			if err != nil {
				return err
			}
			var li struct{ Holder string }
			if err := json.Unmarshal(e.Value(), &li); err != nil || li.Holder == "" {
				return fmt.Errorf("lease value %q", e.Value())
			}
			h = li.Holder
			return nil
		})
		for _, p := range c.procs {
			if b, _ := os.ReadFile(p.log); p.running() && bytes.Contains(b, []byte(`"duties":"`+h+`"`)) {
				return h, p
			}
		}
		t.Fatalf("no running process logs as duties holder %s", h)
		return "", nil
	}
	// cullings counts, over the logs of every process that ever ran, the
	// decisions to cull kernel id.
	cullings := func(id string) int {
		n := 0
		for _, p := range c.procs {
			b, _ := os.ReadFile(p.log)
			for _, line := range bytes.Split(b, []byte("\n")) {
				if bytes.Contains(line, []byte("culling idle kernel")) && bytes.Contains(line, []byte(id)) {
					n++
				}
			}
		}
		return n
	}
	evs, err := c.Bus.JS.Stream(ctx, broker.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	events := func(id, typ string) uint64 {
		subj := broker.SubjectEvent(id, typ)
		info, err := evs.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subj]
	}
	culledOnce := func(ids []string, fes []*client.Client) {
		t.Helper()
		for _, id := range ids {
			jstest.WaitForNil(t, 90*time.Second, func() error {
				if _, err := c.Kernel(id); !errors.Is(err, broker.ErrKernelNotFound) {
					return fmt.Errorf("kernel %s still recorded (%v)", id, err)
				}
				if n := kernelsOf(id); n > 0 {
					return fmt.Errorf("kernel %s: %d processes left", id, n)
				}
				return nil
			})
			if n := cullings(id); n != 1 {
				t.Errorf("kernel %s culled %d times", id, n)
			}
			if n, m := events(id, broker.EvCulled), events(id, broker.EvTerminated); n != 1 || m != 1 {
				t.Errorf("kernel %s: %d culled and %d terminated events", id, n, m)
			}
			for _, fe := range fes {
				if _, err := fe.Kernel(ctx, id); err == nil {
					t.Errorf("kernel %s still listed by %s after culling", id, fe.BaseURL)
				}
			}
		}
	}
	start := func(fe *client.Client, n int) []string {
		var ids []string
		for range n {
			m, err := fe.StartKernel(ctx, "python3", nil)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, m.ID)
		}
		return ids
	}

	h, hp := holder()
	t.Logf("duties lease held by %s (%s)", h, hp.name)
	// Keep one kernel connected through a front-end that is not the
	// holder, so the kill below does not disconnect it.
	keepFE := 0
	if c.FEs[0] == hp {
		keepFE = 1
	}
	kept, err := c.FE(keepFE).StartKernel(ctx, "python3", nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.FE(keepFE).Connect(ctx, kept.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ids := start(c.FE(keepFE), 3)
	culledOnce(ids, []*client.Client{c.FE(0), c.FE(1)})
	t.Logf("3 idle kernels culled once each by %s", h)

	// The holder dies without a word; another process takes over within
	// the lease TTL and culls what is idle from then on, once.
	hp.kill()
	t.Logf("killed %s", hp.name)
	more := start(c.FE(keepFE), 2)
	culledOnce(more, []*client.Client{c.FE(keepFE)})
	h2, hp2 := holder()
	if h2 == h || hp2 == hp {
		t.Fatalf("the lease is still held by %s", h)
	}
	t.Logf("after the kill, %s (%s) holds the lease and culled 2 more kernels once each", h2, hp2.name)

	// The connected kernel outlived every round.
	k, err := c.Kernel(kept.ID)
	if err != nil || k.State != broker.StateRunning {
		t.Fatalf("connected kernel %s was culled: %v %v", kept.ID, k, err)
	}
	if n := cullings(kept.ID); n != 0 {
		t.Fatalf("connected kernel %s: %d cull decisions", kept.ID, n)
	}
}
