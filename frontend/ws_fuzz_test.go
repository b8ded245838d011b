package frontend

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go"
	"github.com/valyala/fasthttp"
)

// kvKey is what a NATS KV key may hold (nats.go refuses anything else).
var kvKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

// FuzzSessionKey: a websocket's session_id is any string a client puts in
// the URL. Every one the front-end accepts maps to a valid kb_sessions key
// under its kernel, short enough for a NATS protocol line, and two
// different sessions never share a key.
func FuzzSessionKey(f *testing.F) {
	for _, s := range [][2]string{{"d1f6c1b2-7d0e-4b7e-9a57-0c6f1e0d9a11", "other"}, {"a.b", "a_b"}, {"b64_YQ", "a"},
		{"*", ">"}, {"", "\x00"}, {"é", "\xff"}, {strings.Repeat("x", maxSessionID), "y"}} {
		f.Add(s[0], s[1])
	}
	const kernel = "0f4cbd2c-8a3f-4c36-9d0e-5c3c9b1f6a21"
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" || b == "" || len(a) > maxSessionID || len(b) > maxSessionID {
			return // the front-end makes its own id, or refuses the socket
		}
		ka, kb := sessionKVKey(kernel, a), sessionKVKey(kernel, b)
		for _, k := range []string{ka, kb} {
			rest, ok := strings.CutPrefix(k, kernel+".")
			if !ok || !kvKey.MatchString(k) || rest == "" || strings.Contains(rest, ".") {
				t.Fatalf("session key %q", k)
			}
			if subj := "$KV." + broker.BucketSessions + "." + k; len(subj) > 1024 {
				t.Fatalf("a %d-byte subject for a session id of at most %d bytes", len(subj), maxSessionID)
			}
		}
		if a != b && ka == kb {
			t.Fatalf("sessions %q and %q share the key %q", a, b, ka)
		}
	})
}

// FuzzWSQuery: the query string of a websocket request. resume_after and
// session_id are either refused as a bad request that names them, or
// taken as the client sent them, within their bounds (a "#" starts the
// URI fragment, which net/url.ParseQuery does not know about).
func FuzzWSQuery(f *testing.F) {
	for _, q := range []string{"session_id=s1&resume_after=m1", "resume_after=", "resume_after", "resume_after=%00%ff",
		"resume_after=" + strings.Repeat("a", maxResumeAfter+1), "session_id=" + strings.Repeat("b", 5000), "resume_after=a&resume_after=b"} {
		f.Add(q)
	}
	app := fiber.New()
	f.Fuzz(func(t *testing.T, q string) {
		rc := &fasthttp.RequestCtx{}
		rc.Request.SetRequestURI("/api/kernels/k/channels?" + q)
		c := app.AcquireCtx(rc)
		defer app.ReleaseCtx(c)
		v, err := resumeAfterParam(c)
		args := c.Context().QueryArgs()
		if err != nil {
			var e *broker.Error
			if !errors.As(err, &e) || !errors.Is(err, broker.ErrBadRequest) || !strings.Contains(err.Error(), "resume_after") {
				t.Fatalf("%q: %v", q, err)
			}
			return
		}
		if !args.Has("resume_after") {
			if v != "" {
				t.Fatalf("%q: resume_after %q from nowhere", q, v)
			}
			return
		}
		if v == "" || len(v) > maxResumeAfter || v != string(args.Peek("resume_after")) {
			t.Fatalf("%q: resume_after %q", q, v)
		}
		if vals, _ := url.ParseQuery(q); vals != nil && !strings.Contains(q, "#") && len(vals["resume_after"]) == 1 && vals.Get("resume_after") != v {
			t.Fatalf("%q: resume_after %q, net/url reads %q", q, v, vals.Get("resume_after"))
		}
	})
}

// FuzzMsgIDOf: the msg_id the front-end resumes by comes from the
// Kb-Msg-Id header or the message itself, both written by a kernel's
// launcher; any bytes give an answer, never a panic, and a header wins.
func FuzzMsgIDOf(f *testing.F) {
	fr := broker.Frame{Channel: "iopub", Header: []byte(`{"msg_id":"m1"}`)}
	f.Add(fr.V1(), "")
	f.Add(fr.V1(), "h1")
	f.Add([]byte{7, 0, 0, 0, 0, 0, 0, 0}, "")
	f.Fuzz(func(t *testing.T, data []byte, hid string) {
		h := nats.Header{}
		if hid != "" {
			h.Set(broker.HeaderMsgID, hid)
		}
		id := msgIDOf(data, h)
		if got := h.Get(broker.HeaderMsgID); got != "" && id != got {
			t.Fatalf("header says %q, msgIDOf %q", got, id)
		}
	})
}
