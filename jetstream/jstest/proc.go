package jstest

import (
	"strings"
	"syscall"
	"time"
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
