package launcher

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// baseEnv names the launcher's own variables a kernel inherits; everything
// else comes from LaunchConfig.Env, which the worker built under policy.
var baseEnv = []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR", "SHELL"}

// kernelEnv is the kernel's environment: the base set from the launcher's
// environment, overlaid with env. KB_* variables never reach a kernel: they
// carry bus credentials.
func kernelEnv(env map[string]string) []string {
	m := make(map[string]string, len(baseEnv)+len(env))
	for _, k := range baseEnv {
		if v, ok := os.LookupEnv(k); ok {
			m[k] = v
		}
	}
	for k, v := range env {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		if strings.HasPrefix(k, "KB_") || k == "" || strings.ContainsRune(k, '=') {
			continue
		}
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// lookPath resolves a bare command name against the kernel's PATH rather
// than the launcher's, since the spec's env may set its own.
func lookPath(name string, env []string) (string, error) {
	if strings.ContainsRune(name, '/') {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable not found in the kernel's PATH (%s)", name, path)
}

// stderrLines is how many of the kernel's last stderr lines a failure
// report quotes.
const stderrLines = 50

// lineRing keeps the last lines written to it.
type lineRing struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

func newLineRing(n int) *lineRing { return &lineRing{lines: make([]string, n)} }

func (r *lineRing) add(line string) {
	r.mu.Lock()
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	if r.next == 0 {
		r.full = true
	}
	r.mu.Unlock()
}

// tail returns the kept lines, oldest first, joined by newlines and cut to
// at most max bytes from the end.
func (r *lineRing) tail(max int) string {
	r.mu.Lock()
	var out []string
	if r.full {
		out = append(out, r.lines[r.next:]...)
	}
	out = append(out, r.lines[:r.next]...)
	r.mu.Unlock()
	s := strings.Join(out, "\n")
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	return s
}

// process is one run of the kernel process.
type process struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	stderr  *lineRing
	// done is closed once the process has exited and been reaped; state
	// and err are valid then.
	done  chan struct{}
	state *os.ProcessState
	err   error
	ended time.Time
	// pipes is done when both output readers hit EOF, so that a failure
	// report quotes every line the kernel wrote before it died.
	pipes sync.WaitGroup
	rpipe []*os.File
}

// startProcess starts argv in its own process group, so that signals and
// kills reach everything the kernel spawned.
func startProcess(argv, env []string, dir string, log zerolog.Logger) (*process, error) {
	bin, err := lookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := &exec.Cmd{Path: bin, Args: argv, Env: env, Dir: dir, Stdout: outW, Stderr: errW}
	cmd.SysProcAttr = sysProcAttr()
	p := &process{cmd: cmd, stderr: newLineRing(stderrLines), done: make(chan struct{}), rpipe: []*os.File{outR, errR}}
	// Plain *os.File outputs let Wait return as soon as the kernel exits,
	// even if a grandchild keeps the pipes open; our own readers drain them.
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start kernel %s: %w", argv[0], err)
	}
	p.pid = cmd.Process.Pid
	p.started = time.Now()
	log = log.With().Int("pid", p.pid).Logger()
	p.pipes.Add(2)
	go p.readLines(outR, "stdout", nil, log)
	go p.readLines(errR, "stderr", p.stderr, log)
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		p.ended = time.Now()
		close(p.done)
	}()
	return p, nil
}

// readLines logs each line the kernel writes (the kernel's own process
// output, not notebook output, which goes over iopub) and keeps stderr's
// tail for failure reports.
func (p *process) readLines(r *os.File, stream string, ring *lineRing, log zerolog.Logger) {
	defer p.pipes.Done()
	defer r.Close()
	br := bufio.NewReaderSize(r, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			s := strings.TrimRight(string(line), "\r\n")
			if ring != nil {
				ring.add(s)
			}
			log.Info().Str("stream", stream).Msg(s)
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				continue // an overlong line is reported in pieces
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				log.Debug().Err(err).Str("stream", stream).Msg("kernel output pipe")
			}
			return
		}
	}
}

// exited reports whether the process has exited.
func (p *process) exited() bool { return isClosed(p.done) }

// signal sends sig to the kernel's whole process group. ESRCH (nothing
// left) is not an error.
func (p *process) signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// wait waits up to d for the process to exit.
func (p *process) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// kill ends the process group for good and reaps the leader.
func (p *process) kill() {
	_ = p.signal(syscall.SIGKILL)
	<-p.done
	// Members of the group may outlive the leader; the group id stays
	// valid while any of them lives.
	_ = p.signal(syscall.SIGKILL)
}

// closePipes stops the output readers, for when a grandchild holds the
// pipes open after the kernel is gone.
func (p *process) closePipes(grace time.Duration) {
	ch := make(chan struct{})
	go func() { p.pipes.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(grace):
		for _, f := range p.rpipe {
			f.Close()
		}
		<-ch
	}
}

// stderrTail returns the last stderr lines once the readers caught up
// (bounded: a grandchild may keep the pipe open).
func (p *process) stderrTail() string {
	ch := make(chan struct{})
	go func() { p.pipes.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(time.Second):
	}
	return p.stderr.tail(4 << 10)
}

// exitDescription says how the process ended: "exited with code 3" or
// "was killed by signal 9 (killed)". Valid once done is closed.
func (p *process) exitDescription() string {
	if p.state == nil {
		if p.err != nil {
			return "ended: " + p.err.Error()
		}
		return "ended"
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("was killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("exited with code %d", p.state.ExitCode())
}

// uptime is how long the process ran (so far).
func (p *process) uptime() time.Duration {
	if p.exited() {
		return p.ended.Sub(p.started)
	}
	return time.Since(p.started)
}

// usableHome points the kernel's HOME at dir (the launcher's private
// folder) when the HOME it would get is not a folder it can write: an
// account like nobody has /nonexistent, and IPython, Jupyter and
// matplotlib keep their state under HOME.
func usableHome(env []string, dir string) []string {
	for i, kv := range env {
		if home, ok := strings.CutPrefix(kv, "HOME="); ok {
			if home != "" && syscall.Access(home, 0o2|0o1) == nil {
				return env
			}
			out := append([]string(nil), env...)
			out[i] = "HOME=" + dir
			return out
		}
	}
	return append(env, "HOME="+dir)
}
