package launcher

import (
	"github.com/kernelbus/kernelbus/broker"
	"os"
	"path/filepath"

	"github.com/kernelbus/kernelbus/launcher/wire"
)

// connInfo is a Jupyter connection file (launcher/wire). The launcher
// writes it itself so that the key never leaves this host.
type connInfo struct {
	wire.ConnInfo
	ports broker.PortRange
}

// newConnInfo picks fresh ports (from ports, if not zero) and a fresh key.
func newConnInfo(ip, kernelName string, ports broker.PortRange) (*connInfo, error) {
	w, err := wire.NewConnInfo(ip, kernelName)
	if err != nil {
		return nil, err
	}
	ci := &connInfo{ConnInfo: *w, ports: ports}
	if !ports.IsZero() {
		if err := ci.pickPorts(); err != nil {
			return nil, err
		}
	}
	return ci, nil
}

func (ci *connInfo) pickPorts() error { return ci.PickPortsIn(ci.ports.Lo, ci.ports.Hi) }

// write stores the file with mode 0600 (it holds the key).
func (ci *connInfo) write(path string) error { return ci.Write(path) }

// endpoint is where the launcher dials port, over the buffered transport.
func (ci *connInfo) endpoint(port int) string { return ci.Endpoint(port) }

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
