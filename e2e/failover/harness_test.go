//go:build failover

// Package failover runs kernelbus scaled out, as separate processes, and
// kills parts of it under load: a 3-node NATS cluster (nats-server
// processes built by scripts/setup-nats-server.sh), two `kernelbus
// frontend` and two `kernelbus worker --rm local`, real ipykernel kernels,
// and a client that spreads its calls over both front-ends round-robin.
//
//	go test -tags failover ./e2e/failover
//
// needs KERNELBUS_BIN, KERNELBUS_LAUNCHER_BIN and KB_TEST_PYTHON (task
// test:failover sets them); KB_NATS_SERVER_BIN is built when unset.
package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

// proc is one child process with its output in a log file.
type proc struct {
	name string
	args []string
	env  []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	// offset is where the log of the last start begins.
	offset int64
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.offset, _ = f.Seek(0, io.SeekEnd)
	fmt.Fprintf(f, "=== start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
}

// kill sends SIGKILL to the process (not its group: a worker's launchers
// are in groups of their own and must survive it) and waits for it.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// stop ends the process politely, then by force.
func (p *proc) stop() {
	if p.cmd == nil {
		return
	}
	jstest.Stop(p.cmd.Process.Pid, p.done, 10*time.Second)
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// natsNode is one nats-server of the cluster.
type natsNode struct {
	proc
	port, monitor int
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Cluster is the whole installation under test.
type Cluster struct {
	t         *testing.T
	dir       string
	Nodes     []*natsNode
	FEs       []*proc
	FEPorts   []int
	Workers   []*proc
	WorkerIDs []string
	// Client round-robins over the front-ends.
	LB           *RoundRobin
	Bus          *kbjs.Bus
	procs        []*proc
	python       string
	launcherURLs string
	// authDir holds the files of `kernelbus nats-auth init`; natsConn is
	// its nats.conn, which every part is pointed at.
	authDir, natsConn string
}

// CAFile is the private CA of the cluster's TLS certificates.
func (c *Cluster) CAFile() string { return filepath.Join(c.authDir, "tls", access.TLSCAFile) }

// CredsFile is a role credentials file of the installation (access.*Creds).
func (c *Cluster) CredsFile(name string) string { return filepath.Join(c.authDir, name) }

// Options shape a cluster.
type Options struct {
	// LauncherNATS, if set, is what workers give their launchers instead
	// of the cluster URLs (scenario 5 puts a proxy there).
	LauncherNATS string
	// PartArgs are extra flags of every front-end and worker (the duties,
	// which all of them campaign for, must be configured alike).
	PartArgs []string
	// WorkerArgs are extra flags of the workers only.
	WorkerArgs []string
}

var natsBinOnce sync.Once
var natsBin string
var natsBinErr error

func natsServerBin(t *testing.T) string {
	t.Helper()
	if v := os.Getenv("KB_NATS_SERVER_BIN"); v != "" {
		return v
	}
	natsBinOnce.Do(func() {
		out, err := exec.Command("bash", "../../scripts/setup-nats-server.sh").Output()
		natsBin, natsBinErr = strings.TrimSpace(string(out)), err
	})
	if natsBinErr != nil {
		t.Fatalf("building nats-server: %v", natsBinErr)
	}
	return natsBin
}

// NewCluster starts 3 NATS nodes, 2 front-ends and 2 workers and waits
// until all of them serve. Everything is stopped when the test ends.
func NewCluster(t *testing.T, o Options) *Cluster {
	kb := jstest.NeedEnv(t, "KERNELBUS_BIN", "", "run `task test:failover`")
	_ = jstest.NeedEnv(t, "KERNELBUS_LAUNCHER_BIN", "", "run `task test:failover`")
	py := jstest.NeedEnv(t, "KB_TEST_PYTHON", "", "run `task test:failover`")
	c := &Cluster{t: t, dir: t.TempDir(), python: py}
	t.Cleanup(c.cleanup)
	bin := natsServerBin(t)
	c.authDir = filepath.Join(c.dir, "auth")
	c.natsConn = filepath.Join(c.authDir, "nats.conn")
	// Routes name their peers' ports, so nats-server is told its ports
	// beforehand: one taken between its pick and the bind costs a start of
	// the cluster with new ones.
	if err := jstest.RetryPorts(9, func(ports []int) error { return c.startNATS(kb, bin, ports) }); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		c.procs = append(c.procs, &n.proc)
	}
	c.waitMetaLeader()
	urls := c.URLs()
	c.launcherURLs = urls
	if o.LauncherNATS != "" {
		c.launcherURLs = o.LauncherNATS
	}
	specs := filepath.Join(filepath.Dir(filepath.Dir(py)), "share", "jupyter", "kernels")
	pathEnv := "PATH=" + filepath.Dir(py) + ":" + os.Getenv("PATH")
	// Front-ends listen on port 0 and log where (waitFE learns it); a
	// restart takes the same port again, as behind a load balancer.
	c.FEPorts = make([]int, 2)
	for i := range 2 {
		p := &proc{name: fmt.Sprintf("frontend-%d", i), log: filepath.Join(c.dir, fmt.Sprintf("fe%d.log", i)), env: []string{pathEnv},
			args: []string{kb, "frontend", "--listen", "127.0.0.1:0", "--nats-conn", c.natsConn, "--replicas", "3",
				"--presence-ttl", "3s", "--kernelspec-dir", specs, "--launch-timeout", "40s", "--log-level", "debug", "--insecure-no-auth"}}
		p.args = append(p.args, o.PartArgs...)
		c.FEs = append(c.FEs, p)
		c.procs = append(c.procs, p)
	}
	// The first front-end creates the streams and buckets; the rest
	// find them.
	c.FEs[0].start(t)
	c.waitFE(0)
	c.FEs[1].start(t)
	c.waitFE(1)
	for i := range 2 {
		id := fmt.Sprintf("w%d", i)
		p := &proc{name: "worker-" + id, log: filepath.Join(c.dir, id+".log"), env: []string{pathEnv, "KERNELBUS_LAUNCHER=" + os.Getenv("KERNELBUS_LAUNCHER_BIN")},
			args: []string{kb, "worker", "--rm", "local", "--id", id, "--nats-conn", c.natsConn, "--launcher-nats", c.launcherURLs,
				"--launcher", os.Getenv("KERNELBUS_LAUNCHER_BIN"), "--replicas", "3", "--presence-ttl", "3s", "--ack-wait", "3s", "--log-level", "debug"}}
		// Workers launch from the kernelspecs themselves: the front-ends' folder.
		p.args = append(p.args, "--kernelspec-dir", specs)
		p.args = append(p.args, o.PartArgs...)
		p.args = append(p.args, o.WorkerArgs...)
		c.Workers = append(c.Workers, p)
		c.WorkerIDs = append(c.WorkerIDs, id)
		c.procs = append(c.procs, p)
		p.start(t)
	}
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: urls, CredsFile: filepath.Join(c.authDir, access.AdminCreds), CAFile: c.CAFile(), Name: "failover-test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus, err := kbjs.Open(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	c.Bus = bus
	for _, id := range c.WorkerIDs {
		c.waitWorker(id)
	}
	var cls []*client.Client
	for _, p := range c.FEPorts {
		cls = append(cls, &client.Client{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", p), HTTP: &http.Client{Timeout: 90 * time.Second}})
	}
	c.LB = &RoundRobin{clients: cls}
	return c
}

// startNATS starts the three nodes on ports (clients, routes, monitors)
// and waits until they are healthy. When one is not, it stops them all
// and says why, with the node's log (jstest.RetryPorts reads there whether
// a port was taken).
func (c *Cluster) startNATS(kb, bin string, ports []int) error {
	var routes, clientURLs []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3+i]))
		clientURLs = append(clientURLs, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	// The cluster runs as an operator's would: `kernelbus nats-auth init`
	// writes the operator/account trust, the role credentials, the
	// launcher minter and a private CA; every node includes its files,
	// speaks TLS to clients and routes, and every part connects through
	// its nats.conn with the credentials of its role. An attempt whose
	// port was taken leaves files naming its ports: they go first.
	c.Nodes = nil
	_ = os.RemoveAll(c.authDir)
	initOut, err := exec.Command(kb, "nats-auth", "init", "--dir", c.authDir, "--url", strings.Join(clientURLs, ","), "--tls-hosts", "127.0.0.1").CombinedOutput()
	if err != nil {
		return fmt.Errorf("kernelbus nats-auth init: %v\n%s", err, initOut)
	}
	for i := range 3 {
		n := &natsNode{port: ports[i], monitor: ports[6+i]}
		store := filepath.Join(c.dir, fmt.Sprintf("n%d", i))
		log := filepath.Join(c.dir, fmt.Sprintf("n%d.log", i))
		_ = os.RemoveAll(store)
		_ = os.Remove(log)
		conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
max_payload: 8MB
jetstream { store_dir: %q, max_memory_store: 256MB, max_file_store: 64GB }
include "auth/nats-server-auth.conf"
include "auth/nats-server-tls.conf"
cluster {
  name: kb
  listen: 127.0.0.1:%d
  routes: [%s]
  # Clients keep to the URLs they were given, so a proxy in front of one
  # node really is their only way in.
  no_advertise: true
  include "auth/nats-server-cluster-tls.conf"
}
`, i, n.port, n.monitor, store, ports[3+i], strings.Join(routes, ", "))
		cf := filepath.Join(c.dir, fmt.Sprintf("n%d.conf", i))
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			return err
		}
		n.proc = proc{name: fmt.Sprintf("nats-n%d", i), args: []string{bin, "-c", cf}, log: log}
		c.Nodes = append(c.Nodes, n)
		n.start(c.t)
	}
	if err := nodesUp(c.Nodes...); err != nil {
		for _, n := range c.Nodes {
			n.stop()
		}
		return err
	}
	return nil
}

// URLs of all three nodes.
func (c *Cluster) URLs() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.url())
	}
	return strings.Join(u, ",")
}

// FE returns a client of front-end i only.
func (c *Cluster) FE(i int) *client.Client { return c.LB.clients[i] }

func (c *Cluster) waitNode(n *natsNode) {
	c.t.Helper()
	if err := nodesUp(n); err != nil {
		c.t.Fatal(err)
	}
}

// nodesUp waits until every node of nodes is healthy and says why they
// are not: one exited (with its log) or did not answer within a minute.
func nodesUp(nodes ...*natsNode) error {
	var err error
	jstest.Eventually(60*time.Second, func() bool {
		for _, n := range nodes {
			if !n.running() {
				err = fmt.Errorf("%s exited: %s", n.name, tail(n.log))
				return true
			}
		}
		for _, n := range nodes {
			if err = jstest.GetOK(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monitor)); err != nil {
				err = fmt.Errorf("%s is not healthy: %w", n.name, err)
				return false
			}
		}
		return true
	})
	return err
}

// waitMetaLeader waits until the cluster has elected its JetStream meta
// leader: until then nothing can create a stream, and the first front-end
// would spend its setup time waiting (it gives up after 30 s).
func (c *Cluster) waitMetaLeader() {
	c.t.Helper()
	jstest.WaitForNil(c.t, 90*time.Second, func() error {
		for _, n := range c.Nodes {
			r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz", n.monitor))
			if err != nil {
				return err
			}
			var jsz struct {
				Meta *struct {
					Leader string `json:"leader"`
				} `json:"meta_cluster"`
			}
			err = json.NewDecoder(r.Body).Decode(&jsz)
			r.Body.Close()
			if err != nil {
				return err
			}
			if jsz.Meta == nil || jsz.Meta.Leader == "" {
				return fmt.Errorf("%s sees no JetStream meta leader yet", n.name)
			}
		}
		return nil
	})
}

// waitFE waits until front-end i serves. Its first start listened on port
// 0: its log says the port it got, which its restarts then listen on.
func (c *Cluster) waitFE(i int) {
	c.t.Helper()
	p := c.FEs[i]
	jstest.WaitForNil(c.t, 60*time.Second, func() error {
		if !p.running() {
			c.t.Fatalf("%s exited: %s", p.name, tail(p.log))
		}
		if c.FEPorts[i] == 0 {
			u, err := jstest.LogField(p.log, p.offset, "kernelbus front-end serving", "url")
			if err != nil {
				return err
			}
			pu, err := url.Parse(u)
			if err != nil {
				c.t.Fatalf("%s logged url %q: %v", p.name, u, err)
			}
			c.FEPorts[i], _ = strconv.Atoi(pu.Port())
			p.args[slices.Index(p.args, "--listen")+1] = pu.Host
		}
		return jstest.GetOK(fmt.Sprintf("http://127.0.0.1:%d/api/kernelspecs", c.FEPorts[i]))
	})
}

func (c *Cluster) waitWorker(id string) {
	c.t.Helper()
	jstest.WaitForNil(c.t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Bus.Workers.Get(ctx, id)
		return err
	})
}

// RestartFE starts front-end i again (same port) and waits until it serves.
func (c *Cluster) RestartFE(i int) {
	c.FEs[i].start(c.t)
	c.waitFE(i)
}

// RestartWorker starts worker i again and waits for its presence.
func (c *Cluster) RestartWorker(i int) {
	c.Workers[i].start(c.t)
	c.waitWorker(c.WorkerIDs[i])
}

// RestartNode starts NATS node i again and waits until it is healthy.
func (c *Cluster) RestartNode(i int) {
	c.Nodes[i].start(c.t)
	c.waitNode(c.Nodes[i])
}

// Kernel reads a kernel record.
func (c *Cluster) Kernel(id string) (*broker.Kernel, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, _, err := c.Bus.GetKernel(ctx, id)
	return k, err
}

// launcherPID is the pid of a kernel's launcher, from its record's handle.
func (c *Cluster) launcherPID(id string) int {
	k, err := c.Kernel(id)
	if err != nil || len(k.Handle) == 0 {
		return 0
	}
	var h struct {
		PID int `json:"pid"`
	}
	_ = json.Unmarshal(k.Handle, &h)
	return h.PID
}

// kernelsOf counts the running kernel processes of a kernel id: their
// command lines name the connection file kernel-<id>.json.
func kernelsOf(kernelID string) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		st, _ := os.ReadFile("/proc/" + pid + "/stat")
		if i := bytes.LastIndexByte(st, ')'); i > 0 && bytes.HasPrefix(st[i+1:], []byte(" Z")) {
			continue // a zombie, already dead
		}
		cmdl, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if bytes.Contains(cmdl, []byte("kernel-"+kernelID+".json")) {
			n++
		}
	}
	return n
}

func (c *Cluster) cleanup() {
	// Kernels outlive workers by design: stop their launchers by the
	// process groups in their records.
	if c.Bus != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		keys, _ := c.Bus.Kernels.Keys(ctx)
		cancel()
		for _, id := range keys {
			if pid := c.launcherPID(id); pid > 0 {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
		c.Bus.NC.Close()
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	if dir := os.Getenv("KB_FAILOVER_LOGS"); dir != "" {
		// Keep every log of the run for a closer look.
		dst := filepath.Join(dir, c.t.Name())
		_ = os.MkdirAll(dst, 0o755)
		for _, p := range c.procs {
			b, _ := os.ReadFile(p.log)
			_ = os.WriteFile(filepath.Join(dst, p.name+".log"), b, 0o644)
		}
	}
	if c.t.Failed() {
		for _, p := range c.procs {
			c.t.Logf("---- %s (%s)\n%s", p.name, p.log, tail(p.log))
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	const max = 6000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// RoundRobin spreads calls over the front-ends, as a load balancer with
// no stickiness would.
type RoundRobin struct {
	clients []*client.Client
	n       atomic.Uint64
}

// Next is the front-end the next call goes to.
func (r *RoundRobin) Next() *client.Client {
	return r.clients[int(r.n.Add(1)-1)%len(r.clients)]
}

// StartKernel starts a python3 kernel through the next front-end.
func (c *Cluster) StartKernel(ctx context.Context) (*client.Model, error) {
	return c.LB.Next().StartKernel(ctx, "python3", nil)
}

// Connect opens a websocket of kernel id through the next front-end.
func (c *Cluster) Connect(ctx context.Context, id, session string) (*client.Conn, error) {
	return c.LB.Next().Connect(ctx, id, session, true)
}

// StartConnected starts a kernel and opens a websocket of it, through the
// next front-ends; the test fails when either does.
func (c *Cluster) StartConnected(ctx context.Context) (*client.Model, *client.Conn) {
	c.t.Helper()
	m, err := c.StartKernel(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	conn, err := c.Connect(ctx, m.ID, "")
	if err != nil {
		c.t.Fatal(err)
	}
	return m, conn
}

var _ = nats.ErrTimeout
