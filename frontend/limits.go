package frontend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// userSlots enforces MaxKernelsPerUser across every front-end of the
// installation. A user has limit slots, keys "u.<user>.<n>" of kb_limits;
// starting a kernel takes a free one with an atomic create (which fails
// when another front-end took it first), so no two starts can both see
// room for one more kernel. A slot is given back when the kernel is shut
// down through a front-end; a slot whose kernel ended some other way (it
// died, failed, was culled) or whose record is gone is taken back by the
// next start that finds every slot full. Counting over the kernel cache
// instead would let two front-ends each see room at the same moment.
type userSlots struct {
	kv jetstream.KeyValue
	// grace is how long a slot whose kernel has no record yet counts as
	// taken: the slot is taken before the record is written.
	grace time.Duration
	bus   interface {
		GetKernel(ctx context.Context, id string) (*broker.Kernel, uint64, error)
	}
}

// slotGrace is far longer than writing a record takes.
const slotGrace = 30 * time.Second

// slotValue is a slot's contents.
type slotValue struct {
	Kernel string    `json:"kernel"`
	At     time.Time `json:"at"`
}

// openUserSlots binds kb_limits, creating it (with kb_kernels' replicas)
// for an installation set up before it existed.
func openUserSlots(ctx context.Context, s *Server) (*userSlots, error) {
	kv, err := s.bus.JS.KeyValue(ctx, broker.BucketLimits)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		replicas := 1
		if st, serr := s.bus.Kernels.Status(ctx); serr == nil {
			if si, ok := st.(*jetstream.KeyValueBucketStatus); ok {
				replicas = si.StreamInfo().Config.Replicas
			}
		}
		kv, err = s.bus.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: broker.BucketLimits, Description: "per-user kernel slots (front-ends only)",
			History: 1, Storage: jetstream.FileStorage, Replicas: replicas,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("frontend: bucket %s (per-user limits): %w", broker.BucketLimits, err)
	}
	return &userSlots{kv: kv, grace: slotGrace, bus: s.bus}, nil
}

func slotKey(user string, n int) string {
	// Base64url keeps any user name within the characters keys allow.
	return "u." + base64.RawURLEncoding.EncodeToString([]byte(user)) + "." + strconv.Itoa(n)
}

// acquire takes one of user's limit slots for kernel, or fails with
// ErrLimit. The limit may change (the admin limits); slots beyond a
// lowered limit are simply never looked at again.
func (u *userSlots) acquire(ctx context.Context, user, kernel string, limit int) (string, error) {
	val, _ := json.Marshal(slotValue{Kernel: kernel, At: time.Now().UTC()})
	for round := 0; round < 3; round++ {
		for n := range limit {
			key := slotKey(user, n)
			_, err := u.kv.Create(ctx, key, val)
			if err == nil {
				return key, nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return "", broker.Wrap(broker.ErrUnavailable, err, "could not check the kernel limit of %s", user)
			}
		}
		if !u.reclaim(ctx, user, limit) {
			break
		}
	}
	return "", broker.Errorf(broker.ErrLimit, "User %s has reached the limit of %d kernels (max_kernels); shut one down first", user, limit)
}

// reclaim frees the slots of user whose kernel has ended, reporting
// whether any slot is free now. Each removal is conditional on the slot's
// revision, so a slot retaken meanwhile is left alone.
func (u *userSlots) reclaim(ctx context.Context, user string, limit int) bool {
	freed := false
	for n := range limit {
		key := slotKey(user, n)
		e, err := u.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			freed = true
			continue
		}
		if err != nil {
			continue
		}
		var v slotValue
		if json.Unmarshal(e.Value(), &v) == nil && !u.stale(ctx, v) {
			continue
		}
		if err := u.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err == nil {
			freed = true
		}
	}
	return freed
}

// stale reports whether a slot's kernel no longer counts.
func (u *userSlots) stale(ctx context.Context, v slotValue) bool {
	k, _, err := u.bus.GetKernel(ctx, v.Kernel)
	switch {
	case errors.Is(err, broker.ErrKernelNotFound):
		return time.Since(v.At) > u.grace
	case err != nil:
		return false // unsure: keep counting it
	}
	return k.State.Terminal()
}

// moved records that the kernel in slot key got another id (a
// client-chosen KERNEL_ID was taken).
func (u *userSlots) moved(ctx context.Context, key, kernel string) {
	val, _ := json.Marshal(slotValue{Kernel: kernel, At: time.Now().UTC()})
	_, _ = u.kv.Put(ctx, key, val)
}

// release gives back user's slot held by kernel, if any, among the first
// limit slots (one beyond a since lowered limit is reclaimed later).
func (u *userSlots) release(ctx context.Context, user, kernel string, limit int) {
	for n := range limit {
		if u.releaseKey(ctx, slotKey(user, n), kernel) {
			return
		}
	}
}

// releaseKey frees slot key if one of kernels holds it. The removal is
// conditional, so a slot another start took back meanwhile stays.
func (u *userSlots) releaseKey(ctx context.Context, key string, kernels ...string) bool {
	e, err := u.kv.Get(ctx, key)
	if err != nil {
		return false
	}
	var v slotValue
	if json.Unmarshal(e.Value(), &v) != nil || !slices.Contains(kernels, v.Kernel) {
		return false
	}
	return u.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())) == nil
}
