package frontend

import (
	"net"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// loopConn is a connection that arrived over loopback, for the benchmark.
type loopConn struct{ net.Conn }

func (loopConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8888} }
func (loopConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000} }

// BenchmarkGuard is the cost the guard adds to a state-changing browser
// request on a loopback listener (Host and Origin checked): run with
// -bench Guard and compare the two sub-benchmarks.
func BenchmarkGuard(b *testing.B) {
	cfg, err := Config{AllowOrigin: "https://lab.example.com", Guard: GuardConfig{AllowHost: []string{"gw.example.com"}}}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	origins, _ := parseOrigins(cfg.AllowOrigin)
	s := &Server{cfg: cfg, origins: origins}
	ok := func(c *fiber.Ctx) error { return c.SendStatus(204) }
	for _, bc := range []struct {
		name string
		mw   []fiber.Handler
	}{{"without", nil}, {"with", []fiber.Handler{s.guard}}} {
		b.Run(bc.name, func(b *testing.B) {
			app := fiber.New(fiber.Config{DisableStartupMessage: true})
			for _, m := range bc.mw {
				app.Use(m)
			}
			app.Post("/api/kernels/:id/interrupt", ok)
			h := app.Handler()
			var req fasthttp.Request
			req.Header.SetMethod("POST")
			req.SetRequestURI("/api/kernels/k1/interrupt")
			req.Header.SetHost("gw.example.com:8888")
			req.Header.Set("Origin", "https://lab.example.com")
			req.Header.Set("Sec-Fetch-Site", "cross-site")
			var ctx fasthttp.RequestCtx
			b.ReportAllocs()
			for b.Loop() {
				ctx.Init2(loopConn{}, nil, false)
				req.CopyTo(&ctx.Request)
				h(&ctx)
				if ctx.Response.StatusCode() != 204 {
					b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
		})
	}
}

// FuzzGuardHost: whatever Host a request on a loopback connection names,
// the guard serves it only when it is a loopback address, a localhost
// name, this machine's name or an allowed one.
func FuzzGuardHost(f *testing.F) {
	for _, h := range []string{"localhost:8888", "evil.example", "127.0.0.1", "[::1]:1", "127.1", "0x7f.1", "gw.example.com.", "a.localhost.evil", "localhost.", "LOCALHOST", "::1", "[::ffff:127.0.0.1]"} {
		f.Add(h)
	}
	cfg, err := Config{Guard: GuardConfig{AllowHost: []string{"gw.example.com"}}}.withDefaults()
	if err != nil {
		f.Fatal(err)
	}
	s := &Server{cfg: cfg, hostName: "thishost"}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Use(s.guard)
	app.Get("/api", func(c *fiber.Ctx) error { return c.SendStatus(204) })
	h := app.Handler()
	f.Fuzz(func(t *testing.T, host string) {
		var ctx fasthttp.RequestCtx
		ctx.Init2(loopConn{}, nil, false)
		ctx.Request.Header.SetMethod("GET")
		ctx.Request.SetRequestURI("/api")
		ctx.Request.Header.SetHost(host)
		h(&ctx)
		if ctx.Response.StatusCode() != 204 {
			return
		}
		raw := string(ctx.Request.Host())
		name := raw
		if hh, _, err := net.SplitHostPort(raw); err == nil {
			name = hh
		}
		name = strings.ToLower(strings.Trim(name, "[]"))
		ip := net.ParseIP(name)
		if raw != "" && !(ip != nil && ip.IsLoopback()) && name != "localhost" && !strings.HasSuffix(name, ".localhost") &&
			name != "thishost" && name != "gw.example.com" {
			t.Fatalf("Host %q (parsed %q) was served on a loopback connection", host, raw)
		}
	})
}
