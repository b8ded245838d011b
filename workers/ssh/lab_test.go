package ssh_test

// The lab: real Debian sshd "hosts" for the tests. Each host is a network
// namespace with its own address on a private bridge, its own PID and mount
// namespaces (its own /proc, and a tmpfs at the remote dir, so each host
// has its own disk for the launcher while the Python venv stays shared),
// and its own sshd with a generated host key. The test binary itself is
// each host's init: it reaps orphans, starts and stops sshd on request
// from its stdin, and kills everything in the host when stdin closes (so a
// crashed test leaves no process behind; namespaces and links it left are
// removed by the next run, by the owner pid in their names).

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const sshdPath = "/usr/sbin/sshd"

// initConfig is what a host's init needs, passed in envInit.
type initConfig struct {
	SSHDConfig string `json:"sshd_config"`
	SSHDLog    string `json:"sshd_log"`
	Tmpfs      string `json:"tmpfs"` // mounted fresh: the host's own remote dir
}

const envInit = "KB_SSH_TEST_HOST_INIT"

func TestMain(m *testing.M) {
	if c := os.Getenv(envInit); c != "" {
		os.Exit(hostInit(c))
	}
	os.Exit(m.Run())
}

// hostInit runs as PID 1 of a host's PID namespace.
func hostInit(cfgJSON string) int {
	var cfg initConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "init:", err)
		return 2
	}
	must := func(what string, err error) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "init: %s: %v\n", what, err)
			os.Exit(2)
		}
	}
	must("make mounts private", syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""))
	must("mount /proc", syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""))
	must("mkdir tmpfs", os.MkdirAll(cfg.Tmpfs, 0o755))
	must("mount tmpfs", syscall.Mount("kbhost", cfg.Tmpfs, "tmpfs", 0, "mode=0755"))
	must("privsep dir", os.MkdirAll("/run/sshd", 0o755))
	// A host is a fresh machine: its root has none of the shell startup
	// files of the machine running the tests. sshd runs every command
	// through bash, which reads ~/.bashrc; this machine's runs pyenv, and a
	// session killed during its rehash leaves a lock that made each later
	// command wait 60 s.
	if home, err := os.UserHomeDir(); err == nil {
		empty := filepath.Join(cfg.Tmpfs, ".kb-empty-rc")
		must("empty rc", os.WriteFile(empty, nil, 0o644))
		for _, f := range []string{".bashrc", ".profile", ".bash_profile", ".bash_login"} {
			if p := filepath.Join(home, f); fileExists(p) {
				must("hide "+p, syscall.Mount(empty, p, "", syscall.MS_BIND, ""))
			}
		}
	}

	var mu sync.Mutex
	sshd := 0
	reaped := make(chan int, 64)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		for range sigs {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if err != nil || pid <= 0 {
					break
				}
				mu.Lock()
				if pid == sshd {
					sshd = 0
					reaped <- pid
				}
				mu.Unlock()
			}
		}
	}()
	logf, err := os.OpenFile(cfg.SSHDLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	must("sshd log", err)
	out := bufio.NewWriter(os.Stdout)
	reply := func(s string) { out.WriteString(s + "\n"); out.Flush() }
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "start":
			p, err := os.StartProcess(sshdPath, []string{sshdPath, "-D", "-e", "-f", cfg.SSHDConfig},
				&os.ProcAttr{Files: []*os.File{nil, logf, logf}})
			if err != nil {
				reply("error " + err.Error())
				continue
			}
			mu.Lock()
			sshd = p.Pid
			mu.Unlock()
			reply("started")
		case "stop":
			// The listener and every session: a host whose sshd is
			// stopped keeps no SSH connection either.
			mu.Lock()
			listener := sshd
			mu.Unlock()
			for _, pid := range pidsNamed("sshd") {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if listener != 0 {
				<-reaped
			}
			reply("stopped")
		}
	}
	// stdin closed: the test is over (or crashed). Kill everything in this
	// host; PID 1 survives kill(-1).
	_ = syscall.Kill(-1, syscall.SIGKILL)
	return 0
}

// pidsNamed lists processes whose command name starts with prefix.
func pidsNamed(prefix string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		if c, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.HasPrefix(string(c), prefix) {
			out = append(out, pid)
		}
	}
	return out
}

type labHost struct {
	Name   string
	Addr   string // ip:port as the pool names it
	IP     string
	key    gossh.PublicKey
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Scanner
}

type lab struct {
	t          *testing.T
	dir        string
	HostIP     string // where the hosts reach this machine (the NATS listens there)
	Hosts      []*labHost
	KeyFile    string // user key, authorized for root on every host
	KnownHosts string
	RemoteDir  string // absolute; each host has its own tmpfs there
	netns      bool
}

var (
	labNames = regexp.MustCompile(`^kb-ssh-(\d+)-\d+$`)
	linkName = regexp.MustCompile(`^kbs[bv](\d+)(x\d+)?$`)
)

// needRoot skips unless the lab is asked for; once it is (task test:ssh
// sets KB_TEST_SSH), a lab that cannot be built here fails, so that the
// suite never passes having run no sshd test.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getenv("KB_TEST_SSH") == "" {
		// test:go and test:race pass here too: the lab is test:ssh's.
		t.Skip("set KB_TEST_SSH=1 to run the sshd lab (task test:ssh sets it)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("KB_TEST_SSH is set but the ssh lab needs root (network namespaces, mounts, sshd)")
	}
	if _, err := os.Stat(sshdPath); err != nil {
		t.Fatal("KB_TEST_SSH is set but there is no sshd: run `bash scripts/setup-ssh.sh` (task test:ssh does)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// cleanStale removes namespaces and links that earlier runs of this test
// left behind when they crashed (their owner pid is gone).
func cleanStale() {
	dead := func(pid string) bool {
		n, _ := strconv.Atoi(pid)
		return n > 0 && syscall.Kill(n, 0) == syscall.ESRCH
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			if m := labNames.FindStringSubmatch(f[0]); m != nil && dead(m[1]) {
				if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
					for _, p := range strings.Fields(string(pids)) {
						if n, err := strconv.Atoi(p); err == nil {
							_ = syscall.Kill(n, syscall.SIGKILL)
						}
					}
				}
				_ = exec.Command("ip", "netns", "del", f[0]).Run()
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if m := linkName.FindStringSubmatch(name); m != nil && dead(m[1]) {
				_ = exec.Command("ip", "link", "del", name).Run()
			}
		}
	}
}

// newLab starts n sshd hosts. Without network namespaces it falls back to
// sshd on separate loopback ports (still with own PID and mount namespaces).
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	needRoot(t)
	cleanStale()
	l := &lab{t: t, dir: t.TempDir()}
	l.RemoteDir = filepath.Join(l.dir, "remote")
	pid := os.Getpid()

	// The user key, authorized for root.
	upub, upriv, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := gossh.MarshalPrivateKey(upriv, "kernelbus test")
	if err != nil {
		t.Fatal(err)
	}
	l.KeyFile = filepath.Join(l.dir, "id_ed25519")
	writeFile(t, l.KeyFile, pem.EncodeToMemory(blk), 0o600)
	sshPub, _ := gossh.NewPublicKey(upub)
	writeFile(t, filepath.Join(l.dir, "authorized", "root"), gossh.MarshalAuthorizedKey(sshPub), 0o644)

	// The network: a bridge with this machine's address, one veth per host.
	bridge := fmt.Sprintf("kbsb%d", pid)
	l.netns = exec.Command("ip", "netns", "add", fmt.Sprintf("kb-ssh-%d-probe", pid)).Run() == nil
	if l.netns {
		_ = exec.Command("ip", "netns", "del", fmt.Sprintf("kb-ssh-%d-probe", pid)).Run()
		subnet := freeSubnet(t)
		l.HostIP = subnet + ".1"
		run(t, "ip", "link", "add", bridge, "type", "bridge")
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
		run(t, "ip", "addr", "add", l.HostIP+"/24", "dev", bridge)
		run(t, "ip", "link", "set", bridge, "up")
		for i := range n {
			ns := fmt.Sprintf("kb-ssh-%d-%d", pid, i)
			veth := fmt.Sprintf("kbsv%dx%d", pid, i)
			h := &labHost{Name: ns, IP: fmt.Sprintf("%s.%d", subnet, 10+i)}
			h.Addr = h.IP + ":22"
			run(t, "ip", "netns", "add", ns)
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
			run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
			t.Cleanup(func() { _ = exec.Command("ip", "link", "del", veth).Run() })
			run(t, "ip", "link", "set", veth, "master", bridge, "up")
			run(t, "ip", "-n", ns, "addr", "add", h.IP+"/24", "dev", "eth0")
			run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
			run(t, "ip", "-n", ns, "link", "set", "lo", "up")
			l.Hosts = append(l.Hosts, h)
		}
	} else {
		t.Log("network namespaces are not available: hosts are sshd on loopback ports")
		l.HostIP = "127.0.0.1"
		for i := range n {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			h := &labHost{Name: fmt.Sprintf("loopback-%d", i), IP: "127.0.0.1"}
			h.Addr = fmt.Sprintf("127.0.0.1:%d", port)
			l.Hosts = append(l.Hosts, h)
		}
	}

	var known strings.Builder
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range l.Hosts {
		hdir := filepath.Join(l.dir, fmt.Sprintf("host%d", i))
		hpub, hpriv, _ := ed25519.GenerateKey(rand.Reader)
		hb, _ := gossh.MarshalPrivateKey(hpriv, "")
		writeFile(t, filepath.Join(hdir, "host_ed25519"), pem.EncodeToMemory(hb), 0o600)
		h.key, _ = gossh.NewPublicKey(hpub)
		known.WriteString(knownhosts.Line([]string{knownhosts.Normalize(h.Addr)}, h.key) + "\n")
		_, port, _ := net.SplitHostPort(h.Addr)
		conf := strings.Join([]string{
			"Port " + port,
			"ListenAddress " + h.IP,
			"HostKey " + filepath.Join(hdir, "host_ed25519"),
			"AuthorizedKeysFile " + filepath.Join(l.dir, "authorized", "%u"),
			"PidFile none",
			"StrictModes no",
			"UsePAM no",
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"MaxSessions 100",
			"MaxStartups 100",
			"LogLevel VERBOSE",
			"",
		}, "\n")
		writeFile(t, filepath.Join(hdir, "sshd_config"), []byte(conf), 0o600)
		ic, _ := json.Marshal(initConfig{SSHDConfig: filepath.Join(hdir, "sshd_config"), SSHDLog: filepath.Join(hdir, "sshd.log"), Tmpfs: l.RemoteDir})
		var cmd *exec.Cmd
		if l.netns {
			cmd = exec.Command("ip", "netns", "exec", h.Name, exe)
		} else {
			cmd = exec.Command(exe)
		}
		cmd.Env = append(os.Environ(), envInit+"="+string(ic))
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		h.stdin, _ = cmd.StdinPipe()
		so, _ := cmd.StdoutPipe()
		h.stdout = bufio.NewScanner(so)
		if err := cmd.Start(); err != nil {
			t.Fatalf("host %s init: %v", h.Name, err)
		}
		h.cmd = cmd
		t.Cleanup(func() {
			// Closing stdin makes the init kill everything in the host.
			h.stdin.Close()
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
		h.Start(t)
	}
	l.KnownHosts = filepath.Join(l.dir, "known_hosts")
	writeFile(t, l.KnownHosts, []byte(known.String()), 0o600)
	for _, h := range l.Hosts {
		h.waitListening(t)
	}
	return l
}

// freeSubnet picks a 10.213.x.0/24 that no interface uses.
func freeSubnet(t *testing.T) string {
	out, _ := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	for i := range 250 {
		x := (os.Getpid() + i) % 250
		s := fmt.Sprintf("10.213.%d", x)
		if !strings.Contains(string(out), " "+s+".") {
			return s
		}
	}
	t.Fatal("no free 10.213.x.0/24 subnet")
	return ""
}

func writeFile(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

func (h *labHost) command(t *testing.T, cmd, want string) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		t.Fatalf("host %s: %s: %v", h.Name, cmd, err)
	}
	if !h.stdout.Scan() {
		t.Fatalf("host %s: init gone during %s", h.Name, cmd)
	}
	if got := h.stdout.Text(); got != want {
		t.Fatalf("host %s: %s: %s", h.Name, cmd, got)
	}
}

// Start starts the host's sshd (it is started by newLab).
func (h *labHost) Start(t *testing.T) { h.command(t, "start", "started") }

// StopSSHD kills the host's sshd and its sessions; the host stays up.
func (h *labHost) StopSSHD(t *testing.T) { h.command(t, "stop", "stopped") }

func (h *labHost) waitListening(t *testing.T) {
	t.Helper()
	jstest.WaitForNil(t, 10*time.Second, func() error {
		c, err := net.DialTimeout("tcp", h.Addr, time.Second)
		if err != nil {
			return fmt.Errorf("sshd of %s does not listen on %s: %w", h.Name, h.Addr, err)
		}
		c.Close()
		return nil
	})
}

// Path is where a host-side absolute path is seen from this machine:
// through the host init's root, which has the host's mounts and /proc.
func (h *labHost) Path(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", h.cmd.Process.Pid, p)
}

// Alive reports whether pid (in the host's PID namespace) is a live
// process there.
func (h *labHost) Alive(pid int) bool {
	data, err := os.ReadFile(h.Path(fmt.Sprintf("/proc/%d/stat", pid)))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
