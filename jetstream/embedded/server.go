// Package embedded runs a NATS server with JetStream inside a kernelbus
// process (`kernelbus serve`, tests). It is its own package so that parts
// which only connect to NATS, above all the launcher shipped to every
// kernel host, do not link the server.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded NATS server of `kernelbus serve`.
type Options struct {
	// Host to listen on for NATS clients (launchers, other processes).
	// Default 127.0.0.1.
	Host string
	// Port for NATS clients; -1 picks a free one. Default 4222.
	Port int
	// StoreDir keeps JetStream data across restarts. Required.
	StoreDir string
	// MaxPayload is the largest bus message; larger ones are chunked.
	// Default 8 MiB.
	MaxPayload int32
	// Token, when set, is required from every client. It cannot be
	// combined with Auth.
	Token string
	// Auth, when set, runs the server in operator mode trusting this
	// installation: every client needs credentials the installation
	// signed, with the permissions of its role (package access). Default
	// nil (no authorization, for tests).
	Auth *access.Installation
	// TLSCert, TLSKey serve the client port with TLS (PEM files).
	// Default: plain TCP.
	TLSCert, TLSKey string
	// ServerName names the server in logs and JetStream metadata.
	// Default "kernelbus".
	ServerName string
	// Debug turns on the server's own logging to stderr.
	Debug bool
}

// Server is the embedded NATS server with JetStream as a component: Start,
// ReadyForConnections, Shutdown. It never installs signal handlers.
type Server struct {
	opts Options
	ns   *server.Server
	once sync.Once
	done chan struct{} // closed once Stop's shutdown is over
}

// NewServer validates opts; nothing runs until Start.
func NewServer(opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded NATS: a store directory is required")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = 4222
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = 8 << 20
	}
	if opts.ServerName == "" {
		opts.ServerName = "kernelbus"
	}
	if opts.Token != "" && opts.Auth != nil {
		return nil, errors.New("embedded NATS: a token and an installation's credentials exclude each other")
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return nil, errors.New("embedded NATS: TLS needs both a certificate and a key")
	}
	return &Server{opts: opts}, nil
}

// Start starts the server and waits until it accepts connections, up to
// ctx's deadline (10s without one).
func (s *Server) Start(ctx context.Context) error {
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	o := &server.Options{
		ServerName:            s.opts.ServerName,
		Host:                  s.opts.Host,
		Port:                  s.opts.Port,
		JetStream:             true,
		StoreDir:              s.opts.StoreDir,
		MaxPayload:            s.opts.MaxPayload,
		MaxPending:            int64(s.opts.MaxPayload) * 8,
		NoSigs:                true,
		NoLog:                 !s.opts.Debug,
		Authorization:         s.opts.Token,
		DisableShortFirstPing: true,
		// nats-server 2.11+ caps every stream at 1000 consumers unless told
		// otherwise, and KB_IO holds one per kernel (the launcher's input)
		// plus one per open websocket: kernelbus-bench's many-kernels
		// scenario stopped near 500 kernels on it. Kernels are bounded by
		// --max-kernels instead.
		JetStreamLimits: server.JSLimitOpts{DefaultMaxConsumers: -1},
		// The default 2 s to finish the handshake (TLS and the JWT check
		// included) is too short when hundreds of launchers connect at
		// once on a loaded machine: kernelbus-bench's 200 concurrent
		// starts lost a few to "Authentication Timeout".
		AuthTimeout: 10,
	}
	if s.opts.Auth != nil {
		if err := trust(o, s.opts.Auth); err != nil {
			return fmt.Errorf("embedded NATS: %w", err)
		}
	}
	if s.opts.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: s.opts.TLSCert, KeyFile: s.opts.TLSKey})
		if err != nil {
			return fmt.Errorf("embedded NATS: TLS: %w", err)
		}
		o.TLSConfig, o.TLS, o.TLSTimeout = tc, true, 5
	}
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("embedded NATS: %w", err)
	}
	if s.opts.Debug {
		ns.ConfigureLogger()
	}
	ns.Start()
	if !ns.ReadyForConnections(timeout) {
		ns.Shutdown()
		return fmt.Errorf("embedded NATS: not ready after %s", timeout)
	}
	s.ns = ns
	return nil
}

// NATS returns the running server, for in-process connections.
func (s *Server) NATS() *server.Server { return s.ns }

// ClientURL is the URL other processes (launchers) connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Stop stops the server and waits, up to ctx, until it has; safe to call
// more than once.
func (s *Server) Stop(ctx context.Context) error {
	s.once.Do(func() {
		if s.ns == nil {
			return
		}
		s.done = make(chan struct{})
		go func() {
			s.ns.Shutdown()
			s.ns.WaitForShutdown()
			close(s.done)
		}()
	})
	if s.done == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded NATS: stopping: %w", ctx.Err())
	}
}

// trust puts o in operator mode with the installation's operator and
// accounts preloaded in a memory resolver, as `resolver: MEMORY` with
// `resolver_preload` does in a configuration file.
func trust(o *server.Options, in *access.Installation) error {
	j, err := in.JWTs()
	if err != nil {
		return err
	}
	oc, err := jwt.DecodeOperatorClaims(j.Operator)
	if err != nil {
		return err
	}
	r := &server.MemAccResolver{}
	if err := r.Store(j.SystemKey, j.System); err != nil {
		return err
	}
	if err := r.Store(j.AccountKey, j.Account); err != nil {
		return err
	}
	o.TrustedOperators = []*jwt.OperatorClaims{oc}
	o.SystemAccount = j.SystemKey
	o.AccountResolver = r
	return nil
}
