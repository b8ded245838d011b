package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/e2e/attack"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go/jetstream"
)

// tryIt starts the cells below: attack.TryIt, the kernel's uid in tries.
const tryIt = attack.TryIt + `import signal
tries["uid"] = os.getuid()
`

// reachCell is what kernel A tries against the gateway itself beyond bus
// credentials: list and read the data folder (keys, nats.conn, stream
// files) and signal the gateway. Each entry is "ok" or the error's type.
const reachCell = tryIt + `tryit("list data", lambda: os.listdir(%[1]q))
tryit("read nats.conn", lambda: open(%[1]q + "/nats.conn").read())
tryit("read admin creds", lambda: open(%[1]q + "/auth/admin.creds").read())
tryit("read minter", lambda: open(%[1]q + "/auth/launcher-minter.json").read())
tryit("list jetstream", lambda: os.listdir(%[1]q + "/jetstream"))
tryit("signal 0 gateway", lambda: os.kill(%[2]d, 0))
tryit("SIGTERM gateway", lambda: os.kill(%[2]d, signal.SIGTERM))
print("REACH" + json.dumps(tries))
`

// crossCell is what kernel A tries against kernel B on the same host
// beyond bus credentials: B's connection file (its HMAC key), B's and its
// launcher's environment, B's home and the homes folder, signals to B and
// its launcher, and then every TCP port listening on 127.0.0.1 but its
// own, with a ZMQ execute_request signed with A's own key and one unsigned,
// whose code would mark B; the same message to A's own shell port is the
// control that runs. Each read or signal is "ok" or the error's type.
const crossCell = tryIt + `import hmac, hashlib, uuid
tryit("read B's connection file", lambda: open(%[1]q).read())
tryit("read B's environ", lambda: open("/proc/%[2]d/environ").read())
tryit("read B's launcher's environ", lambda: open("/proc/%[3]d/environ").read())
tryit("list B's home", lambda: os.listdir(%[4]q))
tryit("list the kernel homes", lambda: os.listdir(%[5]q))
tryit("signal 0 B", lambda: os.kill(%[2]d, 0))
tryit("SIGTERM B", lambda: os.kill(%[2]d, signal.SIGTERM))
tryit("SIGTERM B's launcher", lambda: os.kill(%[3]d, signal.SIGTERM))
print("CROSS" + json.dumps(tries))
`

// TestServeKernelIsolation: `kernelbus serve` run as root with its
// defaults (a users file with alice and bob) runs each local kernel under
// an unprivileged uid of its own. Code in alice's kernel A reads
// everything it can (every /proc environ and cmdline, its launcher's fds
// and memory, the gateway's data folder) and cannot read the data folder
// or signal the gateway; nor can it read bob's kernel B's connection
// file, environment or home, signal B, or make B run anything over ZMQ;
// the test then tries every credential A found, and A's own launcher
// credentials, against B with a real NATS client: each attempt is
// denied, and B is untouched.
func TestServeKernelIsolation(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: serve runs kernels as an unprivileged account only when it is root")
	}
	se := newServeEnv(t)
	dir, data := filepath.Dir(se.data), se.data
	// The folder above the data folder is open, as a home folder may be:
	// the data folder's own mode must keep kernels out.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users.json")
	token := func(name string) string {
		code, tok, errOut := runCLI("users", "add", "--file", users, name)
		if code != 0 {
			t.Fatalf("users add %s: %s", name, errOut)
		}
		return strings.TrimSpace(tok)
	}
	ta, tb := token("alice"), token("bob")
	srv := startServe(t, se.bin, data, se.logPath, append(se.args, "--users-file", users)...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ca, cb := &client.Client{BaseURL: srv.url, Token: ta}, &client.Client{BaseURL: srv.url, Token: tb}

	mA, err := ca.StartKernel(ctx, "python3", nil)
	if err != nil {
		t.Fatal(err)
	}
	mB, err := cb.StartKernel(ctx, "python3", nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := mA.ID, mB.ID
	connA, err := ca.Connect(ctx, a, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer connA.Close()
	connB, err := cb.Connect(ctx, b, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer connB.Close()
	if r, err := connB.Execute("secret = 'bob-' + str(6*7); print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B: %+v %v", r, err)
	}

	// The gateway's files and process.
	r, err := connA.Execute(fmt.Sprintf(reachCell, data, srv.cmd.Process.Pid), time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the reach cell: %+v %v", r, err)
	}
	out := r.Stdout.String()
	i := strings.Index(out, "REACH")
	if i < 0 {
		t.Fatalf("the reach cell printed %q", out)
	}
	reach := map[string]any{}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+len("REACH"):])), &reach); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel A tried the gateway: %v", reach)
	if uid, _ := reach["uid"].(float64); uid == 0 {
		t.Fatal("kernel A runs as root under a root serve with its defaults")
	}
	for k, v := range reach {
		if k != "uid" && v != "PermissionError" {
			t.Errorf("kernel A: %s: got %v, want PermissionError", k, v)
		}
	}
	if st, err := os.Stat(data); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("data folder mode: %v %v", st.Mode(), err)
	}

	// B itself, on the same host: under serve's defaults A and B run
	// under uids of their own, so A can neither read B's key nor signal
	// B, and what A sends to B's ZMQ ports (signed with the only key it
	// has, its own) runs nothing.
	pidB, connFileB := attack.KernelProc(t, b)
	pidA, _ := attack.KernelProc(t, a)
	uidA, uidB := jstest.ProcUID(t, pidA), jstest.ProcUID(t, pidB)
	if uidA == uidB || uidA == 0 || uidB == 0 {
		t.Fatalf("kernels A and B run as uids %d and %d: want two distinct unprivileged ones", uidA, uidB)
	}
	var portsB struct {
		Shell   int `json:"shell_port"`
		Control int `json:"control_port"`
	}
	if data, err := os.ReadFile(connFileB); err != nil || json.Unmarshal(data, &portsB) != nil || portsB.Shell == 0 {
		t.Fatalf("B's connection file %s: %v", connFileB, err)
	}
	homeB := filepath.Dir(filepath.Dir(connFileB))
	selfMark := attack.PwnedFile(a) + "-self"
	t.Cleanup(func() { os.Remove(selfMark) })
	r, err = connA.Execute(fmt.Sprintf(crossCell, connFileB, pidB, parentPID(t, pidB), homeB, filepath.Dir(homeB)), 2*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the cross-kernel cell: %+v %v", r, err)
	}
	out = r.Stdout.String()
	i = strings.Index(out, "CROSS")
	if i < 0 {
		t.Fatalf("the cross-kernel cell printed %q", out)
	}
	cross := map[string]any{}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+len("CROSS"):])), &cross); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel A (uid %d) tried kernel B (uid %d, pid %d, home %s): %v", uidA, uidB, pidB, homeB, cross)
	for k, v := range cross {
		if k != "uid" && v != "PermissionError" {
			t.Errorf("kernel A: %s: got %v, want PermissionError", k, v)
		}
	}
	tried := attack.ZMQ(t, connA, attack.PwnedFile(b), selfMark)
	if !tried[portsB.Shell] || !tried[portsB.Control] {
		t.Fatalf("kernel A's ZMQ attempts missed B's shell and control ports %d, %d (tried %v)", portsB.Shell, portsB.Control, tried)
	}
	jstest.WaitFor(t, time.Minute, "the control: A's message to its own shell port runs", func() bool {
		_, err := os.Stat(selfMark)
		return err == nil
	})

	// Bus credentials, wherever A can find them.
	l := attack.Steal(t, connA)
	cf := servedBus(t, data)
	creds := append(l.Creds(), attack.Minted(t, filepath.Join(cf.authDir, access.MinterFileName), a))
	attack.RunAll(t, cf.url, cf.ca, creds, a, b, nil)

	// B is untouched: its record, its state, the streams.
	if k, err := cb.Kernel(ctx, b); err != nil || k.ExecutionState == "dead" {
		t.Fatalf("B's record after the attacks: %+v %v", k, err)
	}
	if r, err := connB.Execute("print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B after the attacks: %+v %v", r, err)
	}
	if _, err := os.Stat(attack.PwnedFile(b)); err == nil {
		t.Fatal("B ran code published or sent by A")
	}
	if r, err := connB.Execute("print('pwned_by_a' in globals())", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "False" {
		t.Fatalf("B ran code A sent over ZMQ: %+v %v", r, err)
	}
	admin := cf.admin(t, "admin")
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{broker.StreamEvents, broker.StreamIO, "KV_" + broker.BucketKernels} {
		if _, err := js.Stream(ctx, s); err != nil {
			t.Errorf("stream %s after the attacks: %v", s, err)
		}
	}
}

// parentPID is process pid's parent (a kernel's: its launcher).
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n, _ := strconv.Atoi(f[1])
	return n
}

// probeCell tries to read a connection file and to signal a process.
const probeCell = tryIt + `tryit("read", lambda: open(%[1]q).read())
tryit("signal", lambda: os.kill(%[2]d, 0))
print("PROBE" + json.dumps(tries))
`

// TestServeRunAsOwners: serve as root with --run-as-owners and two OS
// accounts of the same names as two users: each user's real ipykernel runs
// as that user's account, and neither kernel can read the other's
// connection file or signal the other's kernel; each can read its own.
func TestServeRunAsOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: it creates two OS users")
	}
	se := newServeEnv(t)
	names := []string{"kbiso-alice", "kbiso-bob"}
	uids := []string{jstest.OSUser(t, names[0]).Uid, jstest.OSUser(t, names[1]).Uid}
	users := filepath.Join(filepath.Dir(se.data), "users.json")
	var clients []*client.Client
	for _, n := range names {
		code, tok, errOut := runCLI("users", "add", "--file", users, n)
		if code != 0 {
			t.Fatalf("users add %s: %s", n, errOut)
		}
		clients = append(clients, &client.Client{Token: strings.TrimSpace(tok)})
	}
	srv := startServe(t, se.bin, se.data, se.logPath, append(se.args, "--users-file", users, "--run-as-owners", strings.Join(names, ","))...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	type kernel struct {
		conn     *client.Conn
		pid      int
		connFile string
	}
	var ks []kernel
	for i, c := range clients {
		c.BaseURL = srv.url
		m, err := c.StartKernel(ctx, "python3", nil)
		if err != nil {
			t.Fatalf("%s's kernel: %v", names[i], err)
		}
		conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		pid, cf := attack.KernelProc(t, m.ID)
		ks = append(ks, kernel{conn, pid, cf})
	}
	probe := func(from int, file string, pid int) map[string]any {
		t.Helper()
		r, err := ks[from].conn.Execute(fmt.Sprintf(probeCell, file, pid), time.Minute)
		if err != nil || r.Status != "ok" {
			t.Fatalf("probe from %s: %+v %v", names[from], r, err)
		}
		out := r.Stdout.String()
		i := strings.Index(out, "PROBE")
		res := map[string]any{}
		if i < 0 || json.Unmarshal([]byte(strings.TrimSpace(out[i+len("PROBE"):])), &res) != nil {
			t.Fatalf("probe printed %q", out)
		}
		return res
	}
	for i := range ks {
		other := 1 - i
		own := probe(i, ks[i].connFile, ks[i].pid)
		if fmt.Sprint(own["uid"]) != uids[i] || own["read"] != "ok" || own["signal"] != "ok" {
			t.Errorf("%s's kernel on its own (want uid %s, ok, ok): %v", names[i], uids[i], own)
		}
		res := probe(i, ks[other].connFile, ks[other].pid)
		t.Logf("%s's kernel against %s's: %v", names[i], names[other], res)
		if res["read"] != "PermissionError" || res["signal"] != "PermissionError" {
			t.Errorf("%s's kernel read %s's connection file or signalled its kernel: %v", names[i], names[other], res)
		}
	}
}
