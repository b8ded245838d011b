package wire

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// BufferedTCP is the transport the launcher dials kernels with: TCP whose
// reads go through a buffer. zmq4 reads every frame header and body with
// its own read call, so a small iopub message of seven frames cost about
// fifteen syscalls; measured, that capped the relay near 10k messages/s.
// Importing this package registers it with zmq4.
const BufferedTCP = "kbtcp"

func init() {
	if err := zmq4.RegisterTransport(BufferedTCP, bufTransport{}); err != nil {
		panic(err)
	}
}

type bufTransport struct{}

func (bufTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &bufConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

func (bufTransport) Listen(_ context.Context, addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

func (bufTransport) Addr(ep string) (string, error) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", err
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("bad port in %q", ep)
	}
	return net.JoinHostPort(host, port), nil
}

// bufConn reads through a buffer; only one goroutine reads a zmq4
// connection, so the buffer needs no lock.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }
