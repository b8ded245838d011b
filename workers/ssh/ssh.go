// Package ssh runs launchers on a pool of plain hosts reached over SSH
// (JEG's DistributedProcessProxy). The worker copies the launcher to a host
// when that host lacks this version, starts it detached in its own process
// group with the launch config on its stdin (never on a command line), and
// keeps host, pid, process group and start time in the handle, so any
// worker can poll, signal and stop the kernel later. The launcher dials out
// to the bus: no port on the hosts has to be reachable but sshd's.
package ssh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/rs/zerolog"
)

// Name is the resource manager's name.
const Name = broker.RMSSH

// EnvRemoteHost lets a client choose the host (JEG's KERNEL_REMOTE_HOST).
const EnvRemoteHost = "KERNEL_REMOTE_HOST"

// handle is the saved form of a launcher on a host. StartTime guards
// against a recycled pid.
type handle struct {
	V         int    `json:"v"`
	Addr      string `json:"addr"` // host:port
	User      string `json:"user"`
	PID       int    `json:"pid"`
	PGID      int    `json:"pgid"`
	StartTime string `json:"start_time"`
	Log       string `json:"log"` // the launcher's log on the host
}

// Backend starts launchers on remote hosts.
type Backend struct {
	cfg      Config
	launcher string // local path
	version  string // sha256 of the launcher, hex
	log      zerolog.Logger
	conns    *conns
	hosts    *hosts

	mu        sync.Mutex
	installed map[connKey]bool  // launcher known present, per user and host
	envs      map[envKey]string // unpacked environments' folders
}

// Register adds the ssh backend to r.
func Register(r *workers.Registry, log zerolog.Logger) {
	r.Register(Name, func(bc workers.BackendConfig) (workers.Backend, error) {
		cfg, err := ConfigFromOptions(bc.Options)
		if err != nil {
			return nil, err
		}
		return New(cfg, bc.LauncherPath, log)
	})
}

// New validates cfg, reads keys and known_hosts and hashes the launcher.
// It does not connect anywhere: hosts are dialed on first use.
func New(cfg Config, launcher string, log zerolog.Logger) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if launcher == "" {
		return nil, errors.New("ssh: the path of kernelbus-launcher is required")
	}
	f, err := os.Open(launcher)
	if err != nil {
		return nil, fmt.Errorf("ssh: launcher binary: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ssh: launcher binary: %w", err)
	}
	cs, err := newConns(cfg)
	if err != nil {
		return nil, err
	}
	return &Backend{cfg: cfg, launcher: launcher, version: hex.EncodeToString(h.Sum(nil)), log: log.With().Str("rm", Name).Logger(),
		conns: cs, hosts: newHosts(cfg.UnhealthyFor), installed: map[connKey]bool{}, envs: map[envKey]string{}}, nil
}

func (b *Backend) Name() string { return Name }

// RunsAsUser: with impersonation a kernel logs in as KERNEL_USERNAME, which
// a warm kernel, started before anyone asked, cannot.
func (b *Backend) RunsAsUser() bool { return b.cfg.Impersonate }

// Close drops the SSH connections. Launchers keep running.
func (b *Backend) Close() error {
	b.conns.closeAll()
	return nil
}

// What the ssh backend offers beyond workers.Backend.
var (
	_ workers.Backend  = (*Backend)(nil)
	_ workers.Signaler = (*Backend)(nil)
	_ io.Closer        = (*Backend)(nil)
)

// RemoteLauncherPath is where the launcher of this version lives on a host
// (relative paths are under the remote user's home).
func (b *Backend) RemoteLauncherPath() string {
	return path.Join(b.cfg.RemoteDir, "launcher-"+b.version[:16], "kernelbus-launcher")
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Start places the kernel on a host of its pool and starts the launcher
// there. A host that cannot be reached, refuses or fails the launch is
// marked unhealthy and the next one is tried.
func (b *Backend) Start(ctx context.Context, cfg *broker.LaunchConfig) (workers.Handle, error) {
	if !safeID.MatchString(cfg.KernelID) || strings.Trim(cfg.KernelID, ".") == "" {
		return workers.Handle{}, fmt.Errorf("ssh: kernel id %q cannot name a file", cfg.KernelID)
	}
	pool, placement, err := b.pool(cfg)
	if err != nil {
		return workers.Handle{}, err
	}
	user := b.cfg.User
	if b.cfg.Impersonate && cfg.User != "" {
		if !validUser(cfg.User) {
			return workers.Handle{}, broker.Errorf(broker.ErrBadRequest, "ssh: KERNEL_USERNAME %q is not a valid user name on the hosts", cfg.User)
		}
		user = cfg.User
	}
	var load map[string]int
	if placement == LeastConnection {
		load = b.load(ctx, user, pool)
	}
	var tried []error
	for _, addr := range b.hosts.order(pool, load) {
		if err := ctx.Err(); err != nil {
			return workers.Handle{}, err
		}
		b.hosts.begin(addr)
		h, err := b.startOn(ctx, user, addr, cfg)
		b.hosts.end(addr)
		if err == nil {
			b.hosts.markHealthy(addr)
			data, _ := json.Marshal(h)
			b.log.Info().Str("kernel_id", cfg.KernelID).Str("host", displayHost(addr)).Int("pid", h.PID).Msg("launcher started")
			return workers.Handle{Host: displayHost(addr), Data: data}, nil
		}
		err = hostFailure(addr, err)
		b.hosts.markUnhealthy(addr, err.Error())
		b.log.Warn().Str("kernel_id", cfg.KernelID).Str("host", displayHost(addr)).Err(err).Msg("host cannot take the kernel; trying the next")
		tried = append(tried, err)
	}
	return workers.Handle{}, &noHostError{tried: tried}
}

// hostFailure names the host once, in front of why it failed.
func hostFailure(addr string, err error) error {
	var he *hostError
	if !errors.As(err, &he) {
		return &hostError{addr, err}
	}
	if he == err {
		return err
	}
	return &hostError{addr, errors.New(strings.Replace(err.Error(), he.Error(), he.Err.Error(), 1))}
}

// pool returns the hosts a kernel may go to (the spec's remote_hosts, else
// the worker's), narrowed to KERNEL_REMOTE_HOST when given, and the
// placement algorithm.
func (b *Backend) pool(cfg *broker.LaunchConfig) ([]string, string, error) {
	hosts := b.cfg.Hosts
	source := "the worker's --ssh-hosts"
	if rh, ok := cfg.RMConfig["remote_hosts"]; ok {
		var list []string
		switch v := rh.(type) {
		case string:
			list = splitList(v)
		case []any:
			for _, e := range v {
				s, ok := e.(string)
				if !ok {
					return nil, "", fmt.Errorf("ssh: kernelspec %s: remote_hosts must be a list of host names", cfg.Spec)
				}
				list = append(list, s)
			}
		default:
			return nil, "", fmt.Errorf("ssh: kernelspec %s: remote_hosts must be a list of host names", cfg.Spec)
		}
		hosts = nil
		for _, h := range list {
			a, err := hostAddr(h)
			if err != nil {
				return nil, "", fmt.Errorf("kernelspec %s: %w", cfg.Spec, err)
			}
			hosts = append(hosts, a)
		}
		source = "the kernelspec's remote_hosts"
	}
	if len(hosts) == 0 {
		return nil, "", fmt.Errorf("ssh: no hosts for kernelspec %s: set remote_hosts in its metadata.process_proxy.config or give the worker --ssh-hosts", cfg.Spec)
	}
	placement := b.cfg.Placement
	if p, ok := cfg.RMConfig["load_balancing_algorithm"].(string); ok && p != "" {
		if p != RoundRobin && p != LeastConnection {
			return nil, "", fmt.Errorf("ssh: kernelspec %s: load_balancing_algorithm %q: use %s or %s", cfg.Spec, p, RoundRobin, LeastConnection)
		}
		placement = p
	}
	if want := strings.TrimSpace(cfg.Env[EnvRemoteHost]); want != "" {
		if b.cfg.ForbidRemoteHost {
			return nil, "", broker.Errorf(broker.ErrForbidden, "ssh: %s is not allowed by this worker", EnvRemoteHost)
		}
		wa, err := hostAddr(want)
		if err != nil {
			return nil, "", broker.Errorf(broker.ErrBadRequest, "%s: %v", EnvRemoteHost, err)
		}
		for _, h := range hosts {
			if h == wa {
				return []string{h}, placement, nil
			}
		}
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = displayHost(h)
		}
		return nil, "", broker.Errorf(broker.ErrBadRequest, "ssh: %s=%s is not one of %s: %s", EnvRemoteHost, want, source, strings.Join(names, ", "))
	}
	return hosts, placement, nil
}

// load counts running launchers on each host (any worker's), in parallel;
// a host that does not answer counts as full.
func (b *Backend) load(ctx context.Context, user string, pool []string) map[string]int {
	out := make(map[string]int, len(pool))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, addr := range pool {
		if b.hosts.unhealthy(addr) != "" {
			out[addr] = 1 << 30
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 1 << 30
			o, err := b.conns.run(ctx, user, addr, countScript, nil)
			if err == nil {
				if v, perr := strconv.Atoi(strings.TrimSpace(o)); perr == nil {
					n = v
				}
			} else if errors.As(err, new(*hostError)) {
				b.hosts.markUnhealthy(addr, err.Error())
			}
			mu.Lock()
			out[addr] = n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// countScript counts kernelbus launchers on the host by their command name
// (Linux truncates it to 15 characters).
const countScript = `n=0; for f in /proc/[0-9]*/comm; do IFS= read -r c <"$f" 2>/dev/null && [ "$c" = kernelbus-launc ] && n=$((n+1)); done; echo $n`

// startOn installs the launcher on addr if needed (and the kernel's
// environment) and starts it.
func (b *Backend) startOn(ctx context.Context, user, addr string, cfg *broker.LaunchConfig) (handle, error) {
	if err := b.ensureLauncher(ctx, user, addr); err != nil {
		return handle{}, err
	}
	if cfg.EnvArchive != "" {
		dir, err := b.ensureEnv(ctx, user, addr, cfg)
		if err != nil {
			return handle{}, err
		}
		c := *cfg
		c.FillEnvPrefix(dir)
		cfg = &c
	}
	enc, err := cfg.Encode()
	if err != nil {
		return handle{}, err
	}
	logFile := path.Join(b.cfg.RemoteDir, "logs", cfg.KernelID+".log")
	out, err := b.conns.run(ctx, user, addr, launchScript(cfg, b.RemoteLauncherPath(), logFile), strings.NewReader(enc+"\n"))
	if err != nil {
		return handle{}, fmt.Errorf("start launcher: %w", err)
	}
	pidStr, stat, _ := strings.Cut(strings.TrimSpace(out), " ")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return handle{}, fmt.Errorf("start launcher: unexpected answer %q", out)
	}
	st := ""
	if f := statFields(stat); len(f) >= 20 {
		st = f[19]
	}
	return handle{V: 1, Addr: addr, User: user, PID: pid, PGID: pid, StartTime: st, Log: logFile}, nil
}

// launchScript is the remote shell script that starts the launcher with
// the encoded config on its stdin. Nothing a client or a kernelspec writes
// (env, argv, user) is part of it: they travel inside the config, which
// the script only passes on as data; the paths in it are quoted.
func launchScript(cfg *broker.LaunchConfig, launcherPath, logFile string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "umask 077\nmkdir -p %s || exit 90\n", shellQuote(path.Dir(logFile)))
	sb.WriteString("command -v setsid >/dev/null || { echo 'setsid (util-linux) is not installed on this host' >&2; exit 91; }\n")
	// The config comes on stdin, into a shell variable that is never
	// exported, and on through a pipe to the launcher's stdin: a command
	// line would show it (and the kernel's bus credentials in it) to every
	// user of the host, an environment to the kernel in /proc.
	sb.WriteString("IFS= read -r kb_launch_config || exit 92\n")
	if cfg.WorkDir != "" {
		fmt.Fprintf(&sb, "cd %s || exit 93\n", shellQuote(cfg.WorkDir))
	}
	// setsid -f forks a new session (so the launcher is its process
	// group's leader and outlives this SSH session); the shell in it says
	// its pid and start time, then becomes the launcher. Not "cmd &": sh
	// starts background jobs with SIGINT ignored, and the kernel would
	// inherit that and never see an interrupt.
	fmt.Fprintf(&sb, "printf '%%s\\n' \"$kb_launch_config\" | setsid -f /bin/sh -c %s %s %s\n",
		shellQuote(`echo "$$ $(cat /proc/$$/stat)"; exec "$0" --config=- >"$1" 2>&1`),
		shellQuote(launcherPath), shellQuote(logFile))
	return sb.String()
}

// ensureLauncher copies the launcher to the host unless this version is
// there. The path holds the version, the file is written under a
// temporary name, checked and renamed, so a present file is complete.
func (b *Backend) ensureLauncher(ctx context.Context, user, addr string) error {
	k := connKey{user, addr}
	b.mu.Lock()
	ok := b.installed[k]
	b.mu.Unlock()
	if ok {
		return nil
	}
	p := b.RemoteLauncherPath()
	out, err := b.conns.run(ctx, user, addr, "if [ -x "+shellQuote(p)+" ]; then echo present; fi", nil)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "present" {
		if err := b.upload(ctx, user, addr, p); err != nil {
			return err
		}
	}
	b.mu.Lock()
	b.installed[k] = true
	b.mu.Unlock()
	return nil
}

// EnvPrefix implements workers.EnvShipper: the environment is unpacked on
// the host the kernel goes to (ensureEnv), whose folder is known only
// then, so {env_prefix} stays for startOn to fill in.
func (b *Backend) EnvPrefix(cfg *broker.LaunchConfig) (string, error) {
	return "{" + broker.EnvPrefixVar + "}", nil
}

var _ workers.EnvShipper = (*Backend)(nil)

// remoteEnvDir is where hosts keep unpacked environments, one folder per
// digest.
func (b *Backend) remoteEnvDir() string { return path.Join(b.cfg.RemoteDir, "envs") }

// ensureEnv unpacks the kernel's environment on the host unless it is
// there, and returns its absolute folder. The archive goes over the SSH
// session's stdin to the launcher (`kernelbus-launcher unpack-env`), which
// checks it against its digest and unpacks it as a local worker does.
func (b *Backend) ensureEnv(ctx context.Context, user, addr string, cfg *broker.LaunchConfig) (string, error) {
	digest := cfg.Environment.Digest
	if !broker.ValidDigest(digest) {
		return "", fmt.Errorf("environment %s: no valid archive digest", cfg.Environment.Name)
	}
	k := envKey{connKey{user, addr}, digest}
	b.mu.Lock()
	dir := b.envs[k]
	b.mu.Unlock()
	if dir != "" {
		return dir, nil
	}
	d := shellQuote(path.Join(b.remoteEnvDir(), digest))
	out, err := b.conns.run(ctx, user, addr, "if [ -d "+d+" ]; then cd "+d+" && pwd -P; fi", nil)
	if err != nil {
		return "", err
	}
	if dir = strings.TrimSpace(out); dir == "" {
		f, err := os.Open(cfg.EnvArchive)
		if err != nil {
			return "", fmt.Errorf("environment archive: %w", err)
		}
		defer f.Close()
		b.log.Info().Str("host", displayHost(addr)).Str("env", cfg.Environment.Name).Str("digest", digest).Msg("unpacking the environment on the host")
		script := "umask 022\nexec " + shellQuote(b.RemoteLauncherPath()) + " unpack-env " + shellQuote(b.remoteEnvDir()) + " " + shellQuote(digest) + "\n"
		if out, err = b.conns.run(ctx, user, addr, script, f); err != nil {
			return "", fmt.Errorf("unpack environment %s: %w", cfg.Environment.Name, err)
		}
		dir = strings.TrimSpace(out)
	}
	if !path.IsAbs(dir) || strings.ContainsAny(dir, "\n\x00") {
		return "", fmt.Errorf("unpack environment %s: unexpected answer %q", cfg.Environment.Name, out)
	}
	b.mu.Lock()
	b.envs[k] = dir
	b.mu.Unlock()
	return dir, nil
}

// envKey names an environment unpacked for a user on a host.
type envKey struct {
	connKey
	digest string
}

func (b *Backend) upload(ctx context.Context, user, addr, p string) error {
	f, err := os.Open(b.launcher)
	if err != nil {
		return fmt.Errorf("launcher binary: %w", err)
	}
	defer f.Close()
	dir, q := path.Dir(p), shellQuote(p)
	script := "umask 077\nset -e\nmkdir -p " + shellQuote(dir) + "\ntmp=" + q + ".tmp.$$\n" +
		"trap 'rm -f \"$tmp\"' EXIT\ncat >\"$tmp\"\n" +
		"if command -v sha256sum >/dev/null; then\n" +
		"  sum=$(sha256sum <\"$tmp\"); sum=${sum%% *}\n" +
		"  if [ \"$sum\" != " + b.version + " ]; then echo \"checksum mismatch after upload: got $sum\" >&2; exit 1; fi\n" +
		"fi\nchmod 755 \"$tmp\"\nmv -f \"$tmp\" " + q + "\ntrap - EXIT\n"
	b.log.Info().Str("host", displayHost(addr)).Str("path", p).Msg("copying the launcher to the host")
	if _, err := b.conns.run(ctx, user, addr, script, f); err != nil {
		return fmt.Errorf("copy launcher to %s: %w", p, err)
	}
	return nil
}

func parse(h workers.Handle) (handle, error) {
	var sh handle
	if err := json.Unmarshal(h.Data, &sh); err != nil || sh.PID <= 0 || sh.PGID <= 0 || sh.V != 1 {
		return sh, fmt.Errorf("ssh: bad handle %s", h.Data)
	}
	if _, err := hostAddr(sh.Addr); err != nil || !validUser(sh.User) {
		return sh, fmt.Errorf("ssh: bad handle %s", h.Data)
	}
	return sh, nil
}

// aliveCheck is sh that exits 3 unless the handle's process exists, is
// not a zombie and started when the handle says.
func aliveCheck(h handle) string {
	return fmt.Sprintf(`s=$(cat /proc/%d/stat 2>/dev/null) || exit 3
r=${s##*) }
set -- $r
[ "$1" != Z ] || exit 3
[ -z %s ] || [ "${20}" = %s ] || exit 3
`, h.PID, shellQuote(h.StartTime), shellQuote(h.StartTime))
}

func isGone(err error) bool {
	var re *errRemote
	return errors.As(err, &re) && re.Status == 3
}

// Poll asks the host whether the launcher is alive; when it is gone, the
// reason is the end of its log.
func (b *Backend) Poll(ctx context.Context, h workers.Handle) (workers.Status, error) {
	sh, err := parse(h)
	if err != nil {
		return workers.Status{}, err
	}
	script := aliveCheck(sh) + "echo running\n"
	_, err = b.conns.run(ctx, sh.User, sh.Addr, script, nil)
	switch {
	case err == nil:
		return workers.Status{Running: true}, nil
	case isGone(err):
		reason := "the launcher process is gone"
		if sh.Log != "" {
			if out, err := b.conns.run(ctx, sh.User, sh.Addr, "tail -n 20 "+shellQuote(sh.Log)+" 2>/dev/null", nil); err == nil && strings.TrimSpace(out) != "" {
				reason += "; last launcher output: " + strings.Join(strings.Fields(strings.ReplaceAll(out, "\n", " | ")), " ")
			}
		}
		return workers.Status{Exited: true, Reason: reason}, nil
	default:
		return workers.Status{}, err
	}
}

// Signal sends sig to the launcher's process group on its host.
func (b *Backend) Signal(ctx context.Context, h workers.Handle, sig syscall.Signal) error {
	sh, err := parse(h)
	if err != nil {
		return err
	}
	script := aliveCheck(sh) + fmt.Sprintf("kill -%d -%d\n", int(sig), sh.PGID)
	if _, err := b.conns.run(ctx, sh.User, sh.Addr, script, nil); err != nil && !isGone(err) {
		return fmt.Errorf("ssh: signal %s on %s: %w", sig, displayHost(sh.Addr), err)
	}
	return nil
}

// Stop sends SIGTERM to the group (the launcher then shuts the kernel down
// politely) and SIGKILL after grace, all in one remote command.
func (b *Backend) Stop(ctx context.Context, h workers.Handle, grace time.Duration) error {
	sh, err := parse(h)
	if err != nil {
		return err
	}
	steps := int(grace / (100 * time.Millisecond))
	script := aliveCheck(sh) + fmt.Sprintf(`g=%d
kill -TERM -$g 2>/dev/null
i=0
while kill -0 -$g 2>/dev/null && [ $i -lt %d ]; do sleep 0.1; i=$((i+1)); done
kill -KILL -$g 2>/dev/null
exit 0
`, sh.PGID, steps)
	if _, err := b.conns.run(ctx, sh.User, sh.Addr, script, nil); err != nil && !isGone(err) {
		return fmt.Errorf("ssh: stop on %s: %w", displayHost(sh.Addr), err)
	}
	return nil
}

// statFields returns the fields of /proc/<pid>/stat after the command name
// (which may contain spaces): state is [0], start time is [19].
func statFields(s string) []string {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}
