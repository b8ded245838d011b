package launcher

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/go-zeromq/zmq4"
	"github.com/kernelbus/kernelbus/launcher/wire"
)

// fakeKernelEnv makes the test binary act as a minimal Jupyter kernel (see
// fakeKernel). It is not a KB_ variable because the launcher strips those.
const fakeKernelEnv = "LAUNCHER_TEST_FAKE_KERNEL"

func TestMain(m *testing.M) {
	if os.Getenv(fakeKernelEnv) == "1" {
		os.Exit(fakeKernel(os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// fakeKernel is a Go kernel that answers at once, so that tests measure
// the relay rather than ipykernel. It speaks the wire protocol with zmq4:
//   - kernel_info_request → kernel_info_reply, with busy/idle statuses;
//   - execute_request "flood N" publishes N small stream messages on iopub
//     before its reply; any other code just replies ok;
//   - shutdown_request on control → shutdown_reply, exit.
func fakeKernel(connFile string) int {
	data, err := os.ReadFile(connFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var ci connInfo
	if err := json.Unmarshal(data, &ci); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	ep := func(port int) string { return fmt.Sprintf("tcp://%s:%d", ci.IP, port) }
	shell, control := zmq4.NewRouter(ctx), zmq4.NewRouter(ctx)
	stdin := zmq4.NewRouter(ctx)
	iopub, hb := zmq4.NewPub(ctx), zmq4.NewRep(ctx)
	for _, s := range []struct {
		s    zmq4.Socket
		port int
	}{{shell, ci.ShellPort}, {control, ci.ControlPort}, {stdin, ci.StdinPort}, {iopub, ci.IOPubPort}, {hb, ci.HBPort}} {
		if err := s.s.Listen(ep(s.port)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	go func() {
		for {
			m, err := hb.Recv()
			if err != nil {
				return
			}
			_ = hb.Send(m)
		}
	}()
	session := newUUID()
	sg := wire.NewSigner(ci.Key)
	empty := []byte("{}")
	header := func(msgType string) []byte {
		_, h := newHeader(msgType, session, "fake")
		return h
	}
	publish := func(topic, msgType string, parent, content []byte) {
		h := header(msgType)
		frames := [][]byte{[]byte(topic), wire.Delimiter, sg.Sign(h, parent, empty, content), h, parent, empty, content}
		_ = iopub.SendMulti(zmq4.NewMsgFrom(frames...))
	}
	reply := func(s zmq4.Socket, ids [][]byte, msgType string, parent, content []byte) {
		h := header(msgType)
		frames := append(append([][]byte{}, ids...), wire.Delimiter, sg.Sign(h, parent, empty, content), h, parent, empty, content)
		_ = s.SendMulti(zmq4.NewMsgFrom(frames...))
	}
	busy, idle := []byte(`{"execution_state":"busy"}`), []byte(`{"execution_state":"idle"}`)
	stream := []byte(`{"name":"stdout","text":"0123456789012345678901234567890123456789\n"}`)
	serve := func(s zmq4.Socket, exit bool) {
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			d := -1
			for i, f := range m.Frames {
				if string(f) == string(wire.Delimiter) {
					d = i
					break
				}
			}
			if d < 0 || len(m.Frames) < d+6 {
				continue
			}
			ids, hdr, content := m.Frames[:d], m.Frames[d+2], m.Frames[d+5]
			var v [1][]byte
			_ = scanStrings(hdr, []string{"msg_type"}, v[:])
			msgType := string(v[0])
			publish("status", "status", hdr, busy)
			switch msgType {
			case "kernel_info_request":
				reply(s, ids, "kernel_info_reply", hdr, []byte(`{"status":"ok","protocol_version":"5.3","implementation":"fake","language_info":{"name":"fake"}}`))
			case "execute_request":
				var c struct{ Code string }
				_ = json.Unmarshal(content, &c)
				if n, ok := strings.CutPrefix(c.Code, "flood "); ok {
					count, _ := strconv.Atoi(n)
					// One signed message sent count times: the kernel side
					// must be much faster than the relay it measures.
					h := header("stream")
					frames := [][]byte{[]byte("stream.stdout"), wire.Delimiter, sg.Sign(h, hdr, empty, stream), h, hdr, empty, stream}
					for i := 0; i < count; i++ {
						_ = iopub.SendMulti(zmq4.NewMsgFrom(frames...))
					}
				}
				reply(s, ids, "execute_reply", hdr, []byte(`{"status":"ok","execution_count":1}`))
			case "shutdown_request":
				reply(s, ids, "shutdown_reply", hdr, content)
				if exit {
					os.Exit(0)
				}
			default:
				reply(s, ids, strings.TrimSuffix(msgType, "_request")+"_reply", hdr, []byte(`{"status":"ok"}`))
			}
			publish("status", "status", hdr, idle)
		}
	}
	go serve(control, true)
	serve(shell, false)
	return 0
}
