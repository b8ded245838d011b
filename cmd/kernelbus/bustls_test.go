package main

import (
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/nats-io/nats.go"
)

// TestServeBusTLS: `kernelbus serve` with its defaults speaks TLS on its
// NATS port with a certificate of its own private CA; a kernel (whose
// launcher connects from another process with the CA from its launch
// config) runs code, the parts' nats.conn names the CA, and a client that
// does not trust it is refused even with valid credentials. Launcher
// credentials valid 3 s are renewed while the kernel runs (it keeps
// working across several renewals), and the last ones issued stop working
// once the kernel is deleted.
func TestServeBusTLS(t *testing.T) {
	se := newServeEnv(t)
	bin, data, logPath := se.bin, se.data, se.logPath
	const ttl = 3 * time.Second
	args := append(se.args, "--launcher-creds-ttl", ttl.String())
	srv := startServe(t, bin, data, logPath, args...)
	c := &client.Client{BaseURL: srv.url}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cf := servedBus(t, data)
	if cf.ca == "" {
		t.Fatal("nats.conn names no CA")
	}
	// The admin sees the renewals' replies (the credentials a launcher
	// gets) in the launchers' inboxes.
	admin := cf.admin(t, "admin")
	var mu sync.Mutex
	var issued []string
	if _, err := admin.Subscribe(broker.InboxPrefix("*")+".>", func(m *nats.Msg) {
		var r access.RenewReply
		if json.Unmarshal(m.Data, &r) == nil && r.Creds != "" {
			mu.Lock()
			issued = append(issued, r.Creds)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	lastIssued := func() (string, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(issued) == 0 {
			return "", 0
		}
		return issued[len(issued)-1], len(issued)
	}

	m, err := c.StartKernel(ctx, "python3", nil)
	if err != nil {
		t.Fatalf("start a kernel over a TLS bus: %v", err)
	}
	conn, err := c.Connect(ctx, m.ID, client.NewID(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := conn.Execute("print(6*7)", 60*time.Second)
	if err != nil || r.Status != "ok" || strings.TrimSpace(r.Stdout.String()) != "42" {
		t.Fatalf("execute: %+v, %v", r, err)
	}
	// The kernel keeps working across renewals (each one a reconnect of
	// its launcher) until its first credentials are long expired.
	began := time.Now()
	for i := 0; time.Since(began) < 3*ttl; i++ {
		r, err := conn.Execute(fmt.Sprintf("print(%d)", i), 60*time.Second)
		if err != nil || strings.TrimSpace(r.Stdout.String()) != fmt.Sprint(i) {
			t.Fatalf("execute %d, %s after the start: %+v, %v", i, time.Since(began), r, err)
		}
	}
	if _, n := lastIssued(); n < 2 {
		t.Fatalf("%d renewals in %s with %s credentials", n, 3*ttl, ttl)
	}
	creds := filepath.Join(cf.authDir, access.FrontendCreds)
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: cf.url, CredsFile: creds, CAFile: cf.ca, Name: "with-ca"})
	if err != nil {
		t.Fatalf("front-end credentials with the CA: %v", err)
	}
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Errorf("not TLS: %v", err)
	}
	nc.Close()
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: cf.url, CredsFile: creds, Name: "without-ca"}); err == nil {
		nc.Close()
		t.Fatal("a client that does not trust the installation's CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
	// The CLI finds the CA through the data folder.
	if code, _, errOut := runCLI("events", "--data-dir", data, "--json", "--kernel", m.ID); code != 0 {
		t.Errorf("kernelbus events over TLS: exit %d: %s", code, errOut)
	}
	if err := c.DeleteKernel(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	// The last credentials issued to the deleted kernel's launcher stop
	// working within one validity.
	last, _ := lastIssued()
	info, err := access.ReadCreds([]byte(last))
	if err != nil || info.Name != m.ID {
		t.Fatalf("last issued credentials: %+v %v", info, err)
	}
	jstest.WaitFor(t, 2*ttl, "the last credentials to expire", func() bool { return time.Now().After(info.Expires.Add(time.Second)) })
	if nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: cf.url, Creds: []byte(last), CAFile: cf.ca, Name: "ended"}); err == nil {
		nc.Close()
		t.Fatal("credentials of a deleted kernel still connect")
	} else if !strings.Contains(strings.ToLower(err.Error()), "expired") && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("credentials of a deleted kernel: %v, want an authorization failure", err)
	}
}
