package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats.go"
)

// UnpackEnv unpacks an environment archive read from r, whose bytes must
// hash to digest, into cache/<digest> and returns that folder;
// cmd/kernelbus-launcher sets it to envs.UnpackInto (the launcher package
// does not import the workers'). Nil: launches that need it fail.
var UnpackEnv func(cache, digest string, r io.Reader) (string, error)

// needsEnv reports whether the launch still names {env_prefix}: its worker
// could not bring the environment where the kernel runs (a Kubernetes
// pod), so the launcher fetches it.
func needsEnv(cfg *broker.LaunchConfig) bool {
	if cfg.Environment == nil {
		return false
	}
	ph := "{" + broker.EnvPrefixVar + "}"
	for _, a := range cfg.Argv {
		if strings.Contains(a, ph) {
			return true
		}
	}
	for _, v := range cfg.Env {
		if strings.Contains(v, ph) {
			return true
		}
	}
	return false
}

// fetchEnv brings the kernel's environment archive from the workers over
// the launcher's own renewal subject, a part at a time (workers/envserve.go:
// they send only the archive the kernel's trusted handle names), unpacks
// it into the temp folder and fills {env_prefix} in. The workers answer
// once the kernel's handle is recorded, which may be just after the
// launcher starts: unanswered requests are repeated until the launch
// timeout.
func (l *launcher) fetchEnv(ctx context.Context) error {
	if UnpackEnv == nil {
		return errors.New("this launcher cannot unpack environments")
	}
	ref := l.cfg.Environment
	ctx, cancel := context.WithTimeout(ctx, time.Duration(l.cfg.LaunchTimeout))
	defer cancel()
	t0 := time.Now()
	cache := filepath.Join(os.TempDir(), "kernelbus-envs")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(l.pullEnv(ctx, pw)) }()
	dir, err := UnpackEnv(cache, ref.Digest, pr)
	_ = pr.CloseWithError(errors.New("done"))
	if err != nil {
		return fmt.Errorf("environment %s: %w", ref.Name, err)
	}
	l.log.Info().Str("env", ref.Name).Str("dir", dir).Dur("took", time.Since(t0)).Msg("environment fetched and unpacked")
	l.cfg.FillEnvPrefix(dir)
	return nil
}

// pullEnv writes the archive's bytes to w.
func (l *launcher) pullEnv(ctx context.Context, w io.Writer) error {
	var off int64
	for {
		body, _ := json.Marshal(broker.EnvChunkRequest{Offset: off})
		req := nats.NewMsg(access.SubjectRenew(l.id))
		req.Header.Set(broker.HeaderType, broker.TypeEnvRequest)
		req.Data = body
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := l.nc.RequestMsgWithContext(rctx, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("no worker sent the environment: %w", err)
			}
			// No worker answers yet (the handle is being recorded).
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
			continue
		}
		if why := m.Header.Get(broker.HeaderEnvError); why != "" {
			return errors.New(why)
		}
		size, err := strconv.ParseInt(m.Header.Get(broker.HeaderEnvSize), 10, 64)
		if err != nil {
			return fmt.Errorf("a worker's reply has no size: %w", err)
		}
		if len(m.Data) == 0 && off < size {
			return errors.New("a worker's reply is empty")
		}
		if _, err := w.Write(m.Data); err != nil {
			return err
		}
		off += int64(len(m.Data))
		if off >= size {
			return nil
		}
	}
}
