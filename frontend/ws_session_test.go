package frontend

import (
	"net/url"
	"strings"
	"testing"
)

// TestWSLongSessionID: session_id becomes part of a NATS subject (the
// session's kb_sessions key), and the NATS server closes for good a
// connection that sends a protocol line over 4 KiB: one client with a
// long session_id would have cut the front-end off the bus for everyone.
// It is refused before the upgrade, naming the parameter, and the
// front-end keeps serving; a 256-byte one that needs escaping works.
func TestWSLongSessionID(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.startKernel()
	long := strings.Repeat("s", 5000)
	_, status, body, err := dialQuery(e.base, k.ID, url.Values{"session_id": {long}}, true)
	if err == nil || status != 400 || !strings.Contains(body, "session_id") {
		t.Fatalf("session_id of %d bytes: %v, status %d: %s", len(long), err, status, body)
	}
	c := e.dial(k.ID, strings.Repeat("é.", 64), false)
	id := c.send("shell", "kernel_info_request", map[string]any{})
	if msgs := c.until(isIdleOf(id)); msgs[1].MsgType != "kernel_info_reply" {
		t.Fatalf("got %+v", msgs)
	}
}
