package auth

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// Default header names of HeaderSource.
const (
	DefaultUserHeader = "X-Forwarded-User"
)

// HeaderSource takes the identity from headers an authenticating proxy in
// front of the gateway sets (oauth2-proxy, an ingress with external auth).
// The headers are believed only from the proxy's own addresses: from any
// other TCP peer they are ignored as if absent, since any client can write
// them. The peer address is the socket's, never X-Forwarded-For.
type HeaderSource struct {
	trusted      []netip.Prefix
	userHeader   string
	groupsHeader string
	adminGroups  map[string]bool
}

// HeaderConfig configures a HeaderSource.
type HeaderConfig struct {
	// TrustedCIDRs are the proxies' addresses ("10.0.0.0/8", "127.0.0.1");
	// at least one.
	TrustedCIDRs []string
	// UserHeader carries the user name (default X-Forwarded-User).
	UserHeader string
	// GroupsHeader, if set, carries the user's groups, comma separated.
	GroupsHeader string
	// AdminGroups are groups whose members get RoleAdmin.
	AdminGroups []string
}

// NewHeaderSource checks c and builds the source.
func NewHeaderSource(c HeaderConfig) (*HeaderSource, error) {
	if len(c.TrustedCIDRs) == 0 {
		return nil, fmt.Errorf("trusted proxy header: give the proxies' addresses (--trusted-proxy-cidrs); without them anyone could set the header")
	}
	s := &HeaderSource{
		userHeader:   http.CanonicalHeaderKey(c.UserHeader),
		groupsHeader: http.CanonicalHeaderKey(c.GroupsHeader),
		adminGroups:  map[string]bool{},
	}
	if s.userHeader == "" {
		s.userHeader = DefaultUserHeader
	}
	for _, v := range c.TrustedCIDRs {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR (like 10.0.0.0/8 or 127.0.0.1)", v)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		s.trusted = append(s.trusted, p.Masked())
	}
	for _, g := range c.AdminGroups {
		s.adminGroups[g] = true
	}
	return s, nil
}

// Name implements Source.
func (s *HeaderSource) Name() string { return "proxy-header" }

// Authenticate implements Source.
func (s *HeaderSource) Authenticate(r Request) (*Identity, error) {
	name := r.Header(s.userHeader)
	if name == "" || !s.fromProxy(r.RemoteIP()) {
		// Not this scheme, or written by someone who is not the proxy:
		// ignored, so the request must prove itself another way.
		return nil, nil
	}
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("%w: proxy-header: %s %v", ErrUnauthorized, s.userHeader, err)
	}
	id := &Identity{Name: name, Roles: []string{RoleUser}, Source: s.Name()}
	if s.groupsHeader != "" {
		for _, g := range strings.Split(r.Header(s.groupsHeader), ",") {
			if g = strings.TrimSpace(g); g != "" {
				id.Groups = append(id.Groups, g)
				if s.adminGroups[g] && !id.IsAdmin() {
					id.Roles = append(id.Roles, RoleAdmin)
				}
			}
		}
	}
	return id, nil
}

func (s *HeaderSource) fromProxy(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
