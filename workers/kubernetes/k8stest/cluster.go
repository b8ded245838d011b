// Package k8stest starts a real Kubernetes control plane for tests: etcd,
// kube-apiserver, kube-controller-manager (namespaces, service accounts,
// deployments, replica and stateful sets, garbage collection) and
// kube-scheduler, built from the Go module proxy by scripts/k8s-build.sh
// and found through $KB_K8S_BIN. No kubelet runs; a nodeagent.Agent plays
// one. Everything listens on free loopback ports and is killed when the test
// ends, also when it fails.
package k8stest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/jetstream/jstest"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// EnvBin names the folder holding etcd and the kube-* binaries.
const EnvBin = "KB_K8S_BIN"

// EnvRequired, when set, makes a missing EnvBin a test failure instead of
// a skip (the test:k8s task sets it).
const EnvRequired = "KB_K8S_REQUIRED"

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds certificates, the kubeconfig, etcd's data and the logs.
	Dir string
	// Kubeconfig is a file with admin credentials.
	Kubeconfig string
	// Config is the admin's client configuration.
	Config *rest.Config
	// Client is an admin client.
	Client k8s.Interface

	mu    sync.Mutex
	procs []running
}

type running struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Bin returns the binaries folder, skipping (or failing) the test when it
// is not configured.
func Bin(t testing.TB) string {
	t.Helper()
	dir := jstest.NeedEnv(t, EnvBin, EnvRequired, "task test:k8s builds the control plane with scripts/k8s-build.sh and sets it")
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%s: %v", EnvBin, err)
		}
	}
	return dir
}

// HostPaths fails the test when a host file that the node agent's pods run
// (the launcher, the kernel's Python) lies under /tmp: every pod gets a
// private /tmp, so such a kernel would exit 127 ("not found") instead of
// starting. names maps an environment variable to its path.
func HostPaths(t testing.TB, names map[string]string) {
	t.Helper()
	if err := hostPathsErr(names); err != nil {
		t.Fatal(err)
	}
}

func hostPathsErr(names map[string]string) error {
	var bad []string
	for name, p := range names {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("%s=%s: %w", name, p, err)
		}
		under := underTmp(abs)
		// A venv's python is a link out of it; its packages stay in the venv, so
		// both the path and its target must be outside /tmp.
		if real, err := filepath.EvalSymlinks(abs); err == nil && underTmp(real) {
			under = true
		}
		if under {
			bad = append(bad, name+"="+p)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return fmt.Errorf("%s under /tmp: pods of the node agent get a private /tmp and cannot run it; "+
		"keep the clone and KB_CACHE outside /tmp (e.g. under $HOME)", strings.Join(bad, ", "))
}

func underTmp(p string) bool {
	return p == "/tmp" || strings.HasPrefix(p, "/tmp/")
}

// Start runs the control plane and waits until the API server is ready and
// the default namespace has its service account. Cleanup kills it all.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin := Bin(t)
	dir, err := os.MkdirTemp("", "kb-k8s-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir}
	t.Cleanup(func() {
		c.stop()
		if !t.Failed() {
			_ = os.RemoveAll(dir)
		} else {
			t.Logf("control plane logs kept in %s", dir)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.start(ctx, bin); err != nil {
		t.Fatalf("kubernetes control plane: %v (logs in %s)", err, dir)
	}
	return c
}

// start runs the control plane. etcd and the API server must be told
// their ports beforehand: one taken between its pick and the bind costs a
// start with new ones (jstest.RetryPorts), after what the first started is
// stopped.
func (c *Cluster) start(ctx context.Context, bin string) error {
	return jstest.RetryPorts(3, func(ports []int) error {
		err := c.startOn(ctx, bin, ports)
		if err != nil {
			c.stop()
			if taken := c.portTaken(); taken != "" {
				err = fmt.Errorf("%w: %s", err, taken)
			}
		}
		return err
	})
}

// portTaken is the log line of etcd or the API server that says its port
// was taken, or "".
func (c *Cluster) portTaken() string {
	for _, name := range []string{"etcd", "kube-apiserver"} {
		b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
		for _, l := range strings.Split(string(b), "\n") {
			if jstest.PortTaken(l) {
				return name + ": " + l
			}
		}
	}
	return ""
}

func (c *Cluster) startOn(ctx context.Context, bin string, ports []int) error {
	// A data folder of an attempt whose port was taken names its ports.
	if err := os.RemoveAll(filepath.Join(c.Dir, "etcd")); err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := c.run(bin, "etcd", "--name=default", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}

	caPEM, err := c.writeCerts()
	if err != nil {
		return err
	}
	token := randomHex(16)
	if err := os.WriteFile(filepath.Join(c.Dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	f := func(n string) string { return filepath.Join(c.Dir, n) }
	if err := c.run(bin, "kube-apiserver", "--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[2]),
		"--tls-cert-file="+f("apiserver.crt"), "--tls-private-key-file="+f("apiserver.key"), "--client-ca-file="+f("ca.crt"),
		"--service-account-key-file="+f("sa.key"), "--service-account-signing-key-file="+f("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/24", "--token-auth-file="+f("tokens.csv"),
		"--authorization-mode=RBAC", "--cert-dir="+f("certs"), "--enable-priority-and-fairness=false",
		"--storage-media-type=application/vnd.kubernetes.protobuf"); err != nil {
		return err
	}
	c.Config = &rest.Config{Host: server, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}, QPS: 100, Burst: 200}
	c.Kubeconfig = f("kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, server, f("ca.crt"), token)
	if err := os.WriteFile(c.Kubeconfig, []byte(kc), 0o600); err != nil {
		return err
	}
	if err := c.waitReady(ctx, server, token, caPEM); err != nil {
		return err
	}
	if err := c.run(bin, "kube-controller-manager", "--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers=namespace-controller,serviceaccount-controller,deployment-controller,replicaset-controller,statefulset-controller,serviceaccount-token-controller,garbage-collector-controller,root-ca-certificate-publisher-controller",
		"--service-account-private-key-file="+f("sa.key"), "--root-ca-file="+f("ca.crt"),
		"--concurrent-namespace-syncs=5", "--concurrent-gc-syncs=20"); err != nil {
		return err
	}
	if err := c.run(bin, "kube-scheduler", "--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0"); err != nil {
		return err
	}
	cs, err := k8s.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	c.Client = cs
	return nil
}

// run starts one binary in its own process group, killed with the test
// process if that dies first; its output goes to <name>.log.
func (c *Cluster) run(bin, name string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	r := running{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(r.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, r)
	c.mu.Unlock()
	return nil
}

// stop kills the control plane in reverse order of start.
func (c *Cluster) stop() {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
}

func (c *Cluster) waitReady(ctx context.Context, server, token string, caPEM []byte) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var last string
	for {
		// An API server on etcd's port taken by another etcd may be ready,
		// and wrong: etcd tells in its log within a second of its start.
		if taken := c.portTaken(); taken != "" {
			return fmt.Errorf("kube-apiserver not ready: %s", taken)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %s", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writeCerts makes a CA, the API server's serving certificate and the
// service-account signing key.
func (c *Cluster) writeCerts() ([]byte, error) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kernelbus-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	for name, blk := range map[string]*pem.Block{
		"ca.crt":        {Type: "CERTIFICATE", Bytes: caDER},
		"apiserver.crt": {Type: "CERTIFICATE", Bytes: srvDER},
		"apiserver.key": ecKey(srvKey),
		"sa.key":        ecKey(saKey),
	} {
		if err := os.WriteFile(filepath.Join(c.Dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}

func ecKey(k *ecdsa.PrivateKey) *pem.Block {
	der, _ := x509.MarshalECPrivateKey(k)
	return &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
