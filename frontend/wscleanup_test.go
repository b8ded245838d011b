package frontend

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// Quick connects, each with a new session, leave no output consumer on
// KB_IO once their sockets close, and at most maxClosedSessions session
// records of the kernel; the session still connected keeps its record.
func TestWSClosedSocketsLeaveNoConsumersAndBoundedSessions(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	keep := e.dial(k.ID, "kept", true)
	const n = maxClosedSessions + 20
	for i := range n {
		w := e.dial(k.ID, fmt.Sprintf("quick-%d", i), i%2 == 0)
		_ = w.c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	outputConsumers := func() int {
		n := 0
		st, err := e.bus.JS.Stream(ctx, broker.StreamIO)
		if err != nil {
			t.Fatal(err)
		}
		for info := range st.ListConsumers(ctx).Info() {
			for _, f := range append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...) {
				if f == broker.SubjectOutAll(k.ID) {
					n++
				}
			}
		}
		return n
	}
	sessions := func() (total int, kept bool) {
		l, err := e.bus.Sessions.ListKeysFiltered(ctx, broker.SessionKey(k.ID, "*"))
		if err != nil {
			t.Fatal(err)
		}
		for key := range l.Keys() {
			total++
			kept = kept || key == sessionKVKey(k.ID, "kept")
		}
		return total, kept
	}
	var cons, total int
	var kept bool
	if !jstest.Eventually(30*time.Second, func() bool {
		cons = outputConsumers()
		total, kept = sessions()
		return cons == 1 && total <= maxClosedSessions+1
	}) {
		t.Fatalf("after %d closed sockets: %d output consumers of the kernel (want 1, the open socket's), %d session records (want <= %d)", n, cons, total, maxClosedSessions+1)
	}
	if !kept {
		t.Fatal("the connected session's record was pruned")
	}
	// The open socket still works; waiting for the idle status also leaves
	// nothing of the fake launcher's in flight when the bus closes.
	id := keep.send("shell", "kernel_info_request", map[string]any{})
	keep.until(isIdleOf(id))
}
