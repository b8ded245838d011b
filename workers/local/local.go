// Package local runs launchers as child processes of the worker, each in
// its own process group so that signals reach the kernel and the worker can
// die without taking kernels with it.
package local

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// Name is the resource manager's name.
const Name = broker.RMLocal

// handle is the saved form of a local launcher. StartTime guards against a
// recycled pid: a process with the same pid but another start time is not
// ours.
type handle struct {
	V         int    `json:"v"`
	PID       int    `json:"pid"`
	PGID      int    `json:"pgid"`
	StartTime string `json:"start_time,omitempty"`
	// UID and Home are set for a kernel run under a uid of its own
	// (RunAs.Range): Stop removes the home even after a worker restart.
	UID  uint32 `json:"uid,omitempty"`
	Home string `json:"home,omitempty"`
}

// Backend starts launchers on this machine.
type Backend struct {
	launcher string
	host     string
	log      zerolog.Logger
	runAs    RunAs
	fixed    *account // RunAs.User's

	mu       sync.Mutex
	children map[int]*child  // launchers this process started
	ids      map[uint32]bool // RunAs.Range ids of live launchers
	scans    procScans       // /proc scans for RunAs.Range ids in use
}

type child struct {
	done   chan struct{}
	reason string
	tail   *tail
}

// Register adds the local backend to r.
func Register(r *workers.Registry, log zerolog.Logger) {
	r.Register(Name, func(cfg workers.BackendConfig) (workers.Backend, error) {
		ra, err := ParseRunAs(cfg.Options)
		if err != nil {
			return nil, err
		}
		return NewRunAs(cfg.LauncherPath, ra, log)
	})
}

// New checks that the launcher binary exists.
func New(launcher string, log zerolog.Logger) (*Backend, error) {
	if launcher == "" {
		return nil, errors.New("local: the path of kernelbus-launcher is required")
	}
	if _, err := os.Stat(launcher); err != nil {
		return nil, fmt.Errorf("local: launcher binary: %w", err)
	}
	host, _ := os.Hostname()
	return &Backend{launcher: launcher, host: host, log: log, children: map[int]*child{}, ids: map[uint32]bool{}}, nil
}

// NewRunAs is New with kernels run as the OS accounts ra names.
func NewRunAs(launcher string, ra RunAs, log zerolog.Logger) (*Backend, error) {
	b, err := New(launcher, log)
	if err != nil {
		return nil, err
	}
	ra = ra.defaults(os.Geteuid())
	if b.fixed, err = checkRunAs(ra); err != nil {
		return nil, err
	}
	b.runAs = ra
	switch {
	case ra.Self && os.Geteuid() == 0:
		log.Warn().Msg("LOCAL KERNELS RUN AS ROOT (--run-as-gateway-user): any kernel can read the bus data folder and its keys, every other kernel's files, and signal the gateway; use it only where every kernel is trusted code")
	case os.Geteuid() != 0:
		log.Info().Msg("local kernels run as the worker's own account (it is not root and cannot switch users): they are trusted code that can read the bus data folder")
	default:
		log.Info().Str("run_as", ra.User).Strs("run_as_owners", ra.Owners).Stringer("run_as_range", ra.Range).Msg("local kernels run as unprivileged accounts")
	}
	return b, nil
}

func (b *Backend) Name() string { return Name }

// What the local backend offers beyond workers.Backend.
var (
	_ workers.Backend  = (*Backend)(nil)
	_ workers.Signaler = (*Backend)(nil)
)

// baseEnv is what the launcher inherits from the worker: enough to find
// programs and write temp files, never the worker's whole environment.
var baseEnv = []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR", "SHELL"}

// Start runs the launcher with cfg on its stdin.
func (b *Backend) Start(ctx context.Context, cfg *broker.LaunchConfig) (workers.Handle, error) {
	acct, err := b.accountFor(cfg)
	if err != nil {
		return workers.Handle{}, err
	}
	started := false
	defer func() {
		if !started {
			b.releaseID(acct)
		}
	}()
	enc, err := cfg.Encode()
	if err != nil {
		return workers.Handle{}, err
	}
	// The config (with the kernel's bus credentials) goes through a pipe
	// on stdin: an environment variable would stay readable in
	// /proc/<pid>/environ.
	cmd := exec.Command(b.launcher, "--config=-")
	for _, k := range baseEnv {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = strings.NewReader(enc + "\n")
	if cfg.WorkDir != "" {
		cmd.Dir = cfg.WorkDir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if acct != nil {
		cmd.Env, cmd.Dir = asAccount(cmd.SysProcAttr, cmd.Env, cmd.Dir, acct)
		if err := b.checkReachable(cfg, cmd.Env, acct); err != nil {
			return workers.Handle{}, err
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return workers.Handle{}, err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return workers.Handle{}, fmt.Errorf("start launcher: %w", err)
	}
	started = true
	pid := cmd.Process.Pid
	c := &child{done: make(chan struct{}), tail: newTail(20)}
	b.mu.Lock()
	b.children[pid] = c
	b.mu.Unlock()
	log := b.log.With().Str("kernel_id", cfg.KernelID).Int("launcher_pid", pid).Logger()
	go func() {
		// Relay the launcher's log lines (they are JSON from zerolog) and
		// keep the last ones for the failure reason.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.tail.add(line) // made readable only if a failure reason needs it
			log.Debug().Str("launcher", line).Msg("")
		}
		_, _ = io.Copy(io.Discard, stderr)
		err := cmd.Wait()
		b.releaseID(acct)
		c.reason = exitReason(err) + lastLines(c.tail)
		close(c.done)
		log.Info().Str("exit", exitReason(err)).Msg("launcher exited")
		// Keep the entry a while for Poll, then forget it.
		time.AfterFunc(10*time.Minute, func() {
			b.mu.Lock()
			delete(b.children, pid)
			b.mu.Unlock()
		})
	}()
	h := handle{V: 1, PID: pid, PGID: pid, StartTime: procStartTime(pid)}
	if acct != nil && acct.private {
		h.UID, h.Home = acct.cred.Uid, acct.home
	}
	data, _ := json.Marshal(h)
	return workers.Handle{Host: b.host, Data: data}, nil
}

func parse(h workers.Handle) (handle, error) {
	var lh handle
	if err := json.Unmarshal(h.Data, &lh); err != nil || lh.PID <= 0 {
		return lh, fmt.Errorf("local: bad handle %s", h.Data)
	}
	return lh, nil
}

// Poll reports whether the launcher is alive. For launchers this process
// started it also knows how they exited.
func (b *Backend) Poll(ctx context.Context, h workers.Handle) (workers.Status, error) {
	lh, err := parse(h)
	if err != nil {
		return workers.Status{}, err
	}
	b.mu.Lock()
	c := b.children[lh.PID]
	b.mu.Unlock()
	if c != nil {
		select {
		case <-c.done:
			return workers.Status{Exited: true, Reason: c.reason}, nil
		default:
			return workers.Status{Running: true}, nil
		}
	}
	if alive(lh) {
		return workers.Status{Running: true}, nil
	}
	// Started by an earlier worker process: its home is ours to clear.
	removeHome(lh.Home)
	return workers.Status{Exited: true, Reason: "the launcher process is gone"}, nil
}

// Signal sends sig to the launcher's process group (which holds the kernel).
func (b *Backend) Signal(ctx context.Context, h workers.Handle, sig syscall.Signal) error {
	lh, err := parse(h)
	if err != nil {
		return err
	}
	if !alive(lh) {
		return nil
	}
	if err := syscall.Kill(-lh.PGID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// Stop sends SIGTERM to the group (the launcher then shuts the kernel down
// politely), and SIGKILL to the group after grace.
func (b *Backend) Stop(ctx context.Context, h workers.Handle, grace time.Duration) error {
	lh, err := parse(h)
	if err != nil {
		return err
	}
	b.mu.Lock()
	ours := b.children[lh.PID] != nil
	b.mu.Unlock()
	if !ours {
		// Started by an earlier worker process: its home is ours to
		// clear once the kernel is gone (ours clear theirs on exit).
		defer removeHome(lh.Home)
	}
	if !alive(lh) {
		return nil
	}
	_ = syscall.Kill(-lh.PGID, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(lh) && !groupAlive(lh.PGID) {
			return nil
		}
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-time.After(50 * time.Millisecond):
		}
	}
	_ = syscall.Kill(-lh.PGID, syscall.SIGKILL)
	return nil
}

// alive reports whether the handle's process still exists and is the same
// process (same start time).
func alive(lh handle) bool {
	if err := syscall.Kill(lh.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if lh.StartTime != "" {
		if st := procStartTime(lh.PID); st != "" && st != lh.StartTime {
			return false
		}
	}
	// A zombie child of ours counts as gone.
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", lh.PID)); err == nil {
		if f := statFields(string(data)); len(f) > 0 && f[0] == "Z" {
			return false
		}
	}
	return true
}

func groupAlive(pgid int) bool {
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// procStartTime is field 22 of /proc/<pid>/stat: the start time in clock
// ticks since boot. Empty where /proc is not available.
func procStartTime(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	f := statFields(string(data))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// statFields returns the fields of /proc/<pid>/stat after the command name
// (which may contain spaces): state is [0], start time is [19].
func statFields(s string) []string {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exit code %d", ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit code 0"
}

func lastLines(t *tail) string {
	lines := t.lines()
	if len(lines) == 0 {
		return ""
	}
	for i, l := range lines {
		lines[i] = readableLogLine(l)
	}
	return "; last launcher output: " + strings.Join(lines, " | ")
}

// readableLogLine turns one of the launcher's JSON log lines into
// "message: error" for a failure reason users read; other lines pass as
// they are.
func readableLogLine(line string) string {
	var l struct {
		Level   string `json:"level"`
		Message string `json:"message"`
		Error   string `json:"error"`
	}
	if json.Unmarshal([]byte(line), &l) != nil || l.Message == "" {
		return line
	}
	if l.Error != "" {
		return l.Level + ": " + l.Message + ": " + l.Error
	}
	return l.Level + ": " + l.Message
}

// tail keeps the last n lines written to it.
type tail struct {
	mu  sync.Mutex
	buf []string
	n   int
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) == t.n {
		copy(t.buf, t.buf[1:])
		t.buf = t.buf[:t.n-1]
	}
	t.buf = append(t.buf, s)
}

func (t *tail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.buf...)
}
