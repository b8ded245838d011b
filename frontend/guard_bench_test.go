package frontend

import (
	"net"
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
