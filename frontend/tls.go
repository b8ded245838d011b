package frontend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/rs/zerolog"
)

// Client certificate modes (--tls-client-auth).
const (
	// ClientAuthNone asks for no client certificate.
	ClientAuthNone = "none"
	// ClientAuthRequest asks for one and verifies it against the client CA
	// when given; a client without one still connects (and must prove who
	// it is another way).
	ClientAuthRequest = "request"
	// ClientAuthRequire refuses the handshake without a certificate the
	// client CA signed.
	ClientAuthRequire = "require"
)

// DefaultHandshakeTimeout bounds a TLS handshake, so that connections that
// open and then say nothing do not hold a goroutine and a socket forever.
const DefaultHandshakeTimeout = 10 * time.Second

// TLSOptions configure HTTPS serving.
type TLSOptions struct {
	// CertFile and KeyFile are PEM files, read again whenever either
	// changes (certificate rotation without a restart). CertFile may hold
	// the chain after the leaf.
	CertFile, KeyFile string
	// ClientCAFile holds the PEM certificates of the CAs that sign client
	// certificates; it too is read again when it changes.
	ClientCAFile string
	// ClientAuth is ClientAuthNone, ClientAuthRequest or ClientAuthRequire;
	// empty means require when ClientCAFile is set, else none.
	ClientAuth string
	// HandshakeTimeout bounds each handshake (0: DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
}

// Enabled reports whether HTTPS is configured at all.
func (o TLSOptions) Enabled() bool {
	return o.CertFile != "" || o.KeyFile != "" || o.ClientCAFile != "" || o.ClientAuth != ""
}

// clientAuth validates the combination of options and returns the mode.
func (o TLSOptions) clientAuth() (tls.ClientAuthType, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return 0, errors.New("HTTPS needs both a certificate and a key file (--tls-cert and --tls-key)")
	}
	mode := o.ClientAuth
	if mode == "" {
		mode = ClientAuthNone
		if o.ClientCAFile != "" {
			mode = ClientAuthRequire
		}
	}
	switch mode {
	case ClientAuthNone:
		if o.ClientCAFile != "" {
			return 0, errors.New("--tls-client-auth none contradicts --tls-client-ca: use request or require, or drop the CA")
		}
		return tls.NoClientCert, nil
	case ClientAuthRequest, ClientAuthRequire:
		if o.ClientCAFile == "" {
			return 0, fmt.Errorf("--tls-client-auth %s needs --tls-client-ca, the CA that signs client certificates", mode)
		}
		if mode == ClientAuthRequest {
			return tls.VerifyClientCertIfGiven, nil
		}
		return tls.RequireAndVerifyClientCert, nil
	default:
		return 0, fmt.Errorf("--tls-client-auth %q: use none, request or require", o.ClientAuth)
	}
}

// NewTLSConfig builds the server TLS configuration: TLS 1.2 or later,
// HTTP/1.1 only (websockets upgrade from it), certificate and client CA
// read from their files now and again whenever the files change. A file
// that cannot be read at startup is an error; a bad file later is logged
// and the previous certificate stays in use.
func NewTLSConfig(o TLSOptions, log zerolog.Logger) (*tls.Config, error) {
	mode, err := o.clientAuth()
	if err != nil {
		return nil, err
	}
	certs := &watched[*tls.Certificate]{
		files: []string{o.CertFile, o.KeyFile},
		load: func() (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", o.CertFile, o.KeyFile, err)
			}
			return &c, nil
		},
		log: log, what: "TLS certificate",
	}
	if _, err := certs.get(); err != nil {
		return nil, err
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		ClientAuth: mode,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.get()
		},
	}
	if o.ClientCAFile == "" {
		return base, nil
	}
	cas := &watched[*x509.CertPool]{
		files: []string{o.ClientCAFile},
		load: func() (*x509.CertPool, error) {
			data, err := os.ReadFile(o.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("--tls-client-ca: %w", err)
			}
			p := x509.NewCertPool()
			if !p.AppendCertsFromPEM(data) {
				return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in the file", o.ClientCAFile)
			}
			return p, nil
		},
		log: log, what: "TLS client CA",
	}
	pool, err := cas.get()
	if err != nil {
		return nil, err
	}
	base.ClientCAs = pool
	// The client CA is part of the config itself, so a changed file means
	// a per-handshake copy of the config with the new pool.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		p, err := cas.get()
		if err != nil {
			return nil, err
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = p
		return c, nil
	}
	return base, nil
}

// TLSListener wraps ln so that every connection speaks TLS with the
// configuration NewTLSConfig builds, each handshake bounded by the
// handshake timeout.
func TLSListener(ln net.Listener, o TLSOptions, log zerolog.Logger) (net.Listener, error) {
	cfg, err := NewTLSConfig(o, log)
	if err != nil {
		return nil, err
	}
	timeout := o.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	return &tlsListener{Listener: ln, cfg: cfg, timeout: timeout}, nil
}

type tlsListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
}

// Accept does not handshake: that would serialise every client behind
// the slowest one. The connection handshakes on first use instead.
func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tlsConn{Conn: tls.Server(c, l.cfg), timeout: l.timeout}, nil
}

// tlsConn is a server TLS connection whose handshake, however it is
// started (first Read or Write, or fasthttp calling Handshake), gives up
// after timeout. It keeps *tls.Conn's methods, so fasthttp still sees a
// TLS connection (ctx.IsTLS, TLSConnectionState) and hijacked websockets
// keep it.
type tlsConn struct {
	*tls.Conn
	timeout time.Duration
	done    atomic.Bool
}

func (c *tlsConn) Handshake() error {
	if c.done.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.Conn.HandshakeContext(ctx); err != nil {
		return err
	}
	c.done.Store(true)
	return nil
}

func (c *tlsConn) Read(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *tlsConn) Write(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// TLSPeerCertificates returns the DER client certificates the TLS layer
// verified for this request (leaf first), or nil on plain HTTP or when the
// client sent none; it is what auth.Request.PeerCertificates returns.
func TLSPeerCertificates(c *fiber.Ctx) [][]byte {
	st := c.Context().TLSConnectionState()
	if st == nil || len(st.VerifiedChains) == 0 {
		// Only chains the handshake verified count: with
		// VerifyClientCertIfGiven an unverifiable certificate already
		// fails the handshake, so this is a second line of defence.
		return nil
	}
	out := make([][]byte, 0, len(st.PeerCertificates))
	for _, pc := range st.PeerCertificates {
		out = append(out, pc.Raw)
	}
	return out
}

// watched is a value loaded from files and loaded again when any of them
// changes (size or modification time, which also catches Kubernetes'
// symlink swaps of mounted secrets).
type watched[T any] struct {
	files []string
	load  func() (T, error)
	log   zerolog.Logger
	what  string

	mu     sync.Mutex
	sig    string // stat signature of the files the value came from
	badSig string // signature of files that failed to load (logged once)
	val    T
	ok     bool
}

func (w *watched[T]) get() (T, error) {
	sig := w.signature()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ok && (sig == w.sig || sig == w.badSig) {
		return w.val, nil
	}
	v, err := w.load()
	if err != nil {
		if !w.ok {
			return v, err
		}
		// Mid-rotation (the key written, the certificate not yet) or a
		// broken file: keep serving with what worked, say so once.
		w.badSig = sig
		w.log.Warn().Err(err).Msgf("%s changed but cannot be loaded; still using the previous one", w.what)
		return w.val, nil
	}
	if w.ok {
		w.log.Info().Strs("files", w.files).Msgf("%s reloaded", w.what)
	}
	w.val, w.ok, w.sig, w.badSig = v, true, sig, ""
	return v, nil
}

func (w *watched[T]) signature() string {
	var s []byte
	for _, f := range w.files {
		st, err := os.Stat(f)
		if err != nil {
			s = append(s, "missing;"...)
			continue
		}
		s = fmt.Appendf(s, "%d:%d;", st.Size(), st.ModTime().UnixNano())
	}
	return string(s)
}
