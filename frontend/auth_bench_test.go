package frontend

import (
	"encoding/base64"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// BenchmarkAuthMiddleware is the cost of identifying one request (one
// REST call or websocket upgrade; websocket messages are not identified
// again), through Fiber's handler without the network: no sources, the
// shared token, a users-file token, and basic auth once its bcrypt check
// is cached. Compare with "none" for the middleware's own cost.
func BenchmarkAuthMiddleware(b *testing.B) {
	path, toks := testUsers(b)
	users, err := auth.NewUsersSource(path)
	if err != nil {
		b.Fatal(err)
	}
	tokSrc, _ := auth.NewTokenSource(adminToken, "")
	for _, c := range []struct {
		name    string
		sources []auth.Source
		hdr     string
	}{
		{"none", nil, ""},
		{"token", []auth.Source{tokSrc}, "token " + adminToken},
		{"users-token", []auth.Source{tokSrc, users}, "token " + toks["alice"]},
		{"basic-cached", []auth.Source{tokSrc, users}, "Basic " + base64.StdEncoding.EncodeToString([]byte("carol:carol-password"))},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := &Server{sources: c.sources, failures: newFailLimiter(30, 60e9), log: zerolog.Nop()}
			app := fiber.New(fiber.Config{ErrorHandler: s.renderError, DisableStartupMessage: true})
			app.Use(s.auth)
			app.Get("/api/kernels", func(c *fiber.Ctx) error {
				if identityOf(c).Source == "" {
					return fiber.ErrInternalServerError
				}
				return c.SendStatus(200)
			})
			h := app.Handler()
			var ctx fasthttp.RequestCtx
			b.ReportAllocs()
			for b.Loop() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.SetRequestURI("/api/kernels")
				if c.hdr != "" {
					ctx.Request.Header.Set("Authorization", c.hdr)
				}
				h(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
		})
	}
}
