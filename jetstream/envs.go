package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Envs binds what kernel environments use: their records, the specs of the
// built ones, the archives and the build logs.
type Envs struct {
	Records  jetstream.KeyValue
	Specs    jetstream.KeyValue
	Archives jetstream.ObjectStore
}

// envLayout is what SetupEnvs creates.
func envLayout(replicas int) ([]jetstream.KeyValueConfig, jetstream.ObjectStoreConfig, jetstream.StreamConfig) {
	if replicas < 1 {
		replicas = 1
	}
	kvs := []jetstream.KeyValueConfig{
		{Bucket: broker.BucketEnvironments, Description: "kernel environments: requests and build state", History: 1, Storage: jetstream.FileStorage, Replicas: replicas},
		{Bucket: broker.BucketSpecs, Description: "kernelspecs of built environments, served by every front-end", History: 1, Storage: jetstream.FileStorage, Replicas: replicas},
	}
	obj := jetstream.ObjectStoreConfig{Bucket: broker.ObjectEnvArchives, Description: "packed kernel environments by digest", Storage: jetstream.FileStorage, Replicas: replicas}
	logs := jetstream.StreamConfig{
		Name: broker.StreamBuilds, Description: "environment build logs",
		Subjects: []string{broker.SubjectBuildsAll}, Retention: jetstream.LimitsPolicy,
		Storage: jetstream.FileStorage, Replicas: replicas, MaxAge: 7 * 24 * time.Hour,
		MaxBytes: 256 << 20, Discard: jetstream.DiscardOld,
	}
	return kvs, obj, logs
}

// OpenEnvs binds the environment buckets, creating those that are missing
// (with replicas) so that an installation set up before environments
// existed gains them on first use. Existing ones are left as they are.
func OpenEnvs(ctx context.Context, js jetstream.JetStream, replicas int) (*Envs, error) {
	ctx, cancel := withTimeout(ctx, 30*time.Second)
	defer cancel()
	kvs, objCfg, logs := envLayout(replicas)
	e := &Envs{}
	for i, cfg := range kvs {
		kv, err := js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) {
				kv, err = js.KeyValue(ctx, cfg.Bucket)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		if i == 0 {
			e.Records = kv
		} else {
			e.Specs = kv
		}
	}
	obj, err := js.ObjectStore(ctx, objCfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		obj, err = js.CreateObjectStore(ctx, objCfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			obj, err = js.ObjectStore(ctx, objCfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", objCfg.Bucket, err)
	}
	e.Archives = obj
	if _, err := js.Stream(ctx, logs.Name); errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, logs); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("stream %s: %w", logs.Name, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("stream %s: %w", logs.Name, err)
	}
	return e, nil
}

// SpecFinder is what EnvSpecs needs of the installation's own specs: the
// front-ends' SpecSource and the workers' both are one.
type SpecFinder interface {
	Spec(name string) (*broker.KernelSpec, bool)
}

// EnvSpecs adds the specs of built environments (kb_specs, kept current
// by a watcher) to Base, for front-ends (which serve and start them) and
// workers (which build launches from them). A name Base has is never
// shadowed. Entries that are not well-formed environment specs are
// ignored: an EnvSpec carries facts, never an argv, so whoever writes
// kb_specs can point a spec only at an archive by digest, which workers
// verify.
type EnvSpecs struct {
	Base SpecFinder
	mu   sync.RWMutex
	env  map[string]*broker.KernelSpec
}

// WatchEnvSpecs starts watching kb_specs until ctx ends; it returns once
// the current entries are loaded.
func WatchEnvSpecs(ctx context.Context, kv jetstream.KeyValue, base SpecFinder, log zerolog.Logger) (*EnvSpecs, error) {
	es := &EnvSpecs{Base: base, env: map[string]*broker.KernelSpec{}}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", broker.BucketSpecs, err)
	}
	initial := make(chan struct{})
	go func() {
		defer func() { _ = w.Stop() }()
		first := true
		for e := range w.Updates() {
			if e == nil {
				if first {
					close(initial)
					first = false
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				es.Remove(e.Key())
				continue
			}
			var sp broker.EnvSpec
			if json.Unmarshal(e.Value(), &sp) != nil || sp.Name != e.Key() || !broker.ValidEnvName(sp.Name) || !broker.ValidDigest(sp.Digest) {
				log.Warn().Str("key", e.Key()).Msg("ignoring a malformed environment spec")
				continue
			}
			k := sp.KernelSpec()
			es.mu.Lock()
			es.env[k.Name] = k
			es.mu.Unlock()
		}
		if first {
			close(initial)
		}
	}()
	select {
	case <-initial:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(15 * time.Second):
		return nil, fmt.Errorf("watch %s: no initial values within 15s", broker.BucketSpecs)
	}
	return es, nil
}

// Spec returns Base's spec of that name, else the environment's.
func (e *EnvSpecs) Spec(name string) (*broker.KernelSpec, bool) {
	if k, ok := e.Base.Spec(name); ok {
		return k, ok
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	k, ok := e.env[strings.ToLower(name)]
	return k, ok
}

// Env returns the environment specs, sorted, leaving out names Base has.
func (e *EnvSpecs) Env() []*broker.KernelSpec {
	e.mu.RLock()
	out := make([]*broker.KernelSpec, 0, len(e.env))
	for name, k := range e.env {
		if _, dup := e.Base.Spec(name); !dup {
			out = append(out, k)
		}
	}
	e.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Remove forgets a spec at once (its deletion's watch update follows).
func (e *EnvSpecs) Remove(name string) {
	e.mu.Lock()
	delete(e.env, name)
	e.mu.Unlock()
}
