package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/e2e/attack"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go/jetstream"
)

// reachCell is what kernel A tries against the gateway itself beyond bus
// credentials: list and read the data folder (keys, nats.conn, stream
// files) and signal the gateway. Each entry is "ok" or the error's type.
const reachCell = `
import os, json, signal
res = {"uid": os.getuid()}
def tryit(name, f):
    try:
        f()
        res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
tryit("list data", lambda: os.listdir(%[1]q))
tryit("read nats.conn", lambda: open(%[1]q + "/nats.conn").read())
tryit("read admin creds", lambda: open(%[1]q + "/auth/admin.creds").read())
tryit("read minter", lambda: open(%[1]q + "/auth/launcher-minter.json").read())
tryit("list jetstream", lambda: os.listdir(%[1]q + "/jetstream"))
tryit("signal 0 gateway", lambda: os.kill(%[2]d, 0))
tryit("SIGTERM gateway", lambda: os.kill(%[2]d, signal.SIGTERM))
print("REACH" + json.dumps(res))
`

// TestServeKernelIsolation: `kernelbus serve` run as root with its
// defaults (a users file with alice and bob) runs local kernels as an
// unprivileged account. Code in alice's kernel A reads everything it can
// (every /proc environ and cmdline, its launcher's fds and memory, the
// gateway's data folder) and cannot read the data folder or signal the
// gateway; the test then tries every credential A found, and A's own
// launcher credentials, against bob's kernel B with a real NATS client:
// each attempt is denied, and B is untouched.
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

	// Bus credentials, wherever A can find them.
	r, err = connA.Execute(attack.HostileCell, 2*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the hostile cell: %+v %v", r, err)
	}
	l, err := attack.ParseLoot(r.Stdout.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel A (uid %d, launcher pid %d) found %d JWTs and %d seeds; sources %v; denied %d reads, e.g. %v",
		l.UID, l.PID, len(l.JWTs), len(l.Seeds), l.Sources, len(l.Denied), l.Denied[:min(len(l.Denied), 5)])
	cf, err := readConnFile(filepath.Join(data, "nats.conn"))
	if err != nil {
		t.Fatal(err)
	}
	minter, err := access.LoadMinter(filepath.Join(cf.authDir, access.MinterFileName))
	if err != nil {
		t.Fatal(err)
	}
	mj, ms, err := minter.Launcher(a, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds := append(l.Creds(), attack.Cred{Name: "kernel A's own launcher credentials", JWT: mj, Seed: ms})
	connected := 0
	for _, cr := range creds {
		at, ok, err := attack.Dial(cf.url, cf.ca, cr)
		if err != nil {
			t.Error(err)
		}
		if !ok {
			continue
		}
		connected++
		t.Run(cr.Name, func(t *testing.T) {
			defer at.NC.Close()
			attack.Run(t, at, a, b)
		})
	}
	if connected == 0 {
		t.Fatal("no credential connected: the attacks ran with none (A's own minted credentials should connect)")
	}

	// B is untouched: its record, its state, the streams.
	if k, err := cb.Kernel(ctx, b); err != nil || k.ExecutionState == "dead" {
		t.Fatalf("B's record after the attacks: %+v %v", k, err)
	}
	if r, err := connB.Execute("print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B after the attacks: %+v %v", r, err)
	}
	if _, err := os.Stat(attack.PwnedFile(b)); err == nil {
		t.Fatal("B ran code published by A")
	}
	admin, err := kbjs.Connect(kbjs.ConnectOptions{URLs: cf.url, CredsFile: filepath.Join(cf.authDir, access.AdminCreds), CAFile: cf.ca, Name: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
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

// osUser creates an OS account for the test and removes it afterwards.
func osUser(t *testing.T, name string) string {
	t.Helper()
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil && !strings.Contains(string(out), "already exists") {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", "-f", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u.Uid
}

// kernelProc finds kernel id's ipykernel process and connection file.
func kernelProc(t *testing.T, id string) (pid int, connFile string) {
	t.Helper()
	jstest.WaitFor(t, 30*time.Second, "kernel "+id+"'s process", func() bool {
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			n, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n))
			args := strings.Split(string(cmd), "\x00")
			for _, a := range args {
				if strings.HasSuffix(a, "kernel-"+id+".json") && strings.Contains(string(cmd), "ipykernel") {
					pid, connFile = n, a
					return true
				}
			}
		}
		return false
	})
	return pid, connFile
}

// probeCell tries to read a connection file and to signal a process.
const probeCell = `
import os, json
res = {"uid": os.getuid()}
try:
    open(%[1]q).read(); res["read"] = "ok"
except Exception as e:
    res["read"] = type(e).__name__
try:
    os.kill(%[2]d, 0); res["signal"] = "ok"
except Exception as e:
    res["signal"] = type(e).__name__
print("PROBE" + json.dumps(res))
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
	uids := []string{osUser(t, names[0]), osUser(t, names[1])}
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
		pid, cf := kernelProc(t, m.ID)
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
