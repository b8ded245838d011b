package main

import (
	"bufio"
	"context"
	"debug/elf"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// proc is a server process the bench started: a gateway.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

// startProc starts argv with env added to the bench's environment, its
// output in logDir/<name>.log, in its own process group.
func startProc(name, logDir string, env []string, argv ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.exited) }()
	return p, nil
}

// waitHTTP polls url until it answers 200, the process exits or ctx ends.
func (p *proc) waitHTTP(ctx context.Context, url string) error {
	return p.poll(ctx, "answer "+url, func() bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// loggedURL waits for the JSON log line whose message is msg (kernelbus's
// "serving" line, written once it listens) and returns its url field
// without the trailing slash: kernelbus listens on port 0 and says where,
// so no port is picked ahead and lost to another process.
func (p *proc) loggedURL(ctx context.Context, msg string) (string, error) {
	var url string
	err := p.poll(ctx, "log "+msg, func() bool {
		u, err := jstest.LogField(p.log, 0, msg, "url")
		url = strings.TrimSuffix(u, "/")
		return err == nil
	})
	return url, err
}

// poll calls cond, backing off up to 200 ms, until it holds, the process
// exits or ctx ends.
func (p *proc) poll(ctx context.Context, what string, cond func() bool) error {
	backoff := 10 * time.Millisecond
	for !cond() {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it would %s (log: %s)", p.name, what, p.log)
		case <-ctx.Done():
			return fmt.Errorf("%s did not %s: %w (log: %s)", p.name, what, ctx.Err(), p.log)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
	return nil
}

// stop sends SIGTERM, waits, then kills the group and every process left
// below it (kernels a gateway failed to stop).
func (p *proc) stop(grace time.Duration) {
	pid := p.cmd.Process.Pid
	tree := descendants(pid)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.exited
	}
	// Kernels and launchers run in process groups of their own.
	for _, d := range append(tree, descendants(pid)...) {
		if alive(d) {
			_ = syscall.Kill(-d, syscall.SIGKILL)
			_ = syscall.Kill(d, syscall.SIGKILL)
		}
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// signal sends sig to the process itself (not its group).
func (p *proc) signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// children maps each pid to its children, from /proc.
func children() map[int][]int {
	out := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces; fields resume after ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out[ppid] = append(out[ppid], pid)
	}
	return out
}

// descendants lists every process below pid.
func descendants(pid int) []int {
	kids := children()
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range kids[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// memKB returns a process's RSS and PSS in KiB (PSS shares pages such as a
// binary's text among the processes mapping them: the fair per-process
// cost when a thousand copies run).
func memKB(pid int) (rss, pss int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}

// comm is a process's command name.
func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on every
// Linux this runs on).
const clockTicks = 100

// cpuSeconds is a process's user plus system CPU time so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTicks
}

// dynamicallyLinked reports whether the ELF binary at path asks for a
// dynamic loader.
func dynamicallyLinked(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}
