package yarn_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// uiScript is the browser check of a gateway with a YARN pool
// (e2e/ui/yarn-overview.mjs) and the node that runs it; `task setup:ui`
// installs playwright-core and Debian's chromium.
func uiScript(t *testing.T) (node, script string) {
	dir, err := filepath.Abs(filepath.Join("..", "..", "e2e", "ui"))
	if err != nil {
		t.Fatal(err)
	}
	node, err = exec.LookPath("node")
	if err != nil {
		jstest.MissingSetup(t, "no node on PATH: the browser check of the overview needs it (task setup:ui)")
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	for _, p := range []string{filepath.Join(dir, "node_modules", "playwright-core", "package.json"), chromium} {
		if _, err := os.Stat(p); err != nil {
			jstest.MissingSetup(t, p+" is missing: run `task setup:ui`")
		}
	}
	return node, filepath.Join(dir, "yarn-overview.mjs")
}

// overviewInBrowser: an administrator signed in to a front-end in headless
// chromium sees, on the cluster overview, the MiniYARNCluster's own
// metrics while a PySpark kernel runs as YARN application app, and the
// kernels page links that application to the ResourceManager's page.
// TestPySparkOnYARN runs it while its kernel runs (a kernel start of its
// own would cost the suite a minute). The front-end is a second one on
// the gateway's bus, with a users file, since the suite's serve runs
// without identities (--insecure-no-auth) and the UI signs in with one.
func overviewInBrowser(t *testing.T, g *gateway, rmURL, app string) {
	node, script := uiScript(t)
	users := filepath.Join(t.TempDir(), "users.json")
	out, err := exec.Command(g.kb, "users", "add", "--role", "admin", "--role", "user", "root", "--file", users).Output()
	if err != nil {
		t.Fatalf("kernelbus users add: %v", err)
	}
	token := strings.TrimSpace(string(out))
	conn := g.workerArgs[slices.Index(g.workerArgs, "--nats-conn")+1]
	stop, url := runServing(t, "kernelbus front-end serving", g.kb, "frontend", "--nats-conn", conn, "--listen", "127.0.0.1:0", "--users-file", users)
	defer stop()
	base := url + "/"
	jstest.WaitFor(t, time.Minute, "the second front-end", func() bool {
		r, err := http.Get(base + "readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})

	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, node, script)
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(), "KB_UI_BASE="+base, "KB_UI_TOKEN="+token, "KB_YARN_RM="+rmURL, "KB_YARN_APP="+app)
	b, err := cmd.CombinedOutput()
	t.Logf("%s:\n%s", filepath.Base(script), b)
	if err != nil {
		t.Fatalf("the browser check of the overview failed: %v", err)
	}
}
