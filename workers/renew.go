package workers

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats.go"
)

// serveRenewals answers launchers asking for fresh credentials
// (access.SubjectRenew) while their kernels run. Only a kernel's own
// launcher may publish on its subject (the launcher template), and the
// reply must go to that kernel's inboxes. Every resource manager's
// workers form a queue group of their own; one of the group whose
// resource manager holds the kernel's trusted handle answers, the others
// stay silent.
func (p *Pool) serveRenewals() (*nats.Subscription, error) {
	return p.bus.NC.QueueSubscribe(access.SubjectRenewAll, "kb-creds-"+p.be.Name(), func(m *nats.Msg) {
		id := strings.TrimPrefix(m.Subject, "kb.creds.")
		if !access.ValidKernelID(id) || !strings.HasPrefix(m.Reply, broker.InboxPrefix(id)+".") {
			p.log.Warn().Str("subject", m.Subject).Str("reply", m.Reply).Msg("credential renewal request not from a kernel's inbox; ignored")
			return
		}
		if m.Header.Get(broker.HeaderType) == broker.TypeEnvRequest {
			p.routines.Go(func() { p.serveEnv(m, id) })
			return
		}
		p.routines.Go(func() { p.renew(m, id) })
	})
}

func (p *Pool) renew(m *nats.Msg, id string) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	log := p.log.With().Str("kernel_id", id).Logger()
	h, err := p.trustedHandle(ctx, id)
	if err != nil {
		log.Warn().Err(err).Msg("credential renewal: handle unreadable")
		return
	}
	if len(h.Data) == 0 {
		// Not started by this resource manager: its own workers answer.
		return
	}
	var reply access.RenewReply
	k, _, err := p.bus.GetKernel(ctx, id)
	switch {
	case errors.Is(err, broker.ErrKernelNotFound) || err == nil && k.State.Terminal():
		reply.Error = access.ErrKernelEnded.Error()
	case err != nil:
		log.Warn().Err(err).Msg("credential renewal: record unreadable")
		return
	default:
		reply.Creds, err = p.cfg.Minter.LauncherCreds(id, p.cfg.LauncherCredsTTL)
		if err != nil {
			reply.Error = err.Error()
		}
	}
	b, _ := json.Marshal(reply)
	if err := m.Respond(b); err != nil {
		log.Warn().Err(err).Msg("credential renewal: reply")
		return
	}
	if reply.Error != "" {
		log.Info().Str("reason", reply.Error).Msg("credential renewal refused")
	} else {
		log.Debug().Msg("credentials renewed")
	}
}
