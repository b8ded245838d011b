package local

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"regexp"
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
	// User runs every kernel no owner mapping applies to; "" keeps the
	// worker's own account. It must not be root.
	User string
	// Owners lists the kernel owners (KERNEL_USERNAME, or the identity
	// the front-end set) that run as the OS account of the same name;
	// "*" maps every owner that has an account. An owner mapped to uid 0
	// is refused, as is an owner without an account when User is empty.
	// The owner is the record's: only as trustworthy as the front-end's
	// identities. Without authentication it is the client's
	// KERNEL_USERNAME, and any client could pick any listed account.
	Owners []string
}

// Options keys of the local backend (BackendConfig.Options).
const (
	OptRunAs       = "run_as"
	OptRunAsOwners = "run_as_owners"
)

// ParseRunAs reads RunAs from backend options (the local backend has no
// others); unknown keys are errors.
func ParseRunAs(opts map[string]string) (RunAs, error) {
	var ra RunAs
	o := workers.ReadOptions(Name, opts)
	o.String(OptRunAs, &ra.User)
	o.List(OptRunAsOwners, &ra.Owners)
	ra.User = strings.TrimSpace(ra.User)
	return ra, o.Err()
}

func (ra RunAs) enabled() bool { return ra.User != "" || len(ra.Owners) > 0 }

// account is an OS account a launcher runs as.
type account struct {
	name, home string
	cred       *syscall.Credential
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

// checkRunAs validates ra at start: switching users needs root, and the
// fixed account must exist and not be root.
func checkRunAs(ra RunAs) (*account, error) {
	if !ra.enabled() {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("local: %s/%s need the worker to run as root (it runs as uid %d)", OptRunAs, OptRunAsOwners, os.Geteuid())
	}
	if ra.User == "" {
		return nil, nil
	}
	a, err := lookupAccount(ra.User)
	if err != nil {
		return nil, fmt.Errorf("local: %s: %w", OptRunAs, err)
	}
	return a, nil
}

// accountFor is the account kernel cfg runs as: its owner's when the owner
// is mapped, else the fixed one, else nil (the worker's own). A refusal is
// a 403 the client's start answers with.
func (b *Backend) accountFor(cfg *broker.LaunchConfig) (*account, error) {
	if !b.runAs.enabled() {
		return nil, nil
	}
	if owner := cfg.User; owner != "" && b.ownerMapped(owner) {
		a, err := lookupAccount(owner)
		if err == nil {
			return a, nil
		}
		if !errors.As(err, new(user.UnknownUserError)) || b.fixed == nil {
			return nil, broker.Errorf(broker.ErrForbidden, "kernel owner %s cannot run local kernels: %v", owner, err)
		}
	}
	if b.fixed != nil {
		return b.fixed, nil
	}
	return nil, broker.Errorf(broker.ErrForbidden, "kernel owner %q has no OS account on this host and the worker has no %s account", cfg.User, OptRunAs)
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
// names one, since the worker's may be closed to it.
func asAccount(cmd *syscall.SysProcAttr, env []string, dir string, a *account) ([]string, string) {
	cmd.Credential = a.cred
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "USER", "LOGNAME":
			continue
		}
		out = append(out, kv)
	}
	out = append(out, "HOME="+a.home, "USER="+a.name, "LOGNAME="+a.name)
	if dir == "" {
		dir = "/"
		if fi, err := os.Stat(a.home); err == nil && fi.IsDir() {
			dir = a.home
		}
	}
	return out, dir
}
