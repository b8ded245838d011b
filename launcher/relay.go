package launcher

import (
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/launcher/wire"
	"github.com/nats-io/nats.go"
)

var (
	headerKeys = []string{"msg_id", "msg_type"}
	parentKeys = []string{"msg_id", "msg_type", "session"}
)

// Header values shared by every message of a kind. nats.go only reads
// header slices, so one slice per value can be shared instead of
// allocating one per message.
var (
	channelValue = map[string][]string{
		chShell: {chShell}, chControl: {chControl}, chStdin: {chStdin}, chIOPub: {chIOPub},
	}
	envelopeValue = []string{broker.EnvelopeVersion}
	commonTypes   = func() map[string][]string {
		m := map[string][]string{}
		for _, t := range []string{"status", "stream", "display_data", "update_display_data",
			"execute_input", "execute_result", "error", "clear_output", "comm_msg", "comm_open",
			"comm_close", "execute_reply", "kernel_info_reply", "complete_reply", "inspect_reply",
			"history_reply", "is_complete_reply", "comm_info_reply", "input_request",
			"shutdown_reply", "interrupt_reply", "debug_reply", "debug_event",
			"execute_request", "kernel_info_request", "comm_info_request"} {
			m[t] = []string{t}
		}
		return m
	}()
)

func headerValue(common map[string][]string, b []byte) []string {
	if v, ok := common[string(b)]; ok {
		return v
	}
	return []string{string(b)}
}

// readLoop is the one goroutine that reads a socket of one incarnation.
func (l *launcher) readLoop(inc *incarnation, ch string, s zmq4.Socket) {
	defer inc.wg.Done()
	sg := wire.NewSigner(l.ci.Key)
	for {
		m, err := s.Recv()
		if err != nil {
			if inc.stopped() {
				return
			}
			// A dropped connection reports once; zmq4 redials by itself.
			select {
			case <-inc.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		l.fromKernel(inc, ch, m.Frames, sg)
	}
}

// fromKernel relays one kernel message to the bus. Only the small header
// and parent header are scanned; content is read for status messages only,
// and no part is re-encoded.
func (l *launcher) fromKernel(inc *incarnation, ch string, frames [][]byte, sg *wire.Signer) {
	w, err := wire.Split(frames)
	if err != nil {
		l.log.Warn().Err(err).Str("channel", ch).Msg("malformed kernel message dropped")
		return
	}
	if !sg.Verify(w.Sig, w.Header, w.ParentHeader, w.Metadata, w.Content) {
		l.log.Warn().Err(wire.ErrBadSig).Str("channel", ch).Msg("kernel message with a bad signature dropped")
		return
	}
	var hv [2][]byte
	if err := scanStrings(w.Header, headerKeys, hv[:]); err != nil {
		l.log.Warn().Err(err).Str("channel", ch).Msg("kernel message with an unreadable header dropped")
		return
	}
	msgID, msgType := hv[0], hv[1]
	var pv [3][]byte
	if len(w.ParentHeader) > 2 {
		_ = scanStrings(w.ParentHeader, parentKeys, pv[:])
	}
	parentID, parentType, parentSession := pv[0], pv[1], pv[2]
	own := len(parentSession) > 0 && string(parentSession) == l.session

	switch ch {
	case chIOPub:
		inc.sawIOPub()
		if string(msgType) == "iopub_welcome" {
			return // answers the launcher's own subscription
		}
		l.act.observe(msgType, parentType, w.Content)
	case chShell, chControl:
		if own {
			if string(msgType) == "kernel_info_reply" {
				inc.sawInfo()
			}
			l.deliver(parentID, w.Content)
			return
		}
	case chStdin:
		if own {
			return
		}
	}

	f := broker.Frame{Channel: ch, Header: w.Header, ParentHeader: w.ParentHeader,
		Metadata: w.Metadata, Content: w.Content, Buffers: w.Buffers}
	body := f.EncodeV1(nil)
	if len(body) > kbjs.MaxMessage {
		l.log.Error().Int("bytes", len(body)).Str("msg_type", string(msgType)).
			Msg("kernel message larger than the bus allows: dropped")
		return
	}
	hdr := nats.Header{
		broker.HeaderChannel: channelValue[ch],
		broker.HeaderMsgType: headerValue(commonTypes, msgType),
		broker.HeaderMsgID:   {string(msgID)},
		broker.HeaderVersion: envelopeValue,
	}
	if len(parentType) > 0 {
		hdr[broker.HeaderParentType] = headerValue(commonParentTypes, parentType)
	}
	if s := l.routes.get(parentID); s != "" {
		hdr[broker.HeaderSession] = []string{s}
	}
	select {
	case l.pub.in <- &nats.Msg{Subject: l.outSubject[chIndex(ch)], Header: hdr, Data: body}:
	case <-inc.stop:
	}
}

// commonParentTypes are the usual request types, for Kb-Parent-Type.
var commonParentTypes = func() map[string][]string {
	m := map[string][]string{}
	for _, t := range []string{"execute_request", "kernel_info_request", "complete_request",
		"inspect_request", "history_request", "is_complete_request", "comm_info_request",
		"comm_msg", "comm_open", "comm_close", "shutdown_request", "interrupt_request",
		"debug_request", "input_reply"} {
		m[t] = []string{t}
	}
	return m
}()

// publishStatus publishes an iopub status the launcher makes itself
// (restarting, dead), as jupyter_server does for its auto-restarter: a new
// msg_id, an empty parent and the launcher's own session, for every client.
func (l *launcher) publishStatus(state string) {
	_, hdr := newHeader("status", l.session, l.username)
	f := broker.Frame{Channel: chIOPub, Header: hdr, ParentHeader: []byte("{}"), Metadata: []byte("{}"),
		Content: []byte(`{"execution_state":"` + state + `"}`)}
	var h [2][]byte
	_ = scanStrings(hdr, headerKeys, h[:])
	m := &nats.Msg{Subject: l.outSubject[chIndex(chIOPub)], Data: f.V1(), Header: nats.Header{
		broker.HeaderChannel: channelValue[chIOPub],
		broker.HeaderMsgType: {"status"},
		broker.HeaderMsgID:   {string(h[0])},
		broker.HeaderVersion: envelopeValue,
	}}
	select {
	case l.pub.in <- m:
	case <-time.After(busTimeout):
		l.log.Error().Str("state", state).Msg("could not queue iopub status")
	}
}

// hbLoop pings the kernel's heartbeat channel. A kernel whose process is
// alive but does not echo is only logged: killing it would lose the
// user's state, and a busy kernel may just be slow.
func (l *launcher) hbLoop(inc *incarnation) {
	defer inc.wg.Done()
	t := time.NewTicker(hbEvery)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-inc.stop:
			return
		case <-t.C:
		}
		if !inc.dialed.Load() {
			continue
		}
		stalled := time.AfterFunc(hbStall, func() {
			if !inc.stopped() && !inc.proc.exited() {
				l.log.Warn().Int("pid", inc.proc.pid).Dur("waited", hbStall).Msg("kernel heartbeat: no echo (process alive)")
			}
		})
		err := inc.socks.hb.Send(zmq4.NewMsgString("ping"))
		if err == nil {
			_, err = inc.socks.hb.Recv()
		}
		stalled.Stop()
		if inc.stopped() {
			return
		}
		if err == nil {
			if fails >= 3 {
				l.log.Info().Int("failed", fails).Msg("kernel heartbeat back")
			}
			fails = 0
			continue
		}
		fails++
		if fails == 3 && !inc.proc.exited() {
			l.log.Warn().Err(err).Int("pid", inc.proc.pid).Msg("kernel heartbeat failed 3 times (process alive)")
		}
	}
}
