package jstest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// Stop ends a child process: SIGTERM, then SIGKILL when done is not
// closed within grace. pid is as kill(2) takes it: a process, or with a
// minus sign the process group it leads (started with Setpgid), so that
// what it started goes too. It reports whether it had to kill.
func Stop(pid int, done <-chan struct{}, grace time.Duration) (killed bool) {
	select {
	case <-done:
		return false
	default:
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
		return false
	case <-time.After(grace):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-done
		return true
	}
}

// Tail is the last n lines of s: the end of a log a failed test shows.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ProcUID is the real uid of process pid, from /proc.
func ProcUID(t testing.TB, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			if n, err := strconv.Atoi(f[1]); err == nil {
				return n
			}
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return 0
}

// OSUser is the OS account name, made for the test (system account, no
// home, no login shell) and removed afterwards unless it existed before.
// Making accounts needs root: without it the set-up is missing.
func OSUser(t testing.TB, name string) *user.User {
	t.Helper()
	if u, err := user.Lookup(name); err == nil {
		return u
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		MissingSetup(t, fmt.Sprintf("cannot create OS user %s (useradd: %v %s)", name, err, out))
	}
	t.Cleanup(func() { _ = exec.Command("userdel", "-f", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// HandlePID is the launcher's pid in the handle of a kernel that a local
// or ssh worker started ({"pid": N}); the test fails when there is none.
func HandlePID(t testing.TB, k *broker.Kernel) int {
	t.Helper()
	var h struct{ PID int }
	if err := json.Unmarshal(k.Handle, &h); err != nil || h.PID == 0 {
		t.Fatalf("no pid in handle %s", k.Handle)
	}
	return h.PID
}
