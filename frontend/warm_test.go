package frontend

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// putWarm writes a running warm kernel of python3 as a worker's warm
// keeper would once its launcher reported it running.
func (e *testEnv) putWarm(id, digest string, accept ...string) {
	e.t.Helper()
	now := time.Now().UTC()
	k := &broker.Kernel{ID: id, Spec: "python3", RM: broker.RMLocal, State: broker.StateRunning, Created: now, Deadline: now.Add(time.Minute),
		Warm: &broker.Warm{Pool: broker.WarmPoolKey(broker.RMLocal, "python3"), Keeper: "w-test", Since: now, Digest: digest, Accept: accept}}
	if _, err := e.bus.CreateKernel(context.Background(), k); err != nil {
		e.t.Fatal(err)
	}
	jstest.WaitFor(e.t, 10*time.Second, "the front-end to see the warm kernel", func() bool {
		r := e.fe.state.kernel(id)
		return r != nil && r.WarmIdle()
	})
}

func (e *testEnv) pythonDigest() string {
	s, _ := e.fe.specs.Spec("python3")
	return s.Digest()
}

// TestWarmKernelsAreNobodys: a warm kernel waiting for a request is
// hidden from users and administrators alike on every kernel route (its
// id cannot be used before a request takes it), and only administrators
// list the warm pools.
func TestWarmKernelsAreNobodys(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{})
	bob, admin := tokenHdr(toks["bob"]), tokenHdr(adminToken)
	const id = "00000000-0000-4000-8000-00000000beef"
	e.putWarm(id, e.pythonDigest())
	for _, hdr := range []http.Header{bob, admin} {
		if ids := e.kernelIDs(hdr); len(ids) != 0 {
			t.Fatalf("warm kernel listed: %v", ids)
		}
		for _, r := range []struct{ method, path string }{
			{"GET", "api/kernels/" + id}, {"DELETE", "api/kernels/" + id},
			{"POST", "api/kernels/" + id + "/interrupt"}, {"POST", "api/kernels/" + id + "/restart"},
		} {
			if resp, data := e.do(r.method, r.path, nil, hdr, nil); resp.StatusCode != 404 {
				t.Fatalf("%s %s on a warm kernel: %d %s", r.method, r.path, resp.StatusCode, data)
			}
		}
		if resp, _ := e.do("POST", "api/sessions", map[string]any{"path": "a.ipynb", "type": "notebook", "kernel": map[string]any{"id": id}}, hdr, nil); resp.StatusCode < 400 {
			t.Fatalf("a session joined a warm kernel: %d", resp.StatusCode)
		}
	}
	if resp, data := e.do("GET", "api/warm", nil, bob, nil); resp.StatusCode != 403 {
		t.Fatalf("bob lists warm kernels: %d %s", resp.StatusCode, data)
	}
	var warm []WarmModel
	if resp, data := e.do("GET", "api/warm", nil, admin, &warm); resp.StatusCode != 200 || len(warm) != 1 || warm[0].ID != id || warm[0].Keeper != "w-test" {
		t.Fatalf("admin lists warm kernels: %d %s", resp.StatusCode, data)
	}
	if rec, _, err := e.bus.GetKernel(t.Context(), id); err != nil || !rec.WarmIdle() {
		t.Fatalf("the warm kernel was touched: %+v %v", rec, err)
	}
}

// TestWarmClaim: a start that a warm kernel serves exactly takes it (the
// caller becomes its owner, the audit log says so); two starts at once
// never get the same warm kernel; env, a chosen id or a changed spec get
// a cold start instead.
func TestWarmClaim(t *testing.T) {
	e, toks, _ := newAuthEnv(t, Config{})
	alice, bob := tokenHdr(toks["alice"]), tokenHdr(toks["bob"])
	const w1, w2 = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"

	// Stale: started from another version of the spec.
	e.putWarm(w1, "an-older-spec")
	k, code, eb := e.startAs(alice, "python3", nil)
	if code != 201 || k.ID == w1 {
		t.Fatalf("a warm kernel of a changed spec was handed out: %d %+v %s", code, eb, k.ID)
	}
	if err := e.bus.Kernels.Delete(t.Context(), w1); err != nil {
		t.Fatal(err)
	}

	e.putWarm(w1, e.pythonDigest())
	for _, env := range []map[string]string{
		{"KERNEL_FAVOURITE": "tea"},
		{"KERNEL_ID": "00000000-0000-4000-8000-0000000000c1"},
	} {
		k, code, eb := e.startAs(bob, "python3", env)
		if code != 201 || k.ID == w1 {
			t.Fatalf("start with %v: %d %+v, got warm %v", env, code, eb, k.ID == w1)
		}
		e.worker.mu.Lock()
		lc := e.worker.configs[k.ID]
		e.worker.mu.Unlock()
		for n, v := range env {
			if n != "KERNEL_ID" && lc.Env[n] != v {
				t.Fatalf("cold start lacks %s=%s: %v", n, v, lc.Env)
			}
		}
	}

	// What the operator's pool accepts does not force a cold start.
	if err := e.bus.Kernels.Delete(t.Context(), w1); err != nil {
		t.Fatal(err)
	}
	const w3 = "00000000-0000-4000-8000-0000000000a3"
	e.putWarm(w3, e.pythonDigest(), "KERNEL_WORKING_DIR")
	if k, code, eb := e.startAs(bob, "python3", map[string]string{"KERNEL_WORKING_DIR": "/tmp", "KERNEL_FAVOURITE": "tea"}); code != 201 || k.ID == w3 {
		t.Fatalf("a request with env the pool does not accept got warm kernel: %d %+v %v", code, eb, k.ID == w3)
	}
	if k, code, eb := e.startAs(bob, "python3", map[string]string{"KERNEL_WORKING_DIR": "/tmp"}); code != 201 || k.ID != w3 {
		t.Fatalf("a request with env the pool accepts did not get the warm kernel: %d %+v %s", code, eb, k.ID)
	}
	e.putWarm(w1, e.pythonDigest())

	// Two warm kernels, three starts at once: each warm kernel goes to
	// exactly one of them, the third starts cold.
	e.putWarm(w2, e.pythonDigest())
	var mu sync.Mutex
	got := map[string]string{}
	var wg sync.WaitGroup
	for _, u := range []string{"alice", "bob", "erin"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, code, eb := e.startAs(tokenHdr(toks[u]), "python3", map[string]string{"KERNEL_USERNAME": u})
			if code != 201 {
				t.Errorf("%s start: %d %+v", u, code, eb)
				return
			}
			mu.Lock()
			got[k.ID] = u
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(got) != 3 || got[w1] == "" || got[w2] == "" {
		t.Fatalf("starts got %v", got)
	}
	for _, id := range []string{w1, w2} {
		rec, _, err := e.bus.GetKernel(t.Context(), id)
		if err != nil || rec.Owner != got[id] || rec.User != got[id] || rec.WarmIdle() || rec.Warm.Claimed.IsZero() {
			t.Fatalf("claimed record %s: %+v %v", id, rec, err)
		}
		// Its new owner sees it; nobody else does.
		if ids := e.kernelIDs(tokenHdr(toks[got[id]])); !contains(ids, id) {
			t.Fatalf("%s does not see the warm kernel handed to them: %v", got[id], ids)
		}
		other := "alice"
		if got[id] == "alice" {
			other = "bob"
		}
		if resp, _ := e.do("GET", "api/kernels/"+id, nil, tokenHdr(toks[other]), nil); resp.StatusCode != 404 {
			t.Fatalf("%s sees %s's kernel: %d", other, got[id], resp.StatusCode)
		}
		var handed []broker.Event
		err = kbjs.ReadEvents(t.Context(), e.bus.JS, broker.EventFilter{Kernel: id, Types: []string{broker.EvWarmClaimed}}, false, func(ev broker.Event) error {
			handed = append(handed, ev)
			return nil
		})
		if err != nil || len(handed) != 1 || handed[0].User != got[id] || handed[0].Reason != "warm kernel handed to "+got[id] {
			t.Fatalf("warm_claimed events of %s: %+v %v", id, handed, err)
		}
	}
}

func contains(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
