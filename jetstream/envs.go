package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
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
