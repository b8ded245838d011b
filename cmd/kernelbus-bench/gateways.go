package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/client"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// gateway is a gateway process the bench started, and the target that
// starts kernels through it.
type gateway struct {
	name string
	// main is the process clients talk to; for kernelbus, serve (embedded
	// NATS, front-end, local workers).
	main *proc
	// fe, when set, is a separate kernelbus frontend process on serve's
	// NATS: the memory scenario measures it alone.
	fe  *proc
	c   *client.Client
	v1  bool
	dir string
}

func (g *gateway) Name() string { return g.name }

func (g *gateway) Start(ctx context.Context, spec string) (session, error) {
	return startGateway(ctx, g.c, spec, g.v1)
}

func (g *gateway) stop() {
	if g.fe != nil {
		g.fe.stop(20 * time.Second)
	}
	g.main.stop(30 * time.Second)
}

func httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}, Timeout: 5 * time.Minute}
}

// startKernelbus runs `kernelbus serve` on port 0 with the bench's
// kernelspecs.
func startKernelbus(ctx context.Context, cfg *config, specDir string, extra ...string) (*gateway, error) {
	dir, err := os.MkdirTemp(cfg.work, "kernelbus-")
	if err != nil {
		return nil, err
	}
	// One bench client holds up to 1000 kernels' websockets: no per-caller cap.
	// Info level for the "kernelbus serving" line that says the address
	// (a few lines a kernel); the launchers log at warn (KB_LOG_LEVEL).
	argv := append([]string{cfg.kernelbusBin, "serve", "--max-websockets-per-caller", "-1",
		"--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--kernelspec-dir", specDir, "--launcher", cfg.launcherBin, "--log-level", "info",
		// Kernel ports below Linux's ephemeral range (32768-60999), which
		// the launchers' and clients' own connections take from.
		"--launch-timeout", "120s", "--port-range", "20000..31999", "--insecure-no-auth"}, append(cfg.kbArgs, extra...)...)
	p, c, err := startListening(ctx, "kernelbus", dir, "kernelbus serving", argv...)
	if err != nil {
		return nil, err
	}
	return &gateway{name: "kernelbus", main: p, c: c, v1: true, dir: dir}, nil
}

// addFrontend starts a separate `kernelbus frontend` on serve's embedded
// NATS and points the gateway's client at it.
func (g *gateway) addFrontend(ctx context.Context, cfg *config, specDir string) error {
	p, c, err := startListening(ctx, "kernelbus-frontend", g.dir, "kernelbus front-end serving", cfg.kernelbusBin, "frontend", "--max-websockets-per-caller", "-1",
		"--listen", "127.0.0.1:0", "--nats-conn", filepath.Join(g.dir, "data", "nats.conn"),
		"--kernelspec-dir", specDir, "--log-level", "info", "--launch-timeout", "120s", "--insecure-no-auth")
	if err != nil {
		return err
	}
	g.fe, g.c = p, c
	return nil
}

// startListening runs a kernelbus command that listens on port 0, learns
// its URL from the log line msg and waits until its API answers.
func startListening(ctx context.Context, name, dir, msg string, argv ...string) (*proc, *client.Client, error) {
	p, err := startProc(name, dir, []string{"KB_LOG_LEVEL=warn"}, argv...)
	if err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	base, err := p.loggedURL(wctx, msg)
	if err != nil {
		p.stop(10 * time.Second)
		return nil, nil, err
	}
	c, err := p.ready(wctx, base)
	return p, c, err
}

// ready waits until the gateway at base answers /api and returns a client
// of it; it stops the process when it does not.
func (p *proc) ready(ctx context.Context, base string) (*client.Client, error) {
	if err := p.waitHTTP(ctx, base+"/api"); err != nil {
		p.stop(10 * time.Second)
		return nil, err
	}
	return &client.Client{BaseURL: base, HTTP: httpClient()}, nil
}

// startJEG runs Jupyter Enterprise Gateway from its own venv, on a free
// port, with the bench's kernelspecs (LocalProcessProxy). JEG cannot say
// which port it took when given 0, so the bench picks one and, should
// another process take it first (JEG then exits: "no available port"),
// jstest.RetryPorts picks another.
func startJEG(ctx context.Context, cfg *config, jupyterPath string) (*gateway, error) {
	dir, err := os.MkdirTemp(cfg.work, "jeg-")
	if err != nil {
		return nil, err
	}
	env := []string{
		"JUPYTER_PATH=" + jupyterPath,
		"JUPYTER_DATA_DIR=" + filepath.Join(dir, "data"),
		"JUPYTER_RUNTIME_DIR=" + filepath.Join(dir, "runtime"),
		"JUPYTER_CONFIG_DIR=" + filepath.Join(dir, "config"),
	}
	var g *gateway
	err = jstest.RetryPorts(1, func(ports []int) error {
		port := strconv.Itoa(ports[0])
		p, err := startProc("jeg", dir, env, filepath.Join(cfg.jegVenv, "bin", "jupyter"), "enterprisegateway",
			"--ip", "127.0.0.1", "--port", port, "--port_retries", "0",
			"--EnterpriseGatewayApp.list_kernels=True", "--log-level", "WARN")
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		c, err := p.ready(wctx, "http://127.0.0.1:"+port)
		if err != nil {
			// ready stopped it; its log says whether the port was taken.
			b, _ := os.ReadFile(p.log)
			return fmt.Errorf("%w\n%s", err, jstest.Tail(string(b), 30))
		}
		g = &gateway{name: "jeg", main: p, c: c, v1: true, dir: dir}
		return nil
	})
	return g, err
}

const (
	specPython = "kb-bench-python3"
	specSynth  = "kb-bench-synth"
)

// writeSpecs writes the two kernelspecs under root/share/jupyter/kernels
// (JEG finds them through JUPYTER_PATH, kernelbus through
// --kernelspec-dir). Both say LocalProcessProxy, which kernelbus maps to
// its local workers.
func writeSpecs(root string, cfg *config) (jupyterPath, kernelsDir string, specs map[string]broker.KernelSpec, err error) {
	jupyterPath = filepath.Join(root, "share", "jupyter")
	kernelsDir = filepath.Join(jupyterPath, "kernels")
	local := map[string]any{"process_proxy": map[string]any{
		"class_name": "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy"}}
	specs = map[string]broker.KernelSpec{
		specPython: {Argv: []string{cfg.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			DisplayName: "Python 3 (bench)", Language: "python", InterruptMode: "signal", Metadata: local},
		specSynth: {Argv: []string{cfg.synthBin, "{connection_file}"},
			DisplayName: "Synthetic (bench)", Language: "synthetic", InterruptMode: "signal", Metadata: local},
	}
	for name, s := range specs {
		d := filepath.Join(kernelsDir, name)
		if err = os.MkdirAll(d, 0o755); err != nil {
			return
		}
		if err = writeJSON(filepath.Join(d, "kernel.json"), s); err != nil {
			return
		}
	}
	if _, err = os.Stat(cfg.python); err != nil {
		err = fmt.Errorf("--python: %w", err)
	}
	return
}
