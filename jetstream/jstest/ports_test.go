package jstest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
)

// A start whose port was taken runs again with new ports; any other
// failure ends RetryPorts at once, with start's error.
func TestRetryPorts(t *testing.T) {
	// A port another process holds: the first attempt is told it.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var tried [][]int
	listen := func(ports []int) error {
		tried = append(tried, ports)
		if len(tried) == 1 {
			ports[1] = held.Addr().(*net.TCPAddr).Port
		}
		for _, p := range ports {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				return fmt.Errorf("server exited: %w", err)
			}
			defer l.Close()
		}
		return nil
	}
	if err := RetryPorts(2, listen); err != nil {
		t.Fatalf("RetryPorts: %v", err)
	}
	if len(tried) != 2 || tried[0][0] == tried[0][1] || tried[1][0] == tried[1][1] {
		t.Errorf("attempts %v: want two, each with two distinct ports", tried)
	}

	other := errors.New("bad config")
	n := 0
	if err := RetryPorts(1, func([]int) error { n++; return other }); !errors.Is(err, other) || n != 1 {
		t.Errorf("another failure: %v after %d attempts, want it after 1", err, n)
	}
	n = 0
	taken := errors.New("no available port")
	if err := RetryPorts(1, func([]int) error { n++; return taken }); !errors.Is(err, taken) || n != portAttempts {
		t.Errorf("a port always taken: %v after %d attempts, want %d", err, n, portAttempts)
	}
}
