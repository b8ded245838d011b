package frontend

import (
	"fmt"
	"mime"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/valyala/fasthttp"
)

// GuardConfig hardens the edge against hostile browsers and clients: DNS
// rebinding, cross-site requests, slow clients and websocket floods. The
// zero value is the safe default.
type GuardConfig struct {
	// AllowHost names the Host header values (names, without port; "*"
	// any; "*.example.com" its subdomains) accepted on connections that
	// arrive over loopback, besides localhost and loopback addresses.
	// Without it, a web page whose name an attacker re-points at 127.0.0.1
	// (DNS rebinding) could drive a gateway listening there. Default none.
	AllowHost []string

	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers, ReadTimeout its body: slow clients cannot hold
	// connections open. IdleTimeout closes idle keep-alive connections.
	// Defaults 10s, 60s, 2m. Websockets are not affected once upgraded.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration

	// MaxWebsocketsPerCaller caps open kernel websockets per caller (see
	// CallerKey); more answer 429. Default 256; <0: no cap.
	MaxWebsocketsPerCaller int

	// CallerKey names who a request comes from for MaxWebsocketsPerCaller.
	// Default: the caller's identity (set by the auth middleware, which
	// runs first), so one proxy's users do not share a cap; the remote IP
	// address for the anonymous identity and the shared --token one,
	// which many clients hold.
	CallerKey func(c *fiber.Ctx) string

	// MaxEnvBytes caps the env of a start request (names and values):
	// larger answers 400. Default broker.DefaultMaxEnvBytes (64 KiB); <0:
	// no cap.
	MaxEnvBytes int
}

const (
	defaultReadHeaderTimeout = 10 * time.Second
	defaultReadTimeout       = time.Minute
	defaultIdleTimeout       = 2 * time.Minute
	defaultMaxWSPerCaller    = 256
)

func (g GuardConfig) withDefaults() (GuardConfig, error) {
	if g.ReadHeaderTimeout <= 0 {
		g.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if g.ReadTimeout <= 0 {
		g.ReadTimeout = defaultReadTimeout
	}
	if g.IdleTimeout <= 0 {
		g.IdleTimeout = defaultIdleTimeout
	}
	if g.MaxWebsocketsPerCaller == 0 {
		g.MaxWebsocketsPerCaller = defaultMaxWSPerCaller
	}
	if g.MaxEnvBytes == 0 {
		g.MaxEnvBytes = broker.DefaultMaxEnvBytes
	}
	if g.CallerKey == nil {
		g.CallerKey = defaultCallerKey
	}
	hosts := make([]string, 0, len(g.AllowHost))
	for _, h := range g.AllowHost {
		h = strings.Trim(strings.ToLower(strings.TrimSpace(h)), "[]")
		// One colon is a port; more, an IPv6 address.
		if h == "" || strings.ContainsAny(h, "/@ ") || strings.Count(h, ":") == 1 {
			return g, fmt.Errorf("frontend: AllowHost entry %q must be a host name without scheme or port, like gateway.example.com", h)
		}
		hosts = append(hosts, h)
	}
	g.AllowHost = hosts
	return g, nil
}

func defaultCallerKey(c *fiber.Ctx) string {
	if id, ok := c.Locals(localsIdentity).(*auth.Identity); ok && id != nil && id.Name != "" && id.Source != "token" {
		return "user " + id.Name
	}
	return c.IP()
}

// guardServer applies the timeouts to the HTTP server beneath app. fasthttp
// applies its ReadTimeout from the first byte of a request; the header
// callback then gives the body its own, longer bound.
func (s *Server) guardServer(app *fiber.App) {
	g := s.cfg.Guard
	srv := app.Server()
	srv.ReadTimeout = g.ReadHeaderTimeout
	srv.IdleTimeout = g.IdleTimeout
	srv.HeaderReceived = func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
		return fasthttp.RequestConfig{ReadTimeout: g.ReadTimeout}
	}
	s.policy.MaxTotalBytes = g.MaxEnvBytes
	if h, err := os.Hostname(); err == nil {
		s.hostName = strings.ToLower(h)
	}
	s.wsCount = &wsCounter{counts: map[string]int{}}
}

// guard refuses what a hostile web page could send through a user's
// browser: a request to a loopback listener under a foreign name (DNS
// rebinding) and a state-changing request from another site. Clients
// that are not browsers send neither a foreign Host nor an Origin, so
// jupyter_server, nbclient and scripts are never refused here.
func (s *Server) guard(c *fiber.Ctx) error {
	if err := s.checkHost(c); err != nil {
		return err
	}
	switch c.Method() {
	case fiber.MethodGet, fiber.MethodHead, fiber.MethodOptions:
		// Reads are covered by CORS (the browser withholds the answer);
		// websockets by checkOrigin.
		return c.Next()
	}
	if err := s.checkCrossSite(c); err != nil {
		return err
	}
	if err := checkMediaType(c); err != nil {
		return err
	}
	return c.Next()
}

// checkMediaType requires a JSON body on a state-changing request that
// carries no Authorization header. A page of another site can make a
// browser send a "simple" request (text/plain, form-encoded, multipart)
// without a CORS preflight, with whatever ambient credentials the browser
// holds for the gateway (a cached basic-auth password, a ?token= in the
// URL, the UI's cookie); it cannot make it send application/json or an
// Authorization header without a preflight that CORS refuses. Clients that
// authenticate with a header (jupyter_server, @jupyterlab/services with a
// token) are therefore never refused here, whatever their Content-Type.
func checkMediaType(c *fiber.Ctx) error {
	if len(c.Body()) == 0 || c.Get(fiber.HeaderAuthorization) != "" {
		return nil
	}
	ct := c.Get(fiber.HeaderContentType)
	if ct == "" {
		// Scripts and JEG's own GatewayClient post JSON with no type at
		// all. A browser can too (a typeless body), but it then sends
		// Origin, which checkCrossSite judged already.
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == fiber.MIMEApplicationJSON || strings.HasSuffix(mt, "+json")) {
		return nil
	}
	return broker.Errorf(broker.ErrMediaType, "%s %s: send the body as Content-Type: application/json (got %q); a request without an Authorization header must, so that no other site's page can send it through a browser", c.Method(), c.Path(), ct)
}

// checkHost applies AllowHost to connections that came over loopback.
func (s *Server) checkHost(c *fiber.Ctx) error {
	local, ok := c.Context().LocalAddr().(*net.TCPAddr)
	if !ok || !local.IP.IsLoopback() {
		return nil
	}
	raw := string(c.Request().Host())
	if raw == "" {
		return nil // HTTP/1.0 without Host: not a browser
	}
	host := raw
	if h, _, err := net.SplitHostPort(raw); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsLoopback() {
			return nil
		}
	} else if host == "localhost" || strings.HasSuffix(host, ".localhost") || host != "" && host == s.hostName {
		// Browsers resolve these to loopback themselves, never by DNS;
		// this machine's own name (Debian maps it to 127.0.1.1) is no
		// name an attacker's page can have.
		return nil
	}
	for _, a := range s.cfg.Guard.AllowHost {
		if a == "*" || a == host || strings.HasPrefix(a, "*.") && strings.HasSuffix(host, a[1:]) {
			return nil
		}
	}
	return broker.Errorf(broker.ErrForbidden, "Host %q is not allowed on a connection to a loopback address (DNS rebinding protection): use localhost or 127.0.0.1, or start kernelbus with --allow-host %s if that is the gateway's name", raw, host)
}

// checkCrossSite refuses a state-changing request a browser sends from a
// page of another origin, unless AllowOrigin allows that origin. Browsers
// send Origin with every such request (and Sec-Fetch-Site with most); a
// "simple" cross-site POST (text/plain, no preflight) would otherwise
// create kernels with the user's cookies or ?token= link.
func (s *Server) checkCrossSite(c *fiber.Ctx) error {
	origin := c.Get(fiber.HeaderOrigin)
	site := strings.ToLower(c.Get("Sec-Fetch-Site"))
	if origin == "" {
		if site == "cross-site" && !s.origins.any {
			return broker.Errorf(broker.ErrForbidden, "%s %s from another site is not allowed (cross-site request protection)", c.Method(), c.Path())
		}
		return nil
	}
	if s.origins.match(origin) {
		return nil
	}
	if u, err := url.Parse(origin); err == nil && origin != "null" && strings.EqualFold(u.Host, string(c.Request().Host())) {
		return nil
	}
	return broker.Errorf(broker.ErrForbidden, "%s %s from origin %s is not allowed (cross-site request protection): serve the page from this gateway's origin or add it to --allow-origin", c.Method(), c.Path(), origin)
}

// wsLimit takes one of the caller's websocket slots for a websocket
// request; the socket gives it back when it closes (serveWS), or the
// request does at once when it did not become a websocket.
func (s *Server) wsLimit(c *fiber.Ctx) error {
	max := s.cfg.Guard.MaxWebsocketsPerCaller
	if max < 0 {
		return c.Next()
	}
	key := s.cfg.Guard.CallerKey(c)
	slot, ok := s.wsCount.acquire(key, max)
	if !ok {
		return broker.Errorf(broker.ErrTooManyRequests, "Too many websockets: %s has %d open, the limit is %d; close some (each notebook holds one per kernel)", key, max, max)
	}
	c.Locals(localsWSSlot, slot)
	err := c.Next()
	if err != nil || c.Response().StatusCode() != fiber.StatusSwitchingProtocols {
		slot.release()
		return err
	}
	// The upgrade's answer may never reach the client (then serveWS never
	// runs): such a slot is given back after a while.
	time.AfterFunc(time.Minute, func() {
		if !slot.claimed.Load() {
			slot.release()
		}
	})
	return nil
}

const localsWSSlot = "kb.wsslot"

// wsCounter counts open websockets per caller.
type wsCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

type wsSlot struct {
	c       *wsCounter
	key     string
	once    sync.Once
	claimed atomic.Bool
}

func (w *wsCounter) acquire(key string, max int) (*wsSlot, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.counts[key] >= max {
		return nil, false
	}
	w.counts[key]++
	return &wsSlot{c: w, key: key}, true
}

func (s *wsSlot) release() {
	s.once.Do(func() {
		s.c.mu.Lock()
		defer s.c.mu.Unlock()
		if s.c.counts[s.key]--; s.c.counts[s.key] <= 0 {
			delete(s.c.counts, s.key)
		}
	})
}

// holdWSSlot is called by serveWS: the slot stays taken until it returns.
func holdWSSlot(v any) func() {
	slot, ok := v.(*wsSlot)
	if !ok {
		return func() {}
	}
	slot.claimed.Store(true)
	return slot.release
}
