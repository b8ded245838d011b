package jetstream

// The front-end's side of the kernel relay: a client message in, the
// kernel's output out from a stream sequence, the session cursor saved.
// The subjects, headers and consumer settings of the bus contract live
// here, so the front-end's hot path is a few calls.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// tryTimeout bounds one try of a retried bus call.
const tryTimeout = 10 * time.Second

// RetryCtx is Retry for calls that take a context: each try gets its own,
// bounded by 10 s and by what is left of window.
func RetryCtx(ctx context.Context, window time.Duration, try func(context.Context) error) error {
	return retryCtx(ctx, window, try, nil)
}

// retryCtx is RetryCtx with Retry's final.
func retryCtx(ctx context.Context, window time.Duration, try func(context.Context) error, final func(error) bool) error {
	giveUp := time.Now().Add(window)
	return Retry(ctx, window, func() error {
		tctx, cancel := context.WithTimeout(ctx, min(tryTimeout, max(time.Until(giveUp), time.Second)))
		defer cancel()
		return try(tctx)
	}, final, nil)
}

// Input is one client message for a kernel: a v1 frame and the facts of
// its header that the launcher routes by.
type Input struct {
	Kernel  string
	Session string // the websocket session that sent it
	Channel string
	MsgType string
	MsgID   string
	Frame   []byte // v1.kernel.websocket.jupyter.org frame
	// Sender and Seq number the message for live input
	// (broker.HeaderInSeq): Sender one websocket connection (no dots), Seq
	// its messages from 1. Without a Sender the launcher takes the message
	// from the stream only.
	Sender string
	Seq    uint64
}

// SendInput publishes a client message to its kernel's input, chunked if
// it is larger than max_payload, retrying each part for up to window while
// the stream has no leader (a NATS node died). A message with a msg_id
// carries it as Nats-Msg-Id, so a retried publish, or a client sending the
// same message again, reaches the kernel once. The launcher also receives
// the publish live, before it is stored; in.Sender and in.Seq let it use
// that copy (see KernelLink.ConsumeInput).
func (b *Bus) SendInput(ctx context.Context, in Input, window time.Duration) error {
	m := &nats.Msg{Subject: broker.SubjectIn(in.Kernel), Data: in.Frame, Header: nats.Header{
		broker.HeaderChannel: {in.Channel},
		broker.HeaderMsgType: {in.MsgType},
		broker.HeaderMsgID:   {in.MsgID},
		broker.HeaderSession: {in.Session},
		broker.HeaderVersion: {broker.EnvelopeVersion},
	}}
	if in.MsgID != "" {
		m.Header[jetstream.MsgIDHeader] = []string{in.Kernel + ":" + in.MsgID}
	}
	if in.Sender != "" {
		m.Header[broker.HeaderInSeq] = []string{in.Sender + "." + strconv.FormatUint(in.Seq, 10)}
	}
	// Split once, so that a retried chunk keeps its chunk id.
	for _, part := range Split(b.NC, m) {
		err := RetryCtx(ctx, window, func(ctx context.Context) error {
			_, err := b.JS.PublishMsg(ctx, part)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Output is a running subscription to one kernel's output.
type Output struct {
	cc   jetstream.ConsumeContext
	js   jetstream.JetStream
	cons jetstream.Consumer // nil for an input consumption
}

// Delete removes the subscription's consumer from the server at once,
// rather than once it has been idle for its inactive threshold; call it
// after Stop. A consumer already gone is fine.
func (o *Output) Delete(ctx context.Context) error {
	if o.cons == nil {
		return nil
	}
	info := o.cons.CachedInfo()
	if info == nil || info.Name == "" {
		return nil
	}
	err := o.js.DeleteConsumer(ctx, broker.StreamIO, info.Name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDoesNotExist) {
		return nil
	}
	return err
}

// Stop ends the subscription; a delivery in progress may still finish.
func (o *Output) Stop() { o.cc.Stop() }

// Closed is closed once the subscription has ended.
func (o *Output) Closed() <-chan struct{} { return o.cc.Closed() }

// ConsumeOutput delivers kernel id's output, every channel, from stream
// sequence from on, in order, to fn, one message at a time (chunks of a
// large message as they are; see Reassembler). It follows leader changes
// and reconnects by itself, from the last sequence delivered. Setting it
// up is retried for up to window. The server removes the consumer once
// nobody has pulled from it for idle (a front-end that died); Delete
// removes it at once. errFn, if not nil, hears of pull errors it
// recovered from.
//
// headersOnly delivers each message's headers only (plus Nats-Msg-Size):
// for a reader that has most bodies already (live output) and fetches
// the others with OutputBody.
func (b *Bus) ConsumeOutput(ctx context.Context, id string, from uint64, idle, window time.Duration, headersOnly bool, fn func(jetstream.Msg), errFn func(error)) (*Output, error) {
	var cons jetstream.Consumer
	err := RetryCtx(ctx, window, func(ctx context.Context) (err error) {
		cons, err = b.JS.OrderedConsumer(ctx, broker.StreamIO, jetstream.OrderedConsumerConfig{
			FilterSubjects:    []string{broker.SubjectOutAll(id)},
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       from,
			InactiveThreshold: idle,
			HeadersOnly:       headersOnly,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	// A pull may hold a few whole chunks, never more: chunks are up to
	// max_payload each.
	maxBytes := max(16<<20, 3*int(b.NC.MaxPayload()))
	cc, err := cons.Consume(fn, jetstream.PullMaxBytes(maxBytes),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errFn != nil {
				errFn(err)
			}
		}))
	if err != nil {
		return nil, err
	}
	return &Output{cc: cc, js: b.JS, cons: cons}, nil
}

// ErrBodyGone is OutputBody's answer for a message the stream no longer
// holds (aged out or discarded since its headers were delivered).
var ErrBodyGone = errors.New("output message no longer in the stream")

// OutputBody returns the body of the KB_IO message at stream sequence seq,
// whose headers a headers-only ConsumeOutput delivered. It asks with a
// direct get, which any replica may answer; a replica that has not yet
// stored seq answers "not found", so that answer is checked with the
// stream leader (STREAM.MSG.GET) before it is believed. Tries are retried
// for up to window (a leader election).
func (b *Bus) OutputBody(ctx context.Context, seq uint64, window time.Duration) ([]byte, error) {
	req := []byte(`{"seq":` + strconv.FormatUint(seq, 10) + `}`)
	var body []byte
	err := retryCtx(ctx, window, func(tctx context.Context) error {
		m, err := b.NC.RequestWithContext(tctx, "$JS.API.DIRECT.GET."+broker.StreamIO, req)
		if err != nil {
			return err
		}
		switch st := m.Header.Get("Status"); st {
		case "":
			body = m.Data
			return nil
		case "404":
		default:
			return fmt.Errorf("direct get of %s seq %d: %s %s", broker.StreamIO, seq, st, m.Header.Get("Description"))
		}
		// Ask the leader: a replica may be behind.
		r, err := b.NC.RequestWithContext(tctx, "$JS.API.STREAM.MSG.GET."+broker.StreamIO, req)
		if err != nil {
			return err
		}
		var resp struct {
			Message *struct {
				Data []byte `json:"data"`
			} `json:"message"`
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(r.Data, &resp); err != nil {
			return fmt.Errorf("get of %s seq %d: %w", broker.StreamIO, seq, err)
		}
		if resp.Error != nil {
			if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
				return ErrBodyGone
			}
			return resp.Error
		}
		if resp.Message == nil {
			return fmt.Errorf("get of %s seq %d: empty answer", broker.StreamIO, seq)
		}
		body = resp.Message.Data
		return nil
	}, func(err error) bool { return errors.Is(err, ErrBodyGone) })
	return body, err
}

// SaveCursor publishes a websocket session's record at once, without
// waiting for the bucket's ack, and pushes it out of the process in place
// (not by the connection's flusher goroutine): once it returns, the
// record reaches the bus even if this process is killed. The caller's
// periodic save, with an ack, confirms it.
func (b *Bus) SaveCursor(key string, cs broker.ClientSession) error {
	data, err := json.Marshal(cs)
	if err != nil {
		return err
	}
	if err := b.NC.Publish(kvKey(broker.BucketSessions, key), data); err != nil {
		return err
	}
	// A ping written by this goroutine carries the buffered record out
	// with it. Its pong is not waited for.
	_ = b.NC.FlushTimeout(time.Nanosecond)
	return nil
}

// SaveCursorAsync publishes a session record and returns the future of
// the bucket's ack (its revision).
func (b *Bus) SaveCursorAsync(key string, cs broker.ClientSession) (jetstream.PubAckFuture, error) {
	data, err := json.Marshal(cs)
	if err != nil {
		return nil, err
	}
	return b.JS.PublishMsgAsync(&nats.Msg{Subject: kvKey(broker.BucketSessions, key), Data: data})
}

// InputMsg is one client message as the launcher receives it: whole
// (chunks reassembled), decoded, on a channel clients may use.
type InputMsg struct {
	Channel string
	Session string // the websocket session that sent it
	MsgID   string
	Frame   broker.Frame
	Live    bool // delivered from the live subscription, not the stream
}

// ErrBadReply is a control reply that could not be read.
var ErrBadReply = errors.New("unreadable control reply")

// Control sends a control request (interrupt, restart, shutdown, ping) to
// kernel id's launcher and waits up to timeout for its answer. No launcher
// on the bus is nats.ErrNoResponders; an answer that cannot be read is an
// error of its own.
func (b *Bus) Control(ctx context.Context, id string, req broker.ControlRequest, timeout time.Duration) (*broker.ControlReply, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	m := &nats.Msg{Subject: broker.SubjectControl(id), Data: data, Header: nats.Header{broker.HeaderType: {broker.TypeControl}}}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := b.NC.RequestMsgWithContext(ctx, m)
	if err != nil {
		return nil, err
	}
	var r broker.ControlReply
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("%w from the launcher of kernel %s: %v", ErrBadReply, id, err)
	}
	return &r, nil
}
