package launcher

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// connInfo is a Jupyter connection file. The launcher writes it itself so
// that the key never leaves this host.
type connInfo struct {
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	IP              string `json:"ip"`
	Key             string `json:"key"`
	Transport       string `json:"transport"`
	SignatureScheme string `json:"signature_scheme"`
	KernelName      string `json:"kernel_name"`
}

// newConnInfo picks fresh ports and a fresh key.
func newConnInfo(ip, kernelName string) (*connInfo, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	ci := &connInfo{IP: ip, Key: hex.EncodeToString(k[:]), Transport: "tcp",
		SignatureScheme: "hmac-sha256", KernelName: kernelName}
	if err := ci.pickPorts(); err != nil {
		return nil, err
	}
	return ci, nil
}

// pickPorts asks the OS for five free ports on ip. All five listeners are
// held open together so that the ports differ; the kernel binds them a
// moment later, the same (unavoidable) race jupyter_client accepts.
func (ci *connInfo) pickPorts() error {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 5)
	for i := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(ci.IP, "0"))
		if err != nil {
			return fmt.Errorf("find a free port on %s: %w", ci.IP, err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	ci.ShellPort, ci.IOPubPort, ci.StdinPort, ci.ControlPort, ci.HBPort = ports[0], ports[1], ports[2], ports[3], ports[4]
	return nil
}

// write stores the file with mode 0600 (it holds the key).
func (ci *connInfo) write(path string) error {
	b, err := json.MarshalIndent(ci, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// endpoint is where the launcher dials port: the kernel's IP, or loopback
// when the kernel listens on every interface. The scheme is the launcher's
// buffered TCP transport.
func (ci *connInfo) endpoint(port int) string {
	host := ci.IP
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return bufferedTCP + "://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// privateDir creates the 0700 directory that holds the connection file and
// any credentials file.
func privateDir(kernelID string) (string, error) {
	dir, err := os.MkdirTemp("", "kernelbus-"+kernelID+"-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func connFilePath(dir, kernelID string) string {
	return filepath.Join(dir, "kernel-"+kernelID+".json")
}
