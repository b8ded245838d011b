package frontend

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
)

// seedEvents writes n events for kernels k0..k2 of users u0..u1, 10ms apart
// in event time starting at t0.
func seedEvents(t *testing.T, bus *kbjs.Bus, n int, t0 time.Time) {
	t.Helper()
	types := []string{broker.EvRequested, broker.EvStarted, broker.EvInterrupted}
	for i := 0; i < n; i++ {
		ev := broker.Event{ID: fmt.Sprintf("seed-%d", i), Time: t0.Add(time.Duration(i) * 10 * time.Millisecond),
			Type: types[i%3], Kernel: fmt.Sprintf("k%d", i%3), User: fmt.Sprintf("u%d", i%2), Spec: "python3", Source: "test"}
		if err := bus.Emit(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEventsAPI(t *testing.T) {
	e := newEnv(t, Config{})
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	seedEvents(t, e.bus, 30, t0)

	var p eventPage
	if resp, data := e.do("GET", "api/events", nil, nil, &p); resp.StatusCode != 200 || len(p.Events) != 30 || p.More {
		t.Fatalf("all: %d %s", resp.StatusCode, data)
	}
	for i, ev := range p.Events {
		if ev.ID != fmt.Sprintf("seed-%d", i) || ev.Seq == 0 || (i > 0 && ev.Seq <= p.Events[i-1].Seq) {
			t.Fatalf("event %d out of order: %+v", i, ev)
		}
	}
	last := p.NextCursor

	// Filters: kernel and type are server-side subjects, user and time here.
	q := url.Values{"kernel": {"k1"}, "type": {"started,interrupted"}, "user": {"u0"}}
	e.do("GET", "api/events?"+q.Encode(), nil, nil, &p)
	for _, ev := range p.Events {
		if ev.Kernel != "k1" || ev.User != "u0" || ev.Type != broker.EvStarted {
			t.Fatalf("filter let through %+v", ev)
		}
	}
	if len(p.Events) != 5 { // i = 4, 10, 16, 22, 28
		t.Fatalf("%d events for k1/u0/started, want 5", len(p.Events))
	}
	q = url.Values{"since": {t0.Add(100 * time.Millisecond).Format(time.RFC3339Nano)}, "until": {t0.Add(190 * time.Millisecond).Format(time.RFC3339Nano)}}
	e.do("GET", "api/events?"+q.Encode(), nil, nil, &p)
	if len(p.Events) != 10 || p.Events[0].ID != "seed-10" || p.Events[9].ID != "seed-19" {
		t.Fatalf("time window: %d events %+v", len(p.Events), p.Events)
	}

	// Paging: pages of 7 walk the whole log once, in order.
	var got []string
	cursor := uint64(0)
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		e.do("GET", fmt.Sprintf("api/events?limit=7&cursor=%d", cursor), nil, nil, &p)
		for _, ev := range p.Events {
			got = append(got, ev.ID)
		}
		cursor = p.NextCursor
		if !p.More {
			break
		}
	}
	if len(got) != 30 || got[29] != "seed-29" || cursor != last {
		t.Fatalf("paged %d events, cursor %d (want %d)", len(got), cursor, last)
	}
	// The last cursor polls for what is new.
	seedEvents(t, e.bus, 31, t0) // seed-0..29 are duplicates, stored once
	e.do("GET", fmt.Sprintf("api/events?cursor=%d", cursor), nil, nil, &p)
	if len(p.Events) != 1 || p.Events[0].ID != "seed-30" {
		t.Fatalf("after the last cursor: %+v", p.Events)
	}

	// Bad input: 400 naming the parameter.
	for q, want := range map[string]string{
		"type=started,exploded": "type: unknown event type \"exploded\"",
		"since=yesterday":       "since: cannot read \"yesterday\"",
		"until=2026-13-01":      "until: cannot read",
		"cursor=abc":            "cursor: \"abc\" is not a cursor",
		"limit=0":               "limit: \"0\" must be a number from 1 to 1000",
		"limit=5000":            "limit:",
		"kernel=a.b":            "kernel: \"a.b\" is not a kernel id",
		"since=1h&until=2h":     "until:",
	} {
		var errBody struct{ Reason, Message string }
		resp, data := e.do("GET", "api/events?"+q, nil, nil, &errBody)
		if resp.StatusCode != 400 || !strings.Contains(errBody.Message, want) {
			t.Errorf("%s: %d %s, want 400 with %q", q, resp.StatusCode, data, want)
		}
	}
	if resp, _ := e.do("GET", "api/events/stream?until=1h", nil, nil, nil); resp.StatusCode != 400 {
		t.Errorf("stream with until: %d", resp.StatusCode)
	}
}

func TestEventsAPINeedsToken(t *testing.T) {
	e := newEnv(t, Config{Token: "sekrit"})
	if resp, _ := e.do("GET", "api/events", nil, nil, nil); resp.StatusCode != 401 {
		t.Fatalf("without token: %d", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "api/events?token=sekrit", nil, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("with token: %d", resp.StatusCode)
	}
}

type sseEvent struct {
	id   string
	data string
}

// readSSE returns the events of a server-sent stream as they come.
func readSSE(t *testing.T, u string, hdr http.Header) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sseEvent, 100)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.data != "" {
					out <- cur
				}
				cur = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
	}()
	return out, cancel
}

func nextSSE(t *testing.T, ch <-chan sseEvent) kbjs.SeqEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		var se kbjs.SeqEvent
		if err := json.Unmarshal([]byte(ev.data), &se); err != nil {
			t.Fatal(err)
		}
		if ev.id != fmt.Sprint(se.Seq) {
			t.Fatalf("id %s for seq %d", ev.id, se.Seq)
		}
		return se
	case <-time.After(20 * time.Second):
		t.Fatal("no event on the stream within 20s")
	}
	return kbjs.SeqEvent{}
}

func TestEventsStream(t *testing.T) {
	e := newEnv(t, Config{})
	t0 := time.Now().UTC()
	seedEvents(t, e.bus, 3, t0)

	// Without a cursor the feed starts with new events only.
	live, stop := readSSE(t, e.base+"api/events/stream?user=u1", nil)
	defer stop()
	// The feed's consumer exists once the preamble is written; an event
	// emitted right after the request may precede it, so emit until the
	// first one shows up, then check what follows.
	go func() {
		for i := 0; i < 50; i++ {
			ev := broker.Event{ID: fmt.Sprintf("live-%d", i), Type: broker.EvStarted, Kernel: "k9", User: "u1"}
			if i%2 == 1 {
				ev.User = "u0"
			}
			if e.bus.Emit(context.Background(), ev) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	first := nextSSE(t, live)
	if !strings.HasPrefix(first.ID, "live-") || first.User != "u1" {
		t.Fatalf("first live event %+v", first)
	}
	second := nextSSE(t, live)
	if second.User != "u1" || second.Seq <= first.Seq {
		t.Fatalf("second live event %+v after %+v", second, first)
	}

	// Resuming with Last-Event-ID replays from there, stored events first.
	resumed, stop2 := readSSE(t, e.base+"api/events/stream", http.Header{"Last-Event-ID": {"1"}})
	defer stop2()
	if ev := nextSSE(t, resumed); ev.Seq != 2 || ev.ID != "seed-1" {
		t.Fatalf("resumed at %+v", ev)
	}
}
