// Package auth says who calls the gateway. Each way of proving an identity
// (the legacy shared token, a users file, JupyterHub, a trusted proxy
// header, a TLS client certificate) is a Source; the front-end asks its
// sources in order and the first that recognises the request's scheme
// decides. Handlers then act on the Identity alone: they never trust a user
// name a client wrote into a request body or env.
package auth

import (
	"errors"
	"net/http"
	"slices"
)

// Roles an identity may hold.
const (
	// RoleUser may start kernels of the specs it may use and act on its
	// own kernels, sessions and events.
	RoleUser = "user"
	// RoleAdmin may act on every kernel and read the whole audit log.
	RoleAdmin = "admin"
	// RoleImpersonate may start kernels on behalf of another user name
	// (KERNEL_USERNAME), as a JupyterHub service does.
	RoleImpersonate = "impersonate"
)

// Identity is an authenticated caller.
type Identity struct {
	// Name is the user name: the kernel owner and KERNEL_USERNAME.
	Name string `json:"name"`
	// Roles the identity holds (RoleUser, RoleAdmin, ...).
	Roles []string `json:"roles,omitempty"`
	// Groups the identity belongs to, where its source knows them
	// (JupyterHub groups), for kernelspec authorization.
	Groups []string `json:"groups,omitempty"`
	// Source names the scheme that proved it: "token", "users",
	// "jupyterhub", "proxy-header", "tls-client-cert", "none".
	Source string `json:"source"`
}

// Has reports whether the identity holds role.
func (i *Identity) Has(role string) bool { return i != nil && slices.Contains(i.Roles, role) }

// IsAdmin reports whether the identity may act on every kernel.
func (i *Identity) IsAdmin() bool { return i.Has(RoleAdmin) }

// Request is what a Source may look at. It is an interface rather than a
// Fiber context so that sources are tested without an HTTP server.
type Request interface {
	// Header returns the first value of a request header.
	Header(name string) string
	// Query returns a query parameter.
	Query(name string) string
	// RemoteIP is the address of the TCP peer (not a forwarded header).
	RemoteIP() string
	// PeerCertificates are the verified TLS client certificates, if any.
	PeerCertificates() [][]byte
}

// Source proves identities from one scheme.
type Source interface {
	// Name of the scheme, for messages ("token", "basic", "jupyterhub").
	Name() string
	// Authenticate returns the caller's identity, or (nil, nil) when the
	// request does not use this source's scheme at all, so the next
	// source may try. A request that uses the scheme with bad credentials
	// gets ErrUnauthorized (wrapped, with a message naming the scheme and
	// never whether a user exists); a source that cannot decide now (a
	// JupyterHub that does not answer) gets ErrUnavailable.
	Authenticate(r Request) (*Identity, error)
}

// Errors sources return. The front-end renders ErrUnauthorized as 401 and
// ErrUnavailable as 503.
var (
	ErrUnauthorized = errors.New("not authenticated")
	ErrUnavailable  = errors.New("identity source unavailable")
)

// Status is the HTTP status err answers with.
func Status(err error) int {
	switch {
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	default:
		return http.StatusInternalServerError
	}
}
