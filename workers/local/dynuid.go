package local

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/kernelbus/kernelbus/broker"
)

// IDRange is a range of numeric uids (each also used as the gid) handed
// out one per kernel, systemd's DynamicUser idea: no passwd entry, so
// nothing on the host belongs to the id but what its kernel creates, and
// no two live kernels on this host share one. Kernels that share a uid
// could read each other's connection files (their HMAC keys) and
// /proc/<pid>/environ, and signal or ptrace each other.
type IDRange struct{ First, Last uint32 }

// DefaultRange is the range a worker running as root uses when it names
// no account. It sits above the ids distributions hand out to people
// and below the ranges container runtimes map (subuid starts at 100000
// with 65536 ids on most hosts).
var DefaultRange = IDRange{First: 200000, Last: 299999}

func (r IDRange) set() bool { return r.Last != 0 }

func (r IDRange) String() string {
	if !r.set() {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// ParseIDRange reads "FIRST-LAST" (both included).
func ParseIDRange(s string) (IDRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return IDRange{}, nil
	}
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	switch {
	case !ok || err1 != nil || err2 != nil:
		return IDRange{}, fmt.Errorf("%q is not a uid range: write FIRST-LAST, e.g. %s", s, DefaultRange)
	case first == 0:
		return IDRange{}, fmt.Errorf("uid range %s includes uid 0: kernels never run as root", s)
	case first > last:
		return IDRange{}, fmt.Errorf("uid range %s: the first id is above the last", s)
	case last >= 1<<31-1:
		// 2^32-1 is "no id" to the kernel; ids of 2^31 and above trip up
		// tools that read them as signed.
		return IDRange{}, fmt.Errorf("uid range %s: ids must stay below %d", s, uint32(1<<31-1))
	}
	return IDRange{uint32(first), uint32(last)}, nil
}

// homesDir holds the private HOME of each kernel run under a dynamic uid.
// It is root's and 0711: a kernel can enter its own home (by name) but
// cannot list the others'.
var homesDir = filepath.Join(os.TempDir(), "kernelbus-kernel-homes")

// prepareHomes creates homesDir, or checks that the one found is root's,
// a real folder (not a link another account planted in /tmp) and closed
// to listing.
func prepareHomes() error {
	if err := os.Mkdir(homesDir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("local: kernel homes folder: %w", err)
	}
	fi, err := os.Lstat(homesDir)
	if err != nil {
		return fmt.Errorf("local: kernel homes folder: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || st.Uid != 0 {
		return fmt.Errorf("local: kernel homes folder %s is not a folder of root's (%s, uid %d): remove it and restart the worker", homesDir, fi.Mode(), ownerOf(fi))
	}
	return os.Chmod(homesDir, 0o711)
}

// dynamicAccount takes a free id from the range for one kernel and makes
// its private HOME (0700, the id's). The id is released by releaseID
// when the kernel's launcher ends.
func (b *Backend) dynamicAccount() (*account, error) {
	r := b.runAs.Range
	busy := b.scans.busy(r)
	b.mu.Lock()
	defer b.mu.Unlock()
	size := uint64(r.Last-r.First) + 1
	// A random start spreads ids over the range, so an id is seldom
	// reused soon after its kernel ended (what it left in /tmp or
	// /dev/shm stays with that id).
	start := rand.Uint64N(size)
	for i := uint64(0); i < size; i++ {
		id := r.First + uint32((start+i)%size)
		if b.ids[id] || busy[id] || idKnown(id) {
			continue
		}
		// Homes left by kernels of this id whose worker died go first:
		// nothing of an earlier kernel reaches the next one with this id.
		prefix := strconv.FormatUint(uint64(id), 10) + "."
		stale, _ := filepath.Glob(filepath.Join(homesDir, prefix+"*"))
		for _, h := range stale {
			if err := os.RemoveAll(h); err != nil {
				return nil, fmt.Errorf("local: remove the stale home %s: %w", h, err)
			}
		}
		// The random part keeps an old handle's home (removed by Stop or
		// Poll after a worker restart) from naming a later kernel's.
		home, err := os.MkdirTemp(homesDir, prefix)
		if err != nil {
			return nil, fmt.Errorf("local: kernel home: %w", err)
		}
		if err := os.Chown(home, int(id), int(id)); err != nil {
			_ = os.Remove(home)
			return nil, fmt.Errorf("local: kernel home: %w", err)
		}
		b.ids[id] = true
		name := "kb" + strconv.FormatUint(uint64(id), 10)
		return &account{name: name, home: home, private: true,
			cred: &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}}, nil
	}
	return nil, broker.Errorf(broker.ErrLimit, "every uid of the range %s is taken by a live kernel, an account or a group on this host; widen --run-as-range", r)
}

// releaseID removes the kernel's home and frees its id.
func (b *Backend) releaseID(a *account) {
	if a == nil || !a.private {
		return
	}
	removeHome(a.home)
	b.mu.Lock()
	delete(b.ids, a.cred.Uid)
	b.mu.Unlock()
}

// removeHome removes a kernel's private home, only ever one directly in
// homesDir (the path comes from a handle).
func removeHome(home string) {
	if home == "" || filepath.Dir(filepath.Clean(home)) != homesDir {
		return
	}
	_ = os.RemoveAll(home)
}

// idKnown reports whether id names an account or a group on this host: a
// kernel must not get an existing account's files or a group's rights.
func idKnown(id uint32) bool {
	s := strconv.FormatUint(uint64(id), 10)
	if _, err := user.LookupId(s); err == nil {
		return true
	}
	_, err := user.LookupGroupId(s)
	return err == nil
}

// procScans shares scans of /proc among the starts that wait for one at
// the same time. Reading a process's status costs about 50 µs of kernel
// work; one scan per start made concurrent starts quadratic in the
// kernels running (hundreds of kernels, two processes each), so a scan
// reads the status only of processes it has not seen (procCache) and
// concurrent starts share one. A start may use a scan that began after
// it asked, which is as fresh as one of its own; one that was already
// under way when it asked may miss a process started just before, so it
// waits for the next. Ids this worker hands out meanwhile are in
// Backend.ids, which dynamicAccount checks under its lock.
type procScans struct {
	mu      sync.Mutex
	running *procScan                     // under way: too old for callers arriving now
	next    *procScan                     // starts when running ends; callers arriving now join it
	scan    func(IDRange) map[uint32]bool // cache.idsInUse; tests replace it
	cache   procCache
}

type procScan struct {
	done    chan struct{}
	busy    map[uint32]bool
	waiters int // callers that joined it before it began
}

// busy returns the ids of r held by processes, from a scan that began no
// earlier than the call.
func (s *procScans) busy(r IDRange) map[uint32]bool {
	s.mu.Lock()
	if s.running == nil {
		c := &procScan{done: make(chan struct{})}
		s.running = c
		s.mu.Unlock()
		s.run(c, r)
		return c.busy
	}
	c, lead, prev := s.next, false, s.running
	if c == nil {
		c, lead = &procScan{done: make(chan struct{})}, true
		s.next = c
	}
	c.waiters++
	s.mu.Unlock()
	if !lead {
		<-c.done
		return c.busy
	}
	<-prev.done
	s.mu.Lock()
	s.running, s.next = c, nil
	s.mu.Unlock()
	s.run(c, r)
	return c.busy
}

func (s *procScans) run(c *procScan, r IDRange) {
	scan := s.scan
	if scan == nil {
		scan = s.cache.idsInUse
	}
	c.busy = scan(r)
	close(c.done)
	s.mu.Lock()
	if s.running == c {
		s.running = nil
	}
	s.mu.Unlock()
}

// procCache remembers the ids each process held when its status was last
// read, by the inode of its /proc/<pid> folder: a pid reused by a new
// process gets a new inode, and an inode the kernel evicted and made
// again only costs a fresh read. A process keeps its entry while a
// stat of its folder shows the same effective uid and gid, which the
// kernel reports for every process (non-dumpable ones too) and which
// changes with every set*id call that could move a process into the
// range: exec of a set-user-id program, or a privileged process taking
// a kernel's id (a launcher's fork, before it runs the kernelbus
// launcher). Only a privileged process that changed its real, saved or
// filesystem ids and kept its effective ones would be missed, and no
// process but a worker gives itself ids of the range.
type procCache struct {
	mu    sync.Mutex
	procs map[string]procIDs // by pid
}

type procIDs struct {
	ino        uint64
	euid, egid uint32
	ids        []uint32 // real, effective, saved and filesystem uids and gids
}

// idsInUse are the ids of r that any process on the host holds (real,
// effective, saved or filesystem uid or gid). Reading /proc rather than
// only what this worker handed out keeps a restarted worker, or a second
// worker on the host, from giving a live kernel's id to another kernel,
// and catches a kernel's processes that left its process group.
func (c *procCache) idsInUse(r IDRange) map[uint32]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	busy := map[uint32]bool{}
	f, err := os.Open("/proc")
	if err != nil {
		return busy
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	seen := make(map[string]procIDs, len(names))
	var st syscall.Stat_t
	for _, name := range names {
		if ch := name[0]; ch < '0' || ch > '9' {
			continue
		}
		dir := "/proc/" + name
		if syscall.Stat(dir, &st) != nil {
			continue // gone
		}
		p, ok := c.procs[name]
		if !ok || p.ino != st.Ino || p.euid != st.Uid || p.egid != st.Gid {
			ids, ok := readIDs(dir + "/status")
			if !ok {
				continue
			}
			p = procIDs{ino: st.Ino, euid: st.Uid, egid: st.Gid, ids: ids}
		}
		seen[name] = p
		for _, id := range p.ids {
			if id >= r.First && id <= r.Last {
				busy[id] = true
			}
		}
	}
	c.procs = seen
	return busy
}

// readIDs reads the Uid: and Gid: lines of a /proc/<pid>/status.
func readIDs(path string) ([]uint32, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	var ids []uint32
	for _, line := range bytes.Split(data, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("Uid:")) && !bytes.HasPrefix(line, []byte("Gid:")) {
			continue
		}
		for _, f := range bytes.Fields(line[4:]) {
			if n, err := strconv.ParseUint(string(f), 10, 32); err == nil {
				ids = append(ids, uint32(n))
			}
		}
	}
	return ids, true
}
