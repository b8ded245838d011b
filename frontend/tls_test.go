package frontend

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/jetstream/jstest/testca"
)

// tlsFiles is a test CA, a server certificate and the options serving it.
type tlsFiles struct {
	ca   *testca.CA
	dir  string
	opts TLSOptions
}

func newTLSFiles(t testing.TB, clientAuth string) *tlsFiles {
	t.Helper()
	ca, err := testca.New("kernelbus test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := srv.WriteFiles(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsFiles{ca: ca, dir: dir, opts: TLSOptions{CertFile: cert, KeyFile: key, ClientAuth: clientAuth}}
	if clientAuth != ClientAuthNone {
		if f.opts.ClientCAFile, err = ca.WriteFile(dir, "ca"); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// clientTLS trusts the test CA and presents a certificate for cn, if any.
func (f *tlsFiles) clientTLS(t testing.TB, cn string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.ca.Pool()}
	if cn != "" {
		leaf, err := f.ca.Client(cn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{leaf.TLS()}
	}
	return cfg
}

func httpsClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// startTLSFrontend serves a front-end with a fake worker over HTTPS.
func startTLSFrontend(t *testing.T, o TLSOptions) (*testEnv, string) {
	t.Helper()
	bus := testBus(t)
	w := startFakeWorker(t, bus)
	fe, base := startFrontendOn(t, bus, Config{}, "https", func(ln net.Listener) (net.Listener, error) {
		return TLSListener(ln, o, jstest.Logger(t))
	})
	return &testEnv{t: t, bus: bus, fe: fe, base: base, worker: w}, base
}

// A Jupyter client with a client certificate uses REST and a kernel
// websocket (wss) through mTLS; one without a certificate, or with one
// from another CA, does not get past the handshake.
func TestTLSFrontendMutualWSS(t *testing.T) {
	f := newTLSFiles(t, ClientAuthRequire)
	_, base := startTLSFrontend(t, f.opts)
	alice := httpsClient(f.clientTLS(t, "alice"))

	resp, err := alice.Post(base+"api/kernels", "application/json", strings.NewReader(`{"name":"python3"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("start over https: %d %s", resp.StatusCode, body)
	}
	id := strings.Split(strings.Split(string(body), `"id":"`)[1], `"`)[0]

	u, _ := url.Parse(base)
	u.Scheme = "wss"
	u.Path += "api/kernels/" + id + "/channels"
	d := fws.Dialer{HandshakeTimeout: 10 * time.Second, TLSClientConfig: f.clientTLS(t, "alice")}
	c, _, err := d.Dial(u.String(), nil)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	ws := (&wsClient{c: c}).with(t, "sess-tls")
	msgID := ws.send("shell", "kernel_info_request", map[string]any{})
	msgs := ws.until(isIdleOf(msgID))
	if len(msgs) != 3 || msgs[1].MsgType != "kernel_info_reply" {
		t.Fatalf("over wss got %v", msgs)
	}

	// No certificate: the handshake fails, no HTTP is spoken.
	if _, err := httpsClient(f.clientTLS(t, "")).Get(base + "api"); err == nil {
		t.Fatal("a client without a certificate got an answer with client auth require")
	}
	if _, _, err := (&fws.Dialer{TLSClientConfig: f.clientTLS(t, "")}).Dial(u.String(), nil); err == nil {
		t.Fatal("a websocket without a client certificate was accepted")
	}
	// A certificate from a CA the server does not trust: refused too.
	other := newTLSFiles(t, ClientAuthRequire)
	cfg := f.clientTLS(t, "")
	cfg.Certificates = other.clientTLS(t, "mallory").Certificates
	if _, err := httpsClient(cfg).Get(base + "api"); err == nil {
		t.Fatal("a certificate from a foreign CA was accepted")
	}
	// TLS 1.1 is refused.
	old := f.clientTLS(t, "alice")
	old.MinVersion, old.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if _, err := httpsClient(old).Get(base + "api"); err == nil {
		t.Fatal("TLS 1.1 accepted")
	}
}

// certEcho serves a bare Fiber app over TLS that answers the verified
// client certificate's common name, to test TLSPeerCertificates.
func certEcho(t *testing.T, o TLSOptions) string {
	t.Helper()
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/", func(c *fiber.Ctx) error {
		certs := TLSPeerCertificates(c)
		if len(certs) == 0 {
			return c.SendString("-")
		}
		cert, err := x509.ParseCertificate(certs[0])
		if err != nil {
			return err
		}
		return c.SendString(cert.Subject.CommonName + " " + cert.SerialNumber.String())
	})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := TLSListener(raw, o, jstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Listener(ln) }()
	t.Cleanup(func() { _ = app.Shutdown() })
	return "https://" + ln.Addr().String() + "/"
}

func get(t *testing.T, c *http.Client, u string) (string, error) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// With client auth request, a client may come without a certificate (and
// prove who it is another way); one that brings a certificate gets it
// verified, and the handler sees it.
func TestTLSClientAuthRequest(t *testing.T) {
	f := newTLSFiles(t, ClientAuthRequest)
	base := certEcho(t, f.opts)
	if got, err := get(t, httpsClient(f.clientTLS(t, "")), base); err != nil || got != "-" {
		t.Fatalf("no certificate: %q %v", got, err)
	}
	got, err := get(t, httpsClient(f.clientTLS(t, "bob")), base)
	if err != nil || !strings.HasPrefix(got, "bob ") {
		t.Fatalf("with certificate: %q %v", got, err)
	}
	// The foreign CA has the same subject name as ours (newTLSFiles), so
	// the client does send the certificate; the signature check refuses it.
	other := newTLSFiles(t, ClientAuthRequest)
	cfg := f.clientTLS(t, "")
	cfg.Certificates = other.clientTLS(t, "mallory").Certificates
	if got, err := get(t, httpsClient(cfg), base); err == nil {
		t.Fatalf("foreign certificate accepted: %q", got)
	}
	// Plain HTTP to the TLS port gets no HTTP answer.
	if _, err := get(t, &http.Client{Timeout: 5 * time.Second}, strings.Replace(base, "https:", "http:", 1)); err == nil {
		t.Fatal("plain HTTP answered on the TLS port")
	}
}

// Certificate, key and client CA files are read again when they change:
// rotation needs no restart, and a half-written rotation keeps the old
// certificate serving.
func TestTLSReload(t *testing.T) {
	f := newTLSFiles(t, ClientAuthRequest)
	base := certEcho(t, f.opts)
	serverSerial := func(cfg *tls.Config) (string, error) {
		u, _ := url.Parse(base)
		c, err := tls.Dial("tcp", u.Host, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	first, err := serverSerial(f.clientTLS(t, ""))
	if err != nil {
		t.Fatal(err)
	}

	// A broken certificate file: the old one keeps serving.
	if err := os.WriteFile(f.opts.CertFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := serverSerial(f.clientTLS(t, "")); err != nil || got != first {
		t.Fatalf("after a broken write: serial %s (want %s), %v", got, first, err)
	}

	// A new certificate and key from a new CA; the client CA file too.
	ca2, err := testca.New("rotated CA")
	if err != nil {
		t.Fatal(err)
	}
	srv2, err := ca2.Server()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cert, key, _ := srv2.WriteFiles(tmp, "s")
	for src, dst := range map[string]string{cert: f.opts.CertFile, key: f.opts.KeyFile} {
		// rename, as rotation tools do, so a reader never sees half a file
		if err := os.Rename(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ca2.WriteFile(tmp, "ca"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "ca.crt"), f.opts.ClientCAFile); err != nil {
		t.Fatal(err)
	}
	cfg2 := &tls.Config{RootCAs: ca2.Pool()}
	jstest.WaitForNil(t, 10*time.Second, func() error {
		got, err := serverSerial(cfg2)
		if err != nil {
			return err
		}
		if got != srv2.Cert.SerialNumber.String() {
			return fmt.Errorf("serial %s", got)
		}
		return nil
	})
	// Client certificates of the old CA are no longer accepted; the new
	// CA's are.
	// (Go's client sees the server no longer names the old CA and sends
	// no certificate, so the request arrives without one.)
	oldClient := f.clientTLS(t, "alice")
	oldClient.RootCAs = ca2.Pool()
	if got, err := get(t, httpsClient(oldClient), base); err == nil && got != "-" {
		t.Fatalf("client certificate of the replaced CA accepted: %q", got)
	}
	leaf, _ := ca2.Client("carol")
	cfg2.Certificates = []tls.Certificate{leaf.TLS()}
	if got, err := get(t, httpsClient(cfg2), base); err != nil || !strings.HasPrefix(got, "carol ") {
		t.Fatalf("new CA's client: %q %v", got, err)
	}
}

// A connection that opens and says nothing is closed after the handshake
// timeout instead of holding a socket forever.
func TestTLSHandshakeTimeout(t *testing.T) {
	f := newTLSFiles(t, ClientAuthNone)
	o := f.opts
	o.HandshakeTimeout = 300 * time.Millisecond
	u, _ := url.Parse(certEcho(t, o))
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection not closed by the server: %v", err)
	}
	t.Logf("closed after %v: %v", time.Since(start), err)
}

func TestTLSOptionsErrors(t *testing.T) {
	f := newTLSFiles(t, ClientAuthRequire)
	cases := []struct {
		name string
		o    TLSOptions
		want string
	}{
		{"key missing", TLSOptions{CertFile: f.opts.CertFile}, "--tls-key"},
		{"bad mode", TLSOptions{CertFile: f.opts.CertFile, KeyFile: f.opts.KeyFile, ClientAuth: "maybe"}, "none, request or require"},
		{"require without CA", TLSOptions{CertFile: f.opts.CertFile, KeyFile: f.opts.KeyFile, ClientAuth: ClientAuthRequire}, "needs --tls-client-ca"},
		{"none with CA", TLSOptions{CertFile: f.opts.CertFile, KeyFile: f.opts.KeyFile, ClientCAFile: f.opts.ClientCAFile, ClientAuth: ClientAuthNone}, "contradicts"},
		{"missing file", TLSOptions{CertFile: f.dir + "/nope.crt", KeyFile: f.opts.KeyFile}, "nope.crt"},
		{"key of another cert", TLSOptions{CertFile: f.opts.ClientCAFile, KeyFile: f.opts.KeyFile}, "--tls-cert"},
		{"CA not PEM", TLSOptions{CertFile: f.opts.CertFile, KeyFile: f.opts.KeyFile, ClientCAFile: f.opts.KeyFile}, "no PEM certificate"},
	}
	for _, c := range cases {
		_, err := NewTLSConfig(c.o, jstest.Logger(t))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	// A client CA alone means require.
	o := f.opts
	o.ClientAuth = ""
	cfg, err := NewTLSConfig(o, jstest.Logger(t))
	if err != nil || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("CA without mode: %v %v", cfg.ClientAuth, err)
	}
}
