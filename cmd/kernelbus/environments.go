package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/frontend"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/kernelbus/kernelbus/workers/envs"
	"github.com/rs/zerolog"
)

// envFlags configure kernel environments: what front-ends offer and
// check (--env-*), how build workers build (--env-python, --env-index-url,
// --build-dir) and where local workers unpack archives (--env-cache).
type envFlags struct {
	pythons   string
	index     string
	rms       listFlag
	maxMemory int
	maxCPUs   int
	maxGPUs   int
	maxExec   int
	cache     string
	buildDir  string
}

func (e *envFlags) registerCommon(fs *flagSet) {
	fs.StringVar(&e.pythons, "env-python", "", "Python versions offered for kernel environments, VERSION=PATH comma separated (e.g. 3.11=/usr/bin/python3.11); default: the python3 and python3.N on PATH; \"none\": environments off")
	fs.StringVar(&e.index, "env-index-url", "", "package index pip resolves and installs environment requirements from (default: pip's own configuration)")
}

func (e *envFlags) registerFrontend(fs *flagSet) {
	fs.Var(&e.rms, "env-rms", "resource managers environments may target (comma separated; default: local)")
	fs.IntVar(&e.maxMemory, "env-max-memory-mb", 0, "largest memory an environment's kernels may ask for, in MB (0: no limit)")
	fs.IntVar(&e.maxCPUs, "env-max-cpus", 0, "most CPUs an environment's kernels may ask for (0: no limit)")
	fs.IntVar(&e.maxGPUs, "env-max-gpus", 0, "most GPUs an environment's kernels may ask for (0: no limit)")
	fs.IntVar(&e.maxExec, "env-max-executors", 0, "most Spark executors an environment's kernels may ask for (0: no limit)")
}

func (e *envFlags) registerWorker(fs *flagSet) {
	fs.StringVar(&e.cache, "env-cache", "", "folder where workers cache kernel environments by digest (local: unpacked; yarn, ssh: archives they ship) (default: /var/cache/kernelbus/envs as root, else ~/.cache/kernelbus/envs)")
	fs.StringVar(&e.buildDir, "build-dir", "", "folder where build workers build environments (default: the temp folder)")
}

// pythonMap is the offered Pythons: the flag's, or those on PATH.
func (e *envFlags) pythonMap(ctx context.Context) (map[string]string, error) {
	switch strings.TrimSpace(e.pythons) {
	case "none":
		return nil, nil
	case "":
		return envs.DetectPythons(ctx), nil
	}
	m, err := envs.ParsePythons(e.pythons)
	if err != nil {
		return nil, fmt.Errorf("--env-python: %w", err)
	}
	return m, nil
}

// frontendConfig is the Environments part of a front-end's Config.
func (e *envFlags) frontendConfig(ctx context.Context, log zerolog.Logger) (*frontend.EnvironmentsConfig, error) {
	py, err := e.pythonMap(ctx)
	if err != nil {
		return nil, err
	}
	if len(py) == 0 {
		log.Info().Msg("no Python offered: kernel environments cannot be created through this front-end")
		return nil, nil
	}
	for _, rm := range e.rms {
		if !strings.Contains(" local ssh yarn kubernetes ", " "+rm+" ") {
			return nil, fmt.Errorf("--env-rms: %q is no resource manager", rm)
		}
	}
	return &frontend.EnvironmentsConfig{
		Pythons: py, IndexURL: e.index, RMs: e.rms,
		Limits: frontend.EnvLimits{MemoryMB: e.maxMemory, CPUs: e.maxCPUs, GPUs: e.maxGPUs, Executors: e.maxExec},
	}, nil
}

// cacheDir is where a local worker unpacks environments.
func (e *envFlags) cacheDir() string {
	if e.cache != "" {
		return e.cache
	}
	// As root, local kernels run as other accounts that must reach the
	// unpacked interpreters; root's home is usually closed to them.
	if os.Geteuid() == 0 {
		return "/var/cache/kernelbus/envs"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "kernelbus", "envs")
	}
	return filepath.Join(os.TempDir(), "kernelbus-envs")
}

// workerEnvironments binds the archive store and the cache folder of a
// worker (unpacked environments for local kernels, archives for those
// shipped elsewhere), and adds the specs of built environments to its own.
func (e *envFlags) workerEnvironments(ctx context.Context, bus *kbjs.Bus, specs workers.SpecSource, log zerolog.Logger) (*envs.Cache, workers.SpecSource, error) {
	ev, err := kbjs.OpenEnvs(ctx, bus.JS, 1)
	if err != nil {
		return nil, nil, err
	}
	c, err := envs.NewCache(e.cacheDir(), ev.Archives)
	if err != nil {
		return nil, nil, fmt.Errorf("--env-cache: %w", err)
	}
	es, err := kbjs.WatchEnvSpecs(ctx, ev.Specs, specs, log)
	if err != nil {
		return nil, nil, err
	}
	return c, es, nil
}

// builder starts a build worker on bus.
func (e *envFlags) builder(ctx context.Context, id string, bus *kbjs.Bus, log zerolog.Logger) (*envs.Builder, error) {
	py, err := e.pythonMap(ctx)
	if err != nil {
		return nil, err
	}
	if len(py) == 0 {
		return nil, fmt.Errorf("a build worker needs a Python: none found on PATH; pass --env-python")
	}
	b, err := envs.NewBuilder(ctx, envs.BuilderConfig{ID: id, Pythons: py, IndexURL: e.index, WorkDir: e.buildDir, Timeout: 30 * time.Minute}, bus, log)
	if err != nil {
		return nil, err
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	log.Info().Strs("pythons", envs.Versions(py)).Msg("build worker claiming environment builds")
	return b, nil
}

// runBuilder is `kernelbus worker --rm build`.
func runBuilder(ctx context.Context, e *envFlags, id string, bus *kbjs.Bus, log zerolog.Logger) error {
	b, err := e.builder(ctx, id, bus, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return b.Stop(sctx)
}
