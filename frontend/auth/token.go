package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
)

// Credentials are what a request carries, read the way jupyter_server's
// gateway client, JupyterLab and nbclient send them.
type Credentials struct {
	// Token from "Authorization: token T", "Authorization: Bearer T" or
	// ?token=T. jupyter_server sends the literal header "token " when it
	// has none: that is no token.
	Token string
	// User and Password from HTTP basic auth (jupyter_server's
	// http_user/http_pwd replace the Authorization header with it).
	User, Password string
	// Basic reports whether basic auth was sent.
	Basic bool
}

// ReadCredentials reads a request's credentials. A token in the header
// wins over ?token= (JupyterLab sends both for websockets).
func ReadCredentials(r Request) Credentials {
	var c Credentials
	if h := strings.TrimSpace(r.Header("Authorization")); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToLower(scheme) {
		case "token", "bearer":
			c.Token = rest
		case "basic":
			if raw, err := base64.StdEncoding.DecodeString(rest); err == nil {
				if u, p, ok := strings.Cut(string(raw), ":"); ok {
					c.User, c.Password, c.Basic = u, p, true
				}
			}
		}
	}
	if c.Token == "" {
		c.Token = r.Query("token")
	}
	return c
}

// Any reports whether the request carries credentials at all.
func (c Credentials) Any() bool { return c.Token != "" || c.Basic }

// TokenSource is the legacy single shared token (--token): whoever holds it
// is one identity, an administrator that may also start kernels for any
// KERNEL_USERNAME, as every client of the old gateway could.
type TokenSource struct {
	sum  [sha256.Size]byte
	user string
}

var _ Source = (*TokenSource)(nil)

// NewTokenSource returns the source for token; user names its identity
// ("admin" when empty).
func NewTokenSource(token, user string) (*TokenSource, error) {
	if token == "" {
		return nil, fmt.Errorf("auth: the shared token is empty")
	}
	if user == "" {
		user = "admin"
	}
	return &TokenSource{sum: sha256.Sum256([]byte(token)), user: user}, nil
}

// Name implements Source.
func (s *TokenSource) Name() string { return "token" }

// Authenticate implements Source. The token may come as a token, a bearer
// token, ?token= or as the password of basic auth (any user name), which
// is how jupyter_server sends it when http_user/http_pwd are set.
func (s *TokenSource) Authenticate(r Request) (*Identity, error) {
	c := ReadCredentials(r)
	var got string
	switch {
	case c.Token != "":
		got = c.Token
	case c.Basic && c.Password != "":
		got = c.Password
	default:
		return nil, nil
	}
	// Comparing digests keeps the time independent of the token's length.
	sum := sha256.Sum256([]byte(got))
	if subtle.ConstantTimeCompare(sum[:], s.sum[:]) != 1 {
		return nil, fmt.Errorf("%w: the token is not valid", ErrUnauthorized)
	}
	return &Identity{Name: s.user, Roles: []string{RoleAdmin, RoleImpersonate, RoleUser}, Source: s.Name()}, nil
}
