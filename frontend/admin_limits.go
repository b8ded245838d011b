package frontend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/nats-io/nats.go/jetstream"
)

// The admin limits: what one user may ask of the cluster, set by
// administrators and enforced on every kernel start by every front-end
// (not only by the UI). They live in kb_limits beside the kernel slots:
//
//	limit.default        the limits of users without their own
//	limit.user.<b64url>  one user's limits (replacing the default whole)
//
// The REST API:
//
//	GET    /api/limits                 anyone: the caller's effective limits
//	GET    /api/admin/limits           admins: {"default":{...},"users":{"alice":{...}}}
//	PUT    /api/admin/limits/default   admins: set the default
//	PUT    /api/admin/limits/users/:u  admins: set u's limits
//	DELETE /api/admin/limits/users/:u  admins: u falls back to the default
//
// Zero (or an empty list) means "no limit".

// Limits are one user's limits.
type Limits struct {
	MaxKernels       int      `json:"max_kernels"`
	DriverMemoryMB   int      `json:"driver_memory_mb"`
	ExecutorMemoryMB int      `json:"executor_memory_mb"`
	Cores            int      `json:"cores"`
	Executors        int      `json:"executors"`
	GPUs             int      `json:"gpus"`
	AllowedRMs       []string `json:"allowed_rms"`
	AllowedQueues    []string `json:"allowed_queues"`
}

const (
	limitDefaultKey = "limit.default"
	limitUserPrefix = "limit.user."
)

func limitUserKey(user string) string {
	return limitUserPrefix + base64.RawURLEncoding.EncodeToString([]byte(user))
}

// adminLimits reads and writes the limits.
type adminLimits struct {
	kv jetstream.KeyValue
	// fallbackMax is --max-kernels-per-user, the max_kernels of a user
	// whose limits do not set one.
	fallbackMax int
}

// get reads one limits key; found is false when it is not set.
func (a *adminLimits) get(ctx context.Context, key string) (l Limits, found bool, err error) {
	e, err := a.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return l, false, nil
	}
	if err != nil {
		return l, false, broker.Wrap(broker.ErrUnavailable, err, "could not read the limits")
	}
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		return l, false, broker.Wrap(broker.ErrUnavailable, err, "the stored limits %s are not valid JSON", key)
	}
	return l, true, nil
}

// effective returns user's limits: their own, else the default, with
// MaxKernelsPerUser where neither sets max_kernels.
func (a *adminLimits) effective(ctx context.Context, user string) (Limits, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, found, err := a.get(ctx, limitUserKey(user))
	if err == nil && !found {
		l, _, err = a.get(ctx, limitDefaultKey)
	}
	if err != nil {
		return l, err
	}
	if l.MaxKernels == 0 {
		l.MaxKernels = a.fallbackMax
	}
	return l, nil
}

// validate checks limits an administrator sends.
func (l *Limits) validate() error {
	for name, v := range map[string]int{"max_kernels": l.MaxKernels, "driver_memory_mb": l.DriverMemoryMB, "executor_memory_mb": l.ExecutorMemoryMB, "cores": l.Cores, "executors": l.Executors, "gpus": l.GPUs} {
		if v < 0 {
			return broker.Errorf(broker.ErrBadRequest, "%s: %d is negative; use 0 for no limit", name, v)
		}
	}
	if l.MaxKernels > 1000 {
		return broker.Errorf(broker.ErrBadRequest, "max_kernels: %d is more than 1000; use 0 for no limit", l.MaxKernels)
	}
	for _, rm := range l.AllowedRMs {
		if !slices.Contains([]string{broker.RMLocal, broker.RMSSH, broker.RMYarn, broker.RMKubernetes}, rm) {
			return broker.Errorf(broker.ErrBadRequest, "allowed_rms: %q is not a resource manager (local, ssh, yarn, kubernetes)", rm)
		}
	}
	for _, q := range l.AllowedQueues {
		if strings.TrimSpace(q) == "" || len(q) > 256 {
			return broker.Errorf(broker.ErrBadRequest, "allowed_queues: %q is not a queue name", q)
		}
	}
	if l.AllowedRMs == nil {
		l.AllowedRMs = []string{}
	}
	if l.AllowedQueues == nil {
		l.AllowedQueues = []string{}
	}
	return nil
}

// Asked is what a launch asks of its resource manager, read from the
// launch configuration's argv and env: spark-submit's options (in
// SPARK_OPTS or the argv) and JEG's KERNEL_CPUS / KERNEL_MEMORY /
// KERNEL_GPUS of Kubernetes specs.
type Asked struct {
	DriverMemoryMB, ExecutorMemoryMB, Cores, Executors, GPUs int
	Queue                                                    string
}

// askedOf reads what lc asks for; a value it cannot read is an error
// naming it.
func askedOf(lc *broker.LaunchConfig) (Asked, error) {
	var a Asked
	var words []string
	words = append(words, lc.Argv...)
	keys := make([]string, 0, len(lc.Env))
	for k := range lc.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		words = append(words, strings.Fields(lc.Env[k])...)
	}
	var firstErr error
	mem := func(dst *int, what, v string) {
		mb, err := parseMemMB(v)
		if err != nil && firstErr == nil {
			firstErr = broker.Errorf(broker.ErrBadRequest, "%s %q is not a memory size (like 2g or 512m)", what, v)
		}
		*dst = max(*dst, mb)
	}
	num := func(dst *int, what, v string) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil && firstErr == nil {
			firstErr = broker.Errorf(broker.ErrBadRequest, "%s %q is not a number", what, v)
		}
		*dst = max(*dst, n)
	}
	set := func(opt, v string) {
		switch opt {
		case "--driver-memory", "spark.driver.memory":
			mem(&a.DriverMemoryMB, opt, v)
		case "--executor-memory", "spark.executor.memory":
			mem(&a.ExecutorMemoryMB, opt, v)
		case "--driver-cores", "spark.driver.cores", "--executor-cores", "spark.executor.cores":
			num(&a.Cores, opt, v)
		case "--num-executors", "spark.executor.instances", "spark.dynamicAllocation.maxExecutors":
			num(&a.Executors, opt, v)
		case "spark.driver.resource.gpu.amount", "spark.executor.resource.gpu.amount":
			num(&a.GPUs, opt, v)
		case "--queue", "spark.yarn.queue":
			a.Queue = v
		}
	}
	for i := 0; i < len(words); i++ {
		w := strings.Trim(words[i], `"'`)
		switch {
		case w == "--conf" && i+1 < len(words):
			if k, v, ok := strings.Cut(strings.Trim(words[i+1], `"'`), "="); ok {
				set(k, v)
			}
			i++
		case strings.HasPrefix(w, "--conf="):
			if k, v, ok := strings.Cut(strings.TrimPrefix(w, "--conf="), "="); ok {
				set(k, v)
			}
		case strings.HasPrefix(w, "--") && strings.Contains(w, "="):
			k, v, _ := strings.Cut(w, "=")
			set(k, v)
		case strings.HasPrefix(w, "--") && i+1 < len(words):
			before := a
			set(w, strings.Trim(words[i+1], `"'`))
			if a != before {
				i++
			}
		}
	}
	if v := lc.Env["KERNEL_MEMORY"]; v != "" {
		mem(&a.DriverMemoryMB, "KERNEL_MEMORY", v)
	}
	if v := lc.Env["KERNEL_CPUS"]; v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil && firstErr == nil {
			firstErr = broker.Errorf(broker.ErrBadRequest, "KERNEL_CPUS %q is not a number", v)
		}
		a.Cores = max(a.Cores, int(f+0.999))
	}
	if v := lc.Env["KERNEL_GPUS"]; v != "" {
		num(&a.GPUs, "KERNEL_GPUS", v)
	}
	if v := lc.Env["KERNEL_QUEUE"]; v != "" && a.Queue == "" {
		a.Queue = v
	}
	return a, firstErr
}

// parseMemMB reads a JVM / Kubernetes memory size as MiB: a bare number
// is MiB (spark's default unit), k/m/g/t and Ki/Mi/Gi/Ti suffixes scale.
func parseMemMB(v string) (int, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "b"), "i")
	mul := 1.0
	if s != "" {
		switch s[len(s)-1] {
		case 'k':
			mul = 1.0 / 1024
		case 'm':
			mul = 1
		case 'g':
			mul = 1024
		case 't':
			mul = 1024 * 1024
		}
		if mul != 1 || s[len(s)-1] == 'm' {
			s = s[:len(s)-1]
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("not a memory size: %q", v)
	}
	return int(f*mul + 0.5), nil
}

// check refuses a start by user on rm whose launch asks more than l
// allows, with a 403 naming the limit.
func (l Limits) check(user, rm string, lc *broker.LaunchConfig) error {
	if len(l.AllowedRMs) > 0 && !slices.Contains(l.AllowedRMs, rm) {
		return broker.Errorf(broker.ErrLimit, "User %s may not use resource manager %s (allowed_rms: %s)", user, rm, strings.Join(l.AllowedRMs, ", "))
	}
	a, err := askedOf(lc)
	if err != nil {
		return err
	}
	over := func(name string, asked, limit int, unit string) error {
		if limit > 0 && asked > limit {
			return broker.Errorf(broker.ErrLimit, "User %s asks for %d%s but %s is %d%s", user, asked, unit, name, limit, unit)
		}
		return nil
	}
	for _, e := range []error{
		over("driver_memory_mb", a.DriverMemoryMB, l.DriverMemoryMB, " MB"),
		over("executor_memory_mb", a.ExecutorMemoryMB, l.ExecutorMemoryMB, " MB"),
		over("cores", a.Cores, l.Cores, " cores"),
		over("executors", a.Executors, l.Executors, " executors"),
		over("gpus", a.GPUs, l.GPUs, " GPUs"),
	} {
		if e != nil {
			return e
		}
	}
	if len(l.AllowedQueues) > 0 && a.Queue != "" && !slices.Contains(l.AllowedQueues, a.Queue) {
		return broker.Errorf(broker.ErrLimit, "User %s may not use queue %s (allowed_queues: %s)", user, a.Queue, strings.Join(l.AllowedQueues, ", "))
	}
	return nil
}

// requireAdmin refuses everyone but administrators.
func requireAdmin(c *fiber.Ctx) error {
	if who := identityOf(c); !who.IsAdmin() {
		return broker.Errorf(broker.ErrForbidden, "%s is for administrators only (you are %s without the %s role)", c.Path(), actorOf(who), auth.RoleAdmin)
	}
	return c.Next()
}

// adminLimitsPage is GET /api/admin/limits.
type adminLimitsPage struct {
	Default Limits            `json:"default"`
	Users   map[string]Limits `json:"users"`
}

func (s *Server) getMyLimits(c *fiber.Ctx) error {
	who := identityOf(c)
	l, err := s.limits.effective(s.ctx, who.Name)
	if err != nil {
		return err
	}
	_ = l.validate() // fills nil lists
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(fiber.Map{"user": who.Name, "limits": l})
}

func (s *Server) getAdminLimits(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	out := adminLimitsPage{Users: map[string]Limits{}}
	var err error
	if out.Default, _, err = s.limits.get(ctx, limitDefaultKey); err != nil {
		return err
	}
	_ = out.Default.validate()
	kl, err := s.limits.kv.ListKeysFiltered(ctx, limitUserPrefix+"*")
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return broker.Wrap(broker.ErrUnavailable, err, "could not list the limits")
	}
	if kl != nil {
		for key := range kl.Keys() {
			name, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(key, limitUserPrefix))
			if err != nil {
				continue
			}
			l, found, err := s.limits.get(ctx, key)
			if err != nil || !found {
				continue
			}
			_ = l.validate()
			out.Users[string(name)] = l
		}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(out)
}

func (s *Server) putLimits(c *fiber.Ctx, key, what string) error {
	var l Limits
	dec := json.NewDecoder(strings.NewReader(string(c.Body())))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return broker.Errorf(broker.ErrBadRequest, "the body is not a limits object {max_kernels, driver_memory_mb, executor_memory_mb, cores, executors, gpus, allowed_rms, allowed_queues}: %v", err)
	}
	if err := l.validate(); err != nil {
		return err
	}
	val, _ := json.Marshal(l)
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if _, err := s.limits.kv.Put(ctx, key, val); err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "could not store the limits")
	}
	who := identityOf(c)
	s.log.Info().Str("by", actorOf(who)).Str("limits", what).RawJSON("value", val).Msg("limits set")
	return c.JSON(l)
}

func (s *Server) putDefaultLimits(c *fiber.Ctx) error {
	return s.putLimits(c, limitDefaultKey, "default")
}

func limitsUser(c *fiber.Ctx) (string, error) {
	u := c.Params("user")
	if !auth.ValidUserName(u) {
		return "", broker.Errorf(broker.ErrBadRequest, "user: %q is not a user name (letters, digits, . _ @ -)", u)
	}
	return u, nil
}

func (s *Server) putUserLimits(c *fiber.Ctx) error {
	u, err := limitsUser(c)
	if err != nil {
		return err
	}
	return s.putLimits(c, limitUserKey(u), "user "+u)
}

func (s *Server) deleteUserLimits(c *fiber.Ctx) error {
	u, err := limitsUser(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := s.limits.kv.Delete(ctx, limitUserKey(u)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return broker.Wrap(broker.ErrUnavailable, err, "could not remove the limits")
	}
	return c.SendStatus(fiber.StatusNoContent)
}
