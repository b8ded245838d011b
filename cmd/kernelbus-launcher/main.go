// Command kernelbus-launcher runs one kernel beside the bus: a worker
// starts it with `--config=-` and the kernel's LaunchConfig on stdin (or,
// where a resource manager can only pass environment, in KB_LAUNCH_CONFIG). It is built
// static (CGO_ENABLED=0) so that it can be copied to any node.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/launcher"
	"github.com/kernelbus/kernelbus/workers/envs"
	"github.com/rs/zerolog"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println("kernelbus-launcher", version)
		return 0
	}
	if len(os.Args) > 1 && os.Args[1] == "unpack-env" {
		return unpackEnv(os.Args[2:])
	}
	launcher.UnpackEnv = envs.UnpackInto
	log := newLogger()
	// Nothing of this process may be read by the kernel it starts (the
	// same OS user): no /proc/<pid>/environ, mem or ptrace. The kernel,
	// an exec'd program, is dumpable again.
	if err := launcher.NotDumpable(); err != nil {
		log.Warn().Err(err).Msg("could not make the launcher non-dumpable")
	}
	raw, ok := os.LookupEnv(broker.EnvLaunchConfig)
	if !ok && len(os.Args) > 1 && os.Args[1] == "--config=-" {
		// The config comes on stdin (a pipe), so it is in no
		// environment at all.
		line, err := bufio.NewReaderSize(os.Stdin, 64<<10).ReadString('\n')
		if err != nil && line == "" {
			log.Error().Err(err).Msg("no launch configuration on stdin")
			return 2
		}
		raw, ok = strings.TrimSpace(line), true
	}
	// Every KB_* variable goes before anything else runs: they carry bus
	// credentials, and nothing this process starts may inherit them.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "KB_") {
			_ = os.Unsetenv(k)
		}
	}
	if !ok {
		log.Error().Msgf("no launch configuration (--config=- on stdin, or %s): kernelbus-launcher is started by a kernelbus worker", broker.EnvLaunchConfig)
		return 2
	}
	cfg, err := broker.DecodeLaunchConfig(raw)
	if err != nil {
		log.Error().Err(err).Msg("bad launch config")
		return 2
	}
	// SIGTERM and SIGINT mean "shut the kernel down"; the launcher never
	// exits leaving its kernel behind.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The launcher outlives whoever started it: when a worker dies, the
	// pipe of our stderr breaks, and Go's default would let the next log
	// line kill the launcher (and its kernel) with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	if err := launcher.Run(ctx, cfg, log); err != nil {
		if errors.Is(err, launcher.ErrSuperseded) {
			log.Info().Str("kernel_id", cfg.KernelID).Msg(err.Error())
			return 0
		}
		var se *launcher.StartError
		if !errors.As(err, &se) {
			log.Error().Err(err).Str("kernel_id", cfg.KernelID).Msg("launcher failed")
		}
		return 1
	}
	return 0
}

// newLogger logs JSON to stderr, or readable lines when stderr is a
// terminal. KB_LOG_LEVEL (debug, info, warn, error) sets the level.
func newLogger() zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	var w = zerolog.New(os.Stderr)
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		w = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"})
	}
	level := zerolog.InfoLevel
	if s := os.Getenv("KB_LOG_LEVEL"); s != "" {
		if l, err := zerolog.ParseLevel(s); err == nil {
			level = l
		} else {
			fmt.Fprintf(os.Stderr, "KB_LOG_LEVEL %q: %v\n", s, err)
		}
	}
	return w.Level(level).With().Timestamp().Str("component", "launcher").Str("version", version).Logger()
}

// unpackEnv is `kernelbus-launcher unpack-env CACHE DIGEST`: an SSH worker
// pipes a kernel environment's archive to it on the kernel's host. It
// checks the bytes against the digest, unpacks them into CACHE/DIGEST
// (refusing members that would land outside it, relocating the venv) and
// prints that folder's absolute path. A folder already there is kept.
func unpackEnv(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kernelbus-launcher unpack-env CACHE-DIR DIGEST <archive.tar.gz")
		return 2
	}
	cache, err := filepath.Abs(args[0])
	if err == nil {
		err = os.MkdirAll(cache, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "unpack-env:", err)
		return 1
	}
	dir, err := envs.UnpackInto(cache, args[1], os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "unpack-env:", err)
		return 1
	}
	fmt.Println(dir)
	return 0
}
