//go:build failover

package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// hostileCell is what code in kernel A runs with Python's standard library
// only: it reads everything about its launcher (the kernel's parent) that
// the OS lets it read (environment, command line, open files and pipes,
// and, where it may, the launcher's memory) and every other process's
// environment and command line, and prints every NATS user JWT and nkey
// seed it found, as JSON.
const hostileCell = `
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

// loot is what the hostile cell printed.
type loot struct {
	UID     int            `json:"uid"`
	PID     int            `json:"launcher_pid"`
	JWTs    []string       `json:"jwts"`
	Seeds   []string       `json:"seeds"`
	Sources map[string]int `json:"sources"`
	Denied  []string       `json:"denied"`
}

// attacker is a connection made with stolen credentials; it records the
// permission violations the server reports.
type attacker struct {
	name string
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func (a *attacker) violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string{}, a.errs...)
}

// deniedTo waits for the server's permission violation naming subject.
func (a *attacker) deniedTo(t *testing.T, what, kind, subject string) {
	t.Helper()
	want := strings.ToLower(kind + " to \"" + subject + "\"")
	jstest.WaitForNil(t, 10*time.Second, func() error {
		for _, e := range a.violations() {
			if strings.Contains(strings.ToLower(e), want) {
				return nil
			}
		}
		return fmt.Errorf("%s with %s: no permission violation for %s; the server reported %v", what, a.name, want, a.violations())
	})
}

// TestKernelCredentialsIsolated: two kernels of two users run on the
// operator-mode TLS cluster. Code in kernel A collects every credential it
// can read about its launcher and all processes, and the test uses each
// one it found (and, in case the cell found none, credentials minted for
// A's launcher: the most a kernel can hold) with a real NATS client
// against kernel B and the installation: reading B's output, publishing
// into B's input, controlling B, reading or writing B's record, creating
// a consumer on B's subjects, forging a start, deleting streams. Every
// attempt must end in an authorization failure or a permission violation
// the server reports, and B must be untouched.
func TestKernelCredentialsIsolated(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mA, err := c.FE(0).StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	mB, err := c.FE(1).StartKernel(ctx, "python3", map[string]string{"KERNEL_USERNAME": "bob"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := mA.ID, mB.ID
	connA, err := c.FE(0).Connect(ctx, a, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer connA.Close()
	connB, err := c.FE(1).Connect(ctx, b, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer connB.Close()
	if r, err := connB.Execute("secret = 'bob-' + str(6*7); print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B: %+v %v", r, err)
	}

	r, err := connA.Execute(hostileCell, 2*time.Minute)
	if err != nil || r.Status != "ok" {
		t.Fatalf("the hostile cell: %+v %v", r, err)
	}
	out := r.Stdout.String()
	i := strings.Index(out, "FOUND")
	if i < 0 {
		t.Fatalf("the hostile cell printed %q", out)
	}
	var l loot
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+len("FOUND"):])), &l); err != nil {
		t.Fatalf("the hostile cell's report: %v", err)
	}
	t.Logf("kernel A (uid %d, launcher pid %d) found %d JWTs and %d seeds; sources %v; denied %d reads, e.g. %v",
		l.UID, l.PID, len(l.JWTs), len(l.Seeds), l.Sources, len(l.Denied), l.Denied[:min(len(l.Denied), 5)])
	for _, j := range l.JWTs {
		if uc, err := jwt.DecodeUserClaims(j); err == nil {
			t.Logf("found a user JWT: name %q, tags %v", uc.Name, uc.Tags)
		}
	}

	// Every JWT with every seed (a creds file pairs them; memory may hold
	// them apart), plus A's own launcher credentials minted here.
	type cred struct{ name, jwt, seed string }
	var seeds []string
	for _, s := range l.Seeds {
		// Memory holds strings that only look like seeds.
		if _, err := nkeys.FromSeed([]byte(s)); err == nil {
			seeds = append(seeds, s)
		}
	}
	var creds []cred
	for ji, j := range l.JWTs[:min(len(l.JWTs), 6)] {
		for si, s := range seeds[:min(len(seeds), 6)] {
			creds = append(creds, cred{fmt.Sprintf("found JWT %d + seed %d", ji, si), j, s})
		}
	}
	minter, err := access.LoadMinter(c.CredsFile(access.MinterFileName))
	if err != nil {
		t.Fatal(err)
	}
	mj, ms, err := minter.Launcher(a, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds = append(creds, cred{"kernel A's own launcher credentials", mj, ms})

	ca, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	// Without credentials, or without trusting the CA: no connection.
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: c.URLs(), CA: ca, Name: "anonymous"}); err == nil {
		nc.Close()
		t.Error("an anonymous client connected")
	}
	if nc, err := nats.Connect(c.URLs(), nats.UserJWTAndSeed(mj, ms), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("a client that does not check the servers' certificate connected")
	}

	connected := 0
	for _, cr := range creds {
		at := &attacker{name: cr.name}
		nc, err := nats.Connect(c.URLs(),
			nats.UserJWTAndSeed(cr.jwt, cr.seed),
			nats.Secure(),
			nats.RootCAs(c.CAFile()),
			nats.MaxReconnects(0),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				at.mu.Lock()
				at.errs = append(at.errs, err.Error())
				at.mu.Unlock()
			}))
		if err != nil {
			if !strings.Contains(strings.ToLower(err.Error()), "authorization") && !strings.Contains(strings.ToLower(err.Error()), "authentication") {
				t.Errorf("%s: connect failed, but not on authorization: %v", cr.name, err)
			}
			continue
		}
		connected++
		at.nc = nc
		t.Run(cr.name, func(t *testing.T) {
			defer nc.Close()
			attack(t, c, at, a, b)
		})
	}
	if connected == 0 {
		t.Fatal("no credential connected: the attacks ran with none (A's own minted credentials should connect)")
	}

	// B is untouched: its record and state, its session, and the audit log.
	k, err := c.Kernel(b)
	if err != nil || k.State == broker.StateDead || k.User != "bob" {
		t.Fatalf("B's record after the attacks: %+v %v", k, err)
	}
	if r, err := connB.Execute("print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B after the attacks: %+v %v", r, err)
	}
	if _, err := os.Stat(pwnedFile(b)); err == nil {
		t.Fatal("B ran code published by A")
	}
	for _, s := range []string{broker.StreamEvents, broker.StreamIO, "KV_" + broker.BucketKernels} {
		if _, err := c.Bus.JS.Stream(ctx, s); err != nil {
			t.Errorf("stream %s after the attacks: %v", s, err)
		}
	}
}

func pwnedFile(kernel string) string {
	return filepath.Join(os.TempDir(), "kb-pwned-"+kernel)
}

// attack tries, with one stolen credential, everything kernel A's code
// could do to B and the installation, and asserts each is denied.
func attack(t *testing.T, c *Cluster, at *attacker, a, b string) {
	nc := at.nc
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
		at.deniedTo(t, "subscribe", "subscription", subject)
	}
	pub := func(subject string, data []byte) {
		t.Helper()
		if err := nc.Publish(subject, data); err != nil {
			t.Errorf("publish %s: %v", subject, err)
		}
		_ = nc.Flush()
		at.deniedTo(t, "publish", "publish", subject)
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
	code := fmt.Sprintf("open(%q, 'w').write('pwned')", pwnedFile(b))
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
	if _, err := c.FE(1).Kernel(context.Background(), b); err != nil {
		t.Errorf("B after %s: %v", at.name, err)
	}
	gotB.Range(func(k, _ any) bool {
		if s := k.(string); strings.Contains(s, b) {
			t.Errorf("%s received B's message on %s", at.name, s)
		}
		return true
	})
	for _, e := range at.violations() {
		if strings.Contains(strings.ToLower(e), "\""+strings.ToLower(broker.SubjectControl(a))+"\"") {
			t.Errorf("A's own control subject was denied: the credentials are not A's (%s)", e)
		}
	}
}

// TestCredentialsRenewedAcrossWorkerKill: launcher credentials valid 4 s
// are renewed by whichever worker of the resource manager is alive, so a
// kernel keeps its bus link after the worker that started it is
// SIGKILLed; once the kernel is deleted, the workers refuse renewals for
// it and its last credentials stop working.
func TestCredentialsRenewedAcrossWorkerKill(t *testing.T) {
	const ttl = 4 * time.Second
	c := NewCluster(t, Options{WorkerArgs: []string{"--launcher-creds-ttl", ttl.String()}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := c.StartKernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.Kernel(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range c.WorkerIDs {
		if id == k.Worker {
			c.Workers[i].kill()
		}
	}
	conn, err := c.Connect(ctx, m.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	began := time.Now()
	for i := 0; time.Since(began) < 3*ttl; i++ {
		r, err := conn.Execute(fmt.Sprintf("print(%d)", i), 30*time.Second)
		if err != nil || strings.TrimSpace(r.Stdout.String()) != fmt.Sprint(i) {
			t.Fatalf("execute %d, %s after its worker died: %+v %v", i, time.Since(began), r, err)
		}
	}
	// The admin asks for a renewal as the launcher would; while the
	// kernel runs the surviving worker answers.
	renew := func() access.RenewReply {
		t.Helper()
		inbox := broker.InboxPrefix(m.ID) + "." + nats.NewInbox()
		sub, err := c.Bus.NC.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := c.Bus.NC.PublishRequest(access.SubjectRenew(m.ID), inbox, nil); err != nil {
			t.Fatal(err)
		}
		msg, err := sub.NextMsg(15 * time.Second)
		if err != nil {
			t.Fatalf("renewal: %v", err)
		}
		var r access.RenewReply
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := renew()
	if r.Creds == "" {
		t.Fatalf("renewal while the kernel runs: %+v", r)
	}
	info, err := access.ReadCreds([]byte(r.Creds))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := c.LB.Next().DeleteKernel(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if r := renew(); r.Creds != "" || r.Error != access.ErrKernelEnded.Error() {
		t.Fatalf("renewal after delete: %+v", r)
	}
	jstest.WaitFor(t, 2*ttl, "the last credentials to expire", func() bool { return time.Now().After(info.Expires.Add(time.Second)) })
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: c.URLs(), Creds: []byte(r.Creds), CAFile: c.CAFile(), Name: "ended"}); err == nil {
		nc.Close()
		t.Fatal("credentials issued to a deleted kernel still connect")
	}
}
