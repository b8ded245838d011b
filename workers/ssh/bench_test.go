package ssh_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/e2e/startbench"
	kbssh "github.com/kernelbus/kernelbus/workers/ssh"
)

// TestBenchSSHStart measures kernel starts through a front-end and worker
// pools on the lab's two sshd hosts: ipykernel on a host (round robin)
// started cold and taken from the ssh pool's warm kernels, and local
// ipykernel cold and warm beside it. A benchmark, not a test: it runs only
// with KB_RM_BENCH=1 (`task bench:rm`, as root: the lab needs network
// namespaces), and writes its section of KB_RM_BENCH_OUT.
func TestBenchSSHStart(t *testing.T) {
	if !startbench.Enabled() {
		t.Skip("a benchmark: set KB_RM_BENCH=1 (`task bench:rm`)")
	}
	n, err := startbench.N()
	if err != nil {
		t.Fatal(err)
	}
	const pool = 2
	info := startbench.Info{Key: "ssh", Title: "SSH (two sshd hosts in network namespaces) and local, through an in-process front-end",
		Began: time.Now(), LoadBefore: startbench.LoadAvg()}
	l := newLab(t, 2)
	g := newWarmGateway(t, l, kbssh.Config{}, pool)
	rows := []startbench.Row{
		{RM: "ssh", Mode: "cold", Spec: "py-rr"},
		{RM: "ssh", Mode: "warm", Spec: "py-rr-warm"},
		{RM: "local", Mode: "cold", Spec: "py-local"},
		{RM: "local", Mode: "warm", Spec: "py-local-warm"},
	}
	// The client names a user, as an authenticated one always does; the
	// ssh pool does not impersonate (every kernel logs in as root), so a
	// warm kernel serves any user.
	startbench.Run(t, g.c, rows, map[string]int{"ssh/py-rr-warm": pool, "local/py-local-warm": pool}, map[string]string{"KERNEL_USERNAME": "bench"}, n)
	info.Setup = fmt.Sprintf("The ssh suite's lab (workers/ssh/lab_test.go): two Debian sshd hosts, each a network, PID and mount namespace with its own address on a bridge; "+
		"a NATS (operator mode, TLS) on the bridge address, a front-end on loopback, and in the same test process an ssh worker pool (JEG DistributedProcessProxy spec, round robin over both hosts, one SSH connection per host kept open, "+
		"the launcher copied on the first start) and a local one, each keeping a warm pool of %d (`workers.WarmPool`, as `--warm` sets it).", pool)
	info.Order = fmt.Sprintf("%d rounds after one unmeasured round (which copies the launcher to the hosts); each round starts ssh cold, ssh warm, local cold, local warm, each with KERNEL_USERNAME=bench, "+
		"each kernel deleted after its first result. Before every start, cold or warm, the bench waits until both warm pools have %d running kernels.", n, pool)
	startbench.Finish(t, info, rows)
}
