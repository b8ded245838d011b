package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/kernelbus/kernelbus/frontend"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// part is whatever a command starts and must stop: the embedded NATS, a
// worker pool, a front-end, the duties, a connection. Start's ctx bounds
// starting; the part runs until Stop, which waits up to its ctx.
type part interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// parts starts parts in order and stops the ones that started in reverse
// order, in one place, whichever way the command ends.
type parts struct {
	log   zerolog.Logger
	names []string
	ps    []part
}

// start starts p and, when it started, makes stopAll stop it.
func (r *parts) start(ctx context.Context, name string, p part) error {
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.names = append(r.names, name)
	r.ps = append(r.ps, p)
	return nil
}

// onStop runs stop at stopAll, in its place in the reverse order.
func (r *parts) onStop(name string, stop func(context.Context) error) {
	_ = r.start(context.Background(), name, stopper(stop))
}

// stopAll stops every started part, the last started first, all within
// grace. It may be called again; it then does nothing.
func (r *parts) stopAll(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	for i := len(r.ps) - 1; i >= 0; i-- {
		if err := r.ps[i].Stop(ctx); err != nil {
			r.log.Warn().Err(err).Str("part", r.names[i]).Msg("stopping")
		}
	}
	r.names, r.ps = nil, nil
}

// stopper is a part with nothing to start.
type stopper func(context.Context) error

func (stopper) Start(context.Context) error      { return nil }
func (s stopper) Stop(ctx context.Context) error { return s(ctx) }

// closeConn is the stop of a NATS connection.
func closeConn(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		err := nc.Drain()
		nc.Close()
		return err
	}
}

// served is a front-end serving on a listener: Start starts the front-end
// and serves; Stop stops both. done closes when serving ends, for any
// reason; err says why when it was not Stop.
type served struct {
	fe   *frontend.Server
	ln   net.Listener
	done chan struct{}
	err  error
}

func (s *served) Start(ctx context.Context) error {
	if err := s.fe.Start(ctx); err != nil {
		_ = s.ln.Close()
		return err
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		s.err = s.fe.Serve(s.ln)
	}()
	return nil
}

func (s *served) Stop(ctx context.Context) error {
	err := s.fe.Stop(ctx)
	select {
	case <-s.done:
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	return err
}

// serveFrontend listens on --listen, serves fe there and campaigns for the
// duties as holder; run stops them. It returns the front-end's URL.
func serveFrontend(ctx context.Context, run *parts, ff *frontendFlags, df *dutyFlags, fe *frontend.Server, bus *kbjs.Bus,
	holder string, reg *prometheus.Registry, log zerolog.Logger) (*served, string, error) {
	d, err := df.duties(ctx, bus, holder, log)
	if err != nil {
		return nil, "", err
	}
	if err := metrics.RegisterDuties(reg, holder, d); err != nil {
		return nil, "", err
	}
	ln, scheme, err := listen(ff.listen, ff.tls, log)
	if err != nil {
		return nil, "", err
	}
	web := &served{fe: fe, ln: ln}
	if err := run.start(ctx, "front-end", web); err != nil {
		return nil, "", err
	}
	if err := run.start(ctx, "duties", d); err != nil {
		return nil, "", err
	}
	return web, scheme + "://" + ln.Addr().String() + ff.baseURL, nil
}
