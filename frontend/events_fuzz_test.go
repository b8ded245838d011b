package frontend

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/valyala/fasthttp"
)

// FuzzEventFilter: the query of GET /api/events and its live feed, from
// any client. It is refused as a bad request or forbidden, or it gives a
// filter that a user cannot widen past their own kernels, whose subjects
// are well-formed KB_EVENTS subjects of at most one kernel, short enough
// for a NATS protocol line (the server closes a connection whose line
// passes 4 KiB: the front-end's own).
func FuzzEventFilter(f *testing.F) {
	for _, q := range []string{"kernel=k1&type=started,died&since=2h", "user=bob", "kernel=*", "kernel=a.b", "kernel=%3E",
		"kernel=" + strings.Repeat("k", 5000), "since=1e300d&until=2026-01-01", "type=nope", "kernel=%20k%20&user=alice"} {
		f.Add(q, false)
	}
	app := fiber.New()
	now := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, q string, admin bool) {
		rc := &fasthttp.RequestCtx{}
		rc.Request.SetRequestURI("/api/events?" + q)
		c := app.AcquireCtx(rc)
		defer app.ReleaseCtx(c)
		who := &auth.Identity{Name: "alice", Roles: []string{auth.RoleUser}}
		if admin {
			who.Roles = append(who.Roles, auth.RoleAdmin)
		}
		c.Locals(localsIdentity, who)
		flt, err := eventFilter(c, now)
		if err != nil {
			if !errors.Is(err, broker.ErrBadRequest) && !errors.Is(err, broker.ErrForbidden) {
				t.Fatalf("%.200q: %v", q, err)
			}
			return
		}
		if !admin && flt.User != "alice" {
			t.Fatalf("%.200q: a user reads the events of %q", q, flt.User)
		}
		if flt.Kernel != "" && !validKernelID(flt.Kernel) {
			t.Fatalf("%.200q: kernel %q is not a kernel id", q, flt.Kernel)
		}
		for _, s := range flt.Subjects() {
			tok := strings.Split(s, ".")
			if len(tok) != 4 || tok[0] != "kb" || tok[1] != "evt" || len(s) > 512 {
				t.Fatalf("%.200q: subject %q", q, s)
			}
		}
	})
}
