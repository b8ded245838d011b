package access_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// A launcher pulls its input with its own credentials, binding its input
// consumer by name before the worker has created it (as during a start):
// input sent before the consumer exists and input sent after it both
// arrive, in order, and the pull causes no permission error.
func TestLauncherPullsInputBeforeItsConsumerExists(t *testing.T) {
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
	p := connect(t, e, string(creds), broker.InboxPrefix(id))
	link, err := kbjs.OpenKernel(p.nc, id)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan kbjs.InputMsg, 4)
	cc, err := link.ConsumeInput(ctx, func(m kbjs.InputMsg) { got <- m }, func(err error) { t.Logf("input: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cc.Stop(); <-cc.Closed() }()
	send := func(msgID string) {
		t.Helper()
		f := broker.Frame{Channel: "shell", Header: []byte(`{"msg_id":"` + msgID + `","msg_type":"execute_request"}`),
			ParentHeader: []byte("{}"), Metadata: []byte("{}"), Content: []byte(`{"code":"1"}`)}
		in := kbjs.Input{Kernel: id, Session: "s", Channel: "shell", MsgType: "execute_request", MsgID: msgID, Frame: f.V1()}
		if err := e.Bus.SendInput(ctx, in, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	send("before")
	if err := kbjs.EnsureInput(ctx, e.Bus.JS, id); err != nil {
		t.Fatal(err)
	}
	send("after")
	for _, want := range []string{"before", "after"} {
		select {
		case m := <-got:
			if m.MsgID != want || m.Channel != "shell" || m.Session != "s" {
				t.Fatalf("got %q on %q from %q, want %q on shell from s", m.MsgID, m.Channel, m.Session, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("input %q did not arrive", want)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errs) > 0 {
		t.Fatalf("permission errors: %v", p.errs)
	}
}
