package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// TestNATSAuthInit: the files of `kernelbus nats-auth init` make a
// nats-server (configured from a file, as an operator's are) trust the
// installation and speak TLS, the parts reach it through nats.conn alone,
// anonymous and untrusting clients are refused, and a second run keeps the
// installation's keys.
func TestNATSAuthInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kb-auth")
	code, out, errOut := runCLI("nats-auth", "init", "--dir", dir, "--tls-hosts", "nats.example,10.9.8.7", "--url", "nats://127.0.0.1:1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "include") {
		t.Errorf("no include hint in %q", out)
	}
	inst1, _ := os.ReadFile(filepath.Join(dir, access.InstallationFile))
	for _, f := range []string{access.ServerConfFile, serverTLSConf, clusterTLSConf, access.FrontendCreds, access.WorkerCreds("local"),
		access.MinterFileName, access.AdminCreds, connFileName, "tls/" + access.TLSKeyFile, "tls/" + access.TLSCAKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: others may read it", f, st.Mode().Perm())
		}
	}
	if code, _, errOut := runCLI("nats-auth", "init", "--dir", dir, "--tls-hosts", "nats.example,10.9.8.7"); code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errOut)
	}
	if inst2, _ := os.ReadFile(filepath.Join(dir, access.InstallationFile)); string(inst1) != string(inst2) {
		t.Fatal("a second run changed the installation's keys")
	}

	// A server configured from a file of the operator's that includes
	// ours, relative to it.
	srvDir := t.TempDir()
	rel, err := filepath.Rel(srvDir, dir)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("listen: 127.0.0.1:-1\njetstream { store_dir: %q }\ninclude %q\ninclude %q\n",
		filepath.Join(srvDir, "js"), filepath.Join(rel, access.ServerConfFile), filepath.Join(rel, serverTLSConf))
	cf := filepath.Join(srvDir, "nats.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(cf)
	if err != nil {
		t.Fatalf("nats-server rejects the configuration: %v", err)
	}
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	// nats.conn with the server's real address.
	connPath := filepath.Join(dir, connFileName)
	b, _ := os.ReadFile(connPath)
	b = []byte(strings.Replace(string(b), "nats://127.0.0.1:1", ns.ClientURL(), 1))
	if err := os.WriteFile(connPath, b, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nf := natsFlags{conn: connPath, setup: true, replicas: 1, busWait: 5 * time.Second}
	if _, err := nf.forRole(access.RoleAdmin, ""); err != nil {
		t.Fatal(err)
	}
	if nf.ca == "" || !strings.HasPrefix(nf.ca, dir) {
		t.Fatalf("CA from nats.conn: %q", nf.ca)
	}
	bus, err := nf.connect(ctx, "admin", zerolog.Nop())
	if err != nil {
		t.Fatalf("admin sets up the bus through nats.conn: %v", err)
	}
	defer bus.NC.Close()
	if _, err := bus.NC.TLSConnectionState(); err != nil {
		t.Error("the admin's connection is not TLS")
	}
	fe := natsFlags{conn: connPath, busWait: 5 * time.Second}
	if _, err := fe.forRole(access.RoleFrontend, ""); err != nil {
		t.Fatal(err)
	}
	feBus, err := fe.connect(ctx, "frontend", zerolog.Nop())
	if err != nil {
		t.Fatalf("front-end through nats.conn: %v", err)
	}
	feBus.NC.Close()

	// No credentials, or no CA: refused.
	anon := natsFlags{urls: ns.ClientURL(), ca: nf.ca, busWait: time.Second}
	if b, err := anon.connect(ctx, "anonymous", zerolog.Nop()); err == nil {
		b.NC.Close()
		t.Error("a client without credentials connected")
	}
	noCA := natsFlags{urls: ns.ClientURL(), creds: nf.creds, busWait: time.Second}
	if b, err := noCA.connect(ctx, "no-ca", zerolog.Nop()); err == nil {
		b.NC.Close()
		t.Error("a client that does not trust the CA connected")
	}
}
