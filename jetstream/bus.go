package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bus bundles a connection with the streams and buckets kernelbus uses.
type Bus struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	Kernels  jetstream.KeyValue
	Activity jetstream.KeyValue
	Sessions jetstream.KeyValue
	Workers  jetstream.KeyValue
	// Handles holds each kernel's trusted handle (workers write it).
	Handles jetstream.KeyValue
	// NotebookSessions holds /api/sessions entries.
	NotebookSessions jetstream.KeyValue
}

// Setup creates or updates every stream and bucket (idempotent), then
// returns the Bus. Call it from the process that owns the installation
// (serve) or from an operator's setup step.
func Setup(ctx context.Context, nc *nats.Conn, l Layout) (*Bus, error) {
	ctx, cancel := withTimeout(ctx, 30*time.Second)
	defer cancel()
	js, err := New(nc)
	if err != nil {
		return nil, err
	}
	keepExisting(ctx, js, &l)
	l.defaults()
	streams := []jetstream.StreamConfig{
		{
			Name:        broker.StreamRequests,
			Description: "kernel start/stop requests, one work queue per resource manager",
			Subjects:    []string{broker.SubjectRequestsAll},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			Duplicates:  10 * time.Minute,
			MaxAge:      24 * time.Hour,
		},
		{
			Name:        broker.StreamEvents,
			Description: "audit log: every kernel lifecycle event",
			Subjects:    []string{broker.SubjectEventsAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			Duplicates:  time.Hour,
			MaxAge:      l.EventsMaxAge,
			MaxBytes:    l.EventsMaxBytes,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:              broker.StreamIO,
			Description:       "kernel traffic and its replay window",
			Subjects:          []string{broker.SubjectIOAll},
			Retention:         jetstream.LimitsPolicy,
			Storage:           storage(l.IOMemory),
			Replicas:          l.Replicas,
			MaxAge:            l.IOMaxAge,
			MaxBytes:          l.IOMaxBytes,
			MaxMsgsPerSubject: l.IOMaxMsgsPerSubject,
			Discard:           jetstream.DiscardOld,
			Duplicates:        2 * time.Minute,
			// Front-ends read the body of an output message their
			// headers-only consumer announced, when the live path did
			// not carry it (Bus.OutputBody).
			AllowDirect: true,
		},
	}
	for _, sc := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
		}
	}
	buckets := []jetstream.KeyValueConfig{
		{Bucket: broker.BucketKernels, Description: "kernel records", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: broker.BucketActivity, Description: "kernel execution state and last activity", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: broker.BucketSessions, Description: "websocket sessions and replay cursors", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: 7 * 24 * time.Hour},
		{Bucket: broker.BucketNotebookSessions, Description: "notebook sessions (/api/sessions)", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: broker.BucketWorkers, Description: "worker presence", History: 1, Storage: jetstream.MemoryStorage, Replicas: l.Replicas, TTL: l.PresenceTTL},
		{Bucket: broker.BucketHandles, Description: "what each kernel's worker started (written by workers only)", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: broker.BucketLeases, Description: "leases of duties that run in one process at a time", History: 1, Storage: jetstream.MemoryStorage, Replicas: l.Replicas, TTL: l.LeaseTTL},
		{Bucket: broker.BucketLimits, Description: "per-user kernel slots (front-ends only)", History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
	}
	for _, bc := range buckets {
		if _, err := js.CreateOrUpdateKeyValue(ctx, bc); err != nil {
			return nil, fmt.Errorf("bucket %s: %w", bc.Bucket, err)
		}
	}
	if _, err := OpenEnvs(ctx, js, l.Replicas); err != nil {
		return nil, err
	}
	return Open(ctx, nc)
}

// keepExisting fills the retention settings l leaves at zero from the
// installation's current streams and buckets, so that a part started
// without them does not reset what an operator configured.
func keepExisting(ctx context.Context, js jetstream.JetStream, l *Layout) {
	if l.EventsMaxAge <= 0 || l.EventsMaxBytes <= 0 {
		if st, err := js.Stream(ctx, broker.StreamEvents); err == nil {
			cfg := st.CachedInfo().Config
			if l.EventsMaxAge <= 0 {
				l.EventsMaxAge = cfg.MaxAge
			}
			if l.EventsMaxBytes <= 0 {
				l.EventsMaxBytes = cfg.MaxBytes
			}
		}
	}
	if l.PresenceTTL <= 0 {
		if kv, err := js.KeyValue(ctx, broker.BucketWorkers); err == nil {
			if st, err := kv.Status(ctx); err == nil {
				l.PresenceTTL = st.TTL()
			}
		}
	}
	if l.LeaseTTL <= 0 {
		if kv, err := js.KeyValue(ctx, broker.BucketLeases); err == nil {
			if st, err := kv.Status(ctx); err == nil {
				l.LeaseTTL = st.TTL()
			}
		}
	}
}

// Open binds to an existing installation. It fails with ErrNoInstallation
// when the streams are missing.
func Open(ctx context.Context, nc *nats.Conn) (*Bus, error) {
	ctx, cancel := withTimeout(ctx, 15*time.Second)
	defer cancel()
	js, err := New(nc)
	if err != nil {
		return nil, err
	}
	b := &Bus{NC: nc, JS: js}
	for _, x := range []struct {
		name string
		dst  *jetstream.KeyValue
	}{
		{broker.BucketKernels, &b.Kernels},
		{broker.BucketActivity, &b.Activity},
		{broker.BucketSessions, &b.Sessions},
		{broker.BucketWorkers, &b.Workers},
		{broker.BucketHandles, &b.Handles},
		{broker.BucketNotebookSessions, &b.NotebookSessions},
	} {
		kv, err := js.KeyValue(ctx, x.name)
		if err != nil {
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return nil, fmt.Errorf("bucket %s: %w", x.name, ErrNoInstallation)
			}
			return nil, fmt.Errorf("bucket %s: %w", x.name, err)
		}
		*x.dst = kv
	}
	return b, nil
}

func storage(mem bool) jetstream.StorageType {
	if mem {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}
