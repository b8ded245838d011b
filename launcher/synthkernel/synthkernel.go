// Package synthkernel is a synthetic Jupyter kernel: it speaks the
// messaging protocol over ZMQ (kernel_info, execute, interrupt by signal or
// message, shutdown, heartbeat), costs a few MB and starts in milliseconds.
// It is the one Go kernel of the project: the benchmark runs a thousand of
// them as cmd/kb-synthkernel to measure the gateway rather than Python, and
// the launcher's tests run it (their test binary re-executed) so that they
// measure the relay rather than ipykernel.
//
// The code of an execute_request is a tiny directive language, one
// directive per line, run in order:
//
//	emit n=100000 size=1024     n stream messages (stdout) of size bytes each
//	display size=10485760 count=10   count display_data messages of size bytes
//	sleep ms=5                  wait (an interrupt ends it early)
//	fail                        reply with status "error"
//
// Anything else (an empty cell, "pass", "1+1") replies ok at once.
package synthkernel

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/kernelbus/kernelbus/launcher/wire"
)

// Main runs a kernel on the connection file named by its one argument
// until a shutdown_request or SIGTERM, and returns the exit code.
func Main(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: kb-synthkernel <connection-file>")
		return 2
	}
	ci, err := wire.ReadConnInfo(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kb-synthkernel:", err)
		return 1
	}
	k, err := newKernel(ci)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kb-synthkernel:", err)
		return 1
	}
	defer k.close()
	return k.serve()
}

type kernel struct {
	session string
	shell   zmq4.Socket
	control zmq4.Socket
	stdin   zmq4.Socket
	hb      zmq4.Socket
	// iopub is written by the shell and control loops; pubMu serialises
	// them (zmq4 sockets take one sender at a time).
	iopub zmq4.Socket
	pubMu sync.Mutex
	key   string
	// interrupts receives SIGINT; a running directive watches it.
	interrupts chan os.Signal
	done       chan int
	execCount  int
	seq        uint64
	hdrMu      sync.Mutex
}

func newKernel(ci *wire.ConnInfo) (*kernel, error) {
	ctx := context.Background() // the sockets live as long as the process; close ends them
	k := &kernel{
		session:    wireID(),
		shell:      zmq4.NewRouter(ctx),
		control:    zmq4.NewRouter(ctx),
		stdin:      zmq4.NewRouter(ctx),
		iopub:      zmq4.NewPub(ctx),
		hb:         zmq4.NewRep(ctx),
		key:        ci.Key,
		interrupts: make(chan os.Signal, 1),
		done:       make(chan int, 1),
	}
	for _, s := range []struct {
		s    zmq4.Socket
		port int
	}{{k.shell, ci.ShellPort}, {k.control, ci.ControlPort}, {k.stdin, ci.StdinPort}, {k.iopub, ci.IOPubPort}, {k.hb, ci.HBPort}} {
		if err := s.s.Listen(ci.ListenEndpoint(s.port)); err != nil {
			k.close()
			return nil, err
		}
	}
	signal.Notify(k.interrupts, syscall.SIGINT)
	return k, nil
}

func (k *kernel) close() {
	for _, s := range []zmq4.Socket{k.shell, k.control, k.stdin, k.iopub, k.hb} {
		_ = s.Close()
	}
}

// serve runs until a shutdown_request or SIGTERM.
func (k *kernel) serve() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		for {
			m, err := k.hb.Recv()
			if err != nil {
				return
			}
			_ = k.hb.Send(m)
		}
	}()
	go k.loop(k.control, wire.NewSigner(k.key), wire.NewSigner(k.key))
	go k.loop(k.shell, wire.NewSigner(k.key), wire.NewSigner(k.key))
	select {
	case code := <-k.done:
		return code
	case <-term:
		return 0
	}
}

var (
	empty = []byte("{}")
	busy  = []byte(`{"execution_state":"busy"}`)
	idle  = []byte(`{"execution_state":"idle"}`)
)

const kernelInfo = `{"status":"ok","protocol_version":"5.3","implementation":"kb-synthkernel","implementation_version":"1.0",` +
	`"language_info":{"name":"synthetic","version":"1.0","mimetype":"text/plain","file_extension":".txt"},"banner":"synthetic kernel","help_links":[]}`

// loop answers requests on one ROUTER socket. sg signs replies, psg iopub
// messages (a Signer is not safe for concurrent use).
func (k *kernel) loop(s zmq4.Socket, sg, psg *wire.Signer) {
	for {
		m, err := s.Recv()
		if err != nil {
			return
		}
		d := -1
		for i, f := range m.Frames {
			if bytes.Equal(f, wire.Delimiter) {
				d = i
				break
			}
		}
		if d < 0 {
			continue
		}
		w, err := wire.Split(m.Frames)
		if err != nil || !sg.Verify(w.Sig, w.Header, w.ParentHeader, w.Metadata, w.Content) {
			continue
		}
		ids := m.Frames[:d]
		var hdr struct {
			MsgType string `json:"msg_type"`
		}
		if json.Unmarshal(w.Header, &hdr) != nil {
			continue
		}
		parent := w.Header
		k.publish(psg, "status", parent, busy)
		switch hdr.MsgType {
		case "kernel_info_request":
			k.reply(s, sg, ids, "kernel_info_reply", parent, []byte(kernelInfo))
		case "execute_request":
			var c struct {
				Code   string `json:"code"`
				Silent bool   `json:"silent"`
			}
			_ = json.Unmarshal(w.Content, &c)
			k.execCount++
			n := k.execCount
			ein, _ := json.Marshal(map[string]any{"code": c.Code, "execution_count": n})
			k.publish(psg, "execute_input", parent, ein)
			status, ename := k.execute(psg, parent, c.Code)
			var content []byte
			if status == "ok" {
				content = fmt.Appendf(nil, `{"status":"ok","execution_count":%d,"user_expressions":{},"payload":[]}`, n)
			} else {
				content = fmt.Appendf(nil, `{"status":"error","execution_count":%d,"ename":%q,"evalue":"","traceback":[]}`, n, ename)
			}
			k.reply(s, sg, ids, "execute_reply", parent, content)
		case "shutdown_request":
			k.reply(s, sg, ids, "shutdown_reply", parent, w.Content)
			k.publish(psg, "status", parent, idle)
			select {
			case k.done <- 0:
			default:
			}
			return
		case "interrupt_request":
			select {
			case k.interrupts <- syscall.SIGINT:
			default:
			}
			k.reply(s, sg, ids, "interrupt_reply", parent, []byte(`{"status":"ok"}`))
		default:
			k.reply(s, sg, ids, strings.TrimSuffix(hdr.MsgType, "_request")+"_reply", parent, []byte(`{"status":"ok"}`))
		}
		k.publish(psg, "status", parent, idle)
	}
}

// execute runs the directives of code; it returns the reply status and,
// on error, the error name.
func (k *kernel) execute(sg *wire.Signer, parent []byte, code string) (string, string) {
	// A signal left over from before this request does not interrupt it.
	select {
	case <-k.interrupts:
	default:
	}
	for _, line := range strings.Split(code, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		args := map[string]int{}
		for _, kv := range f[1:] {
			name, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil {
				return "error", "BadDirective"
			}
			args[name] = n
		}
		switch f[0] {
		case "emit":
			if !k.emit(sg, parent, args["n"], args["size"]) {
				return "error", "KeyboardInterrupt"
			}
		case "display":
			count := max(args["count"], 1)
			for range count {
				if k.interrupted() {
					return "error", "KeyboardInterrupt"
				}
				k.display(sg, parent, args["size"])
			}
		case "sleep":
			select {
			case <-time.After(time.Duration(args["ms"]) * time.Millisecond):
			case <-k.interrupts:
				return "error", "KeyboardInterrupt"
			}
		case "fail":
			return "error", "SyntheticError"
		}
	}
	return "ok", ""
}

func (k *kernel) interrupted() bool {
	select {
	case <-k.interrupts:
		return true
	default:
		return false
	}
}

// emit publishes n stream messages whose text is size bytes. Each has its
// own msg_id and signature, as a real kernel's would.
func (k *kernel) emit(sg *wire.Signer, parent []byte, n, size int) bool {
	text := bytes.Repeat([]byte("x"), max(size-1, 0))
	text = append(text, '\n')
	content, _ := json.Marshal(map[string]string{"name": "stdout", "text": string(text)})
	topic := []byte("stream.stdout")
	k.pubMu.Lock()
	defer k.pubMu.Unlock()
	for i := range n {
		if i%1024 == 0 && k.interrupted() {
			return false
		}
		h := k.header("stream")
		frames := [][]byte{topic, wire.Delimiter, sg.Sign(h, parent, empty, content), h, parent, empty, content}
		_ = k.iopub.SendMulti(zmq4.NewMsgFrom(frames...))
	}
	return true
}

// display publishes one display_data whose text/plain is size bytes.
func (k *kernel) display(sg *wire.Signer, parent []byte, size int) {
	var b bytes.Buffer
	b.Grow(size + 64)
	b.WriteString(`{"data":{"text/plain":"`)
	b.Write(bytes.Repeat([]byte("y"), size))
	b.WriteString(`"},"metadata":{},"transient":{}}`)
	k.publish(sg, "display_data", parent, b.Bytes())
}

func (k *kernel) publish(sg *wire.Signer, msgType string, parent, content []byte) {
	h := k.header(msgType)
	frames := [][]byte{[]byte(msgType), wire.Delimiter, sg.Sign(h, parent, empty, content), h, parent, empty, content}
	k.pubMu.Lock()
	_ = k.iopub.SendMulti(zmq4.NewMsgFrom(frames...))
	k.pubMu.Unlock()
}

func (k *kernel) reply(s zmq4.Socket, sg *wire.Signer, ids [][]byte, msgType string, parent, content []byte) {
	h := k.header(msgType)
	frames := append(append([][]byte{}, ids...), wire.Delimiter, sg.Sign(h, parent, empty, content), h, parent, empty, content)
	_ = s.SendMulti(zmq4.NewMsgFrom(frames...))
}

// header builds a message header; msg_ids are the session plus a counter,
// unique and cheap.
func (k *kernel) header(msgType string) []byte {
	var seq uint64
	k.hdrMu.Lock()
	k.seq++
	seq = k.seq
	k.hdrMu.Unlock()
	return fmt.Appendf(nil, `{"msg_id":"%s_%d","msg_type":"%s","session":"%s","username":"synth","date":"%s","version":"5.3"}`,
		k.session, seq, msgType, k.session, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"))
}
