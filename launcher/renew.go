package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/access"
)

// credentials are the launcher's own bus credentials, renewed while its
// kernel runs. They stay in memory only.
type credentials struct {
	cur  atomic.Pointer[[]byte]
	info atomic.Pointer[access.CredsInfo]
}

func (c *credentials) get() []byte { return *c.cur.Load() }

// renewCredentials keeps the launcher's expiring credentials fresh: at
// half of their remaining life it asks the workers (access.SubjectRenew)
// for new ones and reconnects with them, since a server checks
// credentials only when a client connects and drops the connection when
// they expire. Workers renew only while the kernel runs, so a kernel's
// credentials stop working at most one validity after it ended. It
// returns when ctx ends, or at once for credentials that do not expire.
func (l *launcher) renewCredentials(ctx context.Context) {
	for {
		info := l.creds.info.Load()
		if info == nil || info.Expires.IsZero() {
			return
		}
		left := time.Until(info.Expires)
		wait := max(left/2, 500*time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := l.renewOnce(ctx); err != nil {
			if errors.Is(err, access.ErrKernelEnded) {
				l.log.Info().Msg("credentials not renewed: the kernel has ended")
				return
			}
			l.log.Warn().Err(err).Time("expires", info.Expires).Msg("credential renewal failed; retrying")
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(max(time.Until(info.Expires)/4, 500*time.Millisecond), 30*time.Second)):
			}
		}
	}
}

func (l *launcher) renewOnce(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := l.nc.RequestWithContext(rctx, access.SubjectRenew(l.id), nil)
	if err != nil {
		return err
	}
	var r access.RenewReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return err
	}
	if r.Error == access.ErrKernelEnded.Error() {
		return access.ErrKernelEnded
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	creds := []byte(r.Creds)
	info, err := access.ReadCreds(creds)
	if err != nil {
		return err
	}
	if info.Name != l.id {
		return errors.New("renewed credentials are for another kernel")
	}
	l.creds.cur.Store(&creds)
	l.creds.info.Store(&info)
	// The live connection keeps the old credentials until it reconnects:
	// reconnect now, on our schedule, rather than be cut at their expiry.
	// What was published so far reaches the server first, so the
	// reconnect drops nothing in flight (a lost publish would wait for its
	// ack to time out before being sent again).
	if err := l.nc.FlushTimeout(5 * time.Second); err != nil {
		l.log.Warn().Err(err).Msg("flush before reconnecting with renewed credentials")
	}
	return l.nc.ForceReconnect()
}
