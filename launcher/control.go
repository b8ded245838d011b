package launcher

// Control requests on kb.ctl.<id>: interrupt, restart, shutdown, ping.

import (
	"encoding/json"
	"fmt"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
)

func (l *launcher) onControl(m *nats.Msg) {
	var req broker.ControlRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		l.reply(m, broker.ControlReply{Error: "bad control request: " + err.Error()})
		return
	}
	switch req.Op {
	case broker.OpPing:
		l.reply(m, l.status(nil))
	case broker.OpShutdown:
		l.smu.Lock()
		if l.finished {
			l.smu.Unlock()
			l.reply(m, l.status(nil))
			return
		}
		l.shutdownReqs = append(l.shutdownReqs, m)
		l.smu.Unlock()
		why := "shutdown requested"
		if req.User != "" {
			why += " by " + req.User
		}
		if req.Reason != "" {
			why = req.Reason
		}
		l.requestShutdown(why, req.RequestID)
	case broker.OpInterrupt, broker.OpRestart:
		select {
		case l.cmds <- command{req: req, msg: m}:
		default:
			l.reply(m, broker.ControlReply{Error: "too many control requests waiting; try again"})
		}
	default:
		l.reply(m, broker.ControlReply{Error: fmt.Sprintf("unknown control op %q", req.Op)})
	}
}

// requestShutdown makes shutdown idempotent: the first caller's reason
// wins, later ones only wait for the same end.
func (l *launcher) requestShutdown(why, requestID string) {
	l.shutdownOnce.Do(func() {
		l.shutdownWhy, l.shutdownReqID = why, requestID
		close(l.shutdown)
	})
}

// finishControl answers every request still waiting when the launcher
// leaves: shutdowns succeed (the kernel is gone), other operations fail.
func (l *launcher) finishControl() {
	l.smu.Lock()
	l.finished = true
	reqs := l.shutdownReqs
	l.shutdownReqs = nil
	l.smu.Unlock()
	for _, m := range reqs {
		l.reply(m, l.status(nil))
	}
	for {
		select {
		case c := <-l.cmds:
			l.reply(c.msg, l.status(broker.Errorf(broker.ErrKernelGone, "kernel %s is %s", l.id, l.state.Load())))
		default:
			return
		}
	}
}

func (l *launcher) status(err error) broker.ControlReply {
	r := broker.ControlReply{OK: err == nil, State: l.state.Load().(broker.State), PID: int(l.pid.Load())}
	if err != nil {
		r.Error = err.Error()
	}
	if r.State.Terminal() {
		r.PID = 0
	}
	return r
}

func (l *launcher) reply(m *nats.Msg, r broker.ControlReply) {
	if m == nil || m.Reply == "" {
		return
	}
	data, _ := json.Marshal(r)
	out := &nats.Msg{Subject: m.Reply, Data: data, Header: nats.Header{}}
	out.Header.Set(broker.HeaderType, broker.TypeControl)
	if err := l.nc.PublishMsg(out); err != nil {
		l.log.Warn().Err(err).Msg("answer control request")
	}
}
