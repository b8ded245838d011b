package auth_test

import (
	"testing"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest/testca"
)

// The per-request cost of each source once it has decided (a cached Hub
// answer; a header; a certificate the TLS layer already verified).

func BenchmarkHubSourceCached(b *testing.B) {
	h := newFakeHub(b)
	s, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api()})
	r := newSrcReq("127.0.0.1", "Authorization", "token tok-alice")
	if _, err := s.Authenticate(r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Authenticate(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkHeaderSource(b *testing.B) {
	s, _ := auth.NewHeaderSource(auth.HeaderConfig{TrustedCIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}, GroupsHeader: "X-Forwarded-Groups"})
	r := newSrcReq("10.1.2.3", "X-Forwarded-User", "alice", "X-Forwarded-Groups", "ds,ops")
	b.ReportAllocs()
	for b.Loop() {
		if id, _ := s.Authenticate(r); id == nil {
			b.Fatal("no identity")
		}
	}
}

func BenchmarkCertSource(b *testing.B) {
	ca, _ := testca.New("bench CA")
	leaf, _ := ca.Client("alice")
	s, _ := auth.NewCertSource("", nil)
	r := newSrcReq("10.1.2.3")
	r.certs = [][]byte{leaf.Cert.Raw}
	b.ReportAllocs()
	for b.Loop() {
		if id, _ := s.Authenticate(r); id == nil {
			b.Fatal("no identity")
		}
	}
}
