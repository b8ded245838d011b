package frontend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// adminEnvLimits are the per-user limits administrators set (the admin
// panel's, kept in kb_limits as "limit.user.<base64url user>", else
// "limit.default"), as far as environments are concerned. Only the fields
// read here are decoded; zero or an empty list means no limit.
type adminEnvLimits struct {
	DriverMemoryMB int      `json:"driver_memory_mb"`
	Cores          int      `json:"cores"`
	Executors      int      `json:"executors"`
	GPUs           int      `json:"gpus"`
	AllowedRMs     []string `json:"allowed_rms"`
}

// userEnvLimits reads user's admin limits; found is false when neither
// the user's nor the default is set (or there is no kb_limits).
func (s *Server) userEnvLimits(ctx context.Context, user string) (l adminEnvLimits, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := s.bus.JS.KeyValue(ctx, broker.BucketLimits)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return l, false, nil
	}
	if err != nil {
		return l, false, broker.Wrap(broker.ErrUnavailable, err, "could not read the limits")
	}
	for _, key := range []string{"limit.user." + base64.RawURLEncoding.EncodeToString([]byte(user)), "limit.default"} {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return l, false, broker.Wrap(broker.ErrUnavailable, err, "could not read the limits")
		}
		if err := json.Unmarshal(e.Value(), &l); err != nil {
			return l, false, broker.Wrap(broker.ErrUnavailable, err, "the stored limits %s are not valid JSON", key)
		}
		return l, true, nil
	}
	return l, false, nil
}

// checkAdminLimits refuses an environment whose resources or resource
// manager are beyond the caller's admin limits; administrators are bound
// by the installation's limits only.
func (s *Server) checkAdminLimits(ctx context.Context, user string, req *envRequest) error {
	l, found, err := s.userEnvLimits(ctx, user)
	if err != nil || !found {
		return err
	}
	r := req.Resources
	for _, x := range []struct {
		field, limit string
		v, max       int
		unit         string
	}{
		{"resources.memory_mb", "driver_memory_mb", r.MemoryMB, l.DriverMemoryMB, " MB"},
		{"resources.cpus", "cores", r.CPUs, l.Cores, " cores"},
		{"resources.gpus", "gpus", r.GPUs, l.GPUs, " GPUs"},
		{"resources.executors", "executors", r.Executors, l.Executors, " executors"},
	} {
		if x.max > 0 && x.v > x.max {
			return bad("%s: %d is above your limit of %d%s (%s, set by an administrator)", x.field, x.v, x.max, x.unit, x.limit)
		}
	}
	if len(l.AllowedRMs) > 0 && !slices.Contains(l.AllowedRMs, req.RM) {
		return bad("rm: your limits allow only %s (allowed_rms, set by an administrator)", strings.Join(l.AllowedRMs, ", "))
	}
	return nil
}
