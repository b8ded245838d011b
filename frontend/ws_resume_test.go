package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
)

// The resume_after tests publish kernel output themselves, so they know
// each message's stream sequence and msg_id, and they set up the "front-end
// died between writing and recording" state by writing the session record
// directly while no connection holds it.

// sentMsg is one output message a test published.
type sentMsg struct {
	text string
	id   string // header.msg_id
	seq  uint64 // stream sequence of its last chunk
}

// publishOut publishes one kernel message to kernel's output as a launcher
// would, routed to session (iopub goes to everyone whatever it says), with
// a stream text as content and, when pad > 0, a buffer of pad bytes, which
// makes it chunked once it exceeds max_payload.
func publishOut(t *testing.T, bus *kbjs.Bus, kernel, channel, msgType, session, text string, pad int) sentMsg {
	t.Helper()
	id := uuid.NewString()
	hdr, _ := json.Marshal(map[string]any{"msg_id": id, "msg_type": msgType, "session": "kernel", "username": "k", "version": "5.3"})
	content, _ := json.Marshal(map[string]string{"name": "stdout", "text": text})
	f := broker.Frame{Channel: channel, Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: content}
	if pad > 0 {
		f.Buffers = [][]byte{bytes.Repeat([]byte("p"), pad)}
	}
	m := &nats.Msg{Subject: broker.SubjectOut(kernel, channel), Data: f.V1(), Header: nats.Header{
		broker.HeaderChannel: {channel}, broker.HeaderMsgType: {msgType}, broker.HeaderMsgID: {id},
		broker.HeaderVersion: {broker.EnvelopeVersion},
	}}
	if session != "" {
		m.Header.Set(broker.HeaderSession, session)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := kbjs.PublishOutput(ctx, bus.NC, bus.JS, m)
	if err != nil {
		t.Fatal(err)
	}
	return sentMsg{text: text, id: id, seq: ack.Sequence}
}

// publishStreams publishes n iopub stream messages named prefix-i.
func publishStreams(t *testing.T, bus *kbjs.Bus, kernel, prefix string, n int) []sentMsg {
	t.Helper()
	var out []sentMsg
	for i := range n {
		out = append(out, publishOut(t, bus, kernel, "iopub", "stream", "", fmt.Sprintf("%s-%d", prefix, i), 0))
	}
	return out
}

func textsOf(ms []sentMsg) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.text)
	}
	return out
}

// dialResume opens a session's websocket with resume_after.
func (e *testEnv) dialResume(id, session, resumeAfter string, v1 bool) *wsClient {
	e.t.Helper()
	c, status, body, err := dialQuery(e.base, id, url.Values{"session_id": {session}, "resume_after": {resumeAfter}}, v1)
	if err != nil {
		e.t.Fatalf("dial with resume_after: %v (status %d: %s)", err, status, body)
	}
	return c.with(e.t, session)
}

// dialQuery dials a kernel's channels with the query q, returning the
// status and body of a refused handshake.
func dialQuery(base, id string, q url.Values, v1 bool) (*wsClient, int, string, error) {
	u, _ := url.Parse(base)
	u.Scheme = "ws"
	u.Path += "api/kernels/" + id + "/channels"
	u.RawQuery = q.Encode()
	d := fws.Dialer{HandshakeTimeout: 10 * time.Second}
	if v1 {
		d.Subprotocols = []string{SubprotocolV1}
	}
	c, resp, err := d.Dial(u.String(), nil)
	if err != nil {
		status, body := 0, ""
		if resp != nil {
			status = resp.StatusCode
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		return nil, status, body, err
	}
	return &wsClient{c: c, v1: v1}, 0, "", nil
}

// sessionRecord reads a session's kb_sessions record.
func sessionRecord(t *testing.T, e *testEnv, kernel, session string) broker.ClientSession {
	t.Helper()
	ent, err := e.bus.Sessions.Get(context.Background(), sessionKVKey(kernel, session))
	if err != nil {
		t.Fatal(err)
	}
	var cs broker.ClientSession
	if err := json.Unmarshal(ent.Value(), &cs); err != nil {
		t.Fatal(err)
	}
	return cs
}

// setCursor rewrites a disconnected session's record with cursor: the
// state a front-end SIGKILLed between writing the message after cursor and
// recording it leaves behind.
func setCursor(t *testing.T, e *testEnv, kernel, session string, cursor uint64) {
	t.Helper()
	cs := sessionRecord(t, e, kernel, session)
	if cs.Connected {
		t.Fatalf("session %s is still connected", session)
	}
	cs.Cursor, cs.ReplayFrom = cursor, 0
	data, _ := json.Marshal(cs)
	if _, err := e.bus.Sessions.Put(context.Background(), sessionKVKey(kernel, session), data); err != nil {
		t.Fatal(err)
	}
}

func closeWS(t *testing.T, e *testEnv, c *wsClient, kernel string) {
	t.Helper()
	_ = c.c.WriteMessage(fws.CloseMessage, fws.FormatCloseMessage(1000, ""))
	waitDisconnected(t, e, kernel, c.session)
}

// receivedThenClosed has session (a v1 or a legacy client) of kernel
// receive n stream messages prefix-0 .. prefix-(n-1) live, then closes its
// websocket; it returns what was published.
func receivedThenClosed(t *testing.T, e *testEnv, kernel, session string, v1 bool, prefix string, n int) []sentMsg {
	t.Helper()
	c := e.dial(kernel, session, v1)
	sent := publishStreams(t, e.bus, kernel, prefix, n)
	sameTexts(t, "live", readTexts(t, c, fmt.Sprintf("%s-%d", prefix, n-1)), textsOf(sent))
	closeWS(t, e, c, kernel)
	return sent
}

func sameTexts(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// TestWSResumeAfterNoRepeat: the saved cursor is one message behind what
// the client received (the front-end died between writing the message and
// recording it). A stock client gets that message again; one that sends
// resume_after does not, also when a message for another session lies
// between the cursor and it.
func TestWSResumeAfterNoRepeat(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	stock := e.dial(k.ID, "stock", true)
	res := e.dial(k.ID, "resuming", false)
	sent := publishStreams(t, e.bus, k.ID, "m", 4)
	publishOut(t, e.bus, k.ID, "shell", "execute_reply", "someone-else", "theirs", 0)
	sent = append(sent, publishOut(t, e.bus, k.ID, "iopub", "stream", "", "m-4", 0))
	for _, c := range []*wsClient{stock, res} {
		sameTexts(t, c.session+" live", readTexts(t, c, "m-4"), textsOf(sent))
		closeWS(t, e, c, k.ID)
		setCursor(t, e, k.ID, c.session, sent[3].seq)
	}
	more := publishStreams(t, e.bus, k.ID, "n", 2)

	stock = e.dial(k.ID, "stock", true)
	sameTexts(t, "stock client after the kill", readTexts(t, stock, "n-1"), append([]string{"m-4"}, textsOf(more)...))

	res = e.dialResume(k.ID, "resuming", sent[4].id, false)
	sameTexts(t, "resuming client after the kill", readTexts(t, res, "n-1"), textsOf(more))
	jstest.WaitForNil(t, 5*time.Second, func() error {
		if cs := sessionRecord(t, e, k.ID, "resuming"); cs.Cursor != more[1].seq {
			return fmt.Errorf("cursor %d, want %d", cs.Cursor, more[1].seq)
		}
		return nil
	})
}

// TestWSResumeAfterBehindCursor: the client received fewer messages than
// the server wrote (they sat in buffers when the connection went); with
// resume_after it gets the rest once, in order, including a chunked
// message, and everything published since.
func TestWSResumeAfterBehindCursor(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "S", true)
	sent := publishStreams(t, e.bus, k.ID, "a", 2)
	// Chunked messages (over the 1 MiB max_payload): the client's last
	// one, and one of those it missed.
	sent = append(sent, publishOut(t, e.bus, k.ID, "iopub", "stream", "", "a-2", 2<<20))
	sent = append(sent, publishOut(t, e.bus, k.ID, "iopub", "stream", "", "a-3", 3<<20))
	sent = append(sent, publishStreams(t, e.bus, k.ID, "b", 4)...)
	// The socket takes everything (so that no write blocks); the client is
	// then taken to have received only the first k3, as when the rest sat
	// in buffers when its connection dropped.
	sameTexts(t, "live", readTexts(t, c, "b-3"), textsOf(sent))
	closeWS(t, e, c, k.ID)
	if cs := sessionRecord(t, e, k.ID, "S"); cs.Cursor != sent[len(sent)-1].seq {
		t.Fatalf("saved cursor %d, want %d", cs.Cursor, sent[len(sent)-1].seq)
	}
	const k3 = 3 // a-0 .. a-2
	more := publishStreams(t, e.bus, k.ID, "c", 1)

	c = e.dialResume(k.ID, "S", sent[k3-1].id, true)
	want := append(textsOf(sent[k3:]), textsOf(more)...)
	var got []string
	for len(got) < len(want) {
		m := c.mustRead()
		var s struct{ Text string }
		_ = json.Unmarshal(m.Content, &s)
		got = append(got, s.Text)
		if s.Text == "a-3" && (len(m.Buffers) != 1 || len(m.Buffers[0]) != 3<<20) {
			t.Fatalf("chunked message came with %d buffers", len(m.Buffers))
		}
	}
	sameTexts(t, "after resuming behind the cursor", got, want)
	// Nothing more is pending: the next message is the next one published.
	next := publishStreams(t, e.bus, k.ID, "d", 1)
	sameTexts(t, "then", readTexts(t, c, "d-0"), textsOf(next))
}

// TestWSResumeAfterUnknownID: a msg_id the server cannot find resumes
// after the saved cursor, as without resume_after; on a session without a
// record it is ignored and the session starts at the stream's end.
func TestWSResumeAfterUnknownID(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	sent := receivedThenClosed(t, e, k.ID, "U", false, "m", 3)
	setCursor(t, e, k.ID, "U", sent[1].seq)
	more := publishStreams(t, e.bus, k.ID, "n", 1)
	c := e.dialResume(k.ID, "U", "no-such-msg-id", false)
	sameTexts(t, "unknown msg_id", readTexts(t, c, "n-0"), append([]string{"m-2"}, textsOf(more)...))

	fresh := e.dialResume(k.ID, "fresh", sent[0].id, true)
	last := publishStreams(t, e.bus, k.ID, "o", 1)
	sameTexts(t, "new session with resume_after", readTexts(t, fresh, "o-0"), textsOf(last))
}

// TestWSResumeAfterBadParam: an empty or overlong resume_after is refused
// before the upgrade, naming the parameter; 256 bytes is accepted.
func TestWSResumeAfterBadParam(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	for _, bad := range []string{"", strings.Repeat("x", 257)} {
		_, status, body, err := dialQuery(e.base, k.ID, url.Values{"session_id": {"B"}, "resume_after": {bad}}, true)
		if err == nil || status != 400 || !strings.Contains(body, "resume_after") {
			t.Fatalf("resume_after of %d bytes: %v, status %d: %s", len(bad), err, status, body)
		}
	}
	// Without a value at all ("?resume_after") too.
	u := strings.Replace(e.base, "http", "ws", 1) + "api/kernels/" + k.ID + "/channels?session_id=B2&resume_after"
	if _, resp, err := (&fws.Dialer{}).Dial(u, nil); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Fatalf("bare resume_after: %v", err)
	}
	c := e.dialResume(k.ID, "C", strings.Repeat("y", 256), true)
	id := c.send("shell", "kernel_info_request", map[string]any{})
	if msgs := c.until(isIdleOf(id)); msgs[1].MsgType != "kernel_info_reply" {
		t.Fatalf("got %+v", msgs)
	}
}

// TestWSResumeAfterInFlightWrite: the front-end died during one socket
// write of several messages, having recorded the write's window
// (InFlight) but not its end. A client that received a prefix of the
// write and sends resume_after gets the rest of it and what followed,
// once; a client that received none of it gets all of it.
func TestWSResumeAfterInFlightWrite(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	sent := receivedThenClosed(t, e, k.ID, "S", true, "w", 6)
	setWindow := func(cursor, inFlight uint64) {
		t.Helper()
		cs := sessionRecord(t, e, k.ID, "S")
		cs.Cursor, cs.InFlight, cs.ReplayFrom = cursor, inFlight, 0
		data, _ := json.Marshal(cs)
		if _, err := e.bus.Sessions.Put(context.Background(), sessionKVKey(k.ID, "S"), data); err != nil {
			t.Fatal(err)
		}
	}
	// The write carried w-2..w-4; the client got w-2 and w-3.
	setWindow(sent[1].seq, sent[4].seq)
	c := e.dialResume(k.ID, "S", sent[3].id, true)
	sameTexts(t, "resumed inside the window", readTexts(t, c, "w-5"), textsOf(sent[4:]))
	closeWS(t, e, c, k.ID)

	// The same window, and the client got nothing of it.
	setWindow(sent[1].seq, sent[4].seq)
	c = e.dialResume(k.ID, "S", sent[1].id, true)
	sameTexts(t, "resumed before the window", readTexts(t, c, "w-5"), textsOf(sent[2:]))
}

// publishBatch publishes the stream messages named texts as one batch, as
// a launcher does with iopub output that queued up, and returns them
// (all with the batch's sequence).
func publishBatch(t *testing.T, bus *kbjs.Bus, kernel string, texts ...string) []sentMsg {
	t.Helper()
	var body []byte
	var out []sentMsg
	for _, text := range texts {
		id := uuid.NewString()
		hdr, _ := json.Marshal(map[string]any{"msg_id": id, "msg_type": "stream", "session": "kernel", "username": "k", "version": "5.3"})
		content, _ := json.Marshal(map[string]string{"name": "stdout", "text": text})
		f := broker.Frame{Channel: "iopub", Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: content}
		body = broker.AppendBatch(body, f.V1())
		out = append(out, sentMsg{text: text, id: id})
	}
	m := &nats.Msg{Subject: broker.SubjectOut(kernel, "iopub"), Data: body, Header: nats.Header{
		broker.HeaderChannel: {"iopub"}, broker.HeaderVersion: {broker.EnvelopeVersion},
		broker.HeaderBatch: {fmt.Sprint(len(texts))},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := kbjs.PublishOutput(ctx, bus.NC, bus.JS, m)
	if err != nil {
		t.Fatal(err)
	}
	for i := range out {
		out[i].seq = ack.Sequence
	}
	return out
}

// TestWSBatchedOutput: a batch of kernel messages in one bus message
// reaches v1 and legacy clients as separate messages, in order; a client
// that resumes with resume_after pointing inside the batch gets the rest
// of it once, whether the batch was recorded as written or not.
func TestWSBatchedOutput(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	v1 := e.dial(k.ID, "V", true)
	legacy := e.dial(k.ID, "L", false)
	sent := publishStreams(t, e.bus, k.ID, "a", 1)
	sent = append(sent, publishBatch(t, e.bus, k.ID, "b-0", "b-1", "b-2")...)
	sent = append(sent, publishStreams(t, e.bus, k.ID, "c", 1)...)
	for _, c := range []*wsClient{v1, legacy} {
		sameTexts(t, c.session+" live", readTexts(t, c, "c-0"), textsOf(sent))
	}
	closeWS(t, e, v1, k.ID)

	// Not recorded as written; the client got b-0 and b-1.
	setCursor(t, e, k.ID, "V", sent[0].seq)
	v1 = e.dialResume(k.ID, "V", sent[2].id, true)
	sameTexts(t, "resumed inside an unrecorded batch", readTexts(t, v1, "c-0"), textsOf(sent[3:]))
	closeWS(t, e, v1, k.ID)

	// Recorded as written; the client got only b-0.
	setCursor(t, e, k.ID, "V", sent[4].seq)
	v1 = e.dialResume(k.ID, "V", sent[1].id, true)
	sameTexts(t, "resumed inside a written batch", readTexts(t, v1, "c-0"), textsOf(sent[2:]))
}

// TestWSMalformedBatchDropped: a batch whose frames do not add up (what a
// hostile kernel's launcher could publish on its own output) is dropped;
// the connection stays and gets the next message.
func TestWSMalformedBatchDropped(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	c := e.dial(k.ID, "S", true)
	for _, bad := range []struct {
		body  []byte
		count string
	}{
		{[]byte{0, 0, 0, 9, 'x'}, "1"},
		{broker.AppendBatch(nil, []byte("not a frame")), "2"},
		{broker.AppendBatch(nil, []byte("x")), "many"},
	} {
		m := &nats.Msg{Subject: broker.SubjectOut(k.ID, "iopub"), Data: bad.body, Header: nats.Header{
			broker.HeaderChannel: {"iopub"}, broker.HeaderVersion: {broker.EnvelopeVersion}, broker.HeaderBatch: {bad.count},
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := kbjs.PublishOutput(ctx, e.bus.NC, e.bus.JS, m); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	good := publishStreams(t, e.bus, k.ID, "after", 1)
	sameTexts(t, "after malformed batches", readTexts(t, c, "after-0"), textsOf(good))
}
