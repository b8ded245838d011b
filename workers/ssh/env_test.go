package ssh_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/envs"
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
)

// TestEnvironmentOnHost: an environment with a small real PyPI package
// (tabulate) built for the ssh resource manager is unpacked on the host
// the kernel goes to, on first use, into the host's own remote dir (a
// tmpfs of its own), and the kernel runs the environment's python there;
// a second kernel finds it unpacked (cached by digest on the host).
func TestEnvironmentOnHost(t *testing.T) {
	l := newLab(t, 1)
	// An environment's spec names no hosts: the worker's pool is used.
	g := newGateway(t, l, kbssh.Config{Hosts: []string{l.Hosts[0].Addr}})
	pythons := envs.DetectPythons(context.Background())
	if len(pythons) == 0 {
		t.Skip("no python3 with venv on PATH")
	}
	ver := envs.Versions(pythons)[0]
	bbus, err := kbjs.Open(context.Background(), g.roleConn(t, access.RoleWorker, broker.RMBuild))
	if err != nil {
		t.Fatal(err)
	}
	b, err := envs.NewBuilder(context.Background(), envs.BuilderConfig{Pythons: pythons, WorkDir: t.TempDir()}, bbus, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := g.c.CreateEnvironment(ctx, map[string]any{"name": "tab", "python": ver, "rm": "ssh", "pip": []string{"tabulate"}}); err != nil {
		t.Fatalf("create: %v", err)
	}
	var e *client.Environment
	jstest.WaitFor(t, 10*time.Minute, "the environment's build", func() bool {
		e, err = g.c.Environment(ctx, "tab")
		return err == nil && (e.State == broker.EnvReady || e.State == broker.EnvFailed)
	})
	if e.State != broker.EnvReady {
		t.Fatalf("build: %+v", e)
	}
	jstest.WaitFor(t, 20*time.Second, "the spec on the ssh worker", func() bool { _, ok := g.specs.Spec("tab"); return ok })

	m, k := g.start(t, "tab", nil)
	h := g.host(t, k)
	remote := filepath.Join(l.RemoteDir, "envs", e.Digest)
	if !fileExists(h.Path(filepath.Join(remote, "bin", "python"))) {
		t.Fatalf("the environment is not unpacked in the host's %s", remote)
	}
	if fileExists(filepath.Join(remote, "bin", "python")) {
		t.Fatalf("the environment was unpacked on the worker's disk at %s, not the host's", remote)
	}
	conn, err := g.c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := execute(t, conn, "import sys, tabulate\nprint(sys.prefix)\nprint(tabulate.tabulate([[1, 2]], tablefmt='plain'))\n"+whereAmI(l.HostIP))
	out := r.Stdout.String()
	if r.Status != "ok" || !strings.Contains(out, remote) || !strings.Contains(out, "1  2") || !strings.Contains(out, h.IP) {
		t.Fatalf("kernel output %q (status %s); want the prefix %s, a table and the host's address %s", out, r.Status, remote, h.IP)
	}
	// The venv was relocated to the host's folder: its scripts name it.
	if data, err := os.ReadFile(h.Path(filepath.Join(remote, "bin", "pip"))); err != nil || !strings.Contains(string(data), remote+"/bin/python") {
		t.Errorf("pip's shebang on the host does not name %s: %v %.120q", remote, err, data)
	}

	// A second kernel finds it unpacked: the folder is the same one.
	before, err := os.Stat(h.Path(remote))
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := g.start(t, "tab", nil)
	conn2, err := g.c.Connect(ctx, m2.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if r := execute(t, conn2, "import tabulate; print(tabulate.__name__)"); !strings.Contains(r.Stdout.String(), "tabulate") {
		t.Fatalf("second kernel: %q", r.Stdout.String())
	}
	after, err := os.Stat(h.Path(remote))
	if err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the environment was unpacked again for the second kernel")
	}
}
