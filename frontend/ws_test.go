package frontend

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

func TestWSLegacyRoundTrip(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "sess-legacy", false)
	// nbclient sends no channel and a float date.
	id := c.send("", "kernel_info_request", map[string]any{})
	msgs := c.until(isIdleOf(id))
	var types []string
	for _, m := range msgs {
		types = append(types, m.Channel+":"+m.MsgType)
		if !m.TextOnly {
			t.Errorf("legacy message without buffers sent as binary: %s", m.MsgType)
		}
	}
	if strings.Join(types, ",") != "iopub:status,shell:kernel_info_reply,iopub:status" {
		t.Fatalf("got %v", types)
	}
	if msgs[1].Parent != id {
		t.Fatalf("reply parent %s, want %s", msgs[1].Parent, id)
	}
	// The model counts the connection.
	waitConnections(t, e, k.ID, 1)
	// The launcher got what the client sent, stamped for routing.
	l := e.worker.launcher(k.ID)
	l.mu.Lock()
	got := l.received[0]
	l.mu.Unlock()
	if got.Channel != "shell" || !strings.Contains(string(got.Header), `1718000000.25`) {
		t.Fatalf("launcher got %s %s", got.Channel, got.Header)
	}
	_ = c.c.WriteMessage(fws.CloseMessage, fws.FormatCloseMessage(1000, ""))
	waitConnections(t, e, k.ID, 0)
}

// waitConnections waits until kernel's model counts n connections.
func waitConnections(t *testing.T, e *testEnv, kernel string, n int) {
	t.Helper()
	jstest.WaitForNil(t, 5*time.Second, func() error {
		var m KernelModel
		e.do("GET", "api/kernels/"+kernel, nil, nil, &m)
		if m.Connections != n {
			return fmt.Errorf("connections %d, want %d", m.Connections, n)
		}
		return nil
	})
}

func TestWSV1RoundTrip(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "sess-v1", true)
	id := c.send("shell", "execute_request", map[string]any{"code": "print(1)", "silent": false})
	msgs := c.until(isIdleOf(id))
	var types []string
	for _, m := range msgs {
		types = append(types, m.Channel+":"+m.MsgType)
	}
	if strings.Join(types, ",") != "iopub:status,iopub:stream,shell:execute_reply,iopub:status" {
		t.Fatalf("got %v", types)
	}
	if !strings.Contains(string(msgs[1].Content), "print(1)") {
		t.Fatalf("stream content %s", msgs[1].Content)
	}
}

func TestWSRoutingPerSession(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	a := e.dial(k.ID, "A", false)
	b := e.dial(k.ID, "B", true)
	id := a.send("shell", "execute_request", map[string]any{"code": "x"})
	gotA := a.until(isIdleOf(id))
	gotB := b.until(isIdleOf(id))
	if len(gotA) != 4 || gotA[2].MsgType != "execute_reply" {
		t.Fatalf("A got %+v", gotA)
	}
	if len(gotB) != 3 {
		t.Fatalf("B got %d messages", len(gotB))
	}
	for _, m := range gotB {
		if m.Channel != "iopub" {
			t.Fatalf("B got %s on %s, a reply to A", m.MsgType, m.Channel)
		}
	}
	// And the other way round, on control.
	id2 := b.send("control", "kernel_info_request", map[string]any{})
	gotB = b.until(isIdleOf(id2))
	if gotB[1].Channel != "control" || gotB[1].MsgType != "kernel_info_reply" {
		t.Fatalf("B got %+v", gotB)
	}
	for _, m := range a.until(isIdleOf(id2)) {
		if m.Channel != "iopub" {
			t.Fatalf("A got B's %s", m.MsgType)
		}
	}
}

// waitDisconnected waits until a session's record says disconnected.
func waitDisconnected(t *testing.T, e *testEnv, kernel, session string) {
	t.Helper()
	jstest.WaitForNil(t, 5*time.Second, func() error {
		ent, err := e.bus.Sessions.Get(context.Background(), sessionKVKey(kernel, session))
		if err != nil {
			return err
		}
		var cs broker.ClientSession
		_ = json.Unmarshal(ent.Value(), &cs)
		if cs.Connected {
			return errors.New("still connected")
		}
		return nil
	})
}

// publishRun publishes n unsolicited iopub stream messages and returns
// their texts.
func publishRun(l *fakeLauncher, prefix string, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		text := fmt.Sprintf("%s-%d", prefix, i)
		c, _ := json.Marshal(map[string]string{"name": "stdout", "text": text})
		l.publish("iopub", "stream", "", nil, string(c), nil)
		out = append(out, text)
	}
	return out
}

// readTexts reads stream messages until the one whose text is last,
// returning every stream text seen.
func readTexts(t *testing.T, c *wsClient, last string) []string {
	t.Helper()
	var out []string
	for {
		m := c.mustRead()
		if m.MsgType != "stream" {
			continue
		}
		var s struct{ Text string }
		_ = json.Unmarshal(m.Content, &s)
		out = append(out, s.Text)
		if s.Text == last {
			return out
		}
	}
}

func TestWSReplayExactlyOnce(t *testing.T) {
	e := newEnv(t, Config{FrontendID: "fe1"})
	fe2, base2 := startFrontend(t, e.bus, Config{FrontendID: "fe2"})
	e2 := &testEnv{t: t, bus: e.bus, fe: fe2, base: base2, worker: e.worker}
	k := e.startKernel()
	l := e.worker.launcher(k.ID)

	// Connect, read everything, leave cleanly.
	c := e.dial(k.ID, "S", false)
	first := publishRun(l, "before", 3)
	if got := readTexts(t, c, first[2]); strings.Join(got, ",") != strings.Join(first, ",") {
		t.Fatalf("live: %v", got)
	}
	_ = c.c.WriteMessage(fws.CloseMessage, fws.FormatCloseMessage(1000, ""))
	waitDisconnected(t, e, k.ID, "S")

	// Output while away, including a reply meant for another session,
	// then reconnect to the same front-end: exactly the missed iopub.
	missed := publishRun(l, "away", 4)
	other := e.dial(k.ID, "other", false)
	otherID := other.send("shell", "execute_request", map[string]any{"code": "theirs"})
	other.until(isIdleOf(otherID))
	missed = append(missed, "theirs")
	missed = append(missed, publishRun(l, "end", 1)...)
	c = e.dial(k.ID, "S", false)
	got := readTexts(t, c, "end-0")
	if strings.Join(got, ",") != strings.Join(missed, ",") {
		t.Fatalf("replay on the same front-end:\n got %v\nwant %v", got, missed)
	}
	_ = c.c.WriteMessage(fws.CloseMessage, fws.FormatCloseMessage(1000, ""))
	waitDisconnected(t, e, k.ID, "S")

	// Away again; come back through the other front-end.
	missed = publishRun(l, "away2", 5)
	c = e2.dial(k.ID, "S", true)
	if got := readTexts(t, c, missed[4]); strings.Join(got, ",") != strings.Join(missed, ",") {
		t.Fatalf("replay on another front-end:\n got %v\nwant %v", got, missed)
	}

	// Take the session over while it is still open on fe2 (a client that
	// moved without closing): fe2 lets go and fe1 resumes right after the
	// last message fe2 delivered.
	c2 := e.dial(k.ID, "S", false)
	_, err := c.read(5 * time.Second)
	var ce *fws.CloseError
	if !errors.As(err, &ce) || ce.Code != 1000 {
		t.Fatalf("old connection: %v", err)
	}
	next := publishRun(l, "after-move", 2)
	if got := readTexts(t, c2, next[1]); strings.Join(got, ",") != strings.Join(next, ",") {
		t.Fatalf("after takeover:\n got %v\nwant %v", got, next)
	}

	// A second connection of the same session on one front-end replaces
	// the first.
	c3 := e.dial(k.ID, "S", false)
	if _, err := c2.read(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1000 {
		t.Fatalf("stale connection: %v", err)
	}
	last := publishRun(l, "last", 1)
	if got := readTexts(t, c3, last[0]); len(got) != 1 {
		t.Fatalf("after stale close: %v", got)
	}
}

// TestWSReplayChunked: a reconnect in the middle of interleaved chunked
// and small messages gets every message once.
func TestWSReplayChunked(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	l := e.worker.launcher(k.ID)
	c := e.dial(k.ID, "S", true)
	// Interleave by hand: chunk 0 of a big message, a small message,
	// then the rest of the big one.
	big := bytes.Repeat([]byte("z"), 9<<20)
	hdr, _ := json.Marshal(map[string]any{"msg_id": "big-1", "msg_type": "display_data", "session": "k", "username": "k", "version": "5.3"})
	f := broker.Frame{Channel: "iopub", Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: []byte(`{"data":{}}`), Buffers: [][]byte{big}}
	body := f.V1()
	half := len(body) / 2
	pub := func(data []byte, chunk string) {
		m := natsMsg(broker.SubjectOut(k.ID, "iopub"), data, "iopub", "display_data", "big-1")
		m.Header.Set(broker.HeaderChunk, chunk)
		m.Header.Set(broker.HeaderChunkID, "cid")
		if _, err := e.bus.JS.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	pub(body[:half], "0/2")
	small := publishRun(l, "small", 1)
	if got := readTexts(t, c, small[0]); len(got) != 1 {
		t.Fatalf("%v", got)
	}
	// Leave with the big message half received.
	_ = c.c.WriteMessage(fws.CloseMessage, fws.FormatCloseMessage(1000, ""))
	waitDisconnected(t, e, k.ID, "S")
	pub(body[half:], "1/2")
	end := publishRun(l, "end", 1)
	c = e.dial(k.ID, "S", true)
	m := c.mustRead()
	if m.MsgType != "display_data" || len(m.Buffers) != 1 || !bytes.Equal(m.Buffers[0], big) {
		t.Fatalf("got %s with %d buffers", m.MsgType, len(m.Buffers))
	}
	if got := readTexts(t, c, end[0]); strings.Join(got, ",") != "end-0" {
		t.Fatalf("after the big one: %v (small one duplicated?)", got)
	}
}

func TestWSMalformedFramesDropped(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	for _, v1 := range []bool{false, true} {
		c := e.dial(k.ID, fmt.Sprint("mal-", v1), v1)
		badV1 := make([]byte, 16)
		binary.LittleEndian.PutUint64(badV1, 7)
		binary.LittleEndian.PutUint64(badV1[8:], 999)
		for _, f := range []struct {
			typ  int
			data []byte
		}{
			{fws.TextMessage, []byte("hello")},
			{fws.TextMessage, []byte(`{"header": 5, "content": {}}`)},
			{fws.TextMessage, []byte(`{"header": {"msg_id":"x","msg_type":"y"}, "channel": "hb"}`)},
			{fws.TextMessage, []byte(`{"header": {"msg_id":"x","msg_type":"y"}, "channel": "iopub"}`)},
			{fws.TextMessage, []byte(`{"header": {`)},
			{fws.BinaryMessage, []byte{0, 0, 0, 9, 1}},
			{fws.BinaryMessage, badV1},
			{fws.BinaryMessage, nil},
		} {
			if err := c.c.WriteMessage(f.typ, f.data); err != nil {
				t.Fatal(err)
			}
		}
		id := c.send("shell", "kernel_info_request", map[string]any{})
		msgs := c.until(isIdleOf(id))
		if msgs[1].MsgType != "kernel_info_reply" {
			t.Fatalf("got %+v", msgs)
		}
	}
	l := e.worker.launcher(k.ID)
	l.mu.Lock()
	n := len(l.received)
	l.mu.Unlock()
	if n != 2 {
		t.Fatalf("launcher got %d messages, want 2", n)
	}
}

// TestWSLegacyBinaryFromProxy: jupyter_server's proxy turns a browser's
// binary frame into a text frame of raw bytes; it must be read as a legacy
// binary message.
func TestWSLegacyBinaryFromProxy(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "proxy", false)
	hdr, _ := json.Marshal(map[string]any{"msg_id": "m1", "msg_type": "comm_msg", "session": "proxy", "username": "u", "version": "5.3"})
	f := broker.Frame{Channel: "shell", Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: []byte(`{"comm_id":"c"}`), Buffers: [][]byte{{0xff, 0xfe, 0x00, 0x01}}}
	if err := c.c.WriteMessage(fws.TextMessage, f.AppendLegacyBinary(nil, "m1", "comm_msg")); err != nil {
		t.Fatal(err)
	}
	l := e.worker.launcher(k.ID)
	jstest.WaitForNil(t, 5*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.received) != 1 {
			return errors.New("not received")
		}
		if got := l.received[0]; len(got.Buffers) != 1 || !bytes.Equal(got.Buffers[0], []byte{0xff, 0xfe, 0, 1}) {
			return fmt.Errorf("buffers %v", got.Buffers)
		}
		return nil
	})
}

func TestWSLargeMessages(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	// 20 MB of text output to a legacy client: one text frame.
	c := e.dial(k.ID, "big-legacy", false)
	id := c.send("shell", "execute_request", map[string]any{"code": "big:"})
	var found bool
	for _, m := range c.until(isIdleOf(id)) {
		if m.MsgType == "display_data" {
			var dd struct {
				Data map[string]string `json:"data"`
			}
			if err := json.Unmarshal(m.Content, &dd); err != nil {
				t.Fatal(err)
			}
			txt := dd.Data["text/plain"]
			if len(txt) != 20<<20 || txt[:16] != "0123456789abcdef" || txt[len(txt)-16:] != "0123456789abcdef" {
				t.Fatalf("text of %d bytes", len(txt))
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no display_data")
	}
	// 20 MB buffer to a v1 client and to a legacy one (binary frame).
	for _, v1 := range []bool{true, false} {
		c := e.dial(k.ID, fmt.Sprint("big-buf-", v1), v1)
		id := c.send("shell", "execute_request", map[string]any{"code": "big:buffer"})
		found = false
		for _, m := range c.until(isIdleOf(id)) {
			if m.MsgType == "display_data" {
				if len(m.Buffers) != 1 || len(m.Buffers[0]) != 20<<20 || m.TextOnly {
					t.Fatalf("v1=%v: %d buffers", v1, len(m.Buffers))
				}
				found = true
			}
		}
		if !found {
			t.Fatal("no display_data")
		}
	}
	// 20 MB from a client (a widget upload): chunked on the bus.
	v := e.dial(k.ID, "upload", true)
	hdr, _ := json.Marshal(map[string]any{"msg_id": "up-1", "msg_type": "execute_request", "session": "upload", "username": "u", "version": "5.3"})
	f := broker.Frame{Channel: "shell", Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"),
		Content: []byte(`{"code":"echo-size"}`), Buffers: [][]byte{bytes.Repeat([]byte{7}, 20<<20)}}
	if err := v.c.WriteMessage(fws.BinaryMessage, f.V1()); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(len(`{"code":"echo-size"}`) + 20<<20)
	if got := readTexts(t, v, want); got[len(got)-1] != want {
		t.Fatalf("size echo %v", got)
	}
	v.until(isIdleOf("up-1"))
}

func TestWSKernelEndCloses(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "S", false)
	l := e.worker.launcher(k.ID)
	// The launcher announces the death, then records it.
	l.publish("iopub", "status", "", nil, `{"execution_state":"dead"}`, nil)
	if _, err := e.bus.UpdateKernel(context.Background(), k.ID, func(k *broker.Kernel) error {
		k.State, k.Reason = broker.StateDead, "restarted 5 times"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m := c.mustRead()
	if m.MsgType != "status" || !strings.Contains(string(m.Content), "dead") {
		t.Fatalf("got %+v", m)
	}
	// The launcher said "dead" already: no second notice, and the close
	// says why.
	_, err := c.read(5 * time.Second)
	var ce *fws.CloseError
	if !errors.As(err, &ce) || ce.Code != 1000 || ce.Text != "kernel died: restarted 5 times" {
		t.Fatalf("close: %v", err)
	}
	var km KernelModel
	e.do("GET", "api/kernels/"+k.ID, nil, nil, &km)
	if km.ExecutionState != "dead" || km.Reason != "restarted 5 times" {
		t.Fatalf("model %+v", km)
	}
	if _, resp, err := dialWS(e.base, k.ID, "late", false, nil); err == nil || resp.StatusCode != 404 {
		t.Fatalf("dial dead kernel: %v", err)
	}
	// A kernel that dies without a word from its launcher (its resource
	// manager killed the container with it): the front-end sends the
	// iopub status "dead" itself, to the v1 and the legacy client alike.
	k3 := e.startKernel()
	c3, c3v1 := e.dial(k3.ID, "A", false), e.dial(k3.ID, "B", true)
	if _, err := e.bus.UpdateKernel(context.Background(), k3.ID, func(k *broker.Kernel) error {
		k.State, k.Reason = broker.StateDead, "YARN application application_1_0001 KILLED (KILLED): killed by user alice"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*wsClient{c3, c3v1} {
		m := cl.mustRead()
		if m.Channel != "iopub" || m.MsgType != "status" || m.Parent != "" || m.MsgID == "" || !strings.Contains(string(m.Content), `"dead"`) {
			t.Fatalf("v1=%v: want a dead status, got %+v", cl.v1, m)
		}
		if _, err := cl.read(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1000 || !strings.Contains(ce.Text, "KILLED") {
			t.Fatalf("v1=%v: close: %v", cl.v1, err)
		}
	}

	// DELETE of another kernel closes its sockets too.
	k2 := e.startKernel()
	c2 := e.dial(k2.ID, "S", true)
	if resp, _ := e.do("DELETE", "api/kernels/"+k2.ID, nil, nil, nil); resp.StatusCode != 204 {
		t.Fatal(resp.StatusCode)
	}
	if _, err := c2.read(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1000 || ce.Text != "kernel shut down" {
		t.Fatalf("close after DELETE: %v", err)
	}
	jstest.WaitForNil(t, 5*time.Second, func() error {
		kl, err := e.bus.Sessions.ListKeysFiltered(context.Background(), k2.ID+".>")
		if err != nil {
			return err
		}
		for key := range kl.Keys() {
			return errors.New("session key left: " + key)
		}
		return nil
	})
	// Unknown kernels are refused before the upgrade.
	if _, resp, err := dialWS(e.base, "8d6c2a36-0c9b-4a43-9a57-53b1f2a3c9d1", "x", false, nil); err == nil || resp.StatusCode != 404 {
		t.Fatalf("unknown kernel: %v", err)
	}
}

func TestWSShutdownSavesCursor(t *testing.T) {
	e := newEnv(t, Config{})
	fe, base := startFrontend(t, e.bus, Config{FrontendID: "leaving"})
	k := e.startKernel()
	l := e.worker.launcher(k.ID)
	c, _, err := dialWS(base, k.ID, "S", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c = c.with(t, "S")
	seen := publishRun(l, "one", 2)
	readTexts(t, c, seen[1])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fe.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var ce *fws.CloseError
	if _, err := c.read(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1012 {
		t.Fatalf("close on shutdown: %v", err)
	}
	waitDisconnected(t, e, k.ID, "S")
	more := publishRun(l, "two", 2)
	c = e.dial(k.ID, "S", false)
	if got := readTexts(t, c, more[1]); strings.Join(got, ",") != strings.Join(more, ",") {
		t.Fatalf("after front-end restart: %v", got)
	}
}

func natsMsg(subject string, data []byte, channel, typ, id string) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		broker.HeaderChannel: {channel}, broker.HeaderMsgType: {typ}, broker.HeaderMsgID: {id}, broker.HeaderVersion: {"1"},
	}}
}

// TestWSWaitsForStart: a websocket to a kernel that is still starting is
// held until the kernel runs, then works.
func TestWSWaitsForStart(t *testing.T) {
	e := newEnv(t, Config{})
	now := time.Now().UTC()
	id := "0b8c2f4e-6a1d-4e3b-8c7a-9f2e1d0c3b4a"
	if _, err := e.bus.CreateKernel(context.Background(), &broker.Kernel{ID: id, Spec: "python3", RM: "local",
		State: broker.StateRequested, Created: now, Deadline: now.Add(30 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   *wsClient
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, _, err := dialWS(e.base, id, "early", false, nil)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("dial returned before the kernel ran: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	e.worker.start(id) // the fake worker starts it now
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	c := r.c.with(t, "early")
	req := c.send("shell", "kernel_info_request", map[string]any{})
	if msgs := c.until(isIdleOf(req)); msgs[1].MsgType != "kernel_info_reply" {
		t.Fatalf("got %+v", msgs)
	}
}
