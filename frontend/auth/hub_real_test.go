//go:build hub

// The JupyterHub source against a real JupyterHub from PyPI (with its
// proxy from npm), installed by scripts/setup-jupyterhub.sh; run with
// `task test:hub`, or:
//
//	KB_JUPYTERHUB_VENV=$(bash scripts/setup-jupyterhub.sh) go test -tags hub -run TestRealHub ./frontend/auth
package auth_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

const realHubServiceToken = "kb-test-service-token-5f1c0e2a9b7d4c3e"

type realHub struct {
	t    *testing.T
	cmd  *exec.Cmd
	api  string
	log  string
	done chan struct{}
}

// startRealHub runs JupyterHub with the dummy authenticator and a service
// whose token may manage users and tokens and holds the impersonation
// scope; root is a Hub admin.
func startRealHub(t *testing.T) *realHub {
	t.Helper()
	venv := os.Getenv("KB_JUPYTERHUB_VENV")
	if venv == "" {
		t.Fatal("KB_JUPYTERHUB_VENV is not set: run `task test:hub` (it installs the Hub with scripts/setup-jupyterhub.sh)")
	}
	dir := t.TempDir()
	var h *realHub
	// The Hub and its proxy must be told their ports: one taken between its
	// pick and the bind costs a start with new ones.
	err := jstest.RetryPorts(3, func(ports []int) error {
		var err error
		h, err = startHubOn(t, venv, dir, ports)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			t.Logf("hub log:\n%s", b)
		}
	})
	return h
}

// startHubOn starts the Hub on ports (proxy, Hub, proxy API) and waits
// until it answers; when it exits first, it says why with the Hub's log.
func startHubOn(t *testing.T, venv, dir string, ports []int) (*realHub, error) {
	cfg := fmt.Sprintf(`c = get_config()
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = %d
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = %d
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.admin_users = {"root"}
c.JupyterHub.db_url = "sqlite:///%s/hub.sqlite"
c.JupyterHub.cookie_secret_file = "%s/cookie_secret"
c.JupyterHub.pid_file = "%s/hub.pid"
c.JupyterHub.custom_scopes = {%q: {"description": "start kernels for other users"}}
c.JupyterHub.services = [{"name": "kbtest", "api_token": %q}]
c.JupyterHub.load_roles = [{"name": "kbtest", "services": ["kbtest"],
    "scopes": ["admin:users", "admin:groups", "tokens", %q]}]
`, ports[0], ports[1], ports[2], dir, dir, dir, auth.DefaultImpersonateScope, realHubServiceToken, auth.DefaultImpersonateScope)
	if err := os.WriteFile(filepath.Join(dir, "jupyterhub_config.py"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "hub.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(venv, "bin", "jupyterhub"), "-f", "jupyterhub_config.py")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(venv, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: the Hub starts the proxy, and cleanup must
	// reach both even if the Hub dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	h := &realHub{t: t, cmd: cmd, api: "http://127.0.0.1:" + strconv.Itoa(ports[1]) + "/hub/api", log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(h.done) }()
	exited := false
	if jstest.Eventually(90*time.Second, func() bool {
		select {
		case <-h.done:
			exited = true
			return true
		default:
		}
		return jstest.GetOK(h.api+"/") == nil
	}) && !exited {
		return h, nil
	}
	h.stop()
	b, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("jupyterhub did not answer (exited: %v):\n%s", exited, b)
}

// stop ends the Hub (SIGTERM, so it stops its proxy) and, if it lingers,
// the whole process group.
func (h *realHub) stop() {
	jstest.Stop(-h.cmd.Process.Pid, h.done, 15*time.Second)
}

// call makes a Hub API request with the service token.
func (h *realHub) call(method, path string, body any, out any) {
	h.t.Helper()
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, h.api+path, bytes.NewReader(data))
	req.Header.Set("Authorization", "token "+realHubServiceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		h.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, msg.String())
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			h.t.Fatal(err)
		}
	}
}

func (h *realHub) token(user string, expiresIn int) string {
	h.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	body := map[string]any{"note": "kernelbus test"}
	if expiresIn > 0 {
		body["expires_in"] = expiresIn
	}
	h.call("POST", "/users/"+user+"/tokens", body, &tok)
	if tok.Token == "" {
		h.t.Fatalf("no token for %s", user)
	}
	return tok.Token
}

func TestRealHub(t *testing.T) {
	start := time.Now()
	h := startRealHub(t)
	t.Logf("hub up in %v", time.Since(start))
	h.call("POST", "/users/alice", nil, nil)
	h.call("POST", "/groups/data-science", map[string]any{"users": []string{"alice"}}, nil)
	alice := h.token("alice", 0)
	root := h.token("root", 0)
	short := h.token("alice", 1)

	s, err := auth.NewHubSource(auth.HubConfig{APIURL: h.api, APIToken: realHubServiceToken})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(t.Context()); err != nil {
		t.Fatalf("Check with the service token: %v", err)
	}
	tokReq := func(tok string) *srcReq { return newSrcReq("127.0.0.1", "Authorization", "token "+tok) }

	id, err := s.Authenticate(tokReq(alice))
	if err != nil || id.Name != "alice" || id.IsAdmin() || id.Has(auth.RoleImpersonate) || len(id.Groups) != 1 || id.Groups[0] != "data-science" {
		t.Fatalf("alice: %+v %v", id, err)
	}
	if id, err := s.Authenticate(newSrcReq("", "Authorization", "Bearer "+root)); err != nil || id.Name != "root" || !id.IsAdmin() {
		t.Fatalf("root: %+v %v", id, err)
	}
	if id, err := s.Authenticate(tokReq(realHubServiceToken)); err != nil || id.Name != "kbtest" || !id.Has(auth.RoleImpersonate) {
		t.Fatalf("service: %+v %v", id, err)
	}
	if _, err := s.Authenticate(tokReq("bogus-token")); !errors.Is(err, auth.ErrUnauthorized) || auth.Status(err) != 401 {
		t.Fatalf("bogus token: %v", err)
	}
	// An expired Hub token is refused. A fresh source, so nothing cached.
	jstest.WaitForNil(t, 30*time.Second, func() error {
		fresh, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api})
		if _, err := fresh.Authenticate(tokReq(short)); !errors.Is(err, auth.ErrUnauthorized) {
			return fmt.Errorf("expired token: %v", err)
		}
		return nil
	})
	if err := (func() error {
		bad, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api, APIToken: "wrong"})
		return bad.Check(t.Context())
	})(); err == nil {
		t.Error("Check accepted a wrong service token")
	}

	// The Hub stops: 503 naming the Hub, for good and bad tokens alike,
	// from a source with nothing cached. The source that saw alice keeps
	// her for its TTL.
	h.stop()
	down, _ := auth.NewHubSource(auth.HubConfig{APIURL: h.api})
	for _, tok := range []string{alice, "bogus-2"} {
		_, err := down.Authenticate(tokReq(tok))
		if !errors.Is(err, auth.ErrUnavailable) || auth.Status(err) != 503 {
			t.Fatalf("Hub stopped: %v", err)
		}
		t.Logf("Hub stopped: %v", err)
	}
	if id, err := s.Authenticate(tokReq(alice)); err != nil || id.Name != "alice" {
		t.Fatalf("cached alice with the Hub stopped: %+v %v", id, err)
	}
	t.Logf("total %v", time.Since(start))
}
