package auth_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest/testca"
)

func TestCertSource(t *testing.T) {
	ca, err := testca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.ClientWith(testca.ClientOptions{
		CommonName: "Alice Liddell",
		Emails:     []string{"alice@example.org", "a2@example.org"},
		DNSNames:   []string{"alice.users.example.org"},
		URIs:       []string{"spiffe://example.org/user/alice"},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := newSrcReq("10.0.0.1")
	req.certs = [][]byte{leaf.Cert.Raw, ca.Cert.Raw}

	for field, want := range map[string]string{
		"":                  "Alice Liddell",
		auth.CertFieldCN:    "Alice Liddell",
		auth.CertFieldEmail: "alice@example.org",
		auth.CertFieldDNS:   "alice.users.example.org",
		auth.CertFieldURI:   "spiffe://example.org/user/alice",
	} {
		s, err := auth.NewCertSource(field, nil)
		if err != nil {
			t.Fatal(err)
		}
		id, err := s.Authenticate(req)
		if err != nil || id == nil || id.Name != want || !slices.Equal(id.Roles, []string{auth.RoleUser}) || id.Source != "tls-client-cert" {
			t.Errorf("field %q: %+v %v, want user %q", field, id, err, want)
		}
	}

	// The admin mapping.
	s, _ := auth.NewCertSource(auth.CertFieldEmail, []string{"alice@example.org"})
	if id, _ := s.Authenticate(req); !id.IsAdmin() || !id.Has(auth.RoleUser) {
		t.Errorf("mapped admin: %+v", id)
	}

	// No certificate: not this scheme, the next source decides.
	if id, err := s.Authenticate(newSrcReq("10.0.0.1")); id != nil || err != nil {
		t.Errorf("no certificate: %+v %v", id, err)
	}

	// A certificate without the configured field is refused, not passed on
	// to another source: the client did use this scheme.
	bare, _ := ca.Client("bob")
	req.certs = [][]byte{bare.Cert.Raw}
	_, err = s.Authenticate(req)
	if !errors.Is(err, auth.ErrUnauthorized) || !strings.Contains(err.Error(), "email") {
		t.Errorf("certificate without email: %v", err)
	}
	// Names that would corrupt logs or KERNEL_USERNAME.
	for _, cn := range []string{"", " alice", "al\nice", strings.Repeat("a", auth.MaxNameLen+1)} {
		l, _ := ca.Client(cn)
		req.certs = [][]byte{l.Cert.Raw}
		cs, _ := auth.NewCertSource("", nil)
		if _, err := cs.Authenticate(req); !errors.Is(err, auth.ErrUnauthorized) {
			t.Errorf("CN %q: %v", cn, err)
		}
	}
	req.certs = [][]byte{[]byte("garbage")}
	if _, err := s.Authenticate(req); !errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("unparsable certificate: %v", err)
	}
	if _, err := auth.NewCertSource("serial", nil); err == nil {
		t.Error("unknown field accepted")
	}
}
