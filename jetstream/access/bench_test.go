package access_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// BenchmarkMintLauncherCreds is what a worker spends per start minting a
// kernel's credentials (a new user nkey and a signed JWT).
func BenchmarkMintLauncherCreds(b *testing.B) {
	m := newMinter(b)
	id := uuid.NewString()
	b.ResetTimer()
	for range b.N {
		if _, err := m.LauncherCreds(id, access.DefaultLauncherCredsTTL); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayIO is a launcher's output path on the bus: 1 KiB iopub
// messages published to KB_IO with acks, over TCP, as the admin (no
// permission checks) or with a launcher's scoped credentials, without and
// with TLS. It shows what scoped credentials and TLS cost the relay:
//
//	go test ./jetstream/access -run '^$' -bench RelayIO -benchtime 20000x
func BenchmarkRelayIO(b *testing.B) {
	for _, c := range []struct {
		name        string
		scoped, tls bool
	}{
		{"admin", false, false},
		{"launcher-creds", true, false},
		{"launcher-creds+tls", true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := jstest.Start(b, jstest.Options{Auth: true, TLS: c.tls})
			id := uuid.NewString()
			var creds []byte
			if c.scoped {
				s, err := e.Minter.LauncherCreds(id, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				creds = []byte(s)
			} else {
				var err error
				if creds, err = e.Auth.Creds(access.RoleAdmin, "", "bench", 0); err != nil {
					b.Fatal(err)
				}
			}
			nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: e.URL, Creds: creds, CA: e.CA, InboxPrefix: broker.InboxPrefix(id), Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, err := kbjs.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			subj := broker.SubjectOut(id, "iopub")
			msg := make([]byte, 1024)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for range b.N {
				if _, err := js.PublishAsync(subj, msg); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("acks did not arrive")
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
