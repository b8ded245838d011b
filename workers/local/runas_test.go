package local_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/google/uuid"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers/local"
	"github.com/rs/zerolog"
)

// probe is the test binary run as another OS user: it tries what a
// hostile kernel of that user would. Exit 0: allowed; 13: refused by the
// OS; 1: something else.
func probe(what, arg string) int {
	var err error
	switch what {
	case "--probe-read":
		_, err = os.ReadFile(arg)
	case "--probe-signal":
		pid, _ := strconv.Atoi(arg)
		err = syscall.Kill(pid, 0)
	case "--probe-become":
		// Started as root: takes uid and gid arg when a line comes on
		// stdin, says "ok" and stays until stdin closes.
		if _, err = bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return 1
		}
		id, _ := strconv.Atoi(arg)
		if err = syscall.Setgid(id); err == nil {
			err = syscall.Setuid(id)
		}
		if err == nil {
			fmt.Println("ok")
			_, _ = io.Copy(io.Discard, os.Stdin)
		}
	default:
		return 1
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return 13
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// runProbe runs the test binary as u.
func runProbe(t *testing.T, bin string, u *user.User, what, arg string) int {
	t.Helper()
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return probeAs(t, bin, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, u.Username, what, arg)
}

// probeAs runs the test binary with cred (who names it in a failure) and
// returns the probe's exit code, 0 or 13; anything else fails the test.
func probeAs(t *testing.T, bin string, cred *syscall.Credential, who, what, arg string) int {
	t.Helper()
	cmd := exec.Command(bin, what, arg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.ExitCode() == 1 {
			t.Fatalf("probe %s %s as %s: %s", what, arg, who, out)
		}
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// Under a worker that runs as root with --run-as-owners, the kernels of
// two owners run as their OS accounts: neither can read the other's
// connection file or signal the other's kernel or the worker; an owner
// that maps to root is refused with 403.
func TestRunAsOwnersKeepsKernelsApart(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: the test creates two OS users and the worker switches to them")
	}
	alice, bob := jstest.OSUser(t, "kbtest-alice"), jstest.OSUser(t, "kbtest-bob")
	// The launcher (this test binary) must be runnable by them: a copy in
	// a folder they can reach.
	bin := copyBinary(t, 0o755)
	be, err := local.NewRunAs(bin, local.RunAs{Owners: []string{alice.Username, bob.Username, "root"}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e := setupWith(t, be)
	start := func(id, owner string) {
		now := time.Now().UTC()
		e.submit(t, &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, User: owner, State: broker.StateRequested,
			Created: now, Deadline: now.Add(20 * time.Second), Env: map[string]string{"FAKE": "connfile"}})
		// Nor may a launcher keep its OS user from being removed.
		e.killAtCleanup(t, id)
	}
	// Fresh ids: connection files of earlier runs (a killed run leaves
	// its folder) must not be found for these kernels.
	ida, idb := uuid.NewString(), uuid.NewString()
	start(ida, alice.Username)
	start(idb, bob.Username)
	ka := e.waitFor(t, ida, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning || k.State.Terminal() })
	kb := e.waitFor(t, idb, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning || k.State.Terminal() })
	if ka.State != broker.StateRunning || kb.State != broker.StateRunning {
		t.Fatalf("kernels did not run: %s %q / %s %q", ka.State, ka.Reason, kb.State, kb.Reason)
	}
	pa, pb := jstest.HandlePID(t, ka), jstest.HandlePID(t, kb)
	if ua, ub := strconv.Itoa(jstest.ProcUID(t, pa)), strconv.Itoa(jstest.ProcUID(t, pb)); ua != alice.Uid || ub != bob.Uid {
		t.Fatalf("launchers run as uid %s and %s, want %s and %s", ua, ub, alice.Uid, bob.Uid)
	}
	connFile := func(id string) string {
		files, _ := filepath.Glob(filepath.Join(os.TempDir(), "kernelbus-"+id+"-*", "kernel-"+id+".json"))
		if len(files) != 1 {
			t.Fatalf("connection file of %s: found %v", id, files)
		}
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(files[0])) })
		return files[0]
	}
	fa, fb := connFile(ida), connFile(idb)
	// Each reads its own (the probe works), not the other's.
	if runProbe(t, bin, alice, "--probe-read", fa) != 0 || runProbe(t, bin, bob, "--probe-read", fb) != 0 {
		t.Fatal("an owner cannot read its own connection file")
	}
	if runProbe(t, bin, alice, "--probe-read", fb) != 13 || runProbe(t, bin, bob, "--probe-read", fa) != 13 {
		t.Fatal("one owner's kernel can read the other's connection file")
	}
	// Nor signal the other's kernel, nor the worker (this root process).
	if runProbe(t, bin, alice, "--probe-signal", strconv.Itoa(pb)) != 13 || runProbe(t, bin, bob, "--probe-signal", strconv.Itoa(pa)) != 13 {
		t.Fatal("one owner's kernel can signal the other's")
	}
	if runProbe(t, bin, alice, "--probe-signal", strconv.Itoa(os.Getpid())) != 13 {
		t.Fatal("a kernel can signal the worker")
	}
	// An owner that maps to uid 0 never runs.
	idr := "00000000-0000-4000-8000-0000000000c1"
	start(idr, "root")
	kr := e.waitFor(t, idr, 15*time.Second, func(k *broker.Kernel) bool { return k.State.Terminal() })
	if kr.State != broker.StateFailed || kr.FailStatus != 403 || !strings.Contains(kr.Reason, "uid 0") || len(kr.Handle) > 0 {
		t.Fatalf("root owner: want failed 403 naming uid 0, got %s %d %q", kr.State, kr.FailStatus, kr.Reason)
	}
}

// Run-as settings are checked at start: root as the fixed account, a
// missing account, and (when not root) any switching at all are refused.
func TestRunAsChecks(t *testing.T) {
	exe, _ := os.Executable()
	if os.Geteuid() != 0 {
		if _, err := local.NewRunAs(exe, local.RunAs{User: "nobody"}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "root") {
			t.Fatalf("switching users as uid %d: want an error saying it needs root, got %v", os.Geteuid(), err)
		}
		return
	}
	for _, ra := range []local.RunAs{{User: "root"}, {User: "no-such-user-kb"}, {User: "x;id"}, {User: "nobody", Range: local.DefaultRange}} {
		if _, err := local.NewRunAs(exe, ra, zerolog.Nop()); err == nil {
			t.Errorf("%+v accepted", ra)
		}
	}
	for _, r := range []string{"0-10", "10-5", "x", "5", "1-4294967295"} {
		if _, err := local.ParseRunAs(map[string]string{local.OptRunAsRange: r}); err == nil || !strings.Contains(err.Error(), local.OptRunAsRange) {
			t.Errorf("range %q: want an error naming %s, got %v", r, local.OptRunAsRange, err)
		}
	}
	if ra, err := local.ParseRunAs(map[string]string{local.OptRunAsRange: " 300000-300009 "}); err != nil || ra.Range != (local.IDRange{First: 300000, Last: 300009}) {
		t.Errorf("range 300000-300009: %+v %v", ra.Range, err)
	}
}

var closedInterpreter = filepath.Join(os.TempDir(), "kb-closed-interpreter", "python")

// copyBinary copies the test binary (the fake launcher) into a new folder
// of the given mode.
func copyBinary(t testing.TB, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kb-runas-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "launcher.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// A worker running as root with no run-as settings runs each kernel
// under a uid of its own; a launcher or kernelspec interpreter such a uid
// cannot reach fails
// the start with a 500 saying what to open; --run-as-gateway-user keeps
// the worker's account and excludes naming accounts.
func TestRunAsDefaultAccount(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: the default account applies to a worker running as root")
	}
	if err := os.MkdirAll(filepath.Dir(closedInterpreter), 0o700); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Dir(closedInterpreter), 0o700)
	if err := os.WriteFile(closedInterpreter, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ra, err := local.ParseRunAs(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	be, err := local.NewRunAs(copyBinary(t, 0o755), ra, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e := setupWith(t, be)
	start := func(id, spec string) *broker.Kernel {
		now := time.Now().UTC()
		e.submit(t, &broker.Kernel{ID: id, Spec: spec, RM: broker.RMLocal, User: "alice", State: broker.StateRequested,
			Created: now, Deadline: now.Add(20 * time.Second), Env: map[string]string{"FAKE": "connfile"}})
		e.killAtCleanup(t, id)
		return e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning || k.State.Terminal() })
	}
	k := start("00000000-0000-4000-8000-0000000000d1", "fake")
	if k.State != broker.StateRunning {
		t.Fatalf("kernel did not run: %s %q", k.State, k.Reason)
	}
	if uid := jstest.ProcUID(t, jstest.HandlePID(t, k)); uid < int(local.DefaultRange.First) || uid > int(local.DefaultRange.Last) {
		t.Fatalf("launcher runs as uid %d, want one of %s", uid, local.DefaultRange)
	}
	k = start("00000000-0000-4000-8000-0000000000d2", "closed")
	if k.State != broker.StateFailed || (k.FailStatus != 0 && k.FailStatus != 500) || !strings.Contains(k.Reason, "cannot run as account kb") ||
		!strings.Contains(k.Reason, "closed to account kb") || !strings.Contains(k.Reason, "chmod o+x") {
		t.Fatalf("closed interpreter: want failed 500 saying what to open, got %s %d %q", k.State, k.FailStatus, k.Reason)
	}

	// A launcher in a folder a kernel's uid cannot enter.
	be2, err := local.NewRunAs(copyBinary(t, 0o700), local.RunAs{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e2 := setupWith(t, be2)
	now := time.Now().UTC()
	id := "00000000-0000-4000-8000-0000000000d3"
	e2.submit(t, &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, State: broker.StateRequested,
		Created: now, Deadline: now.Add(20 * time.Second), Env: map[string]string{"FAKE": "connfile"}})
	e2.killAtCleanup(t, id)
	k = e2.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning || k.State.Terminal() })
	if k.State != broker.StateFailed || (k.FailStatus != 0 && k.FailStatus != 500) || !strings.Contains(k.Reason, "launcher cannot run as account kb") {
		t.Fatalf("closed launcher: want failed 500 naming the launcher, got %s %d %q", k.State, k.FailStatus, k.Reason)
	}

	if _, err := local.NewRunAs(copyBinary(t, 0o755), mustRunAs(t, map[string]string{local.OptRunAsSelf: "true", local.OptRunAs: "nobody"}), zerolog.Nop()); err == nil {
		t.Fatal("run_as_gateway_user with run_as accepted")
	}
	if _, err := local.NewRunAs(copyBinary(t, 0o755), mustRunAs(t, map[string]string{local.OptRunAsSelf: "true"}), zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
}

func mustRunAs(t *testing.T, opts map[string]string) local.RunAs {
	t.Helper()
	ra, err := local.ParseRunAs(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ra
}

// runProbeAs runs the test binary as bare uid (and gid) id, as a kernel
// under a uid of its own runs: no passwd entry, no supplementary groups.
func runProbeAs(t *testing.T, bin string, id uint32, what, arg string) int {
	t.Helper()
	return probeAs(t, bin, &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}, fmt.Sprint("uid ", id), what, arg)
}

// The scan of ids in use reads a process's status once and keeps it while
// the process keeps its pid and effective ids: a process it saw as root
// that then takes an id of the range (as a launcher does between fork and
// exec) counts at the next scan, and a process that ended frees its id.
func TestIDsInUseSeesProcessesThatChangeIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: the test moves a process to another uid")
	}
	scan := local.IDsInUse()
	r := local.DefaultRange
	busy := scan(r)
	id := r.First + uint32(rand.IntN(int(r.Last-r.First)))
	for busy[id] {
		id++
	}
	cmd := exec.Command(os.Args[0], "--probe-become", strconv.FormatUint(uint64(id), 10))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if scan(r)[id] {
		t.Fatalf("id %d busy before any process took it", id)
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("the process did not take uid %d: %q %v", id, line, err)
	}
	if !scan(r)[id] {
		t.Fatalf("id %d held by pid %d is not busy: the scan kept what it read while the process was root", id, cmd.Process.Pid)
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if scan(r)[id] {
		t.Fatalf("id %d still busy after its process ended", id)
	}
}

// Under a root worker's defaults two kernels get two uids of the range,
// neither an account's; each has a private home (0700, its uid's) holding
// its temp files and so its connection file; neither kernel can read the
// other's connection file, list the other's home or signal the other; the
// home goes and the id is free again when the kernel ends. A second
// worker (as after a restart) with the same range never hands out an id a
// live kernel holds, and refuses with a 403 once every id is taken.
func TestRunAsRangeKeepsKernelsApart(t *testing.T) {
	if os.Geteuid() != 0 {
		jstest.MissingSetup(t, "needs root: uids of their own are for a worker running as root")
	}
	bin := copyBinary(t, 0o755)
	be, err := local.NewRunAs(bin, local.RunAs{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e := setupWith(t, be)
	start := func(e *env, id string) *broker.Kernel {
		now := time.Now().UTC()
		e.submit(t, &broker.Kernel{ID: id, Spec: "fake", RM: broker.RMLocal, User: "alice", State: broker.StateRequested,
			Created: now, Deadline: now.Add(20 * time.Second), Env: map[string]string{"FAKE": "connfile"}})
		e.killAtCleanup(t, id)
		return e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning || k.State.Terminal() })
	}
	type kern struct {
		k         *broker.Kernel
		pid       int
		uid       uint32
		home, cfg string
	}
	run := func(e *env) kern {
		t.Helper()
		id := uuid.NewString()
		k := start(e, id)
		if k.State != broker.StateRunning {
			t.Fatalf("kernel did not run: %s %q", k.State, k.Reason)
		}
		pid := jstest.HandlePID(t, k)
		uid := uint32(jstest.ProcUID(t, pid))
		var h struct {
			UID  uint32
			Home string
		}
		if err := json.Unmarshal(k.Handle, &h); err != nil || h.UID != uid || filepath.Dir(h.Home) != local.HomesDir() {
			t.Fatalf("handle %s: want uid %d and a home in %s", k.Handle, uid, local.HomesDir())
		}
		var files []string
		jstest.WaitFor(t, 10*time.Second, "the connection file in the kernel's home", func() bool {
			files, _ = filepath.Glob(filepath.Join(h.Home, "kernelbus-"+id+"-*", "kernel-"+id+".json"))
			return len(files) == 1
		})
		return kern{k, pid, uid, h.Home, files[0]}
	}
	a, b := run(e), run(e)
	for _, k := range []kern{a, b} {
		if k.uid < local.DefaultRange.First || k.uid > local.DefaultRange.Last {
			t.Errorf("uid %d is outside %s", k.uid, local.DefaultRange)
		}
		if _, err := user.LookupId(strconv.Itoa(int(k.uid))); err == nil {
			t.Errorf("uid %d is an account's", k.uid)
		}
		fi, err := os.Stat(k.home)
		if err != nil || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != k.uid {
			t.Errorf("home %s: %v %v, want 0700 and uid %d's", k.home, fi.Mode(), err, k.uid)
		}
	}
	if a.uid == b.uid {
		t.Fatalf("two kernels share uid %d", a.uid)
	}
	if runProbeAs(t, bin, a.uid, "--probe-read", a.cfg) != 0 || runProbeAs(t, bin, b.uid, "--probe-read", b.cfg) != 0 {
		t.Fatal("a kernel cannot read its own connection file")
	}
	if runProbeAs(t, bin, a.uid, "--probe-read", b.cfg) != 13 || runProbeAs(t, bin, b.uid, "--probe-read", a.cfg) != 13 {
		t.Fatal("one kernel can read the other's connection file")
	}
	if runProbeAs(t, bin, a.uid, "--probe-read", fmt.Sprintf("/proc/%d/environ", b.pid)) != 13 {
		t.Fatal("one kernel can read the other's environment")
	}
	if runProbeAs(t, bin, a.uid, "--probe-signal", strconv.Itoa(b.pid)) != 13 || runProbeAs(t, bin, b.uid, "--probe-signal", strconv.Itoa(a.pid)) != 13 {
		t.Fatal("one kernel can signal the other")
	}
	if runProbeAs(t, bin, a.uid, "--probe-signal", strconv.Itoa(os.Getpid())) != 13 {
		t.Fatal("a kernel can signal the worker")
	}

	// The kernel ends: its home goes.
	if err := syscall.Kill(-a.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	jstest.WaitFor(t, 15*time.Second, "kernel A's home removed", func() bool {
		_, err := os.Stat(a.home)
		return errors.Is(err, fs.ErrNotExist)
	})

	// A second worker of the same host with a range of two ids, one held
	// by B's live kernel: it gets the other, then has none left.
	known := func(id uint32) bool {
		_, err1 := user.LookupId(strconv.Itoa(int(id)))
		_, err2 := user.LookupGroupId(strconv.Itoa(int(id)))
		return err1 == nil || err2 == nil
	}
	r, free := local.IDRange{First: b.uid - 1, Last: b.uid}, b.uid-1
	if known(free) {
		r, free = local.IDRange{First: b.uid, Last: b.uid + 1}, b.uid+1
		if known(free) {
			t.Skipf("the ids next to B's %d are accounts'", b.uid)
		}
	}
	be2, err := local.NewRunAs(bin, local.RunAs{Range: r}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e2 := setupWith(t, be2)
	c := run(e2)
	if c.uid != free {
		t.Fatalf("second worker gave uid %d, want %d (B holds %d)", c.uid, free, b.uid)
	}
	k := start(e2, uuid.NewString())
	if k.State != broker.StateFailed || k.FailStatus != 403 || !strings.Contains(k.Reason, "every uid of the range") || len(k.Handle) > 0 {
		t.Fatalf("a full range: want a failed start saying so, got %s %d %q", k.State, k.FailStatus, k.Reason)
	}
}
