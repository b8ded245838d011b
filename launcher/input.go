package launcher

// Messages to the kernel: client input from the bus, and the requests
// the launcher makes itself.

import (
	"context"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/launcher/wire"
)

// request sends a message the launcher itself makes on ch. It returns the
// request's msg_id and a channel that receives the reply's content; the
// caller must forget(id) if it stops waiting before the reply.
func (l *launcher) request(inc *incarnation, ch, msgType string, content []byte) (string, <-chan []byte, error) {
	id, hdr := newHeader(msgType, l.session, l.username)
	reply := make(chan []byte, 1)
	l.wmu.Lock()
	l.waiters[id] = reply
	l.wmu.Unlock()
	sg := wire.NewSigner(l.ci.Key)
	err := inc.socks.byChannel(ch).send(sg.Frames(hdr, []byte("{}"), []byte("{}"), content, nil))
	if err != nil {
		l.forget(id)
		return "", nil, err
	}
	return id, reply, nil
}

func (l *launcher) forget(id string) {
	l.wmu.Lock()
	delete(l.waiters, id)
	l.wmu.Unlock()
}

func (l *launcher) sendKernelInfo(inc *incarnation) {
	_, hdr := newHeader("kernel_info_request", l.session, l.username)
	sg := wire.NewSigner(l.ci.Key)
	if err := inc.socks.shell.send(sg.Frames(hdr, []byte("{}"), []byte("{}"), []byte("{}"), nil)); err != nil {
		l.log.Debug().Err(err).Msg("send kernel_info_request")
	}
}

// deliver hands the reply to one of the launcher's own requests to its
// waiter, if any.
func (l *launcher) deliver(parentID, content []byte) {
	l.wmu.Lock()
	ch, ok := l.waiters[string(parentID)]
	if ok {
		delete(l.waiters, string(parentID))
	}
	l.wmu.Unlock()
	if ok {
		ch <- append([]byte(nil), content...)
	}
}

// consumeInput starts the pull of kb.io.<id>.in from the kernel's input
// consumer (kbjs.KernelLink.ConsumeInput), retrying until the launch
// deadline if the bus refuses the subscription. The pull itself outlives
// bus reconnects and leader changes (it pulls again), and the consumer is
// durable, so client input published during an outage still arrives.
func (l *launcher) consumeInput(ctx context.Context) (cc *kbjs.Consumption, err error) {
	deadline := time.Now().Add(time.Duration(l.cfg.LaunchTimeout))
	if rec := l.rec.Load(); rec != nil && !rec.Deadline.IsZero() && rec.Deadline.After(time.Now()) {
		deadline = rec.Deadline
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tries := 0
	err = kbjs.Retry(dctx, time.Until(deadline), func() error {
		tries++
		cc, err = l.tryConsumeInput(dctx)
		return err
	}, nil, func(err error, _ time.Duration) {
		l.log.Warn().Err(err).Int("try", tries).Msg("kernel input consumer: retrying")
	})
	if err == nil && tries > 1 {
		l.log.Info().Int("tries", tries).Msg("kernel input consumer created")
	}
	return cc, err
}

func (l *launcher) tryConsumeInput(ctx context.Context) (*kbjs.Consumption, error) {
	ctx, cancel := context.WithTimeout(ctx, busTimeout)
	defer cancel()
	return l.link.ConsumeInput(ctx, func(m kbjs.InputMsg) {
		select {
		case l.in <- inMsg{channel: m.Channel, frame: m.Frame, session: m.Session, msgID: m.MsgID}:
		case <-l.inStop:
		}
	}, func(err error) {
		l.log.Warn().Err(err).Msg("kernel input")
	})
}

var msgIDKey = []string{"msg_id"}

// forwardInput signs client messages and sends them to the kernel, holding
// them while the kernel restarts.
func (l *launcher) forwardInput() {
	sg := wire.NewSigner(l.ci.Key)
	for {
		var m inMsg
		select {
		case m = <-l.in:
		case <-l.inStop:
			return
		}
		if m.msgID == "" {
			var v [1][]byte
			_ = scanStrings(m.frame.Header, msgIDKey, v[:])
			m.msgID = string(v[0])
		}
		l.routes.put(m.msgID, m.session)
		gate, inc := l.gateAndKernel()
		select {
		case <-gate:
		case <-l.inStop:
			return
		}
		if inc == nil {
			continue
		}
		f := &m.frame
		frames := sg.Frames(f.Header, f.ParentHeader, f.Metadata, f.Content, f.Buffers)
		if err := inc.socks.byChannel(m.channel).send(frames); err != nil {
			l.log.Warn().Err(err).Str("channel", m.channel).Msg("send to kernel")
		}
	}
}
