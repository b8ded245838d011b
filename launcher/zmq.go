package launcher

import (
	"context"
	"fmt"
	stdlog "log"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/kernelbus/kernelbus/launcher/wire"
	"github.com/rs/zerolog"
)

// bufferedTCP is the buffered TCP transport of launcher/wire (registered
// with zmq4 when that package loads).
const bufferedTCP = wire.BufferedTCP

// Jupyter channel names.
const (
	chShell   = "shell"
	chControl = "control"
	chStdin   = "stdin"
	chIOPub   = "iopub"
)

// dialRetry is how often a socket retries to reach a kernel that has not
// bound its ports yet (kernels take 0.5–3 s); zmq4 gives up after ~2.5 s
// by default, so sockets here retry until they are closed. A failed
// loopback connect costs microseconds, while a kernel that binds in 5 ms
// (kb-synthkernel) waited a whole period: 50 ms was most of kernelbus's
// start overhead for it (kernelbus-bench, scenario 1).
const dialRetry = 10 * time.Millisecond

// sendSocket serialises writes on one socket: zmq4 sockets are not safe
// for concurrent senders, and the nudge loop, control operations and the
// input forwarder all write to shell or control.
type sendSocket struct {
	mu sync.Mutex
	s  zmq4.Socket
}

func (s *sendSocket) send(frames [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// SendMulti writes all frames with one writev instead of one write per
	// frame.
	return s.s.SendMulti(zmq4.NewMsgFrom(frames...))
}

// sockets are the launcher's five ZMQ sockets to one kernel process.
type sockets struct {
	shell, control, stdin sendSocket
	iopub                 zmq4.Socket
	hb                    zmq4.Socket
	closeOnce             sync.Once
}

// newSockets creates the sockets; nothing is dialed yet. shell and stdin
// share identity, or the kernel's input_request would not find its way.
func newSockets(identity string, log zerolog.Logger) (*sockets, error) {
	zl := stdlog.New(zmqLog{log}, "", 0)
	common := []zmq4.Option{
		zmq4.WithDialerRetry(dialRetry),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithDialerTimeout(5 * time.Second),
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithTimeout(30 * time.Second),
		zmq4.WithLogger(zl),
	}
	with := func(extra ...zmq4.Option) []zmq4.Option {
		return append(append([]zmq4.Option(nil), common...), extra...)
	}
	ctx := context.Background() // each socket is ended by Close
	id := zmq4.SocketIdentity(identity)
	s := &sockets{}
	s.shell.s = zmq4.NewDealer(ctx, with(zmq4.WithID(id))...)
	s.stdin.s = zmq4.NewDealer(ctx, with(zmq4.WithID(id))...)
	s.control.s = zmq4.NewDealer(ctx, with()...)
	s.iopub = zmq4.NewSub(ctx, with()...)
	s.hb = zmq4.NewReq(ctx, with()...)
	// Subscribing before dialing makes zmq4 send the subscription as part
	// of every (re)connection.
	if err := s.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// dial connects every socket to the kernel. It returns once all are
// connected, or with an error when a handshake fails or the sockets are
// closed.
func (s *sockets) dial(ci *connInfo) error {
	for _, d := range []struct {
		name string
		sock zmq4.Socket
		port int
	}{
		{chShell, s.shell.s, ci.ShellPort},
		{chControl, s.control.s, ci.ControlPort},
		{chStdin, s.stdin.s, ci.StdinPort},
		{chIOPub, s.iopub, ci.IOPubPort},
		{"hb", s.hb, ci.HBPort},
	} {
		if err := d.sock.Dial(ci.endpoint(d.port)); err != nil {
			return fmt.Errorf("connect to the kernel's %s port %d: %w", d.name, d.port, err)
		}
	}
	return nil
}

func (s *sockets) byChannel(ch string) *sendSocket {
	switch ch {
	case chShell:
		return &s.shell
	case chControl:
		return &s.control
	case chStdin:
		return &s.stdin
	}
	return nil
}

func (s *sockets) close() {
	s.closeOnce.Do(func() {
		for _, c := range []zmq4.Socket{s.shell.s, s.control.s, s.stdin.s, s.iopub, s.hb} {
			if c != nil {
				_ = c.Close()
			}
		}
	})
}

// zmqLog sends zmq4's own log lines to zerolog.
type zmqLog struct{ log zerolog.Logger }

func (z zmqLog) Write(p []byte) (int, error) {
	z.log.Debug().Str("component", "zmq4").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
