package auth_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/kernelbus/kernelbus/frontend/auth"
)

func TestHeaderSource(t *testing.T) {
	s, err := auth.NewHeaderSource(auth.HeaderConfig{
		TrustedCIDRs: []string{"10.1.0.0/16", "127.0.0.1", "fd00::/8"},
		GroupsHeader: "x-forwarded-groups",
		AdminGroups:  []string{"platform"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.1.2.3", "127.0.0.1", "::ffff:127.0.0.1", "fd00::5"} {
		id, err := s.Authenticate(newSrcReq(ip, "X-Forwarded-User", "alice", "X-Forwarded-Groups", "ds, platform ,"))
		if err != nil || id == nil || id.Name != "alice" || id.Source != "proxy-header" ||
			!slices.Equal(id.Groups, []string{"ds", "platform"}) || !id.IsAdmin() || !id.Has(auth.RoleUser) {
			t.Errorf("from proxy %s: %+v %v", ip, id, err)
		}
	}
	id, _ := s.Authenticate(newSrcReq("10.1.2.3", "X-Forwarded-User", "bob", "X-Forwarded-Groups", "ds"))
	if id.IsAdmin() {
		t.Errorf("bob is not in an admin group: %+v", id)
	}

	// The attack: a client that reaches the gateway directly writes the
	// proxy's headers. They are ignored as if absent, whatever else it
	// claims (X-Forwarded-For, X-Real-IP).
	for _, ip := range []string{"10.2.0.1", "192.168.1.1", "::1", "fe80::1", "", "not-an-ip"} {
		r := newSrcReq(ip, "X-Forwarded-User", "admin", "X-Forwarded-Groups", "platform",
			"X-Forwarded-For", "10.1.2.3", "X-Real-Ip", "127.0.0.1")
		if id, err := s.Authenticate(r); id != nil || err != nil {
			t.Errorf("header from untrusted %q honoured: %+v %v", ip, id, err)
		}
	}

	// No header from the proxy: not this scheme.
	if id, err := s.Authenticate(newSrcReq("10.1.2.3")); id != nil || err != nil {
		t.Errorf("no header: %+v %v", id, err)
	}
	// A bad name from the proxy is refused.
	if _, err := s.Authenticate(newSrcReq("10.1.2.3", "X-Forwarded-User", "a\x01b")); !errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("control character in name: %v", err)
	}

	// Configuration errors.
	if _, err := auth.NewHeaderSource(auth.HeaderConfig{}); err == nil {
		t.Error("no trusted CIDRs accepted")
	}
	if _, err := auth.NewHeaderSource(auth.HeaderConfig{TrustedCIDRs: []string{"10.0.0.0/33"}}); err == nil {
		t.Error("bad CIDR accepted")
	}
	// A custom user header.
	s2, _ := auth.NewHeaderSource(auth.HeaderConfig{TrustedCIDRs: []string{"127.0.0.0/8"}, UserHeader: "X-Auth-Request-User"})
	if id, _ := s2.Authenticate(newSrcReq("127.0.0.9", "X-Auth-Request-User", "carol", "X-Forwarded-User", "mallory")); id == nil || id.Name != "carol" {
		t.Errorf("custom header: %+v", id)
	}
}
