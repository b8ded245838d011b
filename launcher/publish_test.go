package launcher

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Output published while the stream cannot take it (here: it does not
// exist, so every publish fails with no responders, as while a stream
// has no leader) is held and resent until it lands: every message once,
// in order, a chunked one whole.
func TestPublisherResendsInOrder(t *testing.T) {
	t.Run("single", func(t *testing.T) { testPublisherResends(t, false) })
	// iopub output queued up goes in batches (broker.HeaderBatch), which
	// are resent and deduplicated the same way.
	t.Run("batched", func(t *testing.T) { testPublisherResends(t, true) })
}

func testPublisherResends(t *testing.T, batched bool) {
	tb := startBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := tb.bus.JS.DeleteStream(ctx, broker.StreamIO); err != nil {
		t.Fatal(err)
	}
	p, err := newPublisher(tb.nc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	go p.run()
	defer p.close(5 * time.Second)

	id := newKernelID()
	subj := broker.SubjectOut(id, "iopub")
	// The chunked message goes on the large-output subject; both are
	// counted and read, in stream order.
	all := broker.SubjectOutAll(id)
	stored := func(info *jetstream.StreamInfo) uint64 {
		return info.State.Subjects[subj] + info.State.Subjects[broker.LargeSubject(subj)]
	}
	const n = 300
	big := 150 // this one is chunked
	body := func(i int) []byte {
		if i == big {
			return bytes.Repeat([]byte{'x'}, int(tb.nc.MaxPayload())+1000)
		}
		return []byte(fmt.Sprintf("m%d", i))
	}
	queued := make(chan struct{})
	go func() {
		defer close(queued)
		for i := range n {
			select {
			case p.in <- queuedOut(subj, body(i), batched):
			case <-ctx.Done():
				return
			}
		}
	}()
	// Bring the stream back once the publisher has had to resend.
	jstest.WaitFor(t, 30*time.Second, "a resend", func() bool { return p.resent.Load() > 0 })
	if _, err := kbjs.Setup(ctx, tb.nc, kbjs.Layout{}); err != nil {
		t.Fatal(err)
	}
	<-queued
	st, err := tb.bus.JS.Stream(ctx, broker.StreamIO)
	if err != nil {
		t.Fatal(err)
	}
	chunks := len(kbjs.Split(tb.nc, &nats.Msg{Subject: subj, Data: body(big)}))
	jstest.WaitFor(t, 60*time.Second, "every message on the stream", func() bool {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(all))
		// How many bus messages a batched run makes depends on timing.
		return err == nil && (batched && stored(info) > 0 || stored(info) >= uint64(n-1+chunks))
	})
	cons, err := tb.bus.JS.OrderedConsumer(ctx, broker.StreamIO, jetstream.OrderedConsumerConfig{FilterSubjects: []string{all}})
	if err != nil {
		t.Fatal(err)
	}
	var re kbjs.Reassembler
	got := 0
	for got < n {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		data, whole, err := re.Feed(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Fatalf("message %d: %v", got, err)
		}
		if !whole {
			continue
		}
		frames := [][]byte{data}
		if nb := m.Headers().Get(broker.HeaderBatch); nb != "" {
			c, _ := strconv.Atoi(nb)
			if frames, err = broker.SplitBatch(data, c); err != nil {
				t.Fatal(err)
			}
		}
		for _, data := range frames {
			if got >= n || !bytes.Equal(data, body(got)) {
				t.Fatalf("message %d: got %.20q", got, data)
			}
			got++
		}
	}
	if batched {
		if m, err := cons.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
			t.Fatalf("a bus message after the last one: %v", m.Headers())
		}
		t.Logf("%d messages landed once each, in order, after %d resends", n, p.resent.Load())
		return
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(all))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects[broker.LargeSubject(subj)]; got != uint64(chunks) {
		t.Fatalf("%d bus messages on the large-output subject, want the %d chunks", got, chunks)
	}
	if c := stored(info); c != uint64(n-1+chunks) {
		t.Fatalf("%d bus messages on the stream for %d sent: duplicates", c, n-1+chunks)
	}
	t.Logf("%d messages (one in %d chunks) landed once each, in order, after %d resends", n, chunks, p.resent.Load())
}

// queuedOut is a kernel message as the launcher's relay queues it: with its
// channel header when batched (only iopub output is batched).
func queuedOut(subj string, data []byte, batched bool) *nats.Msg {
	m := &nats.Msg{Subject: subj, Data: data}
	if batched {
		m.Header = nats.Header{broker.HeaderChannel: {"iopub"}}
	}
	return m
}
