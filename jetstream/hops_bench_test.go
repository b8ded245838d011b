package jetstream_test

import (
	"context"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkBusHops measures what the bus alone costs one kernel round trip,
// on loopback, with the front-end on an in-process connection (as in
// `kernelbus serve`) and the launcher on TCP, and no kernel: the launcher
// side answers each input with one output at once. Each case is one way of
// carrying the input in and the output out, so the differences between
// cases are the costs of the hops (docs/benchmarks-notes.md, "Round trip,
// hop by hop"):
//
//   - core: core NATS both ways (the floor of any NATS relay);
//   - js-in: input by JetStream publish and the launcher's pull consumer
//     (KernelLink.ConsumeInput), output core;
//   - js-out: input core, output by JetStream publish and the front-end's
//     ordered consumer (Bus.ConsumeOutput);
//   - js-both: both through the stream (kernelbus without live output);
//   - js-in+live-out: input through the stream, output published to the
//     stream and received by a core subscription (kernelbus today);
//   - live-both: input numbered and published to the stream, the
//     launcher taking its live copy (ConsumeInput), output published to
//     the stream and received by a core subscription (live input and
//     output, the stream kept for replay);
//   - js-ack: a synchronous JetStream publish alone, until its ack.
//
// It reports p50 and p99 per round trip besides the mean.
//
//	go test ./jetstream -run - -bench BusHops -benchtime 3000x
func BenchmarkBusHops(b *testing.B) {
	for _, c := range []struct {
		name                string
		jsIn, jsOut, li, lo bool
	}{
		{"core", false, false, false, false},
		{"js-in", true, false, false, false},
		{"js-out", false, true, false, false},
		{"js-both", true, true, false, false},
		{"js-in+live-out", true, true, false, true},
		{"live-both", true, true, true, true},
	} {
		b.Run(c.name, func(b *testing.B) { benchHop(b, c.jsIn, c.jsOut, c.li, c.lo) })
	}
	b.Run("js-ack", func(b *testing.B) {
		env := jstest.Start(b, jstest.Options{})
		id := uuid.NewString()
		ctx := context.Background()
		m := &nats.Msg{Subject: broker.SubjectIn(id), Data: make([]byte, 200)}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := env.Bus.JS.PublishMsg(ctx, m); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportQuantiles(b, lat)
	})
}

func benchHop(b *testing.B, jsIn, jsOut, liveIn, liveOut bool) {
	env := jstest.Start(b, jstest.Options{})
	ctx := context.Background()
	id := uuid.NewString()
	fe := env.NC                 // the front-end: in process
	ln := env.Connect(b, "", "") // the launcher: TCP
	lnJS, err := jetstream.New(ln)
	if err != nil {
		b.Fatal(err)
	}
	out := broker.SubjectOut(id, "shell")
	f := broker.Frame{Channel: "shell", Header: []byte(`{"msg_id":"x"}`), Content: []byte(`{"code":"pass"}`)}
	frame := append(f.V1(), make([]byte, 150)...) // about a small execute_request's v1 frame
	reply := func() {
		m := &nats.Msg{Subject: out, Data: frame}
		if jsOut {
			if _, err := lnJS.PublishMsgAsync(m); err != nil {
				b.Error(err)
			}
			return
		}
		if err := ln.PublishMsg(m); err != nil {
			b.Error(err)
		}
	}
	// The launcher's side.
	var lives atomic.Int64
	inSubj := "bench.in." + id
	if jsIn {
		if err := kbjs.EnsureInput(ctx, env.Bus.JS, id); err != nil {
			b.Fatal(err)
		}
		link, err := kbjs.OpenKernel(ln, id)
		if err != nil {
			b.Fatal(err)
		}
		c, err := link.ConsumeInput(ctx, func(m kbjs.InputMsg) {
			if m.Live {
				lives.Add(1)
			}
			reply()
		}, func(err error) { b.Log(err) })
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Stop)
	} else {
		sub, err := ln.Subscribe(inSubj, func(*nats.Msg) { reply() })
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sub.Unsubscribe() })
		if err := ln.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	// The front-end's side.
	got := make(chan struct{}, 1)
	arrived := func() {
		select {
		case got <- struct{}{}:
		default:
		}
	}
	if jsOut && !liveOut {
		o, err := env.Bus.ConsumeOutput(ctx, id, 1, time.Minute, 10*time.Second, false, func(m jetstream.Msg) { arrived() }, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(o.Stop)
	} else {
		sub, err := fe.Subscribe(out, func(*nats.Msg) { arrived() })
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sub.Unsubscribe() })
		if err := fe.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	send := func(i int) {
		if jsIn {
			in := kbjs.Input{Kernel: id, Session: "s", Channel: "shell", MsgType: "execute_request", MsgID: uuid.NewString(), Frame: frame}
			if liveIn {
				in.Sender, in.Seq = "bench", uint64(i)+1
			}
			err := env.Bus.SendInput(ctx, in, 10*time.Second)
			if err != nil {
				b.Error(err)
			}
			return
		}
		if err := fe.Publish(inSubj, frame); err != nil {
			b.Error(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	// Warm up (consumers created, first pull made).
	for i := 0; i < 20; i++ {
		send(i)
		<-got
	}
	base := 20
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		send(base + i)
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			b.Fatal("no reply in 10 s")
		}
		lat = append(lat, time.Since(t0))
	}
	reportQuantiles(b, lat)
	if liveIn {
		b.ReportMetric(float64(lives.Load())/float64(b.N+20), "live-in/op")
	}
}

func reportQuantiles(b *testing.B, lat []time.Duration) {
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkSaveCursor is what a websocket's writer spends after each
// socket write recording its cursor (Bus.SaveCursor on the in-process
// connection, as `kernelbus serve` does): the record's JSON, its publish
// into kb_sessions and the ping that pushes it out.
//
//	go test ./jetstream -run - -bench SaveCursor
func BenchmarkSaveCursor(b *testing.B) {
	env := jstest.Start(b, jstest.Options{})
	cs := broker.ClientSession{Kernel: uuid.NewString(), Session: uuid.NewString(), Connected: true, Frontend: "fe", Cursor: 12345}
	key := cs.Kernel + "." + cs.Session
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cs.Cursor++
		t0 := time.Now()
		if err := env.Bus.SaveCursor(key, cs); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportQuantiles(b, lat)
}
