package workers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
)

// envChunk is the most one reply carries: well below NATS's default
// max_payload (1 MiB).
const envChunk = 256 << 10

// serveEnv answers a launcher that fetches its kernel's environment
// archive itself (a Kubernetes pod, which no worker can write files into):
// on the launcher's own renewal subject, to its own inbox (checked by
// serveRenewals), a worker of the resource manager that holds the
// kernel's trusted handle sends the archive that handle names, a part at
// a time. Nothing in the request chooses the archive: a kernel gets only
// the environment its worker started it in, and only while it runs.
func (p *Pool) serveEnv(m *nats.Msg, id string) {
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	log := p.log.With().Str("kernel_id", id).Logger()
	h, err := p.trustedHandle(ctx, id)
	if err != nil || len(h.Data) == 0 {
		return // not this resource manager's kernel (or not yet started)
	}
	fail := func(why string) {
		r := nats.NewMsg(m.Reply)
		r.Header.Set(broker.HeaderEnvError, why)
		_ = m.RespondMsg(r)
		log.Info().Str("reason", why).Msg("environment request refused")
	}
	if h.Env == nil {
		fail("the kernel was not started in an environment")
		return
	}
	k, _, err := p.bus.GetKernel(ctx, id)
	switch {
	case errors.Is(err, broker.ErrKernelNotFound) || err == nil && k.State.Terminal():
		fail("the kernel has ended")
		return
	case err != nil:
		return
	}
	if p.cfg.Environments == nil {
		fail("this worker has no environment cache")
		return
	}
	var req broker.EnvChunkRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || req.Offset < 0 {
		fail("a request is {\"offset\": N}")
		return
	}
	path, err := p.cfg.Environments.Archive(ctx, h.Env)
	if err != nil {
		fail(err.Error())
		return
	}
	f, err := os.Open(path)
	if err != nil {
		fail(err.Error())
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fail(err.Error())
		return
	}
	buf := make([]byte, min(envChunk, max(0, fi.Size()-req.Offset)))
	n, err := f.ReadAt(buf, req.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		fail(err.Error())
		return
	}
	r := nats.NewMsg(m.Reply)
	r.Data = buf[:n]
	r.Header.Set(broker.HeaderEnvSize, strconv.FormatInt(fi.Size(), 10))
	if err := m.RespondMsg(r); err != nil {
		log.Warn().Err(err).Msg("environment request: reply")
	}
}
