package local

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/workers"
)

// RunAs says which OS account runs each kernel (its launcher and the
// kernel below it) when the worker runs as root. A kernel that shares the
// worker's uid can read the worker's files (the bus data folder, the
// signing key) and signal it; kernels that share one uid can read each
// other's connection files and drive each other over ZMQ.
type RunAs struct {
	// User runs every kernel no owner mapping applies to. It must not be
	// root. "" with no Owners means DefaultAccount when the worker runs as
	// root (unless Self), else the worker's own account.
	User string
	// Owners lists the kernel owners (KERNEL_USERNAME, or the identity
	// the front-end set) that run as the OS account of the same name;
	// "*" maps every owner that has an account. An owner mapped to uid 0
	// is refused, as is an owner without an account when User is empty.
	// The owner is the record's: only as trustworthy as the front-end's
	// identities. Without authentication it is the client's
	// KERNEL_USERNAME, and any client could pick any listed account.
	Owners []string
	// Range gives every kernel no owner mapping applies to a uid (and
	// gid) of its own from the range, with a private HOME; it excludes
	// User. Set to DefaultRange when the worker runs as root and names
	// no account (unless Self).
	Range IDRange
	// Self opts out of the default: a worker running as root runs
	// kernels as root (they can read the bus data, each other's files and
	// signal the worker). Only for single-user machines that trust every
	// kernel.
	Self bool
}

// DefaultAccount is the usual shared unprivileged account
// (--run-as nobody); by default kernels get a uid each (DefaultRange).
const DefaultAccount = "nobody"

// Options keys of the local backend (BackendConfig.Options).
const (
	OptRunAs       = "run_as"
	OptRunAsOwners = "run_as_owners"
	// OptRunAsRange ("FIRST-LAST") gives each kernel a uid of its own.
	OptRunAsRange = "run_as_range"
	// OptRunAsSelf ("true") keeps kernels on the worker's own account.
	OptRunAsSelf = "run_as_gateway_user"
)

// ParseRunAs reads RunAs from backend options (the local backend has no
// others); unknown keys are errors.
func ParseRunAs(opts map[string]string) (RunAs, error) {
	var ra RunAs
	o := workers.ReadOptions(Name, opts)
	o.String(OptRunAs, &ra.User)
	o.List(OptRunAsOwners, &ra.Owners)
	o.Bool(OptRunAsSelf, &ra.Self)
	var rng string
	o.String(OptRunAsRange, &rng)
	ra.User = strings.TrimSpace(ra.User)
	if err := o.Err(); err != nil {
		return ra, err
	}
	var err error
	if ra.Range, err = ParseIDRange(rng); err != nil {
		return ra, fmt.Errorf("local: %s: %w", OptRunAsRange, err)
	}
	return ra, nil
}

func (ra RunAs) enabled() bool { return ra.User != "" || len(ra.Owners) > 0 || ra.Range.set() }

// account is an OS account a launcher runs as.
type account struct {
	name, home string
	cred       *syscall.Credential
	// private marks a dynamic uid of RunAs.Range: its home is the
	// kernel's own, made for it and removed after it.
	private bool
}

var osUserName = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$`)

// lookupAccount finds name's account; root is refused.
func lookupAccount(name string) (*account, error) {
	if !osUserName.MatchString(name) {
		return nil, fmt.Errorf("%q is not an OS user name", name)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s: uid %q gid %q are not numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s is uid 0: kernels never run as root", name)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil && n != 0 {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return &account{name: name, home: u.HomeDir, cred: cred}, nil
}

// defaults gives each kernel a uid of DefaultRange when the worker runs
// as root (euid) and ra names no account and does not opt out.
func (ra RunAs) defaults(euid int) RunAs {
	if euid == 0 && !ra.Self && !ra.enabled() {
		ra.Range = DefaultRange
	}
	return ra
}

// checkRunAs validates ra at start: switching users needs root, the
// fixed account must exist and not be root, and opting out excludes
// naming accounts.
func checkRunAs(ra RunAs) (*account, error) {
	if ra.Self && ra.enabled() {
		return nil, fmt.Errorf("local: %s excludes %s, %s and %s", OptRunAsSelf, OptRunAs, OptRunAsOwners, OptRunAsRange)
	}
	if ra.User != "" && ra.Range.set() {
		return nil, fmt.Errorf("local: %s and %s exclude each other: one account for every kernel, or one uid per kernel", OptRunAs, OptRunAsRange)
	}
	if !ra.enabled() {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("local: %s/%s/%s need the worker to run as root (it runs as uid %d)", OptRunAs, OptRunAsOwners, OptRunAsRange, os.Geteuid())
	}
	if ra.Range.set() {
		return nil, prepareHomes()
	}
	if ra.User == "" {
		return nil, nil
	}
	a, err := lookupAccount(ra.User)
	if err != nil {
		return nil, fmt.Errorf("local: %s %s: %w (name an existing unprivileged account with --run-as, or keep kernels on the worker's account with --run-as-gateway-user)", OptRunAs, ra.User, err)
	}
	return a, nil
}

// accountFor is the account kernel cfg runs as: its owner's when the owner
// is mapped, else the fixed one, else a uid of its own from the range,
// else nil (the worker's own). A refusal is a 403 the client's start
// answers with. A private account's id and home are released with
// releaseID.
func (b *Backend) accountFor(cfg *broker.LaunchConfig) (*account, error) {
	if !b.runAs.enabled() {
		return nil, nil
	}
	if owner := cfg.User; owner != "" && b.ownerMapped(owner) {
		a, err := lookupAccount(owner)
		if err == nil {
			return a, nil
		}
		if !errors.As(err, new(user.UnknownUserError)) || (b.fixed == nil && !b.runAs.Range.set()) {
			return nil, broker.Errorf(broker.ErrForbidden, "kernel owner %s cannot run local kernels: %v", owner, err)
		}
	}
	if b.fixed != nil {
		return b.fixed, nil
	}
	if b.runAs.Range.set() {
		return b.dynamicAccount()
	}
	return nil, broker.Errorf(broker.ErrForbidden, "kernel owner %q has no OS account on this host and the worker has no %s account or %s", cfg.User, OptRunAs, OptRunAsRange)
}

func (b *Backend) ownerMapped(owner string) bool {
	for _, o := range b.runAs.Owners {
		if o == "*" || o == owner {
			return true
		}
	}
	return false
}

// asAccount makes cmd run as a: its credentials, its HOME, USER and
// LOGNAME, and its home (or /) as the working folder unless the launch
// names one, since the worker's may be closed to it. A private account's
// temporary files (the launcher's connection-file folder among them) go
// into its home too, so they go when the kernel ends.
func asAccount(cmd *syscall.SysProcAttr, env []string, dir string, a *account) ([]string, string) {
	cmd.Credential = a.cred
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "USER", "LOGNAME":
			continue
		case "TMPDIR":
			if a.private {
				continue
			}
		}
		out = append(out, kv)
	}
	out = append(out, "HOME="+a.home, "USER="+a.name, "LOGNAME="+a.name)
	if a.private {
		out = append(out, "TMPDIR="+a.home)
	}
	if dir == "" {
		dir = "/"
		if fi, err := os.Stat(a.home); err == nil && fi.IsDir() {
			dir = a.home
		}
	}
	return out, dir
}

// reachable checks, from the mode bits, that a can reach path: search
// permission on every folder on the way (also on a symlink's target's) and
// execute permission on the file itself when exec is set. A kernelspec
// interpreter under root's private home is the usual failure, and the
// kernel would otherwise die with a bare "permission denied" of its own.
func (a *account) reachable(path string, exec bool) error {
	for hops := 0; hops < 16; hops++ {
		if !filepath.IsAbs(path) {
			return nil // resolved by the launcher against the kernel's PATH
		}
		path = filepath.Clean(path)
		for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
			fi, err := os.Stat(dir)
			if err != nil {
				return err
			}
			if !a.may(fi, 0o1) {
				return fmt.Errorf("folder %s (mode %04o, uid %d) is closed to account %s (uid %d)", dir, fi.Mode().Perm(), ownerOf(fi), a.name, a.cred.Uid)
			}
			if dir == "/" {
				break
			}
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(path), target)
			}
			path = target
			continue
		}
		if exec && !a.may(fi, 0o1) {
			return fmt.Errorf("%s (mode %04o) is not executable by account %s (uid %d)", path, fi.Mode().Perm(), a.name, a.cred.Uid)
		}
		return nil
	}
	return fmt.Errorf("%s: too many symbolic links", path)
}

// may reports whether a has permission bit (0o4 read, 0o2 write, 0o1
// execute) on fi, as the kernel decides it for an unprivileged user.
func (a *account) may(fi os.FileInfo, bit os.FileMode) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := fi.Mode().Perm()
	if st.Uid == a.cred.Uid {
		return perm&(bit<<6) != 0
	}
	if st.Gid == a.cred.Gid || slices.Contains(a.cred.Groups, st.Gid) {
		return perm&(bit<<3) != 0
	}
	return perm&bit != 0
}

func ownerOf(fi os.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return 0
}

// checkReachable refuses a start a's launcher or kernel could not run,
// saying what to open up.
func (b *Backend) checkReachable(cfg *broker.LaunchConfig, env []string, a *account) error {
	if err := a.reachable(b.launcher, true); err != nil {
		return broker.Errorf(broker.ErrStartFailed, "the kernel launcher cannot run as account %s: %v; install kernelbus-launcher where every account can run it (e.g. /usr/local/bin)", a.name, err)
	}
	if cfg.WorkDir != "" {
		if err := a.reachable(filepath.Join(cfg.WorkDir, "."), false); err != nil {
			return broker.Errorf(broker.ErrStartFailed, "the kernel's working folder is closed to account %s: %v", a.name, err)
		}
	}
	prog := cfg.Argv[0]
	if !strings.ContainsRune(prog, '/') {
		path := cfg.Env["PATH"]
		if path == "" {
			for _, kv := range env {
				if v, ok := strings.CutPrefix(kv, "PATH="); ok {
					path = v
				}
			}
		}
		for _, dir := range filepath.SplitList(path) {
			if p := filepath.Join(dir, prog); filepath.IsAbs(p) {
				if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
					prog = p
					break
				}
			}
		}
	}
	if err := a.reachable(prog, true); err != nil {
		return broker.Errorf(broker.ErrStartFailed, "kernelspec %s: its program %s cannot run as account %s: %v; make the interpreter and the folders above it readable by others (chmod o+x on each folder, o+rX on the environment; scripts/setup-python.sh does this for its venv), or pick the account with --run-as/--run-as-owners", cfg.Spec, cfg.Argv[0], a.name, err)
	}
	return nil
}
