package frontend

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/nats-io/nats.go/jetstream"
)

// The web UI (/ui): static pages embedded in the binary (plain HTML, CSS
// and a small script, no build step and no CDN) that read and act only
// through the documented REST API. The pages themselves hold no data, so
// they are served to anyone; every API call they make is authenticated.
//
// A browser signs in once (POST /ui/login with a token, or a user name and
// password, checked by the front-end's identity sources) and gets a
// session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, holding
// the identity and its expiry, signed with HMAC-SHA256 under a key kept
// in kb_limits, so every front-end of the installation accepts it.
// Requests authenticated by that cookie that change anything must also
// carry X-KB-CSRF (from GET /api/me), which another site's page can
// neither read nor forge: with SameSite=Strict that is two locks on the
// same door, because a cookie is sent by whoever makes the browser ask.

//go:embed ui
var uiFiles embed.FS

const (
	sessionCookie = "kb_session"
	csrfHeader    = "X-KB-CSRF"
	sessionTTL    = 12 * time.Hour
	uiKeyName     = "ui.session-key"
)

// uiState holds the session signing key.
type uiState struct {
	key    []byte
	static fs.FS
}

// newUIState reads the installation's session key, making it on first
// use (an atomic create: the first front-end's key wins).
func newUIState(ctx context.Context, kv jetstream.KeyValue) (*uiState, error) {
	static, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := kv.Create(ctx, uiKeyName, key); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, errors.New("frontend: UI session key: " + err.Error())
		}
		e, err := kv.Get(ctx, uiKeyName)
		if err != nil {
			return nil, errors.New("frontend: UI session key: " + err.Error())
		}
		key = e.Value()
	}
	if len(key) < 32 {
		return nil, errors.New("frontend: the UI session key in " + broker.BucketLimits + " is too short")
	}
	return &uiState{key: key, static: static}, nil
}

// session is the signed content of the cookie.
type session struct {
	Name    string   `json:"n"`
	Roles   []string `json:"r,omitempty"`
	Groups  []string `json:"g,omitempty"`
	Source  string   `json:"s"`
	Expires int64    `json:"e"`
}

func (u *uiState) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, u.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

func (u *uiState) sign(id *auth.Identity, now time.Time) string {
	body, _ := json.Marshal(session{Name: id.Name, Roles: id.Roles, Groups: id.Groups, Source: id.Source, Expires: now.Add(sessionTTL).Unix()})
	b := base64.RawURLEncoding.EncodeToString(body)
	return b + "." + base64.RawURLEncoding.EncodeToString(u.mac("session", b))
}

// verify returns the identity of a cookie value, or nil.
func (u *uiState) verify(v string, now time.Time) *auth.Identity {
	b, sig, ok := strings.Cut(v, ".")
	if !ok || len(v) > 4096 {
		return nil
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, u.mac("session", b)) {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(b)
	if err != nil {
		return nil
	}
	var s session
	if json.Unmarshal(raw, &s) != nil || now.Unix() >= s.Expires {
		return nil
	}
	return &auth.Identity{Name: s.Name, Roles: s.Roles, Groups: s.Groups, Source: "session:" + s.Source}
}

// csrf is the anti-forgery token of a cookie value.
func (u *uiState) csrf(cookie string) string {
	return base64.RawURLEncoding.EncodeToString(u.mac("csrf", cookie))
}

// sessionAuth authenticates a request by its session cookie, when it
// carries no other credentials. handled is false when there is no valid
// cookie (the identity sources decide then).
func (s *Server) sessionAuth(c *fiber.Ctx) (id *auth.Identity, handled bool, err error) {
	v := c.Cookies(sessionCookie)
	if v == "" || auth.ReadCredentials(fiberRequest{c}).Any() {
		return nil, false, nil
	}
	id = s.ui.verify(v, time.Now())
	if id == nil {
		return nil, false, nil
	}
	switch c.Method() {
	case fiber.MethodGet, fiber.MethodHead, fiber.MethodOptions:
	default:
		want := s.ui.csrf(v)
		if got := c.Get(csrfHeader); subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			return nil, true, broker.Errorf(broker.ErrForbidden, "%s %s: the %s header is missing or wrong; a page signed in with a cookie must send the token GET /api/me returns", c.Method(), c.Path(), csrfHeader)
		}
	}
	return id, true, nil
}

// publicUI registers what needs no identity: the static pages and the
// sign-in and sign-out calls.
func (s *Server) publicUI(app *fiber.App) {
	p := app.Group(s.prefix())
	p.Get("/", func(c *fiber.Ctx) error {
		return c.Redirect(s.cfg.BaseURL+"ui/", http.StatusFound)
	})
	// Fiber's routing is not strict: "/ui" matches "/ui/" too.
	p.Get("/ui", func(c *fiber.Ctx) error {
		if strings.HasSuffix(c.Path(), "/") {
			return s.uiStatic(c)
		}
		return c.Redirect(s.cfg.BaseURL+"ui/", http.StatusFound)
	})
	p.Post("/ui/login", s.uiLogin)
	p.Post("/ui/logout", s.uiLogout)
	p.Get("/ui/*", s.uiStatic)
	p.Head("/ui/*", s.uiStatic)
}

var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

func (s *Server) uiStatic(c *fiber.Ctx) error {
	name := c.Params("*")
	if name == "" {
		name = "index.html"
	}
	name = path.Clean(name)
	if strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
		return broker.Errorf(broker.ErrNotFound, "GET %s: no such page", c.Path())
	}
	data, err := fs.ReadFile(s.ui.static, name)
	if err != nil {
		return broker.Errorf(broker.ErrNotFound, "GET %s: no such page", c.Path())
	}
	ct, ok := uiTypes[path.Ext(name)]
	if !ok {
		ct = "application/octet-stream"
	}
	c.Set(fiber.HeaderContentType, ct)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set("X-Frame-Options", "DENY")
	c.Set("Referrer-Policy", "same-origin")
	c.Set(fiber.HeaderContentSecurityPolicy, "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	return c.Send(data)
}

// credRequest shows sign-in credentials to the identity sources as if
// they came in an Authorization header.
type credRequest struct {
	fiberRequest
	authz string
}

func (r credRequest) Header(name string) string {
	if strings.EqualFold(name, "Authorization") {
		return r.authz
	}
	return r.fiberRequest.Header(name)
}
func (r credRequest) Query(string) string { return "" }

// uiLogin is POST /ui/login {token} or {user, password} (JSON or a
// form). It refuses other sites' pages (login CSRF) and counts failures
// like every other authentication.
func (s *Server) uiLogin(c *fiber.Ctx) error {
	if origin := c.Get(fiber.HeaderOrigin); origin != "" {
		if u, err := url.Parse(origin); err != nil || !strings.EqualFold(u.Host, string(c.Request().Host())) {
			return broker.Errorf(broker.ErrForbidden, "sign-in from origin %s is not allowed (same origin only)", origin)
		}
	}
	var b struct{ Token, User, Password string }
	if strings.HasPrefix(c.Get(fiber.HeaderContentType), fiber.MIMEApplicationJSON) {
		if err := json.Unmarshal(c.Body(), &b); err != nil {
			return broker.Errorf(broker.ErrBadRequest, "the body is not JSON {token} or {user, password}: %v", err)
		}
	} else {
		b.Token, b.User, b.Password = c.FormValue("token"), c.FormValue("user"), c.FormValue("password")
	}
	var authz string
	switch {
	case b.Token != "":
		authz = "token " + b.Token
	case b.User != "" && b.Password != "":
		if strings.Contains(b.User, ":") {
			return broker.Errorf(broker.ErrBadRequest, "user: a user name has no colon")
		}
		authz = "Basic " + base64.StdEncoding.EncodeToString([]byte(b.User+":"+b.Password))
	default:
		return broker.Errorf(broker.ErrBadRequest, "give a token, or a user and a password")
	}
	var id *auth.Identity
	if len(s.sources) == 0 {
		id = anonymous
	} else {
		r := credRequest{fiberRequest{c}, authz}
		ip := r.RemoteIP()
		now := time.Now()
		if wait, blocked := s.failures.blocked(ip, now); blocked {
			return broker.Errorf(broker.ErrTooManyRequests, "too many failed authentication attempts from %s; try again in %s", ip, wait.Round(time.Second))
		}
		var err error
		if id, err = s.authenticate(r); err != nil {
			if errors.Is(err, broker.ErrUnauthorized) {
				s.failures.fail(ip, now)
				return broker.Errorf(broker.ErrUnauthorized, "sign-in failed: the token, or the user name and password, are not valid")
			}
			return err
		}
	}
	c.Cookie(&fiber.Cookie{
		Name: sessionCookie, Value: s.ui.sign(id, time.Now()), Path: s.cfg.BaseURL,
		MaxAge: int(sessionTTL.Seconds()), HTTPOnly: true, SameSite: fiber.CookieSameSiteStrictMode,
		// Browsers drop Secure cookies that come over plain HTTP (but
		// from localhost), so the flag follows the connection.
		Secure: c.Protocol() == "https",
	})
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(fiber.Map{"name": id.Name, "roles": id.Roles})
}

func (s *Server) uiLogout(c *fiber.Ctx) error {
	c.Cookie(&fiber.Cookie{Name: sessionCookie, Value: "", Path: s.cfg.BaseURL, MaxAge: -1, HTTPOnly: true, SameSite: fiber.CookieSameSiteStrictMode, Secure: c.Protocol() == "https"})
	return c.SendStatus(fiber.StatusNoContent)
}

// getMe is GET /api/me: the caller's identity, and the CSRF token of a
// cookie session.
func (s *Server) getMe(c *fiber.Ctx) error {
	who := identityOf(c)
	out := fiber.Map{"name": who.Name, "roles": who.Roles, "source": who.Source, "admin": who.IsAdmin()}
	if v := c.Cookies(sessionCookie); v != "" && strings.HasPrefix(who.Source, "session:") {
		out["csrf"] = s.ui.csrf(v)
	}
	if out["roles"] == nil {
		out["roles"] = []string{}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(out)
}

// KernelRecord is a kernel as the platform pages show it
// (GET /api/kernel-records): the Jupyter model plus where it runs and
// whose it is.
type KernelRecord struct {
	KernelModel
	Owner   string          `json:"owner"`
	RM      string          `json:"rm"`
	State   broker.State    `json:"state"`
	Worker  string          `json:"worker,omitempty"`
	Host    string          `json:"host,omitempty"`
	Handle  json.RawMessage `json:"handle,omitempty"`
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"`
}

func (s *Server) record(k *broker.Kernel) KernelRecord {
	return KernelRecord{KernelModel: s.model(k), Owner: k.Owner, RM: k.RM, State: k.State, Worker: k.Worker,
		Host: k.Host, Handle: k.Handle, Created: k.Created, Updated: k.Updated}
}

// listKernelRecords is GET /api/kernel-records?state=&q=: the caller's
// kernels (every kernel for an administrator), newest first; q matches
// id, owner, spec, resource manager and host.
func (s *Server) listKernelRecords(c *fiber.Ctx) error {
	who := identityOf(c)
	state, q := c.Query("state"), strings.ToLower(strings.TrimSpace(c.Query("q")))
	if len(q) > 200 {
		return broker.Errorf(broker.ErrBadRequest, "q: at most 200 characters")
	}
	out := []KernelRecord{}
	for _, k := range s.state.listKernels() {
		if !may(who, k.Owner) || state != "" && string(k.State) != state {
			continue
		}
		if q != "" && !strings.Contains(strings.ToLower(strings.Join([]string{k.ID, k.Owner, k.Spec, k.RM, k.Host}, " ")), q) {
			continue
		}
		out = append(out, s.record(k))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(out)
}

// getKernelRecord is GET /api/kernel-records/:id, ended kernels
// included while their record lasts.
func (s *Server) getKernelRecord(c *fiber.Ctx) error {
	who := identityOf(c)
	k, _, err := s.readKernel(s.ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if !may(who, k.Owner) {
		return kernelNotFound(c.Params("id"))
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(fiber.Map{"kernel": s.record(k), "launch": k.Launch, "reason": k.Reason, "restarts": k.Restarts})
}

// getCluster is GET /api/cluster: per resource manager the live workers
// (kb_workers, with their hosts' CPU and memory), the caller's kernels by
// state (everyone's for an administrator), and starts and failures in
// the last hour from the audit log.
func (s *Server) getCluster(c *fiber.Ctx) error {
	who := identityOf(c)
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	type rmView struct {
		Workers []json.RawMessage `json:"workers"`
		Kernels map[string]int    `json:"kernels"`
		// PerHost counts the live kernels on each host (ssh, local).
		PerHost map[string]int `json:"kernels_per_host"`
	}
	rms := map[string]*rmView{}
	view := func(rm string) *rmView {
		if rms[rm] == nil {
			rms[rm] = &rmView{Workers: []json.RawMessage{}, Kernels: map[string]int{}, PerHost: map[string]int{}}
		}
		return rms[rm]
	}
	if err := s.eachWorker(ctx, func(rec []byte) {
		var w struct {
			RM string `json:"rm"`
		}
		if json.Unmarshal(rec, &w) == nil && w.RM != "" {
			view(w.RM).Workers = append(view(w.RM).Workers, json.RawMessage(rec))
		}
	}); err != nil {
		return err
	}
	byState := map[string]int{}
	for _, k := range s.state.listKernels() {
		if !may(who, k.Owner) {
			continue
		}
		byState[string(k.State)]++
		view(k.RM).Kernels[string(k.State)]++
		if k.Host != "" && !k.State.Terminal() {
			view(k.RM).PerHost[k.Host]++
		}
	}
	f := broker.EventFilter{Types: []string{broker.EvRequested, broker.EvStartFailed}, Since: time.Now().Add(-time.Hour)}
	if !who.IsAdmin() {
		f.User = who.Name
	}
	starts, failures, complete := 0, 0, true
	after := uint64(0)
	for range 10 {
		p, err := kbjs.ReadEventPage(ctx, s.bus.JS, f, after, maxEventPage, eventScanMax)
		if err != nil {
			complete = false
			break
		}
		for _, e := range p.Events {
			if e.Event.Type == broker.EvRequested {
				starts++
			} else {
				failures++
			}
		}
		after = p.Next
		if !p.More {
			break
		}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(fiber.Map{
		"resource_managers": rms,
		"kernels_by_state":  byState,
		"last_hour":         fiber.Map{"starts": starts, "failures": failures, "complete": complete},
	})
}
