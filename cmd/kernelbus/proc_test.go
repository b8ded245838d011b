package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// proc is a kernelbus child process logging (JSON lines) to a file.
type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// startProc runs bin with args, output appended to logPath, in a process
// group of its own that cleanup ends (SIGTERM, then SIGKILL for the group:
// launchers a failed test leaves must go too). It returns once the log has
// a line whose message is msg, and that line's field: the address the
// process bound. Processes listen on port 0 and say where; a free port
// picked beforehand could be taken by another test before they bind it.
func startProc(t *testing.T, bin string, args []string, logPath, msg, field string) (*proc, string) {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := f.Seek(0, 2) // a restart appends: read only its own lines
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	var val string
	jstest.WaitForNil(t, 60*time.Second, func() error {
		p.failIfExited(t)
		v, err := jstest.LogField(logPath, start, msg, field)
		val = v
		return err
	})
	return p, val
}

// failIfExited fails the test, with the log, once the process has ended.
func (p *proc) failIfExited(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		log, _ := os.ReadFile(p.logPath)
		t.Fatalf("%s exited:\n%s", p.cmd.Path, log)
	default:
	}
}

// stop ends the process: SIGTERM, then SIGKILL after a minute.
func (p *proc) stop() {
	jstest.Stop(p.cmd.Process.Pid, p.done, 60*time.Second)
}

// serveEnv is what a test of a `kernelbus serve` process with real kernels
// needs: a data folder, a log shown when the test fails, and serve's
// arguments for the Python venv's kernelspecs and the launcher under test
// (the venv's python first on PATH).
type serveEnv struct {
	bin, data, logPath string
	// specs is the venv's kernelspec folder, already in args.
	specs string
	args  []string
}

func newServeEnv(t *testing.T) serveEnv {
	t.Helper()
	bin := jstest.KernelbusBin(t)
	py := jstest.Python(t)
	dir := t.TempDir()
	specs := filepath.Join(filepath.Dir(filepath.Dir(py)), "share", "jupyter", "kernels")
	e := serveEnv{bin: bin, data: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "serve.log"), specs: specs,
		args: withLauncher([]string{"--kernelspec-dir", specs})}
	t.Setenv("PATH", filepath.Dir(py)+":"+os.Getenv("PATH"))
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(e.logPath)
			t.Logf("serve log:\n%s", log)
		}
	})
	return e
}

// withLauncher adds the launcher under test ($KERNELBUS_LAUNCHER_BIN, when
// set) to the arguments of serve or worker; without it they find
// kernelbus-launcher beside themselves.
func withLauncher(args []string) []string {
	if l := os.Getenv("KERNELBUS_LAUNCHER_BIN"); l != "" {
		return append(args, "--launcher", l)
	}
	return args
}
