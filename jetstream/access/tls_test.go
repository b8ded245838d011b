package access_test

import (
	"bytes"
	"crypto/x509"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/jetstream/jstest/testca"
)

// TestWriteTLSKeepsWhatFits: a second run keeps the CA and certificate;
// a new host renews the server certificate under the same CA, so clients
// that trust the CA keep working.
func TestWriteTLSKeepsWhatFits(t *testing.T) {
	dir := t.TempDir()
	f, err := access.WriteTLS(dir, []string{"nats.example", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(f.CA)
	cert1, _ := os.ReadFile(f.Cert)
	c := testca.ReadCert(t, f.Cert)
	for _, want := range []string{"localhost", "nats.example"} {
		if err := c.VerifyHostname(want); err != nil {
			t.Errorf("certificate does not name %s: %v", want, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "10.1.2.3", "::1"} {
		if err := c.VerifyHostname(ip); err != nil {
			t.Errorf("certificate does not name %s: %v", ip, err)
		}
	}
	if st, _ := os.Stat(f.Key); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(dir + "/" + access.TLSCAKeyFile); st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v, want 0600", st.Mode().Perm())
	}

	if _, err := access.WriteTLS(dir, []string{"10.1.2.3", "nats.example"}); err != nil {
		t.Fatal(err)
	}
	cert2, _ := os.ReadFile(f.Cert)
	if !bytes.Equal(cert1, cert2) {
		t.Error("the same hosts made a new certificate")
	}
	if _, err := access.WriteTLS(dir, []string{"other.example"}); err != nil {
		t.Fatal(err)
	}
	ca3, _ := os.ReadFile(f.CA)
	if !bytes.Equal(ca1, ca3) {
		t.Error("the CA changed")
	}
	c3 := testca.ReadCert(t, f.Cert)
	if err := c3.VerifyHostname("other.example"); err != nil {
		t.Errorf("renewed certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca3)
	if _, err := c3.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"}); err != nil {
		t.Errorf("renewed certificate does not chain to the CA: %v", err)
	}
}

// TestBusTLS: with TLS on, role and launcher credentials connect when the
// client trusts the installation's CA; a client that does not (no CA, or
// another installation's) is refused before it sends its credentials.
func TestBusTLS(t *testing.T) {
	e := jstest.Start(t, jstest.Options{Auth: true, TLS: true})
	if !strings.HasPrefix(e.URL, "nats://") && !strings.HasPrefix(e.URL, "tls://") {
		t.Fatalf("URL %q", e.URL)
	}
	// Role credentials, with the CA: fine (jstest.Connect passes it).
	nc := e.Connect(t, access.RoleFrontend, "")
	if !nc.TLSRequired() {
		t.Error("the connection is not TLS")
	}
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Errorf("no TLS state: %v", err)
	}
	// A launcher's, with the CA it gets in its launch config.
	id := uuid.NewString()
	lc, err := e.Minter.LauncherCreds(id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := kbjs.Connect(kbjs.ConnectOptions{URLs: e.URL, Creds: []byte(lc), CA: e.CA, Name: "launcher"})
	if err != nil {
		t.Fatalf("launcher with the CA: %v", err)
	}
	ln.Close()

	creds, err := e.Auth.Creds(access.RoleFrontend, "", "no-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	// No CA: the system roots do not know the private CA.
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: e.URL, Creds: creds, Name: "no-ca"}); err == nil {
		nc.Close()
		t.Fatal("a client that does not trust the CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("no CA: %v, want a certificate error", err)
	}
	// Another installation's CA: refused as well.
	other, err := access.WriteTLS(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := os.ReadFile(other.CA)
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: e.URL, Creds: creds, CA: otherCA, Name: "other-ca"}); err == nil {
		nc.Close()
		t.Fatal("a client trusting another CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("other CA: %v, want a certificate error", err)
	}
	// Plain TCP: the server insists on TLS before anything else.
	u, err := url.Parse(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	info := make([]byte, 4096)
	n, _ := conn.Read(info)
	if !strings.Contains(string(info[:n]), `"tls_required":true`) {
		t.Errorf("server INFO does not require TLS: %s", info[:n])
	}
}
