package ssh_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/frontend/frontendtest"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/envs"
	"github.com/kernelbus/kernelbus/workers/local"
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
	"github.com/kernelbus/kernelbus/workers/workerstest"
	natsjwt "github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
)

// gateway is a front-end, an ssh pool and a local pool on one NATS that
// listens where the hosts can reach it.
type gateway struct {
	lab               *lab
	bus               *kbjs.Bus
	be                *kbssh.Backend
	c                 *client.Client
	natsURL, launcher string
	// The installation's keys and bus CA: the NATS runs in operator mode
	// with TLS, as `kernelbus serve` does; each part connects with its
	// role's credentials and launchers get their own kernel's.
	inst   *access.Installation
	srv    *embedded.Server
	natsCA string
	// specs are the kernelspecs of the front-end and of every pool, with
	// those of built environments (kb_specs); envCache is the pools'
	// environment cache.
	specs    workers.SpecSource
	envCache *envs.Cache
}

// jegSpec is a JEG kernelspec, as JEG ships them, for the lab's hosts.
func jegSpec(name, py string, hosts []string, extra map[string]any) *broker.KernelSpec {
	cfg := map[string]any{"remote_hosts": toAny(hosts)}
	for k, v := range extra {
		cfg[k] = v
	}
	return &broker.KernelSpec{
		Name: name, DisplayName: name, Language: "python",
		Argv: []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		Metadata: map[string]any{"process_proxy": map[string]any{
			"class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
			"config":     cfg,
		}},
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func newGateway(t *testing.T, l *lab, cfg kbssh.Config) *gateway {
	t.Helper()
	return newWarmGateway(t, l, cfg, 0)
}

// newWarmGateway is newGateway with, when warm > 0, two more specs,
// py-rr-warm and py-local-warm (copies of py-rr and py-local), of which the
// ssh and local pools each keep warm kernels started.
func newWarmGateway(t *testing.T, l *lab, cfg kbssh.Config, warm int) *gateway {
	t.Helper()
	py := jstest.Python(t)
	g := &gateway{lab: l, launcher: jstest.LauncherBin(t)}
	var err error
	if g.inst, err = access.Generate(); err != nil {
		t.Fatal(err)
	}
	// The hosts reach the NATS at l.HostIP: its certificate names it.
	tf, err := access.WriteTLS(t.TempDir(), []string{l.HostIP})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(tf.CA)
	if err != nil {
		t.Fatal(err)
	}
	g.natsCA = string(ca)
	srv, err := embedded.NewServer(embedded.Options{Host: l.HostIP, Port: -1, StoreDir: t.TempDir(), Auth: g.inst, TLSCert: tf.Cert, TLSKey: tf.Key})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	g.srv = srv
	g.natsURL = srv.ClientURL()
	g.bus, err = kbjs.Setup(context.Background(), g.roleConn(t, access.RoleAdmin, ""), kbjs.Layout{IOMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, h := range l.Hosts {
		addrs = append(addrs, h.Addr)
	}
	localSpec := &broker.KernelSpec{Name: "py-local", DisplayName: "local", Language: "python",
		Argv: []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"}}
	specs := &frontend.StaticSpecs{DefaultName: "py-rr", List: []*broker.KernelSpec{
		localSpec,
		jegSpec("py-lc", py, addrs, map[string]any{"load_balancing_algorithm": "least-connection"}),
		jegSpec("py-rr", py, addrs, nil),
	}}
	var sshWarm, localWarm []workers.WarmPool
	if warm > 0 {
		lw := *localSpec
		lw.Name = "py-local-warm"
		specs.List = append(specs.List, &lw, jegSpec("py-rr-warm", py, addrs, nil))
		sshWarm, localWarm = []workers.WarmPool{{Spec: "py-rr-warm", Count: warm}}, []workers.WarmPool{{Spec: "py-local-warm", Count: warm}}
	}
	// The workers read the same specs as the front-end, and those of
	// built environments.
	ev, err := kbjs.OpenEnvs(context.Background(), g.bus.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	if g.envCache, err = envs.NewCache(t.TempDir(), ev.Archives); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	t.Cleanup(wcancel)
	if g.specs, err = kbjs.WatchEnvSpecs(wctx, ev.Specs, specs, jstest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	g.be = g.newBackend(t, cfg)
	g.startPool(t, g.be, sshWarm...)
	lbe, err := local.New(g.launcher, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	g.startPool(t, lbe, localWarm...)

	feBus, err := kbjs.Open(context.Background(), g.roleConn(t, access.RoleFrontend, ""))
	if err != nil {
		t.Fatal(err)
	}
	fcfg := frontend.Config{DefaultLaunchTimeout: 60 * time.Second,
		Environments: &frontend.EnvironmentsConfig{Pythons: envs.DetectPythons(context.Background()), RMs: []string{broker.RMSSH, broker.RMLocal}}}
	g.c = &client.Client{BaseURL: frontendtest.Start(t, fcfg, feBus, specs)}
	return g
}

func (g *gateway) newBackend(t *testing.T, cfg kbssh.Config) *kbssh.Backend {
	t.Helper()
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.KeyFiles == nil {
		cfg.KeyFiles = []string{g.lab.KeyFile}
	}
	if cfg.KnownHosts == nil {
		cfg.KnownHosts = []string{g.lab.KnownHosts}
	}
	if cfg.RemoteDir == "" {
		cfg.RemoteDir = g.lab.RemoteDir
	}
	be, err := kbssh.New(cfg, g.launcher, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// roleConn connects to the gateway's NATS in process with credentials of
// role (a worker's: of resource manager rm).
func (g *gateway) roleConn(t *testing.T, role, rm string) *nats.Conn {
	t.Helper()
	creds, err := g.inst.Creds(role, rm, "test-"+role+rm, 0)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := kbjs.Connect(kbjs.ConnectOptions{InProcess: g.srv.NATS(), Creds: creds, Name: "test " + role + " " + rm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startPool runs a worker pool of be on the gateway's bus, keeping the
// warm pools warm.
func (g *gateway) startPool(t *testing.T, be workers.Backend, warm ...workers.WarmPool) *workers.Pool {
	t.Helper()
	minter, err := g.inst.Minter()
	if err != nil {
		t.Fatal(err)
	}
	bus, err := kbjs.Open(context.Background(), g.roleConn(t, access.RoleWorker, be.Name()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := workers.NewPool(workers.PoolConfig{NATSURLs: g.natsURL, NATSCA: g.natsCA, Minter: minter, StopGrace: 3 * time.Second, Specs: g.specs, Environments: g.envCache, Warm: warm}, bus, be, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(context.Background()) })
	return p
}

// start starts a kernel through the gateway and deletes it at cleanup.
func (g *gateway) start(t *testing.T, spec string, env map[string]string) (*client.Model, *broker.Kernel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m, err := g.c.StartKernel(ctx, spec, env)
	if err != nil {
		t.Fatalf("start %s: %v", spec, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = g.c.DeleteKernel(ctx, m.ID)
	})
	k, _, err := g.bus.GetKernel(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m, k
}

func (g *gateway) host(t *testing.T, k *broker.Kernel) *labHost {
	t.Helper()
	for _, h := range g.lab.Hosts {
		if h.IP == k.Host || h.Addr == k.Host {
			return h
		}
	}
	t.Fatalf("kernel %s runs on %q, which is no lab host", k.ID, k.Host)
	return nil
}

func execute(t *testing.T, conn *client.Conn, code string) *client.Reply {
	t.Helper()
	r, err := conn.Execute(code, 30*time.Second)
	if err != nil {
		t.Fatalf("execute %q: %v", code, err)
	}
	return r
}

// whereAmI is Python that prints the address the kernel's host uses to
// reach this machine: proof of which network namespace it runs in.
func whereAmI(hostIP string) string {
	return fmt.Sprintf("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect((%q, 9))\nprint(s.getsockname()[0])", hostIP)
}

func waitGone(t *testing.T, h *labHost, pid int) {
	t.Helper()
	jstest.WaitFor(t, 15*time.Second, fmt.Sprintf("launcher %d to end on %s", pid, h.Name), func() bool { return !h.Alive(pid) })
}

// TestKernelsOnHosts: JEG DistributedProcessProxy kernels start on both
// hosts round-robin, really run there, and execute, interrupt, restart and
// delete work; the worker copied the launcher to each host, reused one
// connection per host, and a restarted worker re-adopts from the handle.
func TestKernelsOnHosts(t *testing.T) {
	l := newLab(t, 2)
	g := newGateway(t, l, kbssh.Config{})
	var ks []*broker.Kernel
	for range 4 {
		_, k := g.start(t, "py-rr", nil)
		ks = append(ks, k)
	}
	var hosts []string
	for _, k := range ks {
		hosts = append(hosts, k.Host)
	}
	if hosts[0] == hosts[1] || hosts[0] != hosts[2] || hosts[1] != hosts[3] {
		t.Fatalf("round-robin should alternate between the two hosts, got %v", hosts)
	}
	// The launcher was copied by the worker to each host's own disk.
	for _, h := range l.Hosts {
		p := h.Path(g.be.RemoteLauncherPath())
		if st, err := os.Stat(p); err != nil || st.Mode()&0o100 == 0 {
			t.Fatalf("launcher not installed on %s at %s: %v", h.Name, g.be.RemoteLauncherPath(), err)
		}
	}
	if d := g.be.Dials(); d != len(l.Hosts) {
		t.Fatalf("want one SSH connection per host, made %d", d)
	}

	for _, k := range ks[:2] {
		h := g.host(t, k)
		conn, err := g.c.Connect(context.Background(), k.ID, "", true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if r := execute(t, conn, whereAmI(l.HostIP)); strings.TrimSpace(r.Stdout.String()) != h.IP {
			t.Fatalf("kernel %s should run on %s, it says %q", k.ID, h.IP, r.Stdout.String())
		}
		// Interrupt a long computation.
		id, err := conn.SendExecute("import time; print('sleeping', flush=True); time.sleep(120)")
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.AwaitOutput(id, "sleeping", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := g.c.Interrupt(context.Background(), k.ID); err != nil {
			t.Fatal(err)
		}
		r, err := conn.Await(id, 20*time.Second)
		if err != nil || r.Status != "error" {
			t.Fatalf("interrupted execute: status %q, %v", r.Status, err)
		}
		execute(t, conn, "x = 42")
		if _, err := g.c.Restart(context.Background(), k.ID); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		conn, err = g.c.Connect(context.Background(), k.ID, "", true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if r := execute(t, conn, "print('x' in globals())"); strings.TrimSpace(r.Stdout.String()) != "False" {
			t.Fatalf("after restart the kernel should be fresh, got %q", r.Stdout.String())
		}
		if r := execute(t, conn, whereAmI(l.HostIP)); strings.TrimSpace(r.Stdout.String()) != h.IP {
			t.Fatalf("after restart kernel %s should still run on %s, says %q", k.ID, h.IP, r.Stdout.String())
		}
		// Delete: the launcher is gone from the host.
		pid := jstest.HandlePID(t, k)
		if !h.Alive(pid) {
			t.Fatalf("launcher %d not running on %s", pid, h.Name)
		}
		if err := g.c.DeleteKernel(context.Background(), k.ID); err != nil {
			t.Fatal(err)
		}
		waitGone(t, h, pid)
	}

	// A restarted worker knows nothing but the records: a fresh backend
	// (new connections) keeps the backend contract on a running kernel
	// (poll, signal, stop, poll, stop again), and on handles it never made.
	k := ks[2]
	h := g.host(t, k)
	fresh := workerstest.Harness{Backend: g.newBackend(t, kbssh.Config{}), Grace: 5 * time.Second}
	fresh.Run(t)
	fresh.Running(t, workers.Handle{Host: k.Host, Data: k.Handle})
	waitGone(t, h, jstest.HandlePID(t, k))
}

// TestLeastConnectionAndRemoteHost: KERNEL_REMOTE_HOST pins kernels to one
// host; least-connection then sends new kernels to the emptier host.
func TestLeastConnectionAndRemoteHost(t *testing.T) {
	l := newLab(t, 2)
	g := newGateway(t, l, kbssh.Config{})
	a, b := l.Hosts[0], l.Hosts[1]
	for range 2 {
		_, k := g.start(t, "py-rr", map[string]string{kbssh.EnvRemoteHost: a.IP})
		if k.Host != a.IP {
			t.Fatalf("KERNEL_REMOTE_HOST=%s: kernel went to %s", a.IP, k.Host)
		}
	}
	for i := range 2 {
		_, k := g.start(t, "py-lc", nil)
		if k.Host != b.IP {
			t.Fatalf("least-connection start %d: want %s (emptier), got %s", i, b.IP, k.Host)
		}
	}
	// A host outside the pool is refused, naming the pool.
	_, err := g.c.StartKernel(context.Background(), "py-rr", map[string]string{kbssh.EnvRemoteHost: "10.9.9.9"})
	var ae *client.APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "10.9.9.9") || !strings.Contains(ae.Message, a.IP) {
		t.Fatalf("want a clear refusal of an unknown KERNEL_REMOTE_HOST, got %v", err)
	}
}

// TestHostDown: with one sshd stopped new kernels go to the other host;
// with both stopped the start fails naming both hosts and why.
func TestHostDown(t *testing.T) {
	l := newLab(t, 2)
	g := newGateway(t, l, kbssh.Config{})
	// Warm both connections first, so the test covers a cached
	// connection whose host went away.
	g.start(t, "py-rr", nil)
	g.start(t, "py-rr", nil)
	down, up := l.Hosts[0], l.Hosts[1]
	down.StopSSHD(t)
	for i := range 3 {
		_, k := g.start(t, "py-rr", nil)
		if k.Host != up.IP {
			t.Fatalf("start %d after %s's sshd stopped went to %s", i, down.IP, k.Host)
		}
	}
	up.StopSSHD(t)
	_, err := g.c.StartKernel(context.Background(), "py-rr", nil)
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want an API error, got %v", err)
	}
	for _, h := range l.Hosts {
		if !strings.Contains(ae.Message, h.IP) {
			t.Fatalf("the error should name host %s: %s", h.IP, ae.Message)
		}
	}
	if !strings.Contains(ae.Message, "connection refused") || !strings.Contains(ae.Message, "no ssh host could take the kernel") {
		t.Fatalf("the error should say why: %s", ae.Message)
	}
	t.Logf("error when no host is left: %s", ae.Message)
	// Back up: the unhealthy mark does not keep a recovered host out.
	down.Start(t)
	down.waitListening(t)
	if _, k := g.start(t, "py-rr", nil); k.Host != down.IP {
		t.Fatalf("recovered host not used: kernel on %s", k.Host)
	}
}

// TestHostKeys: a host whose key differs from known_hosts, or that is not
// in it, is refused with an error that says so.
func TestHostKeys(t *testing.T) {
	l := newLab(t, 2)
	a, b := l.Hosts[0], l.Hosts[1]
	// known_hosts claims b's key for a.
	data, err := os.ReadFile(l.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if f[0] == b.IP {
			lines = append(lines, line, a.IP+" "+f[1]+" "+f[2])
		}
	}
	wrong := filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, wrong, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	g := &gateway{lab: l, launcher: jstest.LauncherBin(t)}
	cfg := &broker.LaunchConfig{V: 1, KernelID: "k-hostkey", Spec: "s", Argv: []string{"true"}, NATSURLs: "nats://" + l.HostIP + ":1"}

	be := g.newBackend(t, kbssh.Config{Hosts: []string{a.Addr}, KnownHosts: []string{wrong}})
	_, err = be.Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "host key refused") || !strings.Contains(err.Error(), "does not match") || !strings.Contains(err.Error(), a.IP) {
		t.Fatalf("want a refused mismatching host key naming %s, got %v", a.IP, err)
	}
	t.Logf("mismatch: %v", err)

	empty := filepath.Join(t.TempDir(), "empty_known_hosts")
	writeFile(t, empty, nil, 0o600)
	be = g.newBackend(t, kbssh.Config{Hosts: []string{a.Addr}, KnownHosts: []string{empty}})
	_, err = be.Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "not in "+empty) {
		t.Fatalf("want an unknown host refused, got %v", err)
	}

	// A pool with one good host still starts there.
	be = g.newBackend(t, kbssh.Config{Hosts: []string{a.Addr, b.Addr}, KnownHosts: []string{wrong}})
	h, err := be.Start(context.Background(), cfg)
	if err != nil || h.Host != b.IP {
		t.Fatalf("want the start on %s, got %+v %v", b.IP, h, err)
	}
	_ = be.Stop(context.Background(), h, time.Second)
}

// TestStartLatency measures kernel start through the gateway (POST
// /api/kernels until it answers, which is kernel_info_reply on the bus),
// local versus ssh, with the launcher already on the hosts.
func TestStartLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	l := newLab(t, 2)
	g := newGateway(t, l, kbssh.Config{})
	n := 5
	startStop := func(spec string) time.Duration {
		t0 := time.Now()
		m, err := g.c.StartKernel(context.Background(), spec, nil)
		d := time.Since(t0)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.c.DeleteKernel(context.Background(), m.ID); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// The first ssh start per host copies the launcher.
	first := startStop("py-rr")
	startStop("py-rr")
	// Interleaved, so a busy machine slows both alike.
	var loc, rem []time.Duration
	for range n {
		loc = append(loc, startStop("py-local"))
		rem = append(rem, startStop("py-rr"))
	}
	for _, ds := range [][]time.Duration{loc, rem} {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	}
	t.Logf("start latency over %d starts each: local median %s (min %s, max %s); ssh median %s (min %s, max %s); first ssh start with launcher copy %s",
		n, loc[n/2].Round(time.Millisecond), loc[0].Round(time.Millisecond), loc[n-1].Round(time.Millisecond),
		rem[n/2].Round(time.Millisecond), rem[0].Round(time.Millisecond), rem[n-1].Round(time.Millisecond), first.Round(time.Millisecond))
}

// launcherSecretsCell is Python that prints, as JSON, every NATS user JWT
// in its parent's (the launcher's) memory, which a kernel running as root
// can read.
const launcherSecretsCell = `
import os, re, json
JWT = re.compile(rb'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}')
found, ppid = set(), os.getppid()
with open("/proc/%d/maps" % ppid) as maps, open("/proc/%d/mem" % ppid, "rb", 0) as mem:
    for line in maps:
        rng, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in rng.split("-"))
        if "r" in perms and hi - lo < 1 << 28:
            try:
                mem.seek(lo)
                found.update(m.decode() for m in JWT.findall(mem.read(hi - lo)))
            except OSError:
                pass
print("JWTS" + json.dumps(sorted(found)))
`

// TestRemoteLauncherHoldsOnlyItsKernelsCredentials: a launcher on an SSH
// host connects over TLS (the CA from its launch config) with credentials
// minted for its kernel alone: the only user JWTs in its memory, read by
// its own kernel, name that kernel and the launcher role.
func TestRemoteLauncherHoldsOnlyItsKernelsCredentials(t *testing.T) {
	l := newLab(t, 1)
	g := newGateway(t, l, kbssh.Config{})
	_, k := g.start(t, "py-rr", nil)
	conn, err := g.c.Connect(context.Background(), k.ID, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if r := execute(t, conn, whereAmI(l.HostIP)); strings.TrimSpace(r.Stdout.String()) != l.Hosts[0].IP {
		t.Fatalf("the kernel does not run on the host: %q", r.Stdout.String())
	}
	out := execute(t, conn, launcherSecretsCell).Stdout.String()
	i := strings.Index(out, "JWTS")
	if i < 0 {
		t.Fatalf("cell printed %q", out)
	}
	var jwts []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+4:])), &jwts); err != nil {
		t.Fatal(err)
	}
	if len(jwts) == 0 {
		t.Fatal("no credentials in the launcher's memory: the test read nothing (is the kernel root?)")
	}
	for _, j := range jwts {
		uc, err := natsjwt.DecodeUserClaims(j)
		if err != nil {
			continue
		}
		if uc.Name != k.ID || !uc.Tags.Contains("role:"+access.RoleLauncher) || uc.Expires == 0 {
			t.Errorf("the remote launcher holds credentials of %q (tags %v, expiry %d), want its own kernel's %s, expiring", uc.Name, uc.Tags, uc.Expires, k.ID)
		}
	}
}
