package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// connKey names one reusable connection: a user on a host.
type connKey struct{ user, addr string }

// conns keeps one SSH connection per user and host, dialed on first use
// and dropped when it fails.
type conns struct {
	cfg      Config
	auth     []gossh.AuthMethod
	hostKeys gossh.HostKeyCallback

	mu    sync.Mutex
	m     map[connKey]*conn
	dials int // connections made, for tests of reuse
}

type conn struct {
	ready  chan struct{} // closed once dialed (or failed)
	client *gossh.Client
	err    error
}

func newConns(cfg Config) (*conns, error) {
	hk, err := knownhosts.New(cfg.KnownHosts...)
	if err != nil {
		return nil, fmt.Errorf("ssh: known_hosts: %w", err)
	}
	var signers []gossh.Signer
	for _, f := range cfg.KeyFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("ssh: private key: %w", err)
		}
		s, err := gossh.ParsePrivateKey(data)
		var pp *gossh.PassphraseMissingError
		if errors.As(err, &pp) {
			return nil, fmt.Errorf("ssh: private key %s is encrypted: load it in an agent and use --ssh-agent", f)
		}
		if err != nil {
			return nil, fmt.Errorf("ssh: private key %s: %w", f, err)
		}
		signers = append(signers, s)
	}
	var auth []gossh.AuthMethod
	if len(signers) > 0 {
		auth = append(auth, gossh.PublicKeys(signers...))
	}
	if cfg.Agent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, errors.New("ssh: --ssh-agent is set but SSH_AUTH_SOCK is not")
		}
		auth = append(auth, gossh.PublicKeysCallback(func() ([]gossh.Signer, error) {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return nil, fmt.Errorf("ssh agent: %w", err)
			}
			defer c.Close()
			return agent.NewClient(c).Signers()
		}))
	}
	return &conns{cfg: cfg, auth: auth, hostKeys: hk, m: map[connKey]*conn{}}, nil
}

// get returns the connection for user@addr, dialing it if there is none.
// Concurrent callers share one dial.
func (cs *conns) get(ctx context.Context, user, addr string) (*gossh.Client, error) {
	k := connKey{user, addr}
	cs.mu.Lock()
	c := cs.m[k]
	if c == nil {
		c = &conn{ready: make(chan struct{})}
		cs.m[k] = c
		cs.dials++
		cs.mu.Unlock()
		c.client, c.err = cs.dial(ctx, user, addr)
		close(c.ready)
		if c.err != nil {
			cs.drop(k, c)
		} else {
			go func() {
				// Forget it as soon as it breaks, so the next use redials.
				_ = c.client.Wait()
				cs.drop(k, c)
			}()
		}
		return c.client, c.err
	}
	cs.mu.Unlock()
	select {
	case <-c.ready:
		return c.client, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (cs *conns) drop(k connKey, c *conn) {
	cs.mu.Lock()
	if cs.m[k] == c {
		delete(cs.m, k)
	}
	cs.mu.Unlock()
}

// discard closes a connection that misbehaved (a command timed out on it).
func (cs *conns) discard(user, addr string, client *gossh.Client) {
	k := connKey{user, addr}
	cs.mu.Lock()
	if c := cs.m[k]; c != nil && c.client == client {
		delete(cs.m, k)
	}
	cs.mu.Unlock()
	_ = client.Close()
}

func (cs *conns) dialCount() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.dials
}

func (cs *conns) closeAll() {
	cs.mu.Lock()
	m := cs.m
	cs.m = map[connKey]*conn{}
	cs.mu.Unlock()
	for _, c := range m {
		<-c.ready
		if c.client != nil {
			_ = c.client.Close()
		}
	}
}

// hostError is why a host could not be used; it marks the host unhealthy.
type hostError struct {
	Host string
	Err  error
}

func (e *hostError) Error() string { return displayHost(e.Host) + ": " + e.Err.Error() }
func (e *hostError) Unwrap() error { return e.Err }

func (cs *conns) dial(ctx context.Context, user, addr string) (*gossh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, cs.cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &hostError{addr, fmt.Errorf("cannot connect: %w", unwrapOp(err))}
	}
	// The handshake gets the rest of the connect timeout.
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	cfg := &gossh.ClientConfig{
		User:            user,
		Auth:            cs.auth,
		HostKeyCallback: cs.hostKeys,
		Timeout:         cs.cfg.ConnectTimeout,
	}
	sc, chans, reqs, err := gossh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		return nil, &hostError{addr, describeHandshake(err, user, cs.cfg.KnownHosts)}
	}
	_ = nc.SetDeadline(time.Time{})
	return gossh.NewClient(sc, chans, reqs), nil
}

// unwrapOp drops the "dial tcp a:p:" prefix that the host name repeats.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// describeHandshake turns handshake failures into what an operator must do.
func describeHandshake(err error, user string, knownHosts []string) error {
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &ke) && len(ke.Want) > 0:
		return fmt.Errorf("host key refused: it does not match the key known for this host in %s (line %d); "+
			"if the host was reinstalled, update known_hosts, otherwise someone may be intercepting the connection",
			ke.Want[0].Filename, ke.Want[0].Line)
	case errors.As(err, &ke):
		return fmt.Errorf("host key refused: the host is not in %s; add its key (ssh-keyscan) after checking it",
			strings.Join(knownHosts, ", "))
	case errors.As(err, &re):
		return fmt.Errorf("host key refused: it is revoked in %s", re.Revoked.Filename)
	case strings.Contains(err.Error(), "unable to authenticate"):
		return fmt.Errorf("authentication as %q failed: the key is not authorized for this user (%w)", user, err)
	}
	return fmt.Errorf("ssh handshake: %w", err)
}

// errRemote is a remote command that exited non-zero.
type errRemote struct {
	Status int
	Stderr string
}

func (e *errRemote) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = "no output"
	}
	return fmt.Sprintf("remote command exited with %d: %s", e.Status, msg)
}

// run runs script with sh on the connection, feeding stdin, within the
// command timeout. A command that times out takes its connection down
// with it, since the connection may be what hangs. A reused connection
// that cannot open a session any more (sshd restarted, host rebooted) is
// redialed once.
func (cs *conns) run(ctx context.Context, user, addr, script string, stdin io.Reader) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cs.cfg.CommandTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		client, err := cs.get(ctx, user, addr)
		if err != nil {
			return "", err
		}
		out, opened, err := cs.runOn(ctx, client, addr, script, stdin)
		if err != nil && !opened && attempt == 0 && ctx.Err() == nil {
			cs.discard(user, addr, client)
			continue
		}
		if err != nil && ctx.Err() != nil {
			cs.discard(user, addr, client)
			return "", &hostError{addr, fmt.Errorf("remote command timed out: %w", ctx.Err())}
		}
		return out, err
	}
}

func (cs *conns) runOn(ctx context.Context, client *gossh.Client, addr, script string, stdin io.Reader) (string, bool, error) {
	type result struct {
		out    string
		opened bool
		err    error
	}
	done := make(chan result, 1)
	var sess *gossh.Session
	var smu sync.Mutex
	go func() {
		s, err := client.NewSession()
		if err != nil {
			done <- result{err: &hostError{addr, fmt.Errorf("open session: %w", err)}}
			return
		}
		smu.Lock()
		sess = s
		smu.Unlock()
		defer s.Close()
		var stdout, stderr bytes.Buffer
		s.Stdout, s.Stderr, s.Stdin = &stdout, &stderr, stdin
		// sh -c: the user's login shell may be anything; our scripts are
		// POSIX sh. The script is one quoted argument.
		err = s.Run("exec /bin/sh -c " + shellQuote(script))
		var ee *gossh.ExitError
		switch {
		case errors.As(err, &ee):
			err = &errRemote{Status: ee.ExitStatus(), Stderr: stderr.String()}
		case err != nil:
			err = &hostError{addr, fmt.Errorf("remote command: %w", err)}
		}
		done <- result{stdout.String(), true, err}
	}()
	select {
	case r := <-done:
		return r.out, r.opened, r.err
	case <-ctx.Done():
		smu.Lock()
		if sess != nil {
			_ = sess.Close()
		}
		smu.Unlock()
		// Closing the client (the caller does) unblocks the goroutine.
		return "", true, ctx.Err()
	}
}

// shellQuote quotes s for POSIX sh: inside single quotes nothing is
// special but the single quote itself.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
