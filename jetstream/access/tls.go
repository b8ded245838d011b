package access

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Files of a bus TLS folder (WriteTLS).
const (
	// TLSCAFile is the private CA's certificate: what every client of the
	// bus (parts, tools, launchers) verifies the servers with.
	TLSCAFile = "ca.pem"
	// TLSCAKeyFile is the CA's key; only WriteTLS reads it, to sign new
	// server certificates when the host list grows.
	TLSCAKeyFile = "ca-key.pem"
	// TLSCertFile and TLSKeyFile are the servers' certificate and key.
	TLSCertFile = "server-cert.pem"
	TLSKeyFile  = "server-key.pem"
)

// TLSFiles are the paths WriteTLS wrote.
type TLSFiles struct {
	CA, Cert, Key string
}

// caValidity and certValidity: the CA outlives many server certificates,
// which WriteTLS renews on its own when a third of their life is left.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 2 * 365 * 24 * time.Hour
)

// WriteTLS makes sure dir holds a private CA and a server certificate it
// signed, valid for hosts (names or IP addresses) besides 127.0.0.1, ::1
// and localhost. It keeps what is there when it still fits: the CA always
// (clients already trust it), the server certificate while it names every
// host and is far from expiry. Keys are ECDSA P-256; keys are 0600 and
// dir 0700.
func WriteTLS(dir string, hosts []string) (TLSFiles, error) {
	f := TLSFiles{CA: filepath.Join(dir, TLSCAFile), Cert: filepath.Join(dir, TLSCertFile), Key: filepath.Join(dir, TLSKeyFile)}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	names, ips := splitHosts(hosts)
	ca, caKey, err := loadOrMakeCA(dir)
	if err != nil {
		return f, err
	}
	if certFits(f.Cert, f.Key, ca, names, ips) {
		return f, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kernelbus NATS"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Cluster routes present the same certificate as clients do.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    names,
		IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return f, err
	}
	if err := writeFileAtomic(f.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return f, err
	}
	if err := writeFileAtomic(f.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return f, err
	}
	return f, nil
}

// splitHosts adds the loopback names and sorts hosts into DNS names and
// IP addresses.
func splitHosts(hosts []string) (names []string, ips []net.IP) {
	for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if !slices.Contains(names, h) {
			names = append(names, h)
		}
	}
	return names, ips
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func loadOrMakeCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, TLSCAFile), filepath.Join(dir, TLSCAKeyFile)
	cb, cerr := os.ReadFile(certPath)
	kb, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		cert, err := parseCert(cb)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", certPath, err)
		}
		key, err := parseKey(kb)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
		}
		return cert, key, nil
	}
	if !errors.Is(cerr, os.ErrNotExist) && cerr != nil {
		return nil, nil, cerr
	}
	if !errors.Is(kerr, os.ErrNotExist) && kerr != nil {
		return nil, nil, kerr
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kernelbus bus CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM key")
	}
	return x509.ParseECPrivateKey(blk.Bytes)
}

// certFits reports whether the server certificate at certPath was signed
// by ca, matches its key, names every host and has more than a third of
// its life left.
func certFits(certPath, keyPath string, ca *x509.Certificate, names []string, ips []net.IP) bool {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return false
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return false
	}
	cert, err := parseCert(cb)
	if err != nil || cert.CheckSignatureFrom(ca) != nil {
		return false
	}
	key, err := parseKey(kb)
	if err != nil {
		return false
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return false
	}
	if time.Until(cert.NotAfter) < certValidity/3 {
		return false
	}
	for _, n := range names {
		if !slices.Contains(cert.DNSNames, n) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(cert.IPAddresses, func(x net.IP) bool { return bytes.Equal(x.To16(), ip.To16()) }) {
			return false
		}
	}
	return true
}
