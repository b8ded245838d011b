package jstest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
)

// Servers under test listen on port 0 and say where: kernelbus's own
// processes log it (LogField reads it back). Third-party servers that must
// be told their ports beforehand (JEG, JupyterHub, etcd, kube-apiserver,
// NATS cluster routes, pods on the host network) are started by
// RetryPorts, the one place that picks ports: with ports that were free a
// moment ago, and again with new ones when another process took one first,
// so that a collision costs a retry, not a failed test.

// freePorts is n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// portAttempts bounds RetryPorts: a port is taken between its pick and the
// server's bind only under heavy parallel load, and rarely twice running.
const portAttempts = 5

// RetryPorts starts a server that must be told its ports beforehand: it
// calls start with n distinct loopback ports that were free a moment ago
// and, when start fails because one of them was taken since, calls it
// again with new ports. start tells by its error, which holds the
// server's output (PortTaken reads it), and stops what it started before
// it returns one. RetryPorts returns nil once start succeeds, start's
// error when that is not a taken port, and the last error after five
// attempts.
func RetryPorts(n int, start func(ports []int) error) error {
	var err error
	for range portAttempts {
		var ports []int
		if ports, err = freePorts(n); err != nil {
			return err
		}
		if err = start(ports); err == nil || !PortTaken(err.Error()) {
			return err
		}
	}
	return fmt.Errorf("%d attempts with new ports: %w", portAttempts, err)
}

// PortTaken reports whether a server's output says it could not listen
// because its address was in use: Go and Python servers, etcd, the
// Kubernetes binaries and nats-server say "address already in use", JEG
// (Tornado, told --port_retries 0) "no available port".
func PortTaken(output string) bool {
	return strings.Contains(output, "address already in use") || strings.Contains(output, "no available port")
}

// LogField finds, from offset on, the first JSON log line of the file at
// path whose message is msg and returns its field: how a test learns the
// address a kernelbus process told to listen on port 0 got ("kernelbus
// serving" and "kernelbus front-end serving", field url).
func LogField(path string, offset int64, msg, field string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil || line["message"] != msg {
			continue
		}
		if v, ok := line[field].(string); ok && v != "" {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %q line with %s in %s yet", msg, field, path)
}
