package access_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// inputRig is a kernel's launcher consuming its input with its own
// credentials, and a front-end's SendInput.
type inputRig struct {
	t    *testing.T
	e    *jstest.Env
	p    *probe
	id   string
	got  chan kbjs.InputMsg
	seqs map[string]uint64 // the front-end's numbers per sender
}

func newInputRig(t *testing.T) *inputRig {
	e := jstest.Start(t, jstest.Options{Auth: true})
	id := uuid.NewString()
	ctx := context.Background()
	if _, err := e.Bus.CreateKernel(ctx, &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, State: broker.StateSubmitted, User: "u"}); err != nil {
		t.Fatal(err)
	}
	creds, err := e.Minter.LauncherCreds(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &inputRig{t: t, e: e, p: connect(t, e, string(creds), broker.InboxPrefix(id)), id: id,
		got: make(chan kbjs.InputMsg, 256), seqs: map[string]uint64{}}
}

// consume starts the launcher's consumption.
func (r *inputRig) consume() {
	link, err := kbjs.OpenKernel(r.p.nc, r.id)
	if err != nil {
		r.t.Fatal(err)
	}
	cc, err := link.ConsumeInput(context.Background(), func(m kbjs.InputMsg) { r.got <- m }, func(err error) { r.t.Logf("input: %v", err) })
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { cc.Stop(); <-cc.Closed() })
}

// send sends a shell message as sender ("" sends it unnumbered).
func (r *inputRig) send(sender, msgID string) {
	r.t.Helper()
	f := broker.Frame{Channel: "shell", Header: []byte(`{"msg_id":"` + msgID + `","msg_type":"execute_request"}`),
		ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: []byte(`{"code":"1"}`)}
	in := kbjs.Input{Kernel: r.id, Session: "s", Channel: "shell", MsgType: "execute_request", MsgID: msgID, Frame: f.V1()}
	if sender != "" {
		r.seqs[sender]++
		in.Sender, in.Seq = sender, r.seqs[sender]
	}
	if err := r.e.Bus.SendInput(context.Background(), in, 10*time.Second); err != nil {
		r.t.Fatal(err)
	}
}

// next is the next message the launcher delivered.
func (r *inputRig) next(want string) kbjs.InputMsg {
	r.t.Helper()
	select {
	case m := <-r.got:
		if m.MsgID != want || m.Channel != "shell" || m.Session != "s" {
			r.t.Fatalf("got %q on %q from %q, want %q on shell from s", m.MsgID, m.Channel, m.Session, want)
		}
		return m
	case <-time.After(20 * time.Second):
		r.t.Fatalf("input %q did not arrive", want)
	}
	return kbjs.InputMsg{}
}

// nothingMore checks that nothing else is delivered (once the stream has
// had time to deliver what it holds: an unnumbered message sent last
// comes after everything before it) and that nothing was refused.
func (r *inputRig) nothingMore() {
	r.t.Helper()
	r.send("", "end")
	r.next("end")
	select {
	case m := <-r.got:
		r.t.Fatalf("%q delivered again", m.MsgID)
	default:
	}
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if len(r.p.errs) > 0 {
		r.t.Fatalf("permission errors: %v", r.p.errs)
	}
}

// A launcher pulls its input with its own credentials, binding its input
// consumer by name before the worker has created it (as during a start):
// input sent before the consumer exists and input sent after it both
// arrive, in order, and the pull causes no permission error.
func TestLauncherPullsInputBeforeItsConsumerExists(t *testing.T) {
	r := newInputRig(t)
	r.consume()
	r.send("", "before")
	if err := kbjs.EnsureInput(context.Background(), r.e.Bus.JS, r.id); err != nil {
		t.Fatal(err)
	}
	r.send("", "after")
	r.next("before")
	r.next("after")
	r.nothingMore()
}

// Live input: numbered messages reach the kernel once each and in their
// sender's order, the live copy used once the sender's previous message
// was delivered; a sender's first message, and any message sent again
// with a msg_id already delivered, come from the stream (which drops the
// second copy as a duplicate), so nothing is doubled.
func TestLauncherInputLiveOnceInOrder(t *testing.T) {
	r := newInputRig(t)
	if err := kbjs.EnsureInput(context.Background(), r.e.Bus.JS, r.id); err != nil {
		t.Fatal(err)
	}
	r.consume()
	live := 0
	// Round trips, as a client does: each sent once the last arrived.
	for i := 1; i <= 30; i++ {
		id := fmt.Sprintf("a%d", i)
		r.send("A", id)
		m := r.next(id)
		if i == 1 && m.Live {
			t.Fatal("a sender's first message was delivered live, before what the stream held")
		}
		if m.Live {
			live++
		}
	}
	if live == 0 {
		t.Fatal("no message was delivered live")
	}
	t.Logf("%d of 29 delivered live", live)
	// A message sent again (same msg_id, next number) is not delivered
	// again, live or stored, and the sender carries on after it.
	r.send("A", "a30")
	r.send("A", "a31")
	r.next("a31")
	// A burst, without waiting: all arrive once, in order, whichever copy.
	for i := 32; i <= 60; i++ {
		r.send("A", fmt.Sprintf("a%d", i))
	}
	for i := 32; i <= 60; i++ {
		r.next(fmt.Sprintf("a%d", i))
	}
	// A second sender (the client reconnected elsewhere), interleaved
	// with the first: each sender's order holds.
	r.send("A", "a61")
	r.send("B", "b1")
	r.send("A", "a62")
	r.send("B", "b2")
	seen := map[string][]string{}
	for range 4 {
		select {
		case m := <-r.got:
			seen[m.MsgID[:1]] = append(seen[m.MsgID[:1]], m.MsgID)
		case <-time.After(20 * time.Second):
			t.Fatalf("missing input: got %v", seen)
		}
	}
	if fmt.Sprint(seen["a"]) != "[a61 a62]" || fmt.Sprint(seen["b"]) != "[b1 b2]" {
		t.Fatalf("delivered %v", seen)
	}
	r.nothingMore()
}
