package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// testBus starts an in-process NATS with JetStream and sets up kernelbus.
func testBus(t testing.TB) *kbjs.Bus {
	t.Helper()
	srv := jstest.Start(t, jstest.Options{Layout: kbjs.Layout{IOMemory: true}}).Server
	return connectBus(t, srv, true)
}

func connectBus(t testing.TB, srv *embedded.Server, setup bool) *kbjs.Bus {
	t.Helper()
	nc, err := kbjs.Connect(kbjs.ConnectOptions{InProcess: srv.NATS(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var bus *kbjs.Bus
	if setup {
		bus, err = kbjs.Setup(ctx, nc, kbjs.Layout{IOMemory: true})
	} else {
		bus, err = kbjs.Open(ctx, nc)
	}
	if err != nil {
		t.Fatal(err)
	}
	return bus
}

// testSpecs: python3 starts; "failing" fails with a reason; "slow" is
// claimed by nobody's launcher and times out; "remote" goes to an ssh
// pool that does not exist.
func testSpecs(t testing.TB) *StaticSpecs {
	dir := t.TempDir()
	if err := os.MkdirAll(dir+"/python3", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/python3/logo-64x64.png", []byte("\x89PNG fake"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/secret.txt", []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, meta map[string]any) *broker.KernelSpec {
		return &broker.KernelSpec{
			Name: name, Argv: []string{"python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			DisplayName: "Test " + name, Language: "python", Metadata: meta,
			Env: map[string]string{"FROM_SPEC": "x${KERNEL_SUFFIX}y", "SECRET": "${HOME}"},
		}
	}
	py := mk("python3", nil)
	py.Dir = dir + "/python3"
	py.Resources = map[string]string{"logo-64x64": "logo-64x64.png"}
	return &StaticSpecs{List: []*broker.KernelSpec{
		mk("failing", nil), py, mk("slow", nil),
		mk("remote", map[string]any{"kernelbus": map[string]any{"rm": "ssh"}}),
		// JEG's itests authorization spec: bad_guy is both allowed and
		// refused, and refusal wins.
		mk("authz", map[string]any{"process_proxy": map[string]any{"config": map[string]any{
			"authorized_users": []any{"alice", "bob", "bad_guy"}, "unauthorized_users": []any{"bad_guy"},
		}}}),
	}, DefaultName: "python3"}
}

type testEnv struct {
	t      testing.TB
	bus    *kbjs.Bus
	fe     *Server
	base   string // http://127.0.0.1:port/
	worker *fakeWorker
}

func newEnv(t testing.TB, cfg Config) *testEnv {
	t.Helper()
	bus := testBus(t)
	w := startFakeWorker(t, bus)
	env := &testEnv{t: t, bus: bus, worker: w}
	env.fe, env.base = startFrontend(t, bus, cfg)
	return env
}

func startFrontend(t testing.TB, bus *kbjs.Bus, cfg Config) (*Server, string) {
	t.Helper()
	return startFrontendOn(t, bus, cfg, "http", func(ln net.Listener) (net.Listener, error) { return ln, nil })
}

// startFrontendOn serves a front-end on a port-0 listener that wrap may
// wrap (in TLS), and returns it with its base URL.
func startFrontendOn(t testing.TB, bus *kbjs.Bus, cfg Config, scheme string, wrap func(net.Listener) (net.Listener, error)) (*Server, string) {
	t.Helper()
	if cfg.WSPingInterval == 0 {
		cfg.WSPingInterval = 500 * time.Millisecond
	}
	// Live output is the default; KB_TEST_LIVE_OUTPUT=0 runs every
	// front-end of the tests from the stream only, so the websocket
	// suites check that too.
	if os.Getenv("KB_TEST_LIVE_OUTPUT") == "0" {
		cfg.NoLiveOutput = true
	}
	// The tests' front-ends read output headers only (Config.
	// HeadersOnlyOutput), the path with more to get wrong, unless
	// KB_TEST_HEADERS_ONLY=0.
	if os.Getenv("KB_TEST_HEADERS_ONLY") != "0" {
		cfg.HeadersOnlyOutput = true
	}
	fe, err := New(cfg, bus, testSpecs(t), jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := fe.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := wrap(raw)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fe.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fe.Stop(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := scheme + "://" + ln.Addr().String() + strings.TrimSuffix(fe.cfg.BaseURL, "/") + "/"
	return fe, base
}

// do sends an HTTP request and decodes a JSON answer into out (if any).
func (e *testEnv) do(method, path string, body any, hdr http.Header, out any) (*http.Response, []byte) {
	return doHTTP(e.t, method, e.base+path, body, hdr, out)
}

func doHTTP(t testing.TB, method, u string, body any, hdr http.Header, out any) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		r = strings.NewReader(string(data))
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		// As every JSON client does; the guard refuses a body of another
		// type from a request without an Authorization header.
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	checkOpenAPI(t, req, resp, data)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, u, resp.StatusCode, data, err)
		}
	}
	return resp, data
}

// startKernel starts a python3 kernel and returns its model.
func (e *testEnv) startKernel() KernelModel {
	e.t.Helper()
	var m KernelModel
	resp, data := e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{}}, nil, &m)
	if resp.StatusCode != 201 {
		e.t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	return m
}

// fakeWorker plays a local worker pool: it claims start requests and
// starts a fakeLauncher, and records stop requests.
type fakeWorker struct {
	t   testing.TB
	bus *kbjs.Bus

	mu        sync.Mutex
	launchers map[string]*fakeLauncher
	stops     []broker.StopRequest
	configs   map[string]*broker.LaunchConfig
}

func startFakeWorker(t testing.TB, bus *kbjs.Bus) *fakeWorker {
	w := &fakeWorker{t: t, bus: bus, launchers: map[string]*fakeLauncher{}, configs: map[string]*broker.LaunchConfig{}}
	ctx := context.Background()
	cons, err := bus.JS.CreateOrUpdateConsumer(ctx, broker.StreamRequests, jetstream.ConsumerConfig{
		Durable: "test-local", FilterSubject: broker.SubjectRequestsFor(broker.RMLocal), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		switch m.Headers().Get(broker.HeaderType) {
		case broker.TypeStopRequest:
			var r broker.StopRequest
			_ = json.Unmarshal(m.Data(), &r)
			w.mu.Lock()
			w.stops = append(w.stops, r)
			w.mu.Unlock()
		case broker.TypeStartRequest:
			var r broker.StartRequest
			_ = json.Unmarshal(m.Data(), &r)
			w.start(r.KernelID)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Stop()
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, l := range w.launchers {
			l.stop()
		}
	})
	return w
}

func (w *fakeWorker) start(id string) {
	ctx := context.Background()
	k, _, err := w.bus.GetKernel(ctx, id)
	if err != nil {
		return
	}
	w.mu.Lock()
	w.configs[id] = k.Launch
	w.mu.Unlock()
	switch k.Spec {
	case "slow":
		return
	case "failing":
		_, _ = w.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
			k.State, k.Reason = broker.StateFailed, "kernel exited with status 1: ModuleNotFoundError: No module named 'ipykernel'"
			return nil
		})
		return
	}
	l := startFakeLauncher(w.t, w.bus, id)
	w.mu.Lock()
	w.launchers[id] = l
	w.mu.Unlock()
	_, _ = w.bus.UpdateKernel(ctx, id, func(k *broker.Kernel) error {
		k.State, k.Host, k.Handle = broker.StateRunning, "localhost", json.RawMessage(`{"pid":1}`)
		return nil
	})
}

func (w *fakeWorker) launcher(id string) *fakeLauncher {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.launchers[id]
}

func (w *fakeWorker) stopRequests() []broker.StopRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]broker.StopRequest(nil), w.stops...)
}

// fakeLauncher answers kernel_info and execute requests like a kernel
// behind a launcher would, publishing to the kernel's out subjects with
// the routing headers, and serves the control subject.
type fakeLauncher struct {
	t       testing.TB
	bus     *kbjs.Bus
	id      string
	session string // the kernel's own header.session
	cc      jetstream.ConsumeContext
	ctl     *nats.Subscription

	// run and next number bus messages as a launcher does
	// ("<run>.<n>" in Nats-Msg-Id); pubMu keeps numbers in publish order.
	pubMu sync.Mutex
	run   string
	next  uint64

	mu       sync.Mutex
	received []broker.Frame // every client message, in order
	inputs   map[string][]byte
	ops      []string
}

func startFakeLauncher(t testing.TB, bus *kbjs.Bus, id string) *fakeLauncher {
	l := &fakeLauncher{t: t, bus: bus, id: id, session: uuid.NewString(), inputs: map[string][]byte{}, run: nuid.Next()}
	ctx := context.Background()
	cons, err := bus.JS.OrderedConsumer(ctx, broker.StreamIO, jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.SubjectIn(id)}})
	if err != nil {
		t.Error(err)
		return l
	}
	var reasm kbjs.Reassembler
	l.cc, err = cons.Consume(func(m jetstream.Msg) {
		data, ok, err := reasm.Feed(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil || !ok {
			return
		}
		data = append([]byte(nil), data...)
		f, err := broker.DecodeV1(data)
		if err != nil {
			t.Errorf("launcher got a malformed frame: %v", err)
			return
		}
		l.handle(f, m.Headers())
	}, jetstream.PullMaxBytes(32<<20))
	if err != nil {
		t.Error(err)
	}
	l.ctl, err = bus.NC.Subscribe(broker.SubjectControl(id), func(m *nats.Msg) {
		var r broker.ControlRequest
		_ = json.Unmarshal(m.Data, &r)
		l.mu.Lock()
		l.ops = append(l.ops, r.Op)
		l.mu.Unlock()
		data, _ := json.Marshal(broker.ControlReply{OK: true, State: broker.StateRunning})
		_ = m.Respond(data)
		if r.Op == broker.OpShutdown {
			_, _ = bus.UpdateKernel(context.Background(), id, func(k *broker.Kernel) error {
				k.State, k.Reason = broker.StateTerminated, "shut down on request"
				return nil
			})
		}
	})
	if err != nil {
		t.Error(err)
	}
	return l
}

func (l *fakeLauncher) stop() {
	if l.cc != nil {
		l.cc.Stop()
	}
	if l.ctl != nil {
		_ = l.ctl.Unsubscribe()
	}
}

func (l *fakeLauncher) controlOps() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ops...)
}

func (l *fakeLauncher) handle(f broker.Frame, h nats.Header) {
	hdr, _ := broker.ParseHeader(f.Header)
	session := h.Get(broker.HeaderSession)
	l.mu.Lock()
	l.received = append(l.received, f)
	l.mu.Unlock()
	parent := f.Header
	switch hdr.MsgType {
	case "kernel_info_request":
		l.publish("iopub", "status", session, parent, `{"execution_state":"busy"}`, nil)
		l.publish(f.Channel, "kernel_info_reply", session, parent, `{"status":"ok","protocol_version":"5.3","implementation":"fake","language_info":{"name":"python"}}`, nil)
		l.publish("iopub", "status", session, parent, `{"execution_state":"idle"}`, nil)
	case "execute_request":
		var content struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(f.Content, &content)
		l.publish("iopub", "status", session, parent, `{"execution_state":"busy"}`, nil)
		switch {
		case strings.HasPrefix(content.Code, "big:"):
			// A 20 MB output: text, plus the same as a binary buffer.
			n := 20 << 20
			text := strings.Repeat("0123456789abcdef", n/16)
			c, _ := json.Marshal(map[string]any{"data": map[string]string{"text/plain": text}, "metadata": map[string]any{}})
			var bufs [][]byte
			if content.Code == "big:buffer" {
				bufs = [][]byte{[]byte(text)}
			}
			l.publish("iopub", "display_data", session, parent, string(c), bufs)
		case strings.HasPrefix(content.Code, "echo-size"):
			// Echo the size of what arrived, for the large-input test.
			sz := len(f.Content)
			for _, b := range f.Buffers {
				sz += len(b)
			}
			c, _ := json.Marshal(map[string]any{"name": "stdout", "text": fmt.Sprint(sz)})
			l.publish("iopub", "stream", session, parent, string(c), nil)
		default:
			c, _ := json.Marshal(map[string]any{"name": "stdout", "text": content.Code})
			l.publish("iopub", "stream", session, parent, string(c), nil)
		}
		l.publish("shell", "execute_reply", session, parent, `{"status":"ok","execution_count":1}`, nil)
		l.publish("iopub", "status", session, parent, `{"execution_state":"idle"}`, nil)
	}
}

// publish writes one kernel message to the bus as a launcher would.
func (l *fakeLauncher) publish(channel, msgType, session string, parent []byte, content string, buffers [][]byte) string {
	m, id := l.message(channel, msgType, session, parent, content, buffers)
	l.publishBus(m)
	return id
}

// message makes the bus message of one kernel message, and its msg_id.
func (l *fakeLauncher) message(channel, msgType, session string, parent []byte, content string, buffers [][]byte) (*nats.Msg, string) {
	id := uuid.NewString()
	hdr, _ := json.Marshal(map[string]any{
		"msg_id": id, "msg_type": msgType, "session": l.session, "username": "kernel",
		"date": time.Now().UTC().Format(time.RFC3339Nano), "version": "5.3",
	})
	if parent == nil {
		parent = []byte("{}")
	}
	f := broker.Frame{Channel: channel, Header: hdr, ParentHeader: parent, Metadata: []byte("{}"), Content: []byte(content), Buffers: buffers}
	ptype := ""
	if _, t := broker.ParentMsgID(parent); t != "" {
		ptype = t
	}
	m := &nats.Msg{Subject: broker.SubjectOut(l.id, channel), Data: f.V1(), Header: nats.Header{
		broker.HeaderChannel: {channel}, broker.HeaderMsgType: {msgType}, broker.HeaderMsgID: {id},
		broker.HeaderSession: {session}, broker.HeaderParentType: {ptype}, broker.HeaderVersion: {broker.EnvelopeVersion},
	}}
	return m, id
}

// publishBus publishes one bus message numbered as the launcher does.
func (l *fakeLauncher) publishBus(m *nats.Msg) {
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	l.next++
	l.publishAs(m, l.next)
}

// publishAs publishes m as the launcher's bus message number n (a test
// repeats a number, or skips one, this way). pubMu is held.
func (l *fakeLauncher) publishAs(m *nats.Msg, n uint64) {
	m.Header.Set(jetstream.MsgIDHeader, l.run+"."+strconv.FormatUint(n, 10))
	ctx, cancel := context.WithTimeout(context.Background(), slow*10*time.Second)
	defer cancel()
	if _, err := kbjs.PublishOutput(ctx, l.bus.NC, l.bus.JS, m); err != nil {
		l.t.Errorf("launcher publish: %v", err)
	}
}

// wsMsg is a message as a test client sees it.
type wsMsg struct {
	Channel  string
	MsgType  string
	MsgID    string
	Parent   string
	Content  json.RawMessage
	Buffers  [][]byte
	Raw      int // frame size
	TextOnly bool
}

type wsClient struct {
	t       testing.TB
	c       *fws.Conn
	v1      bool
	session string
}

func (e *testEnv) dial(id, session string, v1 bool) *wsClient {
	e.t.Helper()
	c, resp, err := dialWS(e.base, id, session, v1, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial: %v (status %d)", err, status)
	}
	return c.with(e.t, session)
}

func dialWS(base, id, session string, v1 bool, hdr http.Header) (*wsClient, *http.Response, error) {
	u, _ := url.Parse(base)
	u.Scheme = "ws"
	u.Path += "api/kernels/" + id + "/channels"
	if session != "" {
		u.RawQuery = "session_id=" + url.QueryEscape(session)
	}
	d := fws.Dialer{HandshakeTimeout: 10 * time.Second}
	if v1 {
		d.Subprotocols = []string{SubprotocolV1}
	}
	c, resp, err := d.Dial(u.String(), hdr)
	if err != nil {
		return nil, resp, err
	}
	if v1 && c.Subprotocol() != SubprotocolV1 {
		return nil, resp, errors.New("v1 not selected")
	}
	if !v1 && c.Subprotocol() != "" {
		return nil, resp, errors.New("a subprotocol was selected for a legacy client")
	}
	return &wsClient{c: c, v1: v1}, resp, nil
}

func (w *wsClient) with(t testing.TB, session string) *wsClient {
	w.t, w.session = t, session
	t.Cleanup(func() { _ = w.c.Close() })
	return w
}

// send sends a request; channel "" leaves it out (nbclient style).
func (w *wsClient) send(channel, msgType string, content any) string {
	w.t.Helper()
	id := uuid.NewString()
	hdr, _ := json.Marshal(map[string]any{"msg_id": id, "msg_type": msgType, "session": w.session, "username": "test", "version": "5.3", "date": 1718000000.25})
	c, _ := json.Marshal(content)
	var err error
	if w.v1 {
		ch := channel
		if ch == "" {
			ch = "shell"
		}
		f := broker.Frame{Channel: ch, Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: c}
		err = w.c.WriteMessage(fws.BinaryMessage, f.V1())
	} else {
		m := map[string]any{"header": json.RawMessage(hdr), "parent_header": map[string]any{}, "metadata": map[string]any{}, "content": json.RawMessage(c)}
		if channel != "" {
			m["channel"] = channel
		}
		data, _ := json.Marshal(m)
		err = w.c.WriteMessage(fws.TextMessage, data)
	}
	if err != nil {
		w.t.Fatalf("send: %v", err)
	}
	return id
}

func (w *wsClient) read(timeout time.Duration) (wsMsg, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(timeout))
	typ, data, err := w.c.ReadMessage()
	if err != nil {
		return wsMsg{}, err
	}
	var f broker.Frame
	switch {
	case w.v1:
		if typ != fws.BinaryMessage {
			return wsMsg{}, fmt.Errorf("v1 client got frame type %d", typ)
		}
		f, err = broker.DecodeV1(data)
	case typ == fws.TextMessage:
		var m struct {
			Channel string          `json:"channel"`
			MsgID   string          `json:"msg_id"`
			MsgType string          `json:"msg_type"`
			Buffers json.RawMessage `json:"buffers"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			return wsMsg{}, err
		}
		if m.Channel == "" || m.MsgID == "" || m.MsgType == "" || string(m.Buffers) != "[]" {
			return wsMsg{}, fmt.Errorf("legacy message lacks channel/msg_id/msg_type/buffers: %.200s", data)
		}
		f, err = broker.DecodeLegacyJSON(data)
	default:
		f, err = broker.DecodeLegacyBinary(data)
	}
	if err != nil {
		return wsMsg{}, err
	}
	h, err := broker.ParseHeader(f.Header)
	if err != nil {
		return wsMsg{}, err
	}
	pid, _ := broker.ParentMsgID(f.ParentHeader)
	return wsMsg{Channel: f.Channel, MsgType: h.MsgType, MsgID: h.MsgID, Parent: pid, Content: f.Content,
		Buffers: f.Buffers, Raw: len(data), TextOnly: typ == fws.TextMessage}, nil
}

func (w *wsClient) mustRead() wsMsg {
	w.t.Helper()
	m, err := w.read(slow * 10 * time.Second)
	if err != nil {
		w.t.Fatalf("read: %v", err)
	}
	return m
}

// until reads messages until one matches, returning all read.
func (w *wsClient) until(match func(wsMsg) bool) []wsMsg {
	w.t.Helper()
	var out []wsMsg
	for {
		m := w.mustRead()
		out = append(out, m)
		if match(m) {
			return out
		}
	}
}

func isIdleOf(parent string) func(wsMsg) bool {
	return func(m wsMsg) bool {
		return m.MsgType == "status" && m.Parent == parent && strings.Contains(string(m.Content), `"idle"`)
	}
}
