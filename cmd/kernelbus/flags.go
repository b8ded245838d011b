package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// errUsage ends a command whose flags were wrong (exit 2, usage printed);
// errHelp one asked for its help (-h, exit 0).
var (
	errUsage = errors.New("usage")
	errHelp  = errors.New("help")
)

// newFlagSet returns a flag set whose defaults can come from KB_* env vars.
func newFlagSet(name string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &flagSet{fs}
}

// flagSet is a flag.FlagSet; the type exists so helpers can take one.
type flagSet struct{ *flag.FlagSet }

// parse parses args after applying KB_<NAME> environment defaults.
func parse(fs *flag.FlagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "KB_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("environment %s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}

// listFlag is a repeatable flag that also accepts comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// warmFlag is the repeatable --warm SPEC=COUNT[,ceiling=N][,idle=D][,timeout=D][,accept=N:N].
type warmFlag []workers.WarmPool

func (w *warmFlag) String() string { return fmt.Sprint(len(*w), " warm pools") }

func (w *warmFlag) Set(v string) error {
	p, err := workers.ParseWarmPool(v)
	if err != nil {
		return err
	}
	*w = append(*w, p)
	return nil
}

const warmUsage = "keep warm kernels of a kernelspec of this resource manager: SPEC=COUNT[,ceiling=N][,idle=DURATION][,timeout=DURATION][,accept=NAME:NAME] (repeatable); ceiling caps the spec's live kernels, idle is how long one waits before it is replaced (default 1h), accept names client env a request may set and still get a warm kernel (which lacks it)"

// warmSpecs is the kernelspecs of a worker that keeps warm pools: the
// folders are read again at most every 10 s, so that the warm kernels of a
// changed or removed spec are reaped (and new starts use the new spec).
func warmSpecs(cat *frontend.Catalog) workers.SpecSource {
	return &reloadingSpecs{cat: cat, last: time.Now()}
}

type reloadingSpecs struct {
	cat  *frontend.Catalog
	mu   sync.Mutex
	last time.Time
}

func (r *reloadingSpecs) Spec(name string) (*broker.KernelSpec, bool) {
	r.mu.Lock()
	if time.Since(r.last) > 10*time.Second {
		r.cat.Reload()
		r.last = time.Now()
	}
	r.mu.Unlock()
	return r.cat.Spec(name)
}

func newLogger(level string, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	out := w
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// findLauncher returns the kernelbus-launcher to use: the flag's value, the
// binary next to this one, or the one on PATH.
func findLauncher(flagValue string) (string, error) {
	if flagValue != "" {
		p, err := filepath.Abs(flagValue)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--launcher: %w", err)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "kernelbus-launcher")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("kernelbus-launcher"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("kernelbus-launcher not found next to kernelbus nor on PATH: build it (go build ./cmd/kernelbus-launcher) or pass --launcher")
}
