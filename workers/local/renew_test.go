package local_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/kernelbus/kernelbus/workers"
	"github.com/nats-io/nats.go"
)

// TestCredentialsRenewedOnlyWhileKernelRuns: launcher credentials expire
// after the pool's TTL; the pool renews them for a running kernel, to that
// kernel's inbox only, and refuses once the kernel has ended, so the last
// credentials it issued stop working within one TTL of the kernel's end:
// they can neither connect nor keep a connection.
func TestCredentialsRenewedOnlyWhileKernelRuns(t *testing.T) {
	const ttl = 3 * time.Second
	js := jstest.Start(t, jstest.Options{Auth: true})
	e := startPool(t, js, testBackend(t), workers.PoolConfig{Minter: js.Minter, LauncherCredsTTL: ttl})
	id := "00000000-0000-4000-8000-0000000000c1"
	e.request(t, id, "ok", 20*time.Second)
	e.waitFor(t, id, 15*time.Second, func(k *broker.Kernel) bool { return k.State == broker.StateRunning })

	// The test asks as the kernel's launcher would: from its inbox.
	asLauncher := js.Connect(t, access.RoleAdmin, "")
	renew := func(replyPrefix string, wait time.Duration) (access.RenewReply, error) {
		inbox := replyPrefix + "." + nats.NewInbox()
		sub, err := asLauncher.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := asLauncher.PublishRequest(access.SubjectRenew(id), inbox, nil); err != nil {
			t.Fatal(err)
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			return access.RenewReply{}, err
		}
		var r access.RenewReply
		err = json.Unmarshal(m.Data, &r)
		return r, err
	}
	r, err := renew(broker.InboxPrefix(id), 5*time.Second)
	if err != nil || r.Error != "" {
		t.Fatalf("renewal for a running kernel: %+v %v", r, err)
	}
	info, err := access.ReadCreds([]byte(r.Creds))
	if err != nil || info.Name != id || info.Expires.IsZero() || time.Until(info.Expires) > ttl+time.Second {
		t.Fatalf("renewed credentials: %+v %v", info, err)
	}

	// The credentials work now, and a connection made with them is
	// dropped when they expire.
	live, err := kbjs.Connect(kbjs.ConnectOptions{URLs: js.URL, Creds: []byte(r.Creds), InboxPrefix: broker.InboxPrefix(id), Name: "issued"})
	if err != nil {
		t.Fatalf("fresh credentials: %v", err)
	}
	defer live.Close()

	// A reply anywhere but the kernel's own inboxes gets nothing.
	if r, err := renew("_INBOX.elsewhere", 500*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("renewal to a foreign inbox answered: %+v %v", r, err)
	}

	if err := e.bus.Request(context.Background(), broker.VerbStop, broker.RMLocal, id+":stop", broker.StopRequest{KernelID: id, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	e.waitFor(t, id, 10*time.Second, func(k *broker.Kernel) bool { return k.State.Terminal() })
	if r, err := renew(broker.InboxPrefix(id), 5*time.Second); err != nil || r.Creds != "" || r.Error != access.ErrKernelEnded.Error() {
		t.Fatalf("renewal after the kernel ended: %+v %v", r, err)
	}
	jstest.WaitFor(t, ttl+5*time.Second, "the issued credentials to expire", func() bool { return time.Now().After(info.Expires.Add(time.Second)) })
	jstest.WaitFor(t, 5*time.Second, "the server to drop the connection of expired credentials", func() bool {
		return !live.IsConnected()
	})
	userJWT, seed, err := access.SplitCreds([]byte(r.Creds))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(js.URL, nats.UserJWTAndSeed(userJWT, seed), nats.MaxReconnects(0))
	if err == nil {
		nc.Close()
		t.Fatal("expired credentials of an ended kernel connected")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "expired") && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("expired credentials: %v, want an authorization failure", err)
	}
}
