// Package jetstream is kernelbus's NATS plumbing: how parts connect, the
// streams and buckets every part relies on, the kernel-record and event
// helpers, and the chunking that lets messages larger than max_payload cross
// the bus. The embedded server lives in jetstream/embedded.
package jetstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConnectOptions say how a part reaches the bus.
type ConnectOptions struct {
	// URLs of the NATS servers, comma separated; ignored with InProcess.
	URLs string
	// InProcess connects to an embedded server without a socket.
	InProcess nats.InProcessConnProvider
	// CredsFile is a NATS credentials file (JWT + nkey seed). Optional.
	CredsFile string
	// Creds are a credentials file's contents, kept in memory (a
	// launcher's: a file would be readable by its kernel). Optional.
	Creds []byte
	// CredsFunc, instead of Creds, returns the credentials to present at
	// each (re)connect, so that credentials renewed while connected are
	// the ones the next connection uses. Optional.
	CredsFunc func() []byte
	// CA is the PEM of a CA to verify the server's TLS certificate with,
	// besides CAFile. Optional.
	CA []byte
	// InboxPrefix replaces _INBOX for reply subjects. Optional.
	InboxPrefix string
	// Token authenticates with a plain token. Optional.
	Token string
	// Name shows up in the server's connection list.
	Name string
	// CAFile, CertFile, KeyFile configure TLS. Optional.
	CAFile, CertFile, KeyFile string
	// OnState is told about disconnects and reconnects. Optional.
	OnState func(event string, err error)
}

// Connect opens a connection that reconnects forever: parts of kernelbus
// outlive NATS node restarts rather than exit.
func Connect(opts ConnectOptions) (*nats.Conn, error) {
	o := []nats.Option{
		nats.Name(opts.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(64 << 20),
		nats.PingInterval(10 * time.Second),
		nats.RetryOnFailedConnect(false),
	}
	if opts.InProcess != nil {
		o = append(o, nats.InProcessServer(opts.InProcess))
	}
	if opts.CredsFile != "" {
		o = append(o, nats.UserCredentials(opts.CredsFile))
	}
	if len(opts.Creds) > 0 {
		userJWT, err := jwt.ParseDecoratedJWT(opts.Creds)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
		kp, err := jwt.ParseDecoratedNKey(opts.Creds)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
		o = append(o, nats.UserJWTAndSeed(userJWT, string(seed)))
	}
	if f := opts.CredsFunc; f != nil {
		o = append(o, nats.UserJWT(func() (string, error) {
			return jwt.ParseDecoratedJWT(f())
		}, func(nonce []byte) ([]byte, error) {
			kp, err := jwt.ParseDecoratedNKey(f())
			if err != nil {
				return nil, err
			}
			defer kp.Wipe()
			return kp.Sign(nonce)
		}))
	}
	if opts.Token != "" {
		o = append(o, nats.Token(opts.Token))
	}
	if len(opts.CA) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(opts.CA) {
			return nil, errors.New("NATS CA: no PEM certificate")
		}
		o = append(o, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	if opts.InboxPrefix != "" {
		o = append(o, nats.CustomInboxPrefix(opts.InboxPrefix))
	}
	if opts.CAFile != "" {
		o = append(o, nats.RootCAs(opts.CAFile))
	}
	if opts.CertFile != "" {
		o = append(o, nats.ClientCert(opts.CertFile, opts.KeyFile))
	}
	// A live output subscription (a front-end's, frontend/wslive.go) drops
	// what a slow websocket cannot take, on purpose: the stream delivers
	// it. That is not worth nats.go's line on stderr; other async errors
	// still get it.
	o = append(o, nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if sub != nil && errors.Is(err, nats.ErrSlowConsumer) && strings.HasPrefix(sub.Subject, "kb.io.") && strings.Contains(sub.Subject, ".out.") {
			return
		}
		if sub != nil {
			fmt.Fprintf(os.Stderr, "nats: %v for subscription on %q\n", err, sub.Subject)
			return
		}
		fmt.Fprintf(os.Stderr, "nats: %v\n", err)
	}))
	if f := opts.OnState; f != nil {
		o = append(o,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { f("disconnected", err) }),
			nats.ReconnectHandler(func(_ *nats.Conn) { f("reconnected", nil) }),
			nats.ClosedHandler(func(_ *nats.Conn) { f("closed", nil) }),
		)
	}
	url := opts.URLs
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, o...)
	// A first connection that a busy server did not finish in time is
	// tried again a few times (hundreds of launchers connect at once when
	// kernels start in bulk); refused credentials are final.
	for wait := 200 * time.Millisecond; err != nil && retryConnect(err) && wait <= 800*time.Millisecond; wait *= 2 {
		time.Sleep(wait + time.Duration(rand.Int64N(int64(wait))))
		nc, err = nats.Connect(url, o...)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// Sibling opens a second connection with nc's options (servers,
// credentials, TLS, in-process server, handlers) under another name: a
// part that takes traffic it cannot flow-control (a front-end's live
// output, frontend/wslive.go) takes it there, so that the server cutting
// that connection off as a slow consumer leaves nc alone. The caller
// closes it.
func Sibling(nc *nats.Conn, name string) (*nats.Conn, error) {
	if nc == nil {
		return nil, errors.New("sibling of no connection")
	}
	o := nc.Opts
	if name != "" {
		o.Name = name
	}
	sib, err := o.Connect()
	if err != nil {
		return nil, fmt.Errorf("second connection to NATS: %w", err)
	}
	return sib, nil
}

// retryConnect reports whether a failed first connection is worth another
// try: not when nothing listens or the server refused the credentials.
func retryConnect(err error) bool {
	return !errors.Is(err, nats.ErrNoServers) && !errors.Is(err, nats.ErrAuthorization) &&
		!errors.Is(err, nats.ErrAuthExpired) && !errors.Is(err, nats.ErrAuthRevoked) &&
		!errors.Is(err, nats.ErrAccountAuthExpired) && !errors.Is(err, nats.ErrBadTimeout)
}

// Layout sets retention and replication for the streams and buckets.
type Layout struct {
	// Replicas for every stream and bucket: 1 standalone, 3 on a cluster.
	// Default 1.
	Replicas int
	// IOMaxAge bounds the replay window of kernel traffic. Default 1h.
	IOMaxAge time.Duration
	// IOMaxBytes bounds the whole KB_IO stream. Default 2 GiB.
	IOMaxBytes int64
	// IOMaxMsgsPerSubject bounds each kernel channel's replay window.
	// Default 100000.
	IOMaxMsgsPerSubject int64
	// EventsMaxAge is the audit retention. Zero keeps what the stream has
	// (so a part started without the flag never shortens an operator's
	// choice); 400 days when the stream is created.
	EventsMaxAge time.Duration
	// EventsMaxBytes bounds the audit log. Zero keeps what the stream has;
	// 10 GiB when the stream is created.
	EventsMaxBytes int64
	// LeaseTTL is the TTL of the kb_leases bucket: how long a holder that
	// died blocks its duties. Zero keeps what the bucket has;
	// DefaultLeaseTTL (10s) when it is created.
	LeaseTTL time.Duration
	// PresenceTTL is the TTL of the kb_workers bucket: how soon a worker
	// that died without a word counts as gone, so another one may take over
	// the starts it had claimed. Workers renew their key every third of
	// it. Zero keeps what the bucket has; DefaultPresenceTTL (15s) when it
	// is created.
	PresenceTTL time.Duration
	// Memory keeps KB_IO in memory instead of files (faster, not durable).
	// Default false.
	IOMemory bool
}

func (l *Layout) defaults() {
	if l.Replicas <= 0 {
		l.Replicas = 1
	}
	if l.IOMaxAge <= 0 {
		l.IOMaxAge = time.Hour
	}
	if l.IOMaxBytes <= 0 {
		l.IOMaxBytes = 2 << 30
	}
	if l.IOMaxMsgsPerSubject <= 0 {
		l.IOMaxMsgsPerSubject = 100000
	}
	if l.EventsMaxAge <= 0 {
		l.EventsMaxAge = DefaultEventsMaxAge
	}
	if l.EventsMaxBytes <= 0 {
		l.EventsMaxBytes = DefaultEventsMaxBytes
	}
	if l.LeaseTTL <= 0 {
		l.LeaseTTL = DefaultLeaseTTL
	}
	if l.PresenceTTL <= 0 {
		l.PresenceTTL = DefaultPresenceTTL
	}
}

// DefaultPresenceTTL lets a dead worker's claimed starts move to another
// worker well within the default 40 s launch timeout.
const DefaultPresenceTTL = 15 * time.Second

// Audit retention defaults: a year of a busy cluster's lifecycle events
// (a few hundred bytes each) fits well within 10 GiB.
const (
	DefaultEventsMaxAge   = 400 * 24 * time.Hour
	DefaultEventsMaxBytes = 10 << 30
)

// ErrNoInstallation says the bus has no kernelbus streams yet.
var ErrNoInstallation = errors.New("no kernelbus installation on this NATS (stream missing): start `kernelbus serve` or point --nats at the installation's servers")

// withTimeout gives ctx a deadline when it has none.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// New returns the JetStream API of nc.
func New(nc *nats.Conn) (jetstream.JetStream, error) {
	return jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
}
