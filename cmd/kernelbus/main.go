// Command kernelbus is the gateway: `serve` runs everything in one process
// with an embedded NATS; `frontend` and `worker` run the parts separately
// against an existing NATS cluster.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	stop := profileCPU(os.Getenv("KB_CPUPROFILE"))
	profileHeapOnSignal(os.Getenv("KB_HEAPPROFILE"))
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// profileCPU writes a CPU profile of the whole run to path (the benchmark's
// way of finding where a start's time goes); "" profiles nothing.
func profileCPU(path string) func() {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// profileHeapOnSignal writes a heap profile to path.1, path.2, ... each
// time the process gets SIGUSR1 (kernelbus-bench sends it at the end of a
// many-kernels load: how serve's memory under load was found); ""
// installs nothing, and SIGUSR1 keeps its default action.
func profileHeapOnSignal(path string) {
	if path == "" {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for n := 1; ; n++ {
			<-ch
			if f, err := os.Create(fmt.Sprintf("%s.%d", path, n)); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 1) // text: with runtime.MemStats at the end
				f.Close()
			}
		}
	}()
}

// stdin is what commands read input from (tests replace it).
var stdin io.Reader = os.Stdin

const usage = `kernelbus: a Jupyter kernel gateway on a NATS JetStream bus

Usage:
  kernelbus serve     [flags]   all in one: embedded NATS, front-end, local workers
  kernelbus frontend  [flags]   the Jupyter gateway API on an existing NATS
  kernelbus worker    [flags]   a worker pool of one resource manager on an existing NATS
  kernelbus events    [flags]   replay the audit log of kernel lifecycle events
  kernelbus kernels   list|show|interrupt|restart|delete [ID...] [flags]
                                operate kernels through a front-end's REST API
  kernelbus users     add|token|passwd|list|remove   manage a users file
  kernelbus nats-auth init [flags]  credentials and TLS files for your own NATS cluster
  kernelbus version

Run 'kernelbus <command> -h' for the flags of a command. Every flag can also
be set in the environment as KB_<FLAG> (dashes become underscores).
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(args[1:], stderr)
	case "frontend":
		err = cmdFrontend(args[1:], stderr)
	case "worker":
		err = cmdWorker(args[1:], stderr)
	case "events":
		err = cmdEvents(args[1:], stdout, stderr)
	case "kernels":
		err = cmdKernels(args[1:], stdout, stderr)
	case "users":
		err = cmdUsers(args[1:], stdin, stdout, stderr)
	case "nats-auth":
		err = cmdNATSAuth(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "kernelbus", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kernelbus: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if err == errUsage {
			return 2
		}
		if err == errHelp {
			return 0
		}
		fmt.Fprintln(stderr, "kernelbus:", err)
		return 1
	}
	return 0
}
