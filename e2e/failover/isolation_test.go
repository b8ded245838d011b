//go:build failover

package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/e2e/attack"
	"github.com/kernelbus/kernelbus/frontend/client"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
)

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

	l := attack.Steal(t, connA)
	for _, j := range l.JWTs {
		if uc, err := jwt.DecodeUserClaims(j); err == nil {
			t.Logf("found a user JWT: name %q, tags %v", uc.Name, uc.Tags)
		}
	}

	// Every credential found, plus A's own launcher credentials minted
	// here (the most a kernel can hold).
	own := attack.OwnCreds(t, c.CredsFile(access.MinterFileName), a)
	creds := append(l.Creds(), own)

	ca, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	// Without credentials, or without trusting the CA: no connection.
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: c.URLs(), CA: ca, Name: "anonymous"}); err == nil {
		nc.Close()
		t.Error("an anonymous client connected")
	}
	if nc, err := nats.Connect(c.URLs(), nats.UserJWTAndSeed(own.JWT, own.Seed), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("a client that does not check the servers' certificate connected")
	}

	attack.RunAll(t, c.URLs(), c.CAFile(), creds, a, b, func(t *testing.T) {
		if _, err := c.FE(1).Kernel(context.Background(), b); err != nil {
			t.Errorf("B after the attacks: %v", err)
		}
	})

	// B is untouched: its record and state, its session, and the audit log.
	k, err := c.Kernel(b)
	if err != nil || k.State == broker.StateDead || k.User != "bob" {
		t.Fatalf("B's record after the attacks: %+v %v", k, err)
	}
	if r, err := connB.Execute("print(secret)", time.Minute); err != nil || strings.TrimSpace(r.Stdout.String()) != "bob-42" {
		t.Fatalf("B after the attacks: %+v %v", r, err)
	}
	if _, err := os.Stat(attack.PwnedFile(b)); err == nil {
		t.Fatal("B ran code published by A")
	}
	for _, s := range []string{broker.StreamEvents, broker.StreamIO, "KV_" + broker.BucketKernels} {
		if _, err := c.Bus.JS.Stream(ctx, s); err != nil {
			t.Errorf("stream %s after the attacks: %v", s, err)
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
