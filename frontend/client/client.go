// Package client is a small Go client of the Jupyter kernel gateway API
// that kernelbus serves: REST calls and the kernel websocket in either
// protocol. The benchmarks and the Go end-to-end tests drive kernelbus (and
// any other gateway, such as Jupyter Enterprise Gateway) through it, so
// every target is measured with the same client code.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/kernelbus/kernelbus/broker"
)

// Subprotocol is the binary websocket protocol of jupyter_server 2.
const Subprotocol = "v1.kernel.websocket.jupyter.org"

// Client talks to one gateway.
type Client struct {
	// BaseURL like http://127.0.0.1:8888 (no trailing slash needed).
	BaseURL string
	// Token, if the gateway wants one.
	Token string
	HTTP  *http.Client
}

// Model is a kernel model as the gateway returns it.
type Model struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	LastActivity   string `json:"last_activity"`
	ExecutionState string `json:"execution_state"`
	Connections    int    `json:"connections"`
	Reason         string `json:"reason,omitempty"`
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *APIError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Reason, e.Message) }

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "token "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil {
			e.Message = string(data)
		}
		return e
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// StartKernel POSTs /api/kernels.
func (c *Client) StartKernel(ctx context.Context, name string, env map[string]string) (*Model, error) {
	if env == nil {
		env = map[string]string{}
	}
	var m Model
	err := c.do(ctx, http.MethodPost, "/api/kernels", map[string]any{"name": name, "env": env}, &m)
	return &m, err
}

// Kernel GETs one kernel model.
func (c *Client) Kernel(ctx context.Context, id string) (*Model, error) {
	var m Model
	err := c.do(ctx, http.MethodGet, "/api/kernels/"+id, nil, &m)
	return &m, err
}

// Kernels lists kernels.
func (c *Client) Kernels(ctx context.Context) ([]Model, error) {
	var ms []Model
	err := c.do(ctx, http.MethodGet, "/api/kernels", nil, &ms)
	return ms, err
}

// DeleteKernel shuts a kernel down.
func (c *Client) DeleteKernel(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/kernels/"+id, nil, nil)
}

// Interrupt interrupts a kernel.
func (c *Client) Interrupt(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/api/kernels/"+id+"/interrupt", struct{}{}, nil)
}

// Restart restarts a kernel in place.
func (c *Client) Restart(ctx context.Context, id string) (*Model, error) {
	var m Model
	err := c.do(ctx, http.MethodPost, "/api/kernels/"+id+"/restart", struct{}{}, &m)
	return &m, err
}

// Warm is a warm kernel nobody took, as GET /api/warm lists it.
type Warm struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Pool  string `json:"pool"`
	State string `json:"state"`
}

// Warm lists the warm kernels that wait for a request (administrators
// only).
func (c *Client) Warm(ctx context.Context) ([]Warm, error) {
	var ws []Warm
	err := c.do(ctx, http.MethodGet, "/api/warm", nil, &ws)
	return ws, err
}

// ClusterReports GETs the overview (/api/cluster) and returns the cluster
// reports of resource manager rm's workers, one per worker that sent one,
// as sent: each resource manager reports its own shape.
func (c *Client) ClusterReports(ctx context.Context, rm string) ([]json.RawMessage, error) {
	var v struct {
		RMs map[string]struct {
			Workers []struct {
				Cluster json.RawMessage `json:"cluster"`
			} `json:"workers"`
		} `json:"resource_managers"`
	}
	if err := c.do(ctx, http.MethodGet, "/api/cluster", nil, &v); err != nil {
		return nil, err
	}
	var out []json.RawMessage
	for _, w := range v.RMs[rm].Workers {
		if len(w.Cluster) > 0 && string(w.Cluster) != "null" {
			out = append(out, w.Cluster)
		}
	}
	return out, nil
}

// Msg is a received Jupyter message.
type Msg struct {
	Channel      string
	Header       broker.MsgHeader
	ParentHeader broker.MsgHeader
	Content      json.RawMessage
	Buffers      [][]byte
	// Size is the websocket frame's length.
	Size int
}

// Conn is one kernel websocket.
type Conn struct {
	ws      *websocket.Conn
	v1      bool
	session string
	wmu     sync.Mutex

	rmu       sync.Mutex
	lastMsgID string
}

// Connect opens the kernel's channels websocket with session_id session
// (random when empty), offering the v1 subprotocol when v1 is true. A
// session that was connected before resumes after the last message the
// server recorded as written to it; see Resume for exactly once.
func (c *Client) Connect(ctx context.Context, kernelID, session string, v1 bool) (*Conn, error) {
	return c.dial(ctx, kernelID, session, "", v1)
}

// Resume reconnects session, telling the server (resume_after) that
// lastMsgID, the header.msg_id of the last message this client received in
// the session (Conn.LastMsgID of the connection that ended), is where it
// stands: it then gets every message after that one, once, in order, even
// when the old connection dropped with messages in flight or its
// front-end died right after writing one. An empty lastMsgID is a plain
// Connect. kernelbus serves resume_after; other gateways ignore it.
func (c *Client) Resume(ctx context.Context, kernelID, session, lastMsgID string, v1 bool) (*Conn, error) {
	return c.dial(ctx, kernelID, session, lastMsgID, v1)
}

func (c *Client) dial(ctx context.Context, kernelID, session, resumeAfter string, v1 bool) (*Conn, error) {
	if session == "" {
		session = NewID()
	}
	u, err := url.Parse(strings.TrimRight(c.BaseURL, "/") + "/api/kernels/" + kernelID + "/channels")
	if err != nil {
		return nil, err
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	q := u.Query()
	q.Set("session_id", session)
	if resumeAfter != "" {
		q.Set("resume_after", resumeAfter)
	}
	u.RawQuery = q.Encode()
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
	// wss:// trusts what the REST calls trust (a private CA, say).
	if c.HTTP != nil {
		if tr, ok := c.HTTP.Transport.(*http.Transport); ok {
			d.TLSClientConfig = tr.TLSClientConfig
		}
	}
	if v1 {
		d.Subprotocols = []string{Subprotocol}
	}
	h := http.Header{}
	if c.Token != "" {
		h.Set("Authorization", "token "+c.Token)
	}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("websocket %s: %s: %w", u, resp.Status, err)
		}
		return nil, err
	}
	ws.SetReadLimit(512 << 20)
	return &Conn{ws: ws, v1: ws.Subprotocol() == Subprotocol, session: session, lastMsgID: resumeAfter}, nil
}

// LastMsgID is the header.msg_id of the last message Recv returned (for a
// resumed connection that has returned none yet, the one it resumed
// after): what to pass to Resume when this connection ends.
func (c *Conn) LastMsgID() string {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.lastMsgID
}

// V1 reports whether the v1 protocol was negotiated.
func (c *Conn) V1() bool { return c.v1 }

// Session is the connection's session_id.
func (c *Conn) Session() string { return c.session }

// Close closes the websocket.
func (c *Conn) Close() error { return c.ws.Close() }

// Send sends a request on channel and returns its msg_id.
func (c *Conn) Send(channel, msgType string, content any) (string, error) {
	id, hdr, body, err := Request(msgType, c.session, "kernelbus", content)
	if err != nil {
		return "", err
	}
	f := broker.Frame{Channel: channel, Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: body}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.v1 {
		return id, c.ws.WriteMessage(websocket.BinaryMessage, f.V1())
	}
	return id, c.ws.WriteMessage(websocket.TextMessage, f.AppendLegacyJSON(nil, id, msgType, true))
}

// Request encodes a request of msgType: its header, with a new msg_id
// (returned) and the session and username given, and its content.
func Request(msgType, session, username string, content any) (id string, header, body []byte, err error) {
	id = NewID()
	header, _ = json.Marshal(map[string]any{"msg_id": id, "msg_type": msgType, "session": session,
		"username": username, "version": "5.3", "date": time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")})
	body, err = json.Marshal(content)
	return id, header, body, err
}

// Recv reads the next message.
func (c *Conn) Recv(deadline time.Time) (*Msg, error) {
	_ = c.ws.SetReadDeadline(deadline)
	typ, data, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var f broker.Frame
	switch {
	case c.v1:
		f, err = broker.DecodeV1(data)
	case typ == websocket.TextMessage:
		f, err = broker.DecodeLegacyJSON(data)
	default:
		f, err = broker.DecodeLegacyBinary(data)
	}
	if err != nil {
		return nil, err
	}
	m := &Msg{Channel: f.Channel, Content: json.RawMessage(f.Content), Buffers: f.Buffers, Size: len(data)}
	if m.Header, err = broker.ParseHeader(f.Header); err != nil {
		return nil, err
	}
	_ = json.Unmarshal(f.ParentHeader, &m.ParentHeader)
	c.rmu.Lock()
	c.lastMsgID = m.Header.MsgID
	c.rmu.Unlock()
	return m, nil
}

// Reply is the result of Execute.
type Reply struct {
	Status  string
	Stdout  strings.Builder
	Outputs int
	Msgs    int
	Bytes   int
}

// Execute runs code and waits for its execute_reply and the idle status
// that ends the request, collecting stdout.
func (c *Conn) Execute(code string, timeout time.Duration) (*Reply, error) {
	id, err := c.SendExecute(code)
	if err != nil {
		return nil, err
	}
	return c.Await(id, timeout)
}

// SendExecute sends an execute_request for code, as a notebook does, and
// returns its msg_id.
func (c *Conn) SendExecute(code string) (string, error) {
	return c.Send("shell", "execute_request", map[string]any{"code": code, "silent": false,
		"store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true})
}

// AwaitOutput reads messages until a stream output of request id holds
// text: a mark the code prints once it runs. (An interrupt sent at
// execute_input may land in ipykernel's own code, which swallows the
// KeyboardInterrupt, as in Jupyter.)
func (c *Conn) AwaitOutput(id, text string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		m, err := c.Recv(deadline)
		if err != nil {
			return fmt.Errorf("awaiting output %q of %s: %w", text, id, err)
		}
		if m.ParentHeader.MsgID == id && m.Header.MsgType == "stream" && strings.Contains(string(m.Content), text) {
			return nil
		}
	}
}

// Await collects the messages answering request id until its reply and
// idle status have both arrived.
func (c *Conn) Await(id string, timeout time.Duration) (*Reply, error) {
	deadline := time.Now().Add(timeout)
	r := &Reply{}
	var replied, idle bool
	for !replied || !idle {
		m, err := c.Recv(deadline)
		if err != nil {
			return r, fmt.Errorf("awaiting reply to %s: %w", id, err)
		}
		if m.ParentHeader.MsgID != id {
			continue
		}
		r.Msgs++
		r.Bytes += m.Size
		switch m.Header.MsgType {
		case "execute_reply", "kernel_info_reply", "shutdown_reply", "interrupt_reply":
			var st struct{ Status string }
			_ = json.Unmarshal(m.Content, &st)
			r.Status, replied = st.Status, true
			if m.Header.MsgType == "kernel_info_reply" {
				idle = true // some kernels send no status for it over a fresh socket
			}
		case "status":
			var st struct {
				ExecutionState string `json:"execution_state"`
			}
			_ = json.Unmarshal(m.Content, &st)
			idle = idle || st.ExecutionState == "idle"
		case "stream":
			var st struct{ Name, Text string }
			_ = json.Unmarshal(m.Content, &st)
			if st.Name == "stdout" {
				r.Stdout.WriteString(st.Text)
			}
			r.Outputs++
		default:
			r.Outputs++
		}
	}
	return r, nil
}

// NewID returns a random UUID-shaped id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
