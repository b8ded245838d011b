package wire

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
)

// ConnInfo is a Jupyter connection file.
type ConnInfo struct {
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

// NewConnInfo picks fresh ports on ip and a fresh key.
func NewConnInfo(ip, kernelName string) (*ConnInfo, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	ci := &ConnInfo{IP: ip, Key: hex.EncodeToString(k[:]), Transport: "tcp",
		SignatureScheme: "hmac-sha256", KernelName: kernelName}
	if err := ci.PickPorts(); err != nil {
		return nil, err
	}
	return ci, nil
}

// ReadConnInfo reads a connection file.
func ReadConnInfo(path string) (*ConnInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ci ConnInfo
	if err := json.Unmarshal(data, &ci); err != nil {
		return nil, fmt.Errorf("connection file %s: %w", path, err)
	}
	return &ci, nil
}

// PickPortsIn takes five free ports on ci.IP from lo..hi, starting at a random
// port of the range and going round it, holding them all open together so
// that they differ. A range kept out of the OS's ephemeral ports is what
// makes a collision with another process's outgoing connection, taken
// between this pick and the kernel's bind, impossible. lo = hi = 0 is
// PickPorts.
func (ci *ConnInfo) PickPortsIn(lo, hi int) error {
	if lo == 0 && hi == 0 {
		return ci.PickPorts()
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	n := hi - lo + 1
	var b [4]byte
	_, _ = rand.Read(b[:])
	start := int(uint32(b[0])|uint32(b[1])<<8|uint32(b[2])<<16|uint32(b[3])<<24) % n
	ports := make([]int, 0, 5)
	for i := 0; i < n && len(ports) < 5; i++ {
		port := lo + (start+i)%n
		l, err := net.Listen("tcp", net.JoinHostPort(ci.IP, strconv.Itoa(port)))
		if err != nil {
			continue // taken
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	if len(ports) < 5 {
		return fmt.Errorf("port range %d..%d on %s: fewer than 5 free ports", lo, hi, ci.IP)
	}
	ci.ShellPort, ci.IOPubPort, ci.StdinPort, ci.ControlPort, ci.HBPort = ports[0], ports[1], ports[2], ports[3], ports[4]
	return nil
}

// PickPorts asks the OS for five free ports on ci.IP. All five listeners
// are held open together so that the ports differ; the kernel binds them a
// moment later, the same (unavoidable) race jupyter_client accepts.
func (ci *ConnInfo) PickPorts() error {
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

// Write stores the file with mode 0600 (it holds the key).
func (ci *ConnInfo) Write(path string) error {
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

// Endpoint is where a client dials port: the kernel's IP, or loopback
// when the kernel listens on every interface. The scheme is the buffered
// TCP transport.
func (ci *ConnInfo) Endpoint(port int) string {
	host := ci.IP
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return BufferedTCP + "://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// ListenEndpoint is where a kernel binds port (plain tcp).
func (ci *ConnInfo) ListenEndpoint(port int) string {
	return "tcp://" + net.JoinHostPort(ci.IP, strconv.Itoa(port))
}
