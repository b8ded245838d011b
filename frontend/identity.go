package frontend

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
)

// localsIdentity is the Fiber local that holds the request's identity.
const localsIdentity = "kb.identity"

// anonymous is everyone's identity when no source is configured (the
// command line allows that only with --insecure-no-auth): an administrator
// without a name, so that kernels keep the client's KERNEL_USERNAME, as
// before identities existed.
var anonymous = &auth.Identity{Roles: []string{auth.RoleAdmin, auth.RoleImpersonate, auth.RoleUser}, Source: "none"}

// identityOf returns the identity the auth middleware stored. Routes are
// only reachable through the middleware, so a missing one is a bug; it is
// answered as nobody in particular rather than as an administrator.
func identityOf(c *fiber.Ctx) *auth.Identity {
	if id, ok := c.Locals(localsIdentity).(*auth.Identity); ok && id != nil {
		return id
	}
	return &auth.Identity{Name: "\x00nobody", Source: "none"}
}

// fiberRequest shows a Fiber request to identity sources.
type fiberRequest struct{ c *fiber.Ctx }

var _ auth.Request = fiberRequest{}

func (r fiberRequest) Header(name string) string { return r.c.Get(name) }
func (r fiberRequest) Query(name string) string  { return r.c.Query(name) }

// RemoteIP is the TCP peer, never a forwarded header: only a source that
// trusts a configured proxy may look further.
func (r fiberRequest) RemoteIP() string { return r.c.Context().RemoteIP().String() }

// PeerCertificates are only those the TLS handshake verified.
func (r fiberRequest) PeerCertificates() [][]byte { return TLSPeerCertificates(r.c) }

// authenticate asks the sources in order; the first identity wins. A
// source that rejects the credentials does not end the search, since two
// sources may share a scheme (the shared token and a users file's tokens
// both come as "Authorization: token T"). When none accepts, an
// unavailable source answers 503 (the credentials may have been good),
// otherwise 401.
func (s *Server) authenticate(r auth.Request) (*auth.Identity, error) {
	if len(s.sources) == 0 {
		return anonymous, nil
	}
	var unauthorized, unavailable error
	for _, src := range s.sources {
		id, err := src.Authenticate(r)
		switch {
		case err == nil && id != nil:
			if id.Source == "" {
				id.Source = src.Name()
			}
			return id, nil
		case err == nil:
		case errors.Is(err, auth.ErrUnavailable):
			if unavailable == nil {
				unavailable = err
			}
		default:
			if unauthorized == nil {
				unauthorized = err
			}
		}
	}
	if unavailable != nil {
		return nil, broker.Wrap(broker.ErrUnavailable, unavailable, "cannot check your credentials now: %v; try again shortly", unavailable)
	}
	if unauthorized != nil {
		return nil, broker.Wrap(broker.ErrUnauthorized, unauthorized, "%v; %s", unauthorized, s.schemesHint())
	}
	return nil, broker.Errorf(broker.ErrUnauthorized, "authentication required; %s", s.schemesHint())
}

// schemesHint tells a client which credentials this gateway takes.
func (s *Server) schemesHint() string {
	names := make([]string, 0, len(s.sources))
	for _, src := range s.sources {
		names = append(names, src.Name())
	}
	return "send a token as 'Authorization: token <T>' (or Bearer, or ?token=<T>) or HTTP basic credentials (accepted: " + strings.Join(names, ", ") + ")"
}

// auth identifies the caller of every request but CORS preflights, which
// browsers send without credentials. A remote address with too many
// failures in a row is refused for a while before its credentials are
// even looked at, so guessing tokens or passwords is slow.
func (s *Server) auth(c *fiber.Ctx) error {
	if c.Method() == fiber.MethodOptions && c.Get(fiber.HeaderAccessControlRequestMethod) != "" {
		return c.Next()
	}
	if len(s.sources) == 0 {
		c.Locals(localsIdentity, anonymous)
		return c.Next()
	}
	r := fiberRequest{c}
	ip := r.RemoteIP()
	now := time.Now()
	if wait, blocked := s.failures.blocked(ip, now); blocked {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int(wait.Seconds())+1))
		return broker.Errorf(broker.ErrTooManyRequests, "too many failed authentication attempts from %s; try again in %s", ip, wait.Round(time.Second))
	}
	// A browser signed in to the UI carries only its session cookie.
	if id, handled, err := s.sessionAuth(c); handled {
		if err != nil {
			return err
		}
		c.Locals(localsIdentity, id)
		return c.Next()
	}
	id, err := s.authenticate(r)
	if err != nil {
		if errors.Is(err, broker.ErrUnauthorized) {
			s.failures.fail(ip, now)
		}
		return err
	}
	c.Locals(localsIdentity, id)
	return c.Next()
}

// failLimiter counts failed authentications per remote address in fixed
// windows: after max failures an address is refused until its window
// ends. It forgets addresses whose window ended, and holds at most
// failLimiterCap of them so that a flood of source addresses cannot grow
// it without bound.
type failLimiter struct {
	max    int
	window time.Duration

	mu sync.Mutex
	m  map[string]*failCount
}

type failCount struct {
	n     int
	start time.Time
}

const failLimiterCap = 65536

func newFailLimiter(max int, window time.Duration) *failLimiter {
	return &failLimiter{max: max, window: window, m: map[string]*failCount{}}
}

// blocked reports whether ip is refused now, and for how long still.
func (l *failLimiter) blocked(ip string, now time.Time) (time.Duration, bool) {
	if l == nil || l.max <= 0 {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.m[ip]
	if !ok {
		return 0, false
	}
	left := l.window - now.Sub(f.start)
	if left <= 0 {
		delete(l.m, ip)
		return 0, false
	}
	return left, f.n >= l.max
}

// fail counts a failed authentication from ip.
func (l *failLimiter) fail(ip string, now time.Time) {
	if l == nil || l.max <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.m[ip]
	if !ok || now.Sub(f.start) >= l.window {
		if !ok && len(l.m) >= failLimiterCap {
			for k, v := range l.m {
				if now.Sub(v.start) >= l.window {
					delete(l.m, k)
				}
			}
			if len(l.m) >= failLimiterCap {
				return // full of live windows: count nothing new rather than grow
			}
		}
		f = &failCount{start: now}
		l.m[ip] = f
	}
	f.n++
}

// may reports whether who may see and act on what owner owns: its own
// kernels and sessions, or everything for an administrator. Records from
// before identities existed have no owner and are the administrators'.
func may(who *auth.Identity, owner string) bool {
	return who.IsAdmin() || who.Name != "" && owner == who.Name
}

// actorOf names who in events.
func actorOf(who *auth.Identity) string {
	if who.Name == "" {
		return "anonymous"
	}
	return who.Name
}

// ownedKernel is visibleKernel for who: another user's kernel is absent,
// so that ids cannot be probed.
func (s *Server) ownedKernel(ctx context.Context, who *auth.Identity, id string) (*broker.Kernel, uint64, error) {
	k, rev, err := s.visibleKernel(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if !may(who, k.Owner) {
		return nil, 0, kernelNotFound(id)
	}
	return k, rev, nil
}

// kernelUser decides the KERNEL_USERNAME and owner of a kernel who starts:
// who's own name, unless who may impersonate and the client named another
// user. A client naming someone else without that role is refused rather
// than silently renamed, so a misconfigured client notices.
func kernelUser(who *auth.Identity, asked string) (string, error) {
	if asked == "" || asked == who.Name {
		return who.Name, nil
	}
	if who.Has(auth.RoleImpersonate) {
		return asked, nil
	}
	return "", broker.Errorf(broker.ErrForbidden, "KERNEL_USERNAME %q is not you (%s): leave it out, or set it to your own name; only an identity with the %s role may start kernels for another user", asked, who.Name, auth.RoleImpersonate)
}
