package k8stest

import (
	"strings"
	"testing"
)

// A launcher or Python under /tmp is refused up front with the reason, since
// a pod (private /tmp) could not run it; paths outside /tmp pass.
func TestHostPathsRefusesTmp(t *testing.T) {
	err := hostPathsErr(map[string]string{"KERNELBUS_LAUNCHER_BIN": "/tmp/clone/bin/kernelbus-launcher", "KB_TEST_PYTHON": "/usr/bin/env"})
	if err == nil || !strings.Contains(err.Error(), "KERNELBUS_LAUNCHER_BIN=/tmp/clone/bin/kernelbus-launcher") ||
		strings.Contains(err.Error(), "KB_TEST_PYTHON") || !strings.Contains(err.Error(), "private /tmp") {
		t.Fatalf("launcher under /tmp: got %v", err)
	}
	if err := hostPathsErr(map[string]string{"KB_TEST_PYTHON": "/tmp"}); err == nil {
		t.Fatal("/tmp itself passed")
	}
	if err := hostPathsErr(map[string]string{"KB_TEST_PYTHON": "/tmpfoo/python", "X": "/usr/bin/env"}); err != nil {
		t.Fatalf("paths outside /tmp: %v", err)
	}
}
