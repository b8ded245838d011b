package frontend

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Kernel environments (issue 16). A request is validated here, before
// anything is built: its name, the Python version among the offered ones,
// the target resource manager, the resources against the limits, and the
// pip requirements with pip's own resolver against the configured index.
// A valid request becomes a record in kb_envs and a build request on
// kb.req.build.build, which one build worker claims (workers/envs). The
// worker logs to kb.build.<env>.<build>, which GET .../log relays as
// server-sent events, and publishes the kernelspec in kb_specs, which
// every front-end serves next to its own kernelspecs.
//
// Who may do what: any authenticated user may create environments; the
// spec of one is usable by its owner only unless an administrator made it
// public. Users see and delete their own environments, administrators
// all; another user's environment is absent (404), as kernels are.

// envSpecs is a SpecSource that adds the specs of built environments
// (kbjs.EnvSpecs) to the front-end's own.
type envSpecs struct {
	base SpecSource
	*kbjs.EnvSpecs
}

func (e *envSpecs) Specs() []*broker.KernelSpec {
	env := e.Env()
	if len(env) == 0 {
		return e.base.Specs()
	}
	out := append(slices.Clone(e.base.Specs()), env...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (e *envSpecs) Default() string { return e.base.Default() }

// startEnvironments binds the environment buckets and keeps the specs of
// built environments in s.specs.
func (s *Server) startEnvironments(ctx context.Context) error {
	replicas := 1
	if st, err := s.bus.Kernels.Status(ctx); err == nil {
		if si, ok := st.(*jetstream.KeyValueBucketStatus); ok {
			replicas = si.StreamInfo().Config.Replicas
		}
	}
	envs, err := kbjs.OpenEnvs(ctx, s.bus.JS, replicas)
	if err != nil {
		return fmt.Errorf("frontend: environments: %w", err)
	}
	s.envs = envs
	// The watcher lives as long as the server (s.ctx); the first values
	// arrive before New returns, so a front-end serves every built
	// environment from its first request.
	es, err := kbjs.WatchEnvSpecs(s.ctx, envs.Specs, s.specs, s.log)
	if err != nil {
		return fmt.Errorf("frontend: %w", err)
	}
	s.specs = &envSpecs{base: s.specs, EnvSpecs: es}
	return nil
}

// envRequest is the body of POST /api/environments.
type envRequest struct {
	Name         string              `json:"name"`
	DisplayName  string              `json:"display_name"`
	Python       string              `json:"python"`
	Pip          []string            `json:"pip"`
	Requirements string              `json:"requirements"`
	Conda        []string            `json:"conda"`
	RM           string              `json:"rm"`
	Resources    broker.EnvResources `json:"resources"`
	Public       bool                `json:"public"`
}

// envModel is an environment as the API shows it.
type envModel struct {
	broker.Environment
	// Kernelspec names the spec kernels start from, once built.
	Kernelspec string `json:"kernelspec,omitempty"`
	// Log is where the build's progress and output stream (SSE).
	Log string `json:"log"`
}

func (s *Server) envModel(e *broker.Environment) envModel {
	m := envModel{Environment: *e, Log: s.cfg.BaseURL + "api/environments/" + e.Name + "/log"}
	if e.State == broker.EnvReady {
		m.Kernelspec = e.Name
	}
	return m
}

// envOptions answers GET /api/environments/options: what a request may
// ask for, so a form can offer exactly that.
func (s *Server) envOptions(c *fiber.Ctx) error {
	cfg := s.cfg.Environments
	out := fiber.Map{"enabled": cfg != nil && len(cfg.Pythons) > 0, "pythons": []string{}, "rms": []string{}, "conda": false}
	if cfg != nil {
		out["pythons"] = offeredPythons(cfg)
		out["rms"] = envRMs(cfg)
		out["limits"] = cfg.Limits
	}
	return c.JSON(out)
}

func offeredPythons(cfg *EnvironmentsConfig) []string {
	out := make([]string, 0, len(cfg.Pythons))
	for v := range cfg.Pythons {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func envRMs(cfg *EnvironmentsConfig) []string {
	if len(cfg.RMs) == 0 {
		return []string{broker.RMLocal}
	}
	return cfg.RMs
}

func bad(format string, args ...any) error {
	return broker.Errorf(broker.ErrBadRequest, format, args...)
}

// maxPip bounds the requirements of one environment.
const maxPip = 100

// validate checks everything about req that needs no pip, and fills in
// defaults; the errors name the field and what to fix.
func (s *Server) validateEnv(who *auth.Identity, req *envRequest) error {
	cfg := s.cfg.Environments
	if cfg == nil || len(cfg.Pythons) == 0 {
		return broker.Errorf(broker.ErrUnavailable, "kernel environments are not enabled on this front-end (it offers no Python: start it with --env-python)")
	}
	req.Name = strings.TrimSpace(req.Name)
	if !broker.ValidEnvName(req.Name) {
		return bad("name: %q is not a valid environment name: use 1 to 63 lower-case letters, digits, - and _, starting with a letter", req.Name)
	}
	if _, ok := s.specs.Spec(req.Name); ok {
		return broker.Errorf(broker.ErrConflict, "name: a kernelspec named %s exists already; choose another name", req.Name)
	}
	req.DisplayName = strings.TrimSpace(req.DisplayName)
	if req.DisplayName == "" {
		req.DisplayName = req.Name
	}
	if len(req.DisplayName) > 128 || strings.ContainsAny(req.DisplayName, "\x00\r\n") {
		return bad("display_name: at most 128 characters on one line")
	}
	if req.Python == "" {
		return bad("python: choose a Python version, one of %s", strings.Join(offeredPythons(cfg), ", "))
	}
	if _, ok := cfg.Pythons[req.Python]; !ok {
		return bad("python: %q is not offered; choose one of %s", req.Python, strings.Join(offeredPythons(cfg), ", "))
	}
	if req.RM == "" {
		req.RM = broker.RMLocal
	}
	if !slices.Contains(envRMs(cfg), req.RM) {
		return bad("rm: environments cannot target %q here; choose one of %s", req.RM, strings.Join(envRMs(cfg), ", "))
	}
	r, l := req.Resources, cfg.Limits
	for _, x := range []struct {
		field    string
		v, limit int
		unit     string
	}{
		{"resources.memory_mb", r.MemoryMB, l.MemoryMB, " MB"},
		{"resources.cpus", r.CPUs, l.CPUs, " CPUs"},
		{"resources.gpus", r.GPUs, l.GPUs, " GPUs"},
		{"resources.executors", r.Executors, l.Executors, " executors"},
	} {
		if x.v < 0 {
			return bad("%s: %d is negative", x.field, x.v)
		}
		if x.limit > 0 && x.v > x.limit {
			return bad("%s: %d is above the limit of %d%s", x.field, x.v, x.limit, x.unit)
		}
	}
	if len(req.Conda) > 0 {
		for _, p := range req.Conda {
			if !broker.ValidCondaSpec(p) {
				return bad("conda: %q is not a conda package spec (name or name=version)", p)
			}
		}
		return bad("conda: the build hosts have no conda, so conda packages (%s) cannot be installed; ask for them as pip requirements", strings.Join(req.Conda, ", "))
	}
	for _, line := range strings.Split(req.Requirements, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" {
			req.Pip = append(req.Pip, line)
		}
	}
	if len(req.Pip) > maxPip {
		return bad("pip: at most %d requirements", maxPip)
	}
	for i, p := range req.Pip {
		req.Pip[i] = strings.TrimSpace(p)
		if err := broker.ValidRequirement(p); err != nil {
			return bad("pip: %v", err)
		}
	}
	if req.Public && !who.IsAdmin() {
		return broker.Errorf(broker.ErrForbidden, "public: only administrators may make an environment every user can start")
	}
	if who.Name == "" && !who.IsAdmin() {
		return broker.Errorf(broker.ErrForbidden, "an anonymous caller cannot own an environment")
	}
	return nil
}

// pipReport is the part of pip's --report that matters here.
type pipReport struct {
	Install []struct {
		Metadata struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"metadata"`
	} `json:"install"`
}

// resolve asks pip's resolver, without installing anything, whether the
// requirements (with ipykernel, which every environment gets) can be
// installed from the index as wheels. Wheels only, in validation and in
// the build alike: resolving a source distribution runs its setup code,
// which would be the requester's code running on a front-end.
func (s *Server) resolve(ctx context.Context, python string, pip []string) ([]string, error) {
	cfg := s.cfg.Environments
	timeout := cfg.ResolveTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	select {
	case s.resolving <- struct{}{}:
		defer func() { <-s.resolving }()
	case <-ctx.Done():
		return nil, broker.Errorf(broker.ErrUnavailable, "the front-end is busy resolving other environments; try again")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "kb-resolve-")
	if err != nil {
		return nil, broker.Wrap(broker.ErrInternal, err, "could not resolve the requirements")
	}
	defer os.RemoveAll(dir)
	args := []string{"-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-input",
		"--disable-pip-version-check", "--only-binary", ":all:", "--report", "-"}
	if cfg.IndexURL != "" {
		args = append(args, "--index-url", cfg.IndexURL)
	}
	args = append(args, "ipykernel")
	args = append(args, pip...)
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Dir = dir
	cmd.Env = append(resolveEnv(), "HOME="+dir, "PIP_CACHE_DIR="+os.Getenv("PIP_CACHE_DIR"))
	if os.Getenv("PIP_CACHE_DIR") == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cmd.Env[len(cmd.Env)-1] = "PIP_CACHE_DIR=" + home + "/.cache/pip"
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ctx.Err() != nil {
		return nil, broker.Errorf(broker.ErrUnavailable, "pip could not resolve the requirements within %s; try again or ask for fewer packages", timeout)
	}
	if err != nil {
		reason := pipErrors(stderr.String())
		if reason == "" {
			return nil, broker.Errorf(broker.ErrUnavailable, "pip failed without saying why (%v)", err)
		}
		return nil, bad("pip: %s", reason)
	}
	var rep pipReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return nil, broker.Wrap(broker.ErrInternal, err, "pip's report could not be read")
	}
	var out []string
	for _, i := range rep.Install {
		out = append(out, i.Metadata.Name+"=="+i.Metadata.Version)
	}
	sort.Strings(out)
	return out, nil
}

// pipErrors keeps pip's ERROR lines and the conflict explanation that
// follows them: they name the package and why.
func pipErrors(stderr string) string {
	var lines []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "ERROR:"):
			in = true
			lines = append(lines, strings.TrimSpace(strings.TrimPrefix(l, "ERROR:")))
		case in && l != "" && !strings.HasPrefix(l, "To fix this") && !strings.HasPrefix(l, "1.") && !strings.HasPrefix(l, "2."):
			if strings.HasPrefix(l, "The conflict is caused by") || strings.Contains(l, " depends on ") || strings.HasPrefix(l, "The user requested") {
				lines = append(lines, l)
			}
		}
		if len(lines) >= 12 {
			break
		}
	}
	return strings.Join(lines, "; ")
}

// resolveEnv is pip's environment: this process's, without kernelbus's
// own settings.
func resolveEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KB_") || strings.HasPrefix(kv, "KERNELBUS_") || strings.HasPrefix(kv, "NATS_") ||
			strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "PIP_CACHE_DIR=") || strings.HasPrefix(kv, "VIRTUAL_ENV=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (s *Server) postEnvironment(c *fiber.Ctx) error {
	who := identityOf(c)
	var req envRequest
	if err := json.Unmarshal(c.Body(), &req); err != nil {
		return bad("the body must be a JSON object such as {\"name\": \"tab\", \"python\": \"3.11\", \"pip\": [\"tabulate\"]}: %v", err)
	}
	if err := s.validateEnv(who, &req); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, 3*time.Minute)
	defer cancel()
	if err := s.checkLargest(ctx, req.RM, int64(req.Resources.MemoryMB), int64(req.Resources.CPUs), "resources.memory_mb", "resources.cpus"); err != nil {
		return err
	}
	if !who.IsAdmin() {
		if err := s.checkAdminLimits(ctx, who.Name, &req); err != nil {
			return err
		}
	}
	if _, err := s.envs.Records.Get(ctx, req.Name); err == nil {
		return broker.Errorf(broker.ErrConflict, "name: an environment named %s exists already; delete it first or choose another name", req.Name)
	}
	resolved, err := s.resolve(ctx, s.cfg.Environments.Pythons[req.Python], req.Pip)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	env := &broker.Environment{
		Name: req.Name, DisplayName: req.DisplayName, Python: req.Python, Pip: req.Pip, RM: req.RM,
		Resources: req.Resources, Owner: who.Name, Public: req.Public,
		State: broker.EnvQueued, Build: strings.ToLower(nuid.Next()), Message: "waiting for a build worker",
		Resolved: resolved, Created: now, Updated: now,
	}
	data, _ := json.Marshal(env)
	if _, err := s.envs.Records.Create(ctx, env.Name, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return broker.Errorf(broker.ErrConflict, "name: an environment named %s exists already; delete it first or choose another name", req.Name)
		}
		return broker.Wrap(broker.ErrUnavailable, err, "could not record the environment")
	}
	body, _ := json.Marshal(broker.BuildRequest{Env: env.Name, Build: env.Build})
	m := &nats.Msg{Subject: broker.SubjectRequest(broker.VerbBuild, broker.RMBuild), Data: body, Header: nats.Header{}}
	m.Header.Set(broker.HeaderType, broker.TypeBuildRequest)
	m.Header.Set(jetstream.MsgIDHeader, "build-"+env.Build)
	if _, err := s.bus.JS.PublishMsg(ctx, m); err != nil {
		_ = s.envs.Records.Delete(context.Background(), env.Name)
		return broker.Wrap(broker.ErrUnavailable, err, "could not queue the build of %s", env.Name)
	}
	s.log.Info().Str("env", env.Name).Str("owner", env.Owner).Strs("pip", env.Pip).Msg("environment requested")
	c.Status(fiber.StatusAccepted)
	c.Set(fiber.HeaderLocation, s.cfg.BaseURL+"api/environments/"+env.Name)
	return c.JSON(s.envModel(env))
}

// ownedEnv is the environment name if who may see it; another user's is
// absent, so that names cannot be probed.
func (s *Server) ownedEnv(ctx context.Context, who *auth.Identity, name string) (*broker.Environment, error) {
	notFound := broker.Errorf(broker.ErrNotFound, "Environment %s not found", name)
	if !broker.ValidEnvName(name) {
		return nil, notFound
	}
	e, err := s.envs.Records.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound
	}
	if err != nil {
		return nil, broker.Wrap(broker.ErrUnavailable, err, "could not read environment %s", name)
	}
	var env broker.Environment
	if err := json.Unmarshal(e.Value(), &env); err != nil {
		return nil, broker.Wrap(broker.ErrInternal, err, "environment %s is unreadable", name)
	}
	if !may(who, env.Owner) {
		return nil, notFound
	}
	return &env, nil
}

func (s *Server) listEnvironments(c *fiber.Ctx) error {
	who := identityOf(c)
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	lister, err := s.envs.Records.ListKeys(ctx)
	if err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "could not list environments")
	}
	out := []envModel{}
	for name := range lister.Keys() {
		if env, err := s.ownedEnv(ctx, who, name); err == nil {
			out = append(out, s.envModel(env))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return c.JSON(out)
}

func (s *Server) getEnvironment(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	env, err := s.ownedEnv(ctx, identityOf(c), c.Params("name"))
	if err != nil {
		return err
	}
	return c.JSON(s.envModel(env))
}

// deleteEnvironment removes the spec (no new kernel can start from it)
// and the record. Running kernels keep running: their worker unpacked the
// archive into its own cache.
func (s *Server) deleteEnvironment(c *fiber.Ctx) error {
	who := identityOf(c)
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	env, err := s.ownedEnv(ctx, who, c.Params("name"))
	if err != nil {
		return err
	}
	if err := s.envs.Specs.Delete(ctx, env.Name); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return broker.Wrap(broker.ErrUnavailable, err, "could not remove the kernelspec %s", env.Name)
	}
	if es, ok := s.specs.(*envSpecs); ok {
		es.Remove(env.Name)
	}
	if err := s.envs.Records.Delete(ctx, env.Name); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return broker.Wrap(broker.ErrUnavailable, err, "could not remove environment %s", env.Name)
	}
	// The archive stays in kb_env_archives: removing an object purges
	// its chunks, which only the bus administrator may do (no front-end
	// or worker role may purge a stream), and a start claimed a moment
	// ago may still fetch it. `kernelbus` has no pruning command yet.
	s.log.Info().Str("env", env.Name).Str("by", actorOf(who)).Msg("environment deleted")
	return c.SendStatus(fiber.StatusNoContent)
}

// environmentLog streams a build's progress and output as server-sent
// events, from the first line, and ends after the build's last one.
func (s *Server) environmentLog(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	env, err := s.ownedEnv(ctx, identityOf(c), c.Params("name"))
	cancel()
	if err != nil {
		return err
	}
	lctx, lcancel := context.WithCancel(s.ctx)
	cons, err := s.bus.JS.OrderedConsumer(lctx, broker.StreamBuilds, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.SubjectBuildLog(env.Name, env.Build)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		lcancel()
		return broker.Wrap(broker.ErrUnavailable, err, "could not read the build log of %s", env.Name)
	}
	final := env.State == broker.EnvReady || env.State == broker.EnvFailed
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer lcancel()
		if _, err := w.WriteString("retry: 2000\n\n"); err != nil || w.Flush() != nil {
			return
		}
		for {
			if s.draining.Load() {
				return
			}
			mctx, mcancel := context.WithTimeout(lctx, sseHeartbeat)
			m, err := cons.Next(jetstream.FetchContext(mctx))
			mcancel()
			if lctx.Err() != nil {
				return
			}
			if err != nil {
				if final {
					// Everything the build logged has been sent.
					return
				}
				if _, err := w.WriteString(": ping\n\n"); err != nil || w.Flush() != nil {
					return
				}
				continue
			}
			var l broker.BuildLog
			if json.Unmarshal(m.Data(), &l) != nil {
				continue
			}
			data, _ := json.Marshal(l)
			if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil || w.Flush() != nil {
				return
			}
			if l.State == broker.EnvReady || l.State == broker.EnvFailed {
				return
			}
		}
	})
	return nil
}
