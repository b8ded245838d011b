package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// asMain makes the test binary run main, so the test drives the real
// command (environment, signals, exit code) without a separate build.
const asMain = "LAUNCHER_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		os.Exit(run())
	}
	os.Exit(m.Run())
}

// TestSIGTERMShutsDown runs the command with a real ipykernel, checks that
// no KB_* variable reaches the kernel, then sends SIGTERM without kernelbus
// having recorded a shutdown (as a resource manager killing the container
// would): the command must shut the kernel down, record it dead with
// broker.ReasonStoppedOutside and exit 0. (A stop kernelbus decides is
// recorded terminated first; the e2e suites delete kernels that way.)
func TestSIGTERMShutsDown(t *testing.T) {
	py := jstest.Python(t)
	js := jstest.Start(t, jstest.Options{Auth: true})
	bus := js.Bus
	ctx := context.Background()
	id := "0f0e0d0c-1111-4222-8333-444455556666"
	if _, err := bus.CreateKernel(ctx, &broker.Kernel{ID: id, Spec: "python3", State: broker.StateSubmitted}); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(t.TempDir(), "env")
	// The kernel writes its environment, then becomes an ordinary ipykernel.
	script := `import os, sys
open(sys.argv[2], 'w').write('\n'.join(sorted(os.environ)))
from ipykernel.kernelapp import IPKernelApp
IPKernelApp.launch_instance(argv=['-f', sys.argv[1]])`
	cfg := &broker.LaunchConfig{V: 1, KernelID: id, Spec: "python3",
		Argv: []string{py, "-c", script, "{connection_file}", envFile},
		Env:  map[string]string{"KERNEL_ID": id}}
	js.LaunchAccess(t, cfg)
	enc, err := cfg.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// As workers start it: the config on stdin, in no environment.
	cmd := exec.Command(os.Args[0], "--config=-")
	cmd.Env = append(os.Environ(), asMain+"=1", "KB_OTHER_SECRET=x")
	cmd.Stdin = strings.NewReader(enc + "\n")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()

	var rec *broker.Kernel
	jstest.WaitForNil(t, 60*time.Second, func() error {
		rec, _, err = bus.GetKernel(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.State.Terminal() {
			t.Fatalf("record %s (%s)", rec.State, rec.Reason)
		}
		select {
		case err := <-exited:
			t.Fatalf("launcher exited: %v", err)
		default:
		}
		if rec.State != broker.StateRunning {
			return fmt.Errorf("record %s (%s)", rec.State, rec.Reason)
		}
		return nil
	})
	pid := jstest.HandlePID(t, rec)
	env, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range strings.Split(string(env), "\n") {
		if strings.HasPrefix(name, "KB_") || name == asMain {
			t.Errorf("kernel environment has %s", name)
		}
	}
	if !strings.Contains(string(env), "KERNEL_ID") {
		t.Errorf("kernel environment lacks KERNEL_ID: %s", env)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15s after SIGTERM")
	}
	if !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		t.Errorf("kernel %d survived its launcher", pid)
	}
	if rec, _, _ = bus.GetKernel(ctx, id); rec.State != broker.StateDead || rec.Reason != broker.ReasonStoppedOutside {
		t.Errorf("record %s (%s)", rec.State, rec.Reason)
	}
}
