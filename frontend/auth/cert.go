package auth

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// Client certificate fields a user name can come from (CertSource.UserField).
const (
	CertFieldCN    = "cn"    // the subject's common name (default)
	CertFieldEmail = "email" // the first email address SAN
	CertFieldDNS   = "dns"   // the first DNS name SAN
	CertFieldURI   = "uri"   // the first URI SAN (e.g. a SPIFFE ID)
)

// CertSource makes identities of TLS client certificates. It trusts the
// TLS layer to have verified the chain against the configured client CA
// (auth.Request.PeerCertificates holds verified certificates only), so it
// only reads the leaf.
type CertSource struct {
	field string
	admin map[string]bool
}

// NewCertSource reads the user name from field (CertField*; empty: cn).
// admins are the user names that get RoleAdmin besides RoleUser.
func NewCertSource(field string, admins []string) (*CertSource, error) {
	if field == "" {
		field = CertFieldCN
	}
	switch field {
	case CertFieldCN, CertFieldEmail, CertFieldDNS, CertFieldURI:
	default:
		return nil, fmt.Errorf("client certificate user field %q: use cn, email, dns or uri", field)
	}
	s := &CertSource{field: field, admin: map[string]bool{}}
	for _, a := range admins {
		s.admin[a] = true
	}
	return s, nil
}

// Name implements Source.
func (s *CertSource) Name() string { return "tls-client-cert" }

// Authenticate implements Source: no certificate is not this scheme.
func (s *CertSource) Authenticate(r Request) (*Identity, error) {
	certs := r.PeerCertificates()
	if len(certs) == 0 {
		return nil, nil
	}
	leaf, err := x509.ParseCertificate(certs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: tls-client-cert: the client certificate cannot be parsed", ErrUnauthorized)
	}
	var name string
	switch s.field {
	case CertFieldCN:
		name = leaf.Subject.CommonName
	case CertFieldEmail:
		name = first(leaf.EmailAddresses)
	case CertFieldDNS:
		name = first(leaf.DNSNames)
	case CertFieldURI:
		if len(leaf.URIs) > 0 {
			name = leaf.URIs[0].String()
		}
	}
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("%w: tls-client-cert: the certificate's %s field %v", ErrUnauthorized, s.field, err)
	}
	roles := []string{RoleUser}
	if s.admin[name] {
		roles = append(roles, RoleAdmin)
	}
	return &Identity{Name: name, Roles: roles, Source: s.Name()}, nil
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// MaxNameLen bounds user names from external sources: a name ends up in
// KERNEL_USERNAME, bus subjects' payloads, audit records and logs.
const MaxNameLen = 128

// checkName refuses user names that would be ambiguous or break the
// places they are written to (empty, too long, control characters,
// whitespace at either end).
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("is longer than %d bytes", MaxNameLen)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("has leading or trailing space")
	case slices.ContainsFunc([]rune(name), func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }):
		return fmt.Errorf("has control or invalid characters")
	}
	return nil
}
