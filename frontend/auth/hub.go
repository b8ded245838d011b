package auth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultImpersonateScope is the JupyterHub scope that lets a token's
// owner (typically a Hub service) start kernels for other users. It is a
// custom scope the Hub administrator defines and grants on purpose
// (c.JupyterHub.custom_scopes), so no built-in Hub role gets it by accident.
const DefaultImpersonateScope = "custom:kernelbus:impersonate"

// HubConfig configures a HubSource.
type HubConfig struct {
	// APIURL is the Hub's REST API, e.g. http://hub:8081/hub/api.
	APIURL string
	// APIToken is the gateway's own Hub token (a service token). It is not
	// needed to identify users, who send their own tokens; Check uses it to
	// prove the configuration at startup.
	APIToken string
	// Client makes the Hub requests (default: 5 s timeout).
	Client *http.Client
	// TTL is how long an identity the Hub confirmed is reused without
	// asking again (default 60 s); FailTTL the same for a token the Hub
	// refused (default 10 s). A revoked token keeps working up to TTL.
	TTL, FailTTL time.Duration
	// MaxEntries bounds the cache (default 10000).
	MaxEntries int
	// ImpersonateScope grants RoleImpersonate (default
	// DefaultImpersonateScope).
	ImpersonateScope string
	// AdminGroups are Hub groups whose members get RoleAdmin, besides
	// the users the Hub itself calls admin.
	AdminGroups []string
}

// HubSource identifies callers by a token JupyterHub issued (a user's API
// token, or the one a Hub-spawned server holds in JUPYTERHUB_API_TOKEN),
// by asking the Hub whose token it is: GET {api}/user with the token. The
// answer is cached per token (by its hash, never the token itself).
type HubSource struct {
	cfg   HubConfig
	base  string
	admin map[string]bool
	now   func() time.Time // for tests

	mu       sync.Mutex
	cache    map[[32]byte]hubEntry
	inflight map[[32]byte]*hubCall
}

type hubEntry struct {
	id      *Identity
	err     error
	expires time.Time
}

// hubCall is one Hub lookup that concurrent requests with the same token
// wait for, so a burst of requests makes one Hub request.
type hubCall struct {
	done chan struct{}
	id   *Identity
	err  error
}

// NewHubSource checks c and builds the source.
func NewHubSource(c HubConfig) (*HubSource, error) {
	base := strings.TrimRight(c.APIURL, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("JupyterHub API URL %q: give the Hub's REST API as http(s)://host:port/hub/api", c.APIURL)
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 5 * time.Second}
	}
	if c.TTL <= 0 {
		c.TTL = time.Minute
	}
	if c.FailTTL <= 0 {
		c.FailTTL = 10 * time.Second
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 10000
	}
	if c.ImpersonateScope == "" {
		c.ImpersonateScope = DefaultImpersonateScope
	}
	s := &HubSource{cfg: c, base: base, admin: map[string]bool{}, now: time.Now,
		cache: map[[32]byte]hubEntry{}, inflight: map[[32]byte]*hubCall{}}
	for _, g := range c.AdminGroups {
		s.admin[g] = true
	}
	return s, nil
}

// Name implements Source.
func (s *HubSource) Name() string { return "jupyterhub" }

// Authenticate implements Source: a request with a token (Authorization:
// token T or Bearer T, or ?token=T) is this scheme.
func (s *HubSource) Authenticate(r Request) (*Identity, error) {
	tok := hubRequestToken(r)
	if tok == "" {
		return nil, nil
	}
	id, err := s.lookup(context.Background(), tok)
	if err != nil {
		return nil, err
	}
	return cloneIdentity(id), nil
}

// hubRequestToken is the token a request carries in the ways Jupyter
// clients send one: "Authorization: token T", "Authorization: Bearer T",
// or the token query parameter (websockets from browsers). An empty
// header token (jupyter_server sends "token " when it has none) is no
// token.
func hubRequestToken(r Request) string {
	if h := strings.TrimSpace(r.Header("Authorization")); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if tok = strings.TrimSpace(tok); tok != "" && (strings.EqualFold(scheme, "token") || strings.EqualFold(scheme, "bearer")) {
			return tok
		}
	}
	return r.Query("token")
}

func (s *HubSource) lookup(ctx context.Context, tok string) (*Identity, error) {
	key := sha256.Sum256([]byte(tok))
	s.mu.Lock()
	if e, ok := s.cache[key]; ok && s.now().Before(e.expires) {
		s.mu.Unlock()
		return e.id, e.err
	}
	if c, ok := s.inflight[key]; ok {
		s.mu.Unlock()
		<-c.done
		return c.id, c.err
	}
	c := &hubCall{done: make(chan struct{})}
	s.inflight[key] = c
	s.mu.Unlock()

	c.id, c.err = s.ask(ctx, tok)

	s.mu.Lock()
	delete(s.inflight, key)
	// Answers are cached, refusals too (a client retrying a bad token
	// must not hammer the Hub); a Hub that did not answer is not.
	if c.err == nil || !errors.Is(c.err, ErrUnavailable) {
		ttl := s.cfg.TTL
		if c.err != nil {
			ttl = s.cfg.FailTTL
		}
		s.store(key, hubEntry{id: c.id, err: c.err, expires: s.now().Add(ttl)})
	}
	s.mu.Unlock()
	close(c.done)
	return c.id, c.err
}

// store adds e, making room first: expired entries go, then arbitrary
// ones (map order), so a flood of random tokens cannot grow the cache.
func (s *HubSource) store(key [32]byte, e hubEntry) {
	if len(s.cache) >= s.cfg.MaxEntries {
		now := s.now()
		for k, v := range s.cache {
			if !now.Before(v.expires) {
				delete(s.cache, k)
			}
		}
		for k := range s.cache {
			if len(s.cache) < s.cfg.MaxEntries {
				break
			}
			delete(s.cache, k)
		}
	}
	s.cache[key] = e
}

// hubModel is the part of the Hub's answer to GET /user that matters: the
// token owner's model, with the token's own scopes.
type hubModel struct {
	Kind   string   `json:"kind"` // "user" or "service"
	Name   string   `json:"name"`
	Admin  bool     `json:"admin"`
	Groups []string `json:"groups"`
	Scopes []string `json:"scopes"`
}

func (s *HubSource) ask(ctx context.Context, tok string) (*Identity, error) {
	m, status, err := s.get(ctx, "/user", tok)
	if err != nil {
		return nil, err
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return nil, fmt.Errorf("%w: jupyterhub: the token is not valid (unknown, expired or revoked)", ErrUnauthorized)
	case status != http.StatusOK:
		return nil, s.unavailable(fmt.Sprintf("answered %d", status))
	}
	if err := checkName(m.Name); err != nil {
		return nil, fmt.Errorf("%w: jupyterhub: the token owner's name %v", ErrUnauthorized, err)
	}
	id := &Identity{Name: m.Name, Groups: m.Groups, Source: s.Name()}
	switch m.Kind {
	case "user", "":
		id.Roles = []string{RoleUser}
		if m.Admin || slices.ContainsFunc(m.Groups, func(g string) bool { return s.admin[g] }) {
			id.Roles = append(id.Roles, RoleAdmin)
		}
	case "service":
		// A service has no kernels of its own unless it may act for
		// users; it is still someone, so it gets the user role.
		id.Roles = []string{RoleUser}
	default:
		return nil, fmt.Errorf("%w: jupyterhub: the token belongs to a %q, not a user or service", ErrUnauthorized, m.Kind)
	}
	if slices.Contains(m.Scopes, s.cfg.ImpersonateScope) {
		id.Roles = append(id.Roles, RoleImpersonate)
	}
	return id, nil
}

// get asks the Hub; err is set only when the Hub did not answer usably.
func (s *HubSource) get(ctx context.Context, path, tok string) (*hubModel, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return nil, 0, s.unavailable(err.Error())
	}
	if tok != "" {
		req.Header.Set("Authorization", "token "+tok)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return nil, 0, s.unavailable("did not answer: " + causeOf(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, 0, s.unavailable("answer cut short: " + err.Error())
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode, nil
	}
	var m hubModel
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, 0, s.unavailable("answered something that is not a JupyterHub model (is the URL the Hub's /hub/api?)")
	}
	return &m, resp.StatusCode, nil
}

func (s *HubSource) unavailable(what string) error {
	return fmt.Errorf("%w: jupyterhub: the Hub at %s %s", ErrUnavailable, s.base, what)
}

// Check asks the Hub who APIToken belongs to, so a wrong URL or token is
// found at startup rather than at the first user's request. Without
// APIToken it only checks that the Hub answers.
func (s *HubSource) Check(ctx context.Context) error {
	if s.cfg.APIToken == "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/", nil)
		if err != nil {
			return err
		}
		resp, err := s.cfg.Client.Do(req)
		if err != nil {
			return s.unavailable("did not answer: " + causeOf(err))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return s.unavailable(fmt.Sprintf("answered %d to GET / (is the URL the Hub's /hub/api?)", resp.StatusCode))
		}
		return nil
	}
	_, err := s.ask(ctx, s.cfg.APIToken)
	if errors.Is(err, ErrUnauthorized) {
		return fmt.Errorf("--hub-api-token: the Hub at %s does not accept it: %w", s.base, err)
	}
	return err
}

func cloneIdentity(i *Identity) *Identity {
	if i == nil {
		return nil
	}
	c := *i
	c.Roles = slices.Clone(i.Roles)
	c.Groups = slices.Clone(i.Groups)
	return &c
}

// causeOf is the innermost message of a client error: the URL it names
// is already in the message around it.
func causeOf(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}
