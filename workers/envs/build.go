package envs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/broker/routines"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// BuilderConfig configures a build worker.
type BuilderConfig struct {
	// ID names this worker in records and logs.
	ID string
	// Pythons maps offered versions ("3.11") to interpreters on this host.
	Pythons map[string]string
	// IndexURL is the package index pip uses ("" : pip's configuration).
	IndexURL string
	// WorkDir is where environments are built (default: the temp dir).
	WorkDir string
	// Timeout bounds one build. Default 20 minutes.
	Timeout time.Duration
	// Concurrency bounds builds in flight. Default 1: builds are heavy.
	Concurrency int
}

// Builder is a build worker: it claims build requests from the bus.
type Builder struct {
	cfg  BuilderConfig
	bus  *kbjs.Bus
	envs *kbjs.Envs
	log  zerolog.Logger
	cc   jetstream.ConsumeContext
	// routines are the builds in flight: the consumer's callback starts
	// them, possibly while Stop waits, which a WaitGroup must not see.
	routines routines.Group
	ctx      context.Context
	stop     context.CancelFunc
}

// ackWait is how long a build may go without InProgress before another
// build worker takes it over.
const ackWait = 60 * time.Second

// NewBuilder binds the environment buckets; Start begins claiming.
func NewBuilder(ctx context.Context, cfg BuilderConfig, bus *kbjs.Bus, log zerolog.Logger) (*Builder, error) {
	if len(cfg.Pythons) == 0 {
		return nil, errors.New("build worker: no Python to build environments with")
	}
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = "build-" + h + "-" + fmt.Sprint(os.Getpid())
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Minute
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	envs, err := kbjs.OpenEnvs(ctx, bus.JS, 1)
	if err != nil {
		return nil, fmt.Errorf("build worker: %w", err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	return &Builder{cfg: cfg, bus: bus, envs: envs, log: log.With().Str("worker", cfg.ID).Logger(), ctx: bctx, stop: cancel}, nil
}

// Start begins claiming build requests.
func (b *Builder) Start(ctx context.Context) error {
	cons, err := b.bus.JS.CreateOrUpdateConsumer(ctx, broker.StreamRequests, jetstream.ConsumerConfig{
		Durable:       broker.WorkerConsumer(broker.RMBuild),
		Description:   "the environment build pool",
		FilterSubject: broker.SubjectRequestsFor(broker.RMBuild),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: 1000,
		MaxDeliver:    5,
	})
	if err != nil {
		return fmt.Errorf("build worker: consumer: %w", err)
	}
	sem := make(chan struct{}, b.cfg.Concurrency)
	b.cc, err = cons.Consume(func(m jetstream.Msg) {
		select {
		case sem <- struct{}{}:
		case <-b.ctx.Done():
			_ = m.Nak() // stopping: another build worker takes it
			return
		}
		if !b.routines.Go(func() {
			defer func() { <-sem }()
			b.handle(m)
		}) {
			<-sem
			_ = m.Nak()
		}
	}, jetstream.PullMaxMessages(b.cfg.Concurrency), jetstream.PullExpiry(30*time.Second))
	if err != nil {
		return fmt.Errorf("build worker: consume: %w", err)
	}
	return nil
}

// Stop stops claiming, ends builds in flight (their requests are
// redelivered to another build worker) and waits, up to ctx, until they
// have returned. Safe to call more than once.
func (b *Builder) Stop(ctx context.Context) error {
	if b.cc != nil {
		b.cc.Stop()
	}
	b.stop()
	// The consumer's callback may be starting a build until Closed.
	if err := b.routines.WaitAfter(ctx, b.cc); err != nil {
		return fmt.Errorf("build worker %s: stopping: %w", b.cfg.ID, err)
	}
	return nil
}

func (b *Builder) handle(m jetstream.Msg) {
	var req broker.BuildRequest
	if err := json.Unmarshal(m.Data(), &req); err != nil || !broker.ValidEnvName(req.Env) {
		b.log.Warn().Msg("dropping a malformed build request")
		_ = m.Term()
		return
	}
	log := b.log.With().Str("env", req.Env).Str("build", req.Build).Logger()
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
	defer cancel()
	// Keep the claim while building.
	go func() {
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	env, rev, err := b.record(ctx, req.Env)
	if err != nil || env.Build != req.Build || env.State == broker.EnvReady || env.State == broker.EnvFailed {
		// Deleted, superseded or finished: nothing to do.
		_ = m.Ack()
		return
	}
	env.State, env.Worker, env.Progress, env.Message = broker.EnvBuilding, b.cfg.ID, 5, "building"
	if rev, err = b.save(ctx, env, rev); err != nil {
		log.Warn().Err(err).Msg("could not mark the environment building")
		_ = m.Nak()
		return
	}
	lg := &buildLog{js: b.bus.JS, subject: broker.SubjectBuildLog(env.Name, env.Build)}
	lg.say(5, "", "build worker "+b.cfg.ID+" builds "+env.Name)
	digest, size, err := b.build(ctx, env, lg)
	if b.ctx.Err() != nil {
		_ = m.Nak() // shutting down: another worker builds it
		return
	}
	cur, rev, gerr := b.record(context.Background(), env.Name)
	if gerr != nil || cur.Build != env.Build {
		log.Info().Msg("the environment was deleted or rebuilt meanwhile; dropping this build")
		_ = m.Ack()
		return
	}
	if err != nil {
		cur.State, cur.Message = broker.EnvFailed, err.Error()
		lg.say(cur.Progress, broker.EnvFailed, "build failed: "+err.Error())
		if _, serr := b.save(context.Background(), cur, rev); serr != nil {
			log.Warn().Err(serr).Msg("could not record the failure")
		}
		_ = m.Ack()
		return
	}
	spec := broker.EnvSpec{
		Name: cur.Name, DisplayName: cur.DisplayName, Python: cur.Python, RM: cur.RM,
		Resources: cur.Resources, Digest: digest, Owner: cur.Owner, Public: cur.Public, Packages: cur.Resolved,
	}
	data, _ := json.Marshal(spec)
	if _, err := b.envs.Specs.Put(context.Background(), cur.Name, data); err != nil {
		_ = m.Nak()
		return
	}
	cur.State, cur.Progress, cur.Digest, cur.Size, cur.Message = broker.EnvReady, 100, digest, size, "ready"
	if _, err := b.save(context.Background(), cur, rev); err != nil {
		log.Warn().Err(err).Msg("could not record the finished build")
	}
	lg.say(100, broker.EnvReady, fmt.Sprintf("environment %s is ready: %s (%d bytes)", cur.Name, digest, size))
	log.Info().Str("digest", digest).Int64("bytes", size).Msg("environment built")
	_ = m.Ack()
}

func (b *Builder) record(ctx context.Context, name string) (*broker.Environment, uint64, error) {
	e, err := b.envs.Records.Get(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	var env broker.Environment
	if err := json.Unmarshal(e.Value(), &env); err != nil {
		return nil, 0, err
	}
	return &env, e.Revision(), nil
}

func (b *Builder) save(ctx context.Context, env *broker.Environment, rev uint64) (uint64, error) {
	env.Updated = time.Now().UTC()
	data, _ := json.Marshal(env)
	return b.envs.Records.Update(ctx, env.Name, data, rev)
}

// build makes, packs and stores the environment; it returns its digest.
func (b *Builder) build(ctx context.Context, env *broker.Environment, lg *buildLog) (string, int64, error) {
	// A record is data from the bus: check it as the front-end did.
	py, ok := b.cfg.Pythons[env.Python]
	if !ok {
		return "", 0, fmt.Errorf("this build worker has no Python %s (it has %s)", env.Python, strings.Join(Versions(b.cfg.Pythons), ", "))
	}
	for _, r := range env.Pip {
		if err := broker.ValidRequirement(r); err != nil {
			return "", 0, err
		}
	}
	if len(env.Conda) > 0 {
		return "", 0, errors.New("conda packages cannot be built: this build worker has no conda")
	}
	work, err := os.MkdirTemp(b.cfg.WorkDir, "kb-env-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(work)
	prefix := filepath.Join(work, env.Name)
	lg.say(10, "", "creating the environment with Python "+env.Python+" ("+py+")")
	if err := run(ctx, lg, 10, py, "-m", "venv", "--copies", prefix); err != nil {
		return "", 0, fmt.Errorf("python -m venv: %w", err)
	}
	args := []string{"-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--only-binary", ":all:"}
	if b.cfg.IndexURL != "" {
		args = append(args, "--index-url", b.cfg.IndexURL)
	}
	args = append(args, "ipykernel")
	args = append(args, env.Pip...)
	lg.say(20, "", "installing ipykernel "+strings.Join(env.Pip, " "))
	if err := run(ctx, lg, 20, filepath.Join(prefix, "bin", "python"), args...); err != nil {
		return "", 0, fmt.Errorf("pip install: %w", err)
	}
	lg.say(75, "", "packing the environment")
	f, err := os.CreateTemp(work, "archive-*.tar.gz")
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	digest, size, err := Pack(prefix, env.Python, f)
	if err != nil {
		return "", 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", 0, err
	}
	lg.say(85, "", fmt.Sprintf("storing the archive (%d bytes) as %s", size, digest))
	if _, err := b.envs.Archives.Put(ctx, jetstream.ObjectMeta{Name: digest, Description: "environment " + env.Name}, f); err != nil {
		return "", 0, fmt.Errorf("store the archive: %w", err)
	}
	return digest, size, nil
}

// run runs a command, logging its output line by line; the error ends
// with pip's own ERROR lines, which name the package at fault.
func run(ctx context.Context, lg *buildLog, progress int, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = buildEnv()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	var errLines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ERROR:") {
				errLines = append(errLines, strings.TrimSpace(strings.TrimPrefix(line, "ERROR:")))
			}
			lg.say(progress, "", line)
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	_ = pw.Close()
	<-done
	if err != nil && len(errLines) > 0 {
		return fmt.Errorf("%s", strings.Join(errLines, "; "))
	}
	return err
}

// buildEnv is the environment of build commands: this process's, without
// kernelbus's own settings (credential paths, tokens).
func buildEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KB_") || strings.HasPrefix(kv, "KERNELBUS_") || strings.HasPrefix(kv, "NATS_") || strings.HasPrefix(kv, "VIRTUAL_ENV=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// buildLog publishes a build's progress and output to its log subject.
type buildLog struct {
	js      jetstream.JetStream
	subject string
}

func (l *buildLog) say(progress int, state, line string) {
	data, _ := json.Marshal(broker.BuildLog{Time: time.Now().UTC(), Line: line, Progress: progress, State: state})
	m := &nats.Msg{Subject: l.subject, Data: data, Header: nats.Header{}}
	m.Header.Set(broker.HeaderType, broker.TypeBuildLog)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = l.js.PublishMsg(ctx, m)
}

// Versions lists the offered Python versions, sorted.
func Versions(pythons map[string]string) []string {
	out := make([]string, 0, len(pythons))
	for v := range pythons {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// DetectPythons finds the Pythons on PATH that can make venvs: python3
// and python3.N, keyed by "3.N", each the interpreter's real path.
func DetectPythons(ctx context.Context) map[string]string {
	out := map[string]string{}
	names := []string{"python3"}
	for n := 8; n <= 15; n++ {
		names = append(names, fmt.Sprintf("python3.%d", n))
	}
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		b, err := exec.CommandContext(cctx, p, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2]); print(sys.executable)").Output()
		cancel()
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || !broker.ValidPythonVersion(lines[0]) {
			continue
		}
		if _, ok := out[lines[0]]; !ok {
			out[lines[0]] = strings.TrimSpace(lines[1])
		}
	}
	return out
}

// ParsePythons reads "3.11=/usr/bin/python3.11,3.12=/opt/py/bin/python3".
func ParsePythons(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		v, p, ok := strings.Cut(part, "=")
		if !ok || !broker.ValidPythonVersion(v) || !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%q: give VERSION=/absolute/path/to/python, e.g. 3.11=/usr/bin/python3.11", part)
		}
		out[v] = p
	}
	return out, nil
}
