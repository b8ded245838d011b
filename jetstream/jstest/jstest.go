// Package jstest gives tests the real things they run against: an
// in-process NATS server with JetStream and the kernelbus streams and
// buckets, and a Python interpreter with ipykernel. Every package's tests
// use it, so there is one way to stand up the bus and one rule for when a
// missing Python skips (on a developer's machine) or fails (in CI).
package jstest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/kernelbus/kernelbus/jetstream/embedded"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Env is a running bus.
type Env struct {
	Server *embedded.Server
	// NC is an in-process connection; Bus is bound to it.
	NC  *nats.Conn
	Bus *kbjs.Bus
	// URL is where other processes (launchers) connect, with Token.
	URL   string
	Token string
	// Auth is the installation the server trusts (with Options.Auth); NC
	// then connects with its admin credentials, and Minter mints
	// launchers' credentials.
	Auth   *access.Installation
	Minter *access.Minter
	// CA is the PEM of the private CA of the server's TLS certificate
	// (with Options.TLS); Connect and LaunchAccess trust it.
	CA []byte
}

// Options tune Start.
type Options struct {
	// Token the server requires; default none.
	Token string
	// Layout of the streams; default kbjs.Layout{}.
	Layout kbjs.Layout
	// StoreDir keeps JetStream data; default t.TempDir(). Pass the same
	// folder to a second Start to restart a server on its data.
	StoreDir string
	// Port for NATS clients; default -1 (any free one).
	Port int
	// Auth runs the server in operator mode with a fresh installation, as
	// `kernelbus serve` does: every client needs role or kernel
	// credentials. Default false.
	Auth bool
	// TLS serves the client port with TLS, with a certificate from a
	// private CA (access.WriteTLS), as `kernelbus serve` does. Default
	// false.
	TLS bool
}

// Start runs a server, sets up the streams and buckets, and stops
// everything when the test ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	if o.Port == 0 {
		o.Port = -1
	}
	var inst *access.Installation
	var adminCreds []byte
	if o.Auth {
		var err error
		if inst, err = access.Generate(); err != nil {
			t.Fatal(err)
		}
		if adminCreds, err = inst.Creds(access.RoleAdmin, "", "test-admin", 0); err != nil {
			t.Fatal(err)
		}
	}
	eo := embedded.Options{Port: o.Port, StoreDir: o.StoreDir, Token: o.Token, Auth: inst}
	var ca []byte
	if o.TLS {
		f, err := access.WriteTLS(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		eo.TLSCert, eo.TLSKey = f.Cert, f.Key
		if ca, err = os.ReadFile(f.CA); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := embedded.NewServer(eo)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	nc, err := kbjs.Connect(kbjs.ConnectOptions{InProcess: srv.NATS(), Token: o.Token, Creds: adminCreds, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bus, err := kbjs.Setup(ctx, nc, o.Layout)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Server: srv, NC: nc, Bus: bus, URL: srv.ClientURL(), Token: o.Token, Auth: inst, CA: ca}
	if inst != nil {
		if e.Minter, err = inst.Minter(); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// Connect opens another connection to the server, as role (with
// Options.Auth; a worker's of resource manager rm), closed when the test
// ends.
func (e *Env) Connect(t testing.TB, role, rm string) *nats.Conn {
	t.Helper()
	o := kbjs.ConnectOptions{URLs: e.URL, Token: e.Token, CA: e.CA, Name: t.Name() + " " + role}
	if e.Auth != nil {
		creds, err := e.Auth.Creds(role, rm, "test-"+role, 0)
		if err != nil {
			t.Fatal(err)
		}
		o.Creds = creds
	}
	nc, err := kbjs.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// LaunchAccess prepares what a worker gives a launcher of kernel id: its
// input consumer and, with Options.Auth, credentials of its own.
func (e *Env) LaunchAccess(t testing.TB, cfg *broker.LaunchConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kbjs.EnsureInput(ctx, e.Bus.JS, cfg.KernelID); err != nil {
		t.Fatal(err)
	}
	cfg.NATSURLs, cfg.NATSToken, cfg.NATSCA = e.URL, e.Token, string(e.CA)
	if e.Minter != nil {
		creds, err := e.Minter.LauncherCreds(cfg.KernelID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfg.NATSCreds = creds
	}
}

// Python returns an interpreter that has ipykernel: $KB_TEST_PYTHON, else
// the venv that scripts/setup-python.sh makes. Without one the test is
// skipped, except in CI (CI set), where that is a broken setup and fails.
func Python(t testing.TB) string {
	t.Helper()
	cands := []string{os.Getenv("KB_TEST_PYTHON")}
	if c := os.Getenv("KB_CACHE"); c != "" {
		cands = append(cands, filepath.Join(c, "venv", "bin", "python"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, ".cache", "kernelbus", "venv", "bin", "python"))
	}
	for _, py := range cands {
		if py == "" {
			continue
		}
		if err := exec.Command(py, "-c", "import ipykernel").Run(); err == nil {
			return py
		}
	}
	MissingSetup(t, "no Python with ipykernel: set KB_TEST_PYTHON or run `bash scripts/setup-python.sh` (the test task does)")
	return ""
}

// MissingSetup skips a test whose set-up is missing on a developer's
// machine, and fails it in CI (CI set), where a missing set-up is a broken
// task that would otherwise pass having tested nothing.
func MissingSetup(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal("in CI: " + why)
	}
	t.Skip(why)
}

// NeedEnv is the environment variable name, which a suite's task sets
// (hint says which, or how else to set it). When it is not set the test
// skips, or fails when the variable required is set: suites whose task
// sets one (KB_HELM_REQUIRED, KB_K8S_REQUIRED) never pass having run
// nothing; required "" only skips.
func NeedEnv(t testing.TB, name, required, hint string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if required != "" && os.Getenv(required) != "" {
			t.Fatalf("%s is not set: %s", name, hint)
		}
		t.Skipf("%s is not set (%s)", name, hint)
	}
	return v
}

// KernelbusBin is the kernelbus binary under test ($KERNELBUS_BIN, which
// task test:go builds and sets).
func KernelbusBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("KERNELBUS_BIN")
	if bin == "" {
		MissingSetup(t, "KERNELBUS_BIN is not set (task test:go builds and sets it)")
	}
	return bin
}

// Logger is the logger tests give the parts they run: silent, or with
// KB_TEST_LOG set, every line at debug level in the test's output.
func Logger(t testing.TB) zerolog.Logger {
	if os.Getenv("KB_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// LauncherBin is the kernelbus-launcher under test: $KERNELBUS_LAUNCHER_BIN
// (task test:go builds and sets it), else one built here, static, so that
// it also runs on the hosts and in the images a test copies it to.
func LauncherBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KERNELBUS_LAUNCHER_BIN"); p != "" {
		return p
	}
	out := filepath.Join(t.TempDir(), "kernelbus-launcher")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/kernelbus/kernelbus/cmd/kernelbus-launcher")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build launcher: %v: %s", err, b)
	}
	return out
}
