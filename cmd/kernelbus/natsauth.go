package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kernelbus/kernelbus/jetstream/access"
)

// Files `kernelbus nats-auth init` writes besides those of access.WriteFiles.
const (
	// serverTLSConf is the top-level tls block of every nats-server.
	serverTLSConf = "nats-server-tls.conf"
	// clusterTLSConf is the tls block for inside a cluster block: routes
	// between the nodes use the same certificate and CA.
	clusterTLSConf = "nats-server-cluster-tls.conf"
	// connFileName is the nats.conn the parts are pointed at (--nats-conn).
	connFileName = "nats.conn"
	// tlsDirName holds the private CA and the servers' certificate.
	tlsDirName = "tls"
)

func cmdNATSAuth(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprint(stderr, `Usage: kernelbus nats-auth init --dir D [--url URLS] [--tls-hosts h1,h2]

Writes into D what an operator's own NATS cluster and the kernelbus parts
need to keep kernels apart on the bus: the nats-server configuration that
trusts this installation (include it in every node's configuration), role
credentials for front-ends, workers and admins, the workers' launcher
minter, and with --tls-hosts a private CA and a server certificate. Run it
again to renew files: the installation's keys are kept.
`)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return errUsage
	}
	fs := newFlagSet("nats-auth init", stderr)
	dir := fs.String("dir", "", "folder for the files (created 0700); keep it with the admin, copy role files to the parts' hosts")
	url := fs.String("url", "", "NATS URLs of the cluster, comma separated, written to nats.conn for the parts (default: what nats.conn says, else nats://127.0.0.1:4222)")
	var hosts listFlag
	fs.Var(&hosts, "tls-hosts", "names and addresses of the NATS servers (comma separated): writes a private CA and a server certificate for them, and TLS configuration includes")
	if err := parse(fs.FlagSet, args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required: the folder to write the installation's files to")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	inst, err := access.LoadOrGenerate(d)
	if err != nil {
		return err
	}
	if err := access.WriteFiles(d, inst); err != nil {
		return err
	}
	if *url == "" {
		*url = "nats://127.0.0.1:4222"
		if cf, err := readConnFile(filepath.Join(d, connFileName)); err == nil {
			*url = cf.url
		}
	}
	conn := "url=" + *url + "\n"
	if len(hosts) > 0 {
		f, err := access.WriteTLS(filepath.Join(d, tlsDirName), hosts)
		if err != nil {
			return err
		}
		// nats-server resolves certificate paths against its working
		// directory, not the configuration file: absolute paths.
		block := fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  timeout: 5\n%%s}\n", f.Cert, f.Key, f.CA)
		files := map[string]string{
			serverTLSConf: fmt.Sprintf(block, ""),
			// Routes authenticate each other with the certificate too.
			clusterTLSConf: fmt.Sprintf(block, "  verify: true\n"),
		}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o600); err != nil {
				return err
			}
		}
		conn += "ca=" + filepath.Join(tlsDirName, access.TLSCAFile) + "\n"
	}
	// auth= and ca= are relative to nats.conn, so the folder can be copied
	// to another host as a whole.
	conn += "auth=.\n"
	if err := os.WriteFile(filepath.Join(d, connFileName), []byte(conn), 0o600); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "kernelbus nats-auth: wrote %s\n", d)
	fmt.Fprintf(&b, "  in every nats-server configuration (include paths are relative to that file):\n")
	fmt.Fprintf(&b, "    include %q\n", filepath.Join(d, access.ServerConfFile))
	if len(hosts) > 0 {
		fmt.Fprintf(&b, "    include %q\n", filepath.Join(d, serverTLSConf))
		fmt.Fprintf(&b, "    and inside cluster { }: include %q\n", filepath.Join(d, clusterTLSConf))
	}
	fmt.Fprintf(&b, "  parts: --nats-conn %s (front-ends use %s, workers %s and %s)\n",
		filepath.Join(d, connFileName), access.FrontendCreds, access.WorkerCreds("<rm>"), access.MinterFileName)
	_, err = io.WriteString(stdout, b.String())
	return err
}
