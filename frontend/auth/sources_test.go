package auth_test

import (
	"net/http"

	"github.com/kernelbus/kernelbus/frontend/auth"
)

// srcReq is an auth.Request built by hand: sources are tested without an
// HTTP server.
type srcReq struct {
	hdr   http.Header
	query map[string]string
	ip    string
	certs [][]byte
}

func newSrcReq(ip string, kv ...string) *srcReq {
	r := &srcReq{hdr: http.Header{}, query: map[string]string{}, ip: ip}
	for i := 0; i+1 < len(kv); i += 2 {
		r.hdr.Set(kv[i], kv[i+1])
	}
	return r
}

func (r *srcReq) Header(n string) string     { return r.hdr.Get(n) }
func (r *srcReq) Query(n string) string      { return r.query[n] }
func (r *srcReq) RemoteIP() string           { return r.ip }
func (r *srcReq) PeerCertificates() [][]byte { return r.certs }

var _ auth.Request = (*srcReq)(nil)
