package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest/testca"
)

// TestBusTLSFlags: the generated certificate names where launchers reach
// the bus, and flag mistakes are refused with what to fix.
func TestBusTLSFlags(t *testing.T) {
	dir := t.TempDir()
	f := busTLSFlags{on: true, hosts: listFlag{"bus.example"}}
	files, err := f.files(filepath.Join(dir, "a"), "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	c := testca.ReadCert(t, files.Cert)
	for _, name := range []string{"bus.example", host, "127.0.0.1", "localhost"} {
		if err := c.VerifyHostname(name); err != nil {
			t.Errorf("listening on 0.0.0.0, the certificate does not name %s: %v", name, err)
		}
	}
	files, err = (&busTLSFlags{on: true}).files(filepath.Join(dir, "b"), "10.1.1.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := testca.ReadCert(t, files.Cert).VerifyHostname("10.1.1.1"); err != nil {
		t.Errorf("the certificate does not name the listen address: %v", err)
	}
	if files, err := (&busTLSFlags{on: false}).files(filepath.Join(dir, "c"), "127.0.0.1"); err != nil || files.Cert != "" {
		t.Errorf("--nats-tls=false: %+v %v", files, err)
	}

	for _, bad := range []struct {
		f    busTLSFlags
		want string
	}{
		{busTLSFlags{on: true, cert: "x.pem"}, "go together"},
		{busTLSFlags{on: false, cert: "x.pem", key: "y.pem"}, "--nats-tls=false"},
		{busTLSFlags{on: true, cert: filepath.Join(dir, "missing.pem"), key: files.Key}, "missing.pem"},
		{busTLSFlags{on: true, ca: files.CA}, "--nats-ca without --nats-tls-cert"},
	} {
		if _, err := bad.f.files(filepath.Join(dir, "d"), "127.0.0.1"); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: %v, want an error saying %q", bad.f, err, bad.want)
		}
	}
	// Own certificate, key and CA: used as they are.
	own, err := access.WriteTLS(filepath.Join(dir, "own"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := (&busTLSFlags{on: true, cert: own.Cert, key: own.Key, ca: own.CA}).files(filepath.Join(dir, "e"), "127.0.0.1")
	if err != nil || got != own {
		t.Errorf("own files: %+v %v, want %+v", got, err, own)
	}
}
