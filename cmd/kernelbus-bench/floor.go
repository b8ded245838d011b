package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/launcher/wire"
)

// floorTarget starts kernels itself and speaks ZMQ straight to them, as
// jupyter_client does without any gateway: the floor a gateway is
// compared to. It signs with the launcher's own code (launcher/wire).
type floorTarget struct {
	specs map[string]broker.KernelSpec
	dir   string
}

func (f *floorTarget) Name() string { return "floor" }

// errExitedEarly: the kernel process ended before its ports answered,
// typically because one was taken between picking and binding it.
var errExitedEarly = errors.New("kernel exited before its sockets were reachable")

// Start starts the kernel; like the launcher, it starts it again on fresh
// ports when it exits before its sockets answer (a port taken between
// picking and binding it, which concurrent starts make likely).
func (f *floorTarget) Start(ctx context.Context, spec string) (session, error) {
	for try := 0; ; try++ {
		s, err := f.start(ctx, spec)
		if errors.Is(err, errExitedEarly) && try < 3 {
			continue
		}
		return s, err
	}
}

func (f *floorTarget) start(ctx context.Context, spec string) (session, error) {
	ks, ok := f.specs[spec]
	if !ok {
		return nil, fmt.Errorf("no kernelspec %q", spec)
	}
	ci, err := wire.NewConnInfo("127.0.0.1", spec)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(f.dir, "floor-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kernel.json")
	if err := ci.Write(path); err != nil {
		return nil, err
	}
	argv := make([]string, len(ks.Argv))
	for i, a := range ks.Argv {
		argv[i] = strings.ReplaceAll(a, "{connection_file}", path)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &zmqSession{cmd: cmd, dir: dir, sg: wire.NewSigner(ci.Key), session: client.NewID(),
		shellIn: make(chan [][]byte, 64), iopubIn: make(chan [][]byte, 4096), exited: make(chan struct{}), stop: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	if err := s.dial(ctx, ci); err != nil {
		s.kill()
		return nil, err
	}
	timeout := 60 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if err := s.KernelInfo(timeout); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// zmqSession is a client of one kernel's sockets.
type zmqSession struct {
	cmd     *exec.Cmd
	dir     string
	sg      *wire.Signer
	session string
	shell   zmq4.Socket
	control zmq4.Socket
	iopub   zmq4.Socket
	shellIn chan [][]byte
	iopubIn chan [][]byte
	exited  chan struct{}
	// stop ends the readers when the session closes.
	stop    chan struct{}
	readers sync.WaitGroup
}

func (s *zmqSession) dial(ctx context.Context, ci *wire.ConnInfo) error {
	opts := []zmq4.Option{zmq4.WithDialerRetry(5 * time.Millisecond), zmq4.WithDialerMaxRetries(-1),
		zmq4.WithDialerTimeout(5 * time.Second)}
	id := zmq4.SocketIdentity(s.session)
	s.shell = zmq4.NewDealer(context.Background(), append(opts, zmq4.WithID(id))...)
	s.control = zmq4.NewDealer(context.Background(), opts...)
	s.iopub = zmq4.NewSub(context.Background(), opts...)
	if err := s.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		for _, d := range []struct {
			s    zmq4.Socket
			port int
		}{{s.shell, ci.ShellPort}, {s.control, ci.ControlPort}, {s.iopub, ci.IOPubPort}} {
			if err := d.s.Dial(ci.Endpoint(d.port)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-s.exited:
		return errExitedEarly
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, r := range []struct {
		s  zmq4.Socket
		ch chan [][]byte
	}{{s.shell, s.shellIn}, {s.iopub, s.iopubIn}} {
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			defer close(r.ch)
			for {
				m, err := r.s.Recv()
				if err != nil {
					return
				}
				select {
				case r.ch <- m.Frames:
				case <-s.stop:
					return
				}
			}
		}()
	}
	return nil
}

func (s *zmqSession) send(sock zmq4.Socket, msgType string, content any) (string, error) {
	id, h, c, err := client.Request(msgType, s.session, "bench", content)
	if err != nil {
		return "", err
	}
	return id, sock.SendMulti(zmq4.NewMsgFrom(s.sg.Frames(h, []byte("{}"), []byte("{}"), c, nil)...))
}

func (s *zmqSession) KernelInfo(timeout time.Duration) error {
	id, err := s.send(s.shell, "kernel_info_request", map[string]any{})
	if err != nil {
		return err
	}
	_, err = s.await(id, timeout, true)
	return err
}

func (s *zmqSession) Execute(code string, timeout time.Duration) (*result, error) {
	id, err := s.send(s.shell, "execute_request", map[string]any{"code": code, "silent": false,
		"store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true})
	if err != nil {
		return nil, err
	}
	return s.await(id, timeout, false)
}

// await reads until the reply to id and, unless replyOnly, its idle status.
func (s *zmqSession) await(id string, timeout time.Duration, replyOnly bool) (*result, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	r := &result{}
	replied, idle := false, replyOnly
	for !replied || !idle {
		var frames [][]byte
		var ok bool
		select {
		case frames, ok = <-s.shellIn:
		case frames, ok = <-s.iopubIn:
		case <-t.C:
			return r, fmt.Errorf("awaiting reply to %s: %w", id, errTimeout)
		}
		if !ok {
			return r, errors.New("kernel connection closed")
		}
		w, err := wire.Split(frames)
		if err != nil {
			continue
		}
		ph, _ := parseHeader(w.ParentHeader)
		if ph.MsgID != id {
			continue
		}
		h, _ := parseHeader(w.Header)
		switch {
		case strings.HasSuffix(h.MsgType, "_reply"):
			var st struct{ Status string }
			_ = json.Unmarshal(w.Content, &st)
			r.Status, replied = st.Status, true
		case h.MsgType == "status":
			idle = idle || bytes.Contains(w.Content, []byte(`"idle"`))
		case h.MsgType == "execute_input":
		default:
			r.Outputs++
			for _, f := range frames {
				r.Bytes += int64(len(f))
			}
		}
	}
	return r, nil
}

func (s *zmqSession) Close(ctx context.Context) error {
	_, _ = s.send(s.control, "shutdown_request", map[string]any{"restart": false})
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	s.kill()
	return nil
}

// kill ends the kernel's process group and the sockets.
func (s *zmqSession) kill() {
	if s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-s.exited
	close(s.stop)
	for _, c := range []zmq4.Socket{s.shell, s.control, s.iopub} {
		if c != nil {
			_ = c.Close()
		}
	}
	s.readers.Wait()
	_ = os.RemoveAll(s.dir)
}
