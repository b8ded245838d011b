package ssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/workers"
)

// Placement algorithms (JEG's EG_LOAD_BALANCING_ALGORITHM values).
const (
	RoundRobin      = "round-robin"
	LeastConnection = "least-connection"
)

// Config is the ssh backend's configuration. A worker builds it from
// `kernelbus worker --rm ssh --ssh-*` flags (Options); a kernelspec's
// metadata.process_proxy.config can override Hosts (remote_hosts) and
// Placement (load_balancing_algorithm) for its kernels.
type Config struct {
	// Hosts are the pool, each "host" or "host:port". Default: none (each
	// kernelspec must then name its remote_hosts).
	Hosts []string
	// User logs in on the hosts. Default: the worker's user.
	User string
	// KeyFiles are private keys (unencrypted) offered for authentication.
	// Default: ~/.ssh/id_ed25519, id_ecdsa and id_rsa, those that exist.
	KeyFiles []string
	// Agent also offers the keys of the agent at $SSH_AUTH_SOCK. Default false.
	Agent bool
	// KnownHosts are the files host keys are checked against; an unknown
	// or different host key refuses the host. Default: ~/.ssh/known_hosts.
	KnownHosts []string
	// Placement is round-robin or least-connection. Default round-robin.
	Placement string
	// RemoteDir holds the launcher (one folder per version) and the
	// launchers' logs on each host; relative paths are under the remote
	// user's home. Default .cache/kernelbus.
	RemoteDir string
	// ConnectTimeout bounds dialing and the SSH handshake. Default 10s.
	ConnectTimeout time.Duration
	// CommandTimeout bounds each remote command (a launcher upload
	// included). Default 60s.
	CommandTimeout time.Duration
	// UnhealthyFor is how long a host that could not be reached or refused
	// is tried only after every healthy one. Default 30s.
	UnhealthyFor time.Duration
	// Impersonate logs in as KERNEL_USERNAME (the kernel's user), so the
	// kernel runs as that user; the key must be authorized for every such
	// user. Default false: every kernel runs as User.
	Impersonate bool
	// ForbidRemoteHost refuses KERNEL_REMOTE_HOST. Default false: a client
	// may pick a host with it, among the pool's hosts only.
	ForbidRemoteHost bool
}

// Options are the names of workers.BackendConfig.Options this backend
// reads (`kernelbus worker` offers each as --ssh-<name>), with their help.
var Options = []struct{ Name, Help string }{
	{"hosts", "hosts of the pool, host or host:port, comma separated (kernelspecs may name their own remote_hosts)"},
	{"user", "user to log in as (default: this process's user)"},
	{"key", "private key files, comma separated (default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa)"},
	{"agent", "also use the keys of the agent at $SSH_AUTH_SOCK (true/false)"},
	{"known-hosts", "known_hosts files host keys are checked against, comma separated (default: ~/.ssh/known_hosts)"},
	{"placement", "round-robin or least-connection (default round-robin; a kernelspec's load_balancing_algorithm wins)"},
	{"remote-dir", "folder on the hosts for the launcher and its logs; relative to the remote home (default .cache/kernelbus)"},
	{"connect-timeout", "bound on dialing and the SSH handshake (default 10s)"},
	{"command-timeout", "bound on each remote command, launcher copy included (default 60s)"},
	{"unhealthy-for", "how long a host that failed is tried only after the others (default 30s)"},
	{"impersonate", "log in as the kernel's KERNEL_USERNAME, so kernels run as their user (true/false; default false)"},
	{"allow-remote-host", "let clients pick a host of the pool with KERNEL_REMOTE_HOST (true/false; default true)"},
}

// ConfigFromOptions reads a Config from worker options; unknown names and
// bad values are errors.
func ConfigFromOptions(opts map[string]string) (Config, error) {
	c := Config{}
	o := workers.ReadOptions("ssh", opts)
	o.List("hosts", &c.Hosts)
	o.String("user", &c.User)
	o.List("key", &c.KeyFiles)
	o.Bool("agent", &c.Agent)
	o.List("known-hosts", &c.KnownHosts)
	o.String("placement", &c.Placement)
	o.String("remote-dir", &c.RemoteDir)
	o.Duration("connect-timeout", &c.ConnectTimeout)
	o.Duration("command-timeout", &c.CommandTimeout)
	o.Duration("unhealthy-for", &c.UnhealthyFor)
	o.Bool("impersonate", &c.Impersonate)
	allow := true
	o.Bool("allow-remote-host", &allow)
	c.ForbidRemoteHost = !allow
	return c, o.Err()
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// withDefaults fills defaults and validates; it touches no network.
func (c Config) withDefaults() (Config, error) {
	home, _ := os.UserHomeDir()
	if c.User == "" {
		u, err := user.Current()
		if err != nil {
			return c, fmt.Errorf("ssh: no user given and the current one is unknown: %w", err)
		}
		c.User = u.Username
	}
	if !validUser(c.User) {
		return c, fmt.Errorf("ssh: user %q is not a valid user name", c.User)
	}
	if len(c.KeyFiles) == 0 && home != "" {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			if p := filepath.Join(home, ".ssh", n); fileExists(p) {
				c.KeyFiles = append(c.KeyFiles, p)
			}
		}
	}
	if len(c.KeyFiles) == 0 && !c.Agent {
		return c, errors.New("ssh: no private key: give key files (--ssh-key) or use the agent (--ssh-agent)")
	}
	if len(c.KnownHosts) == 0 {
		if home == "" {
			return c, errors.New("ssh: no known_hosts file given and no home folder to find one")
		}
		c.KnownHosts = []string{filepath.Join(home, ".ssh", "known_hosts")}
	}
	switch c.Placement {
	case "":
		c.Placement = RoundRobin
	case RoundRobin, LeastConnection:
	default:
		return c, fmt.Errorf("ssh: placement %q: use %s or %s", c.Placement, RoundRobin, LeastConnection)
	}
	if c.RemoteDir == "" {
		c.RemoteDir = ".cache/kernelbus"
	}
	if strings.ContainsAny(c.RemoteDir, "\x00\n") {
		return c, errors.New("ssh: remote dir holds a NUL or newline")
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = 60 * time.Second
	}
	if c.UnhealthyFor <= 0 {
		c.UnhealthyFor = 30 * time.Second
	}
	for i, h := range c.Hosts {
		a, err := hostAddr(h)
		if err != nil {
			return c, err
		}
		c.Hosts[i] = a
	}
	return c, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var userName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_.-]{0,31}$`)

func validUser(u string) bool { return userName.MatchString(u) }

var hostName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$`)

// hostAddr checks a pool entry ("host", "host:port", "[v6]:port") and
// returns it as host:port.
func hostAddr(h string) (string, error) {
	host, port := h, "22"
	if hh, pp, err := net.SplitHostPort(h); err == nil {
		host, port = hh, pp
	} else if strings.Count(h, ":") > 1 {
		host = strings.Trim(h, "[]") // a bare IPv6 address
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("ssh: host %q: bad port", h)
	}
	if net.ParseIP(host) == nil && !hostName.MatchString(host) {
		return "", fmt.Errorf("ssh: host %q is not a host name or address", h)
	}
	return net.JoinHostPort(host, port), nil
}

// displayHost is how errors and records name a host: without :22.
func displayHost(addr string) string {
	if h, p, err := net.SplitHostPort(addr); err == nil && p == "22" {
		return h
	}
	return addr
}
