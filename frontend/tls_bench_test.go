package frontend

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// What HTTPS costs the front-end: a request on a kept-alive connection,
// plain and over mTLS, and a full mTLS handshake (ECDSA P-256 keys, TLS
// 1.3), the cost of each new connection.

func benchServer(b *testing.B, o *TLSOptions) string {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/", func(c *fiber.Ctx) error { return c.SendString("ok") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	scheme := "http"
	if o != nil {
		if ln, err = TLSListener(ln, *o, jstest.Logger(b)); err != nil {
			b.Fatal(err)
		}
		scheme = "https"
	}
	go func() { _ = app.Listener(ln) }()
	b.Cleanup(func() { _ = app.Shutdown() })
	return scheme + "://" + ln.Addr().String() + "/"
}

func benchGet(b *testing.B, c *http.Client, u string) {
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func BenchmarkRequestPlain(b *testing.B) {
	benchGet(b, &http.Client{}, benchServer(b, nil))
}

func BenchmarkRequestMTLSKeepAlive(b *testing.B) {
	f := newTLSFiles(b, ClientAuthRequire)
	benchGet(b, httpsClient(f.clientTLS(b, "alice")), benchServer(b, &f.opts))
}

func BenchmarkMTLSHandshake(b *testing.B) {
	f := newTLSFiles(b, ClientAuthRequire)
	u, _ := url.Parse(benchServer(b, &f.opts))
	cfg := f.clientTLS(b, "alice")
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", u.Host, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
