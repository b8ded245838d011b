package frontend

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/valyala/fasthttp"
)

// A page whose name an attacker re-points at 127.0.0.1 (DNS rebinding)
// reaches a loopback gateway with its own name as Host: refused, REST and
// websocket alike; loopback names and --allow-host names pass.
func TestGuardDNSRebinding(t *testing.T) {
	e := newEnv(t, Config{Guard: GuardConfig{AllowHost: []string{"gw.example.com", "*.lab.test"}}})
	k := e.startKernel()
	port := e.base[strings.LastIndex(e.base, ":")+1 : len(e.base)-1]
	for _, c := range []struct {
		host string
		want int
	}{
		{"evil.example:" + port, 403},
		{"evil.example", 403},
		{"10.1.2.3:" + port, 403},
		{"localhost:" + port, 200},
		{"127.0.0.1:" + port, 200},
		{"[::1]:" + port, 200},
		{"app.localhost:" + port, 200},
		{"gw.example.com:" + port, 200},
		{"GW.example.com", 200},
		{"a.lab.test", 200},
		{"lab.test.evil.example", 403},
		{e.fe.hostName + ":" + port, 200},
	} {
		req, _ := http.NewRequest("GET", e.base+"api/kernels", nil)
		req.Host = c.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("Host %s: got %d %s, want %d", c.host, resp.StatusCode, body.String(), c.want)
		}
		if c.want == 403 && !strings.Contains(body.String(), "--allow-host") {
			t.Errorf("Host %s: the refusal does not say how to allow it: %s", c.host, body.String())
		}
	}
	// Host and Origin both evil.example: the same-origin rule alone would
	// let the websocket through.
	_, resp, err := dialWS(e.base, k.ID, "s1", true, http.Header{"Host": {"evil.example:" + port}, "Origin": {"http://evil.example:" + port}})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("rebinding websocket: err %v, response %v", err, resp)
	}
}

// A state-changing request a browser sends from another site is refused,
// whatever its content type; the kernel is not started. Same-origin
// pages, allowed origins and clients that are not browsers pass.
func TestGuardCrossSite(t *testing.T) {
	e := newEnv(t, Config{AllowOrigin: "https://lab.example.com"})
	host := strings.TrimSuffix(strings.TrimPrefix(e.base, "http://"), "/")
	body := `{"name":"python3"}`
	e.refusedStarts(t, "", body, 403, "cross-site", []http.Header{
		{"Origin": {"https://evil.example"}, "Content-Type": {"text/plain"}},
		{"Origin": {"null"}, "Content-Type": {"text/plain"}},
		{"Sec-Fetch-Site": {"cross-site"}, "Content-Type": {"text/plain"}},
		{"Origin": {"http://" + host + ".evil.example"}},
	})
	// DELETE is state-changing too.
	k := e.startKernel()
	if resp, _ := e.do("DELETE", "api/kernels/"+k.ID, nil, http.Header{"Origin": {"https://evil.example"}}, nil); resp.StatusCode != 403 {
		t.Fatalf("cross-site DELETE: %d", resp.StatusCode)
	}
	for _, h := range []http.Header{
		{"Origin": {"http://" + host}, "Sec-Fetch-Site": {"same-origin"}},
		{"Origin": {"https://lab.example.com"}, "Sec-Fetch-Site": {"same-site"}},
		{"Content-Type": {"application/json"}},
	} {
		if resp, data := e.do("POST", "api/kernels", body, h, nil); resp.StatusCode != 201 {
			t.Errorf("headers %v: got %d %s, want 201", h, resp.StatusCode, data)
		}
	}
}

// refusedStarts POSTs body to api/kernels+query with each of hs and wants
// status, with a body that names why, and no kernel started.
func (e *testEnv) refusedStarts(t *testing.T, query, body string, status int, why string, hs []http.Header) {
	t.Helper()
	for _, h := range hs {
		resp, data := e.do("POST", "api/kernels"+query, body, h, nil)
		if resp.StatusCode != status || !strings.Contains(string(data), why) {
			t.Errorf("headers %v: got %d %s, want %d naming %s", h, resp.StatusCode, data, status, why)
		}
	}
	var list []KernelModel
	if e.do("GET", "api/kernels"+query, nil, nil, &list); len(list) != 0 {
		t.Fatalf("a refused POST started kernels: %+v", list)
	}
}

// A state-changing request without an Authorization header must send JSON:
// a form or text/plain body is what a page of another site can make a
// browser send without a preflight (with a ?token= link or a cached
// password), so it gets 415 and starts nothing. Clients that authenticate
// with a header are not held to it.
func TestGuardMediaType(t *testing.T) {
	e := newEnv(t, Config{Token: "secret"})
	body := `{"name":"python3"}`
	var nonJSON []http.Header
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain;charset=UTF-8"} {
		nonJSON = append(nonJSON, http.Header{"Content-Type": {ct}})
	}
	e.refusedStarts(t, "?token=secret", body, 415, "application/json", nonJSON)
	for _, h := range []http.Header{
		{"Content-Type": {"application/json; charset=utf-8"}},
		{"Content-Type": {"text/plain;charset=UTF-8"}, "Authorization": {"token secret"}},
		// No type at all, as JEG's GatewayClient posts; a browser that
		// sends a typeless body cross-site is refused by its Origin.
		{"Content-Type": nil},
	} {
		if resp, data := e.do("POST", "api/kernels?token=secret", body, h, nil); resp.StatusCode != 201 {
			t.Errorf("headers %v: got %d %s, want 201", h, resp.StatusCode, data)
		}
	}
}

// A client that sends its headers byte by byte is cut off after
// ReadHeaderTimeout instead of holding a connection (slow loris).
func TestGuardSlowHeaders(t *testing.T) {
	e := newEnv(t, Config{Guard: GuardConfig{ReadHeaderTimeout: 300 * time.Millisecond}})
	addr := strings.TrimSuffix(strings.TrimPrefix(e.base, "http://"), "/")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The server may answer 408 before it closes; what matters is that
	// the connection ends long before the read deadline.
	got, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || time.Since(start) > 5*time.Second {
		t.Fatalf("the server kept a slow client's connection: %v after %s (read %q)", err, time.Since(start), got)
	}
}

// Each caller may hold MaxWebsocketsPerCaller kernel websockets; one more
// answers 429 with what to do, and a closed one frees its slot.
func TestGuardWebsocketsPerCaller(t *testing.T) {
	e := newEnv(t, Config{Guard: GuardConfig{MaxWebsocketsPerCaller: 2}})
	k := e.startKernel()
	a := e.dial(k.ID, "s1", true)
	e.dial(k.ID, "s2", true)
	_, resp, err := dialWS(e.base, k.ID, "s3", true, nil)
	if err == nil || resp == nil || resp.StatusCode != 429 {
		t.Fatalf("third websocket: err %v, response %v", err, resp)
	}
	// Once identities exist, the cap is per identity, not per address.
	if got := defaultCallerKey(newCtxWithCaller(e.fe, &auth.Identity{Name: "alice", Source: "users"})); got != "user alice" {
		t.Fatalf("caller key with an identity: %q", got)
	}
	if got := defaultCallerKey(newCtxWithCaller(e.fe, &auth.Identity{Name: "admin", Source: "token"})); strings.HasPrefix(got, "user") {
		t.Fatalf("the shared token's holders share one cap: %q", got)
	}
	_ = a.c.Close()
	jstest.WaitForNil(t, 10*time.Second, func() error {
		c, _, err := dialWS(e.base, k.ID, "s4", true, nil)
		if err != nil {
			return fmt.Errorf("a closed websocket did not free its slot: %w", err)
		}
		_ = c.c.Close()
		return nil
	})
}

// A start whose env is larger than MaxEnvBytes answers 400 saying so, even
// when the variables would be dropped.
func TestGuardEnvBytes(t *testing.T) {
	e := newEnv(t, Config{Guard: GuardConfig{MaxEnvBytes: 1000}})
	env := map[string]string{"JUNK": strings.Repeat("x", 600), "KERNEL_X": strings.Repeat("y", 600)}
	resp, data := e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": env}, nil, nil)
	if resp.StatusCode != 400 || !strings.Contains(string(data), "the limit is 1000") {
		t.Fatalf("large env: got %d %s", resp.StatusCode, data)
	}
	// Control characters and Unicode line breaks (NEL, LS) are refused at
	// the edge, naming the variable.
	for _, v := range []string{"a\u0085b", "a\u2028b", "a\x1b[31mb"} {
		resp, data = e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_X": v}}, nil, nil)
		if resp.StatusCode != 400 || !strings.Contains(string(data), "KERNEL_X") {
			t.Errorf("env value %q: got %d %s", v, resp.StatusCode, data)
		}
	}
	resp, data = e.do("POST", "api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_X": "ok"}}, nil, nil)
	if resp.StatusCode != 201 {
		t.Fatalf("small env: got %d %s", resp.StatusCode, data)
	}
}

func newCtxWithCaller(s *Server, id *auth.Identity) *fiber.Ctx {
	c := s.app.AcquireCtx(&fasthttp.RequestCtx{})
	c.Locals(localsIdentity, id)
	return c
}
