package launcher

import (
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// untracked are the message types that do not count as user activity,
// jupyter_server's default untracked_message_types: replies to the
// gateway's own probes, and output that is only a side effect.
var untracked = map[string]bool{
	"comm_info_request": true, "comm_info_reply": true,
	"kernel_info_request": true, "kernel_info_reply": true,
	"shutdown_request": true, "shutdown_reply": true,
	"interrupt_request": true, "interrupt_reply": true,
	"debug_request": true, "debug_reply": true,
	"stream": true, "display_data": true, "update_display_data": true,
	"execute_input": true, "execute_result": true, "error": true,
	"status": true, "clear_output": true, "debug_event": true,
	"input_request": true, "input_reply": true,
}

// tracked follows jupyter_server: a missing type (a message without a
// parent) counts as tracked.
func tracked(msgType []byte) bool { return !untracked[string(msgType)] }

// activityWriteEvery bounds how often kb_activity is written: status
// changes with every request, and readers only need about this freshness.
const activityWriteEvery = 500 * time.Millisecond

var executionStateKey = []string{"execution_state"}

// activity tracks execution_state and last_activity from iopub traffic,
// with jupyter_server's rules, and writes them throttled: a change is
// written at once when the last write is older than activityWriteEvery,
// otherwise coalesced into one trailing write.
type activity struct {
	mu    sync.Mutex
	cur   broker.Activity
	dirty bool
	kick  chan struct{}
}

func newActivity() *activity {
	return &activity{cur: broker.Activity{ExecutionState: "starting", LastActivity: time.Now().UTC()},
		kick: make(chan struct{}, 1)}
}

// observe records one iopub message. It is on the hot path: no
// allocations, and content is only read for status messages.
func (a *activity) observe(msgType, parentType, content []byte) {
	isStatus := string(msgType) == "status"
	var es [1][]byte
	if isStatus {
		_ = scanStrings(content, executionStateKey, es[:])
	}
	parentTracked := len(parentType) == 0 || tracked(parentType)
	a.mu.Lock()
	changed := false
	if tracked(msgType) || parentTracked || a.cur.ExecutionState == "busy" {
		a.cur.LastActivity = time.Now().UTC()
		changed = true
	}
	if isStatus && es[0] != nil {
		switch {
		case parentTracked:
			if a.cur.ExecutionState != string(es[0]) {
				a.cur.ExecutionState = string(es[0])
				changed = true
			}
		case a.cur.ExecutionState == "starting" && string(es[0]) != "starting":
			// After start, statuses answering the launcher's own probes
			// mean the kernel is idle.
			a.cur.ExecutionState = "idle"
			changed = true
		}
	}
	if changed {
		a.dirty = true
	}
	a.mu.Unlock()
	if changed {
		a.poke()
	}
}

// set forces the execution state, for lifecycle steps the launcher itself
// witnesses (starting, restarting, dead).
func (a *activity) set(state string) {
	a.mu.Lock()
	a.cur.ExecutionState = state
	a.cur.LastActivity = time.Now().UTC()
	a.dirty = true
	a.mu.Unlock()
	a.poke()
}

func (a *activity) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *activity) take() (broker.Activity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.dirty
	a.dirty = false
	return a.cur, d
}

// run writes changes until stop is closed, then writes a pending change
// once more.
func (a *activity) run(stop <-chan struct{}, write func(broker.Activity)) {
	for {
		select {
		case <-a.kick:
		case <-stop:
			if v, ok := a.take(); ok {
				write(v)
			}
			return
		}
		if v, ok := a.take(); ok {
			write(v)
		}
		t := time.NewTimer(activityWriteEvery)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			if v, ok := a.take(); ok {
				write(v)
			}
			return
		}
	}
}
