package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
)

// session is one started kernel with one open client connection. Every
// scenario drives kernels only through it, so the scenario code is the
// same for every target: the two gateways (websocket) and the floor (ZMQ
// straight to the kernel).
type session interface {
	// KernelInfo sends kernel_info_request and waits for its reply.
	KernelInfo(timeout time.Duration) error
	// Execute runs code and waits for its reply and the idle status.
	Execute(code string, timeout time.Duration) (*result, error)
	// Close closes the connection and shuts the kernel down.
	Close(ctx context.Context) error
}

// result counts what came back for one request.
type result struct {
	Status string
	// Outputs counts stream and display_data messages; Bytes their size on
	// the client's wire.
	Outputs int
	Bytes   int64
}

// target starts kernels.
type target interface {
	Name() string
	// Start starts a kernel of spec and connects to it; it returns once the
	// kernel's kernel_info_reply arrived on that connection.
	Start(ctx context.Context, spec string) (session, error)
}

var errReplyStatus = errors.New("reply status is not ok")

// wsSession is a kernel behind a gateway, over the kernel websocket.
type wsSession struct {
	c    *client.Client
	id   string
	conn *client.Conn
}

// startGateway POSTs the kernel, opens its websocket and waits for
// kernel_info_reply: what a notebook does when it opens.
func startGateway(ctx context.Context, c *client.Client, spec string, v1 bool) (*wsSession, error) {
	// JEG refuses root (its default unauthorized_users), so every target gets a user.
	m, err := c.StartKernel(ctx, spec, map[string]string{"KERNEL_USERNAME": "bench"})
	if err != nil {
		return nil, err
	}
	conn, err := c.Connect(ctx, m.ID, "", v1)
	if err != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.DeleteKernel(dctx, m.ID)
		return nil, err
	}
	s := &wsSession{c: c, id: m.ID, conn: conn}
	deadline := 60 * time.Second
	if d, ok := ctx.Deadline(); ok {
		deadline = time.Until(d)
	}
	if err := s.KernelInfo(deadline); err != nil {
		_ = s.Close(context.Background())
		return nil, err
	}
	return s, nil
}

func (s *wsSession) KernelInfo(timeout time.Duration) error {
	id, err := s.conn.Send("shell", "kernel_info_request", map[string]any{})
	if err != nil {
		return err
	}
	_, err = s.await(id, timeout, true)
	return err
}

func (s *wsSession) Execute(code string, timeout time.Duration) (*result, error) {
	id, err := s.conn.SendExecute(code)
	if err != nil {
		return nil, err
	}
	return s.await(id, timeout, false)
}

// await reads until the reply to id and, unless replyOnly, its idle
// status; it counts outputs as the floor's await does (client.Await counts
// execute_input as an output, which would skew the loss check).
func (s *wsSession) await(id string, timeout time.Duration, replyOnly bool) (*result, error) {
	deadline := time.Now().Add(timeout)
	r := &result{}
	replied, idle := false, replyOnly
	for !replied || !idle {
		m, err := s.conn.Recv(deadline)
		if err != nil {
			return r, fmt.Errorf("awaiting reply to %s: %w", id, err)
		}
		if m.ParentHeader.MsgID != id {
			continue
		}
		switch t := m.Header.MsgType; {
		case strings.HasSuffix(t, "_reply"):
			var st struct{ Status string }
			_ = json.Unmarshal(m.Content, &st)
			r.Status, replied = st.Status, true
		case t == "status":
			idle = idle || bytes.Contains(m.Content, []byte(`"idle"`))
		case t == "execute_input":
		default:
			r.Outputs++
			r.Bytes += int64(m.Size)
		}
	}
	return r, nil
}

func (s *wsSession) Close(ctx context.Context) error {
	_ = s.conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return s.c.DeleteKernel(ctx, s.id)
}

// okStatus turns a non-ok reply into an error.
func okStatus(r *result, err error) (*result, error) {
	if err != nil {
		return r, err
	}
	if r.Status != "ok" {
		return r, errReplyStatus
	}
	return r, nil
}

// header is the part of a Jupyter header the bench reads.
type header struct {
	MsgID   string `json:"msg_id"`
	MsgType string `json:"msg_type"`
}

func parseHeader(b []byte) (header, error) {
	var h header
	err := json.Unmarshal(b, &h)
	return h, err
}
