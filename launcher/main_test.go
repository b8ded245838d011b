package launcher

import (
	"os"
	"testing"

	"github.com/kernelbus/kernelbus/launcher/synthkernel"
)

// fakeKernelEnv makes the test binary act as the synthetic kernel
// (synthkernel), a Go kernel that answers at once, so that tests measure
// the relay rather than ipykernel. It is not a KB_ variable because the
// launcher strips those.
const fakeKernelEnv = "LAUNCHER_TEST_FAKE_KERNEL"

func TestMain(m *testing.M) {
	if os.Getenv(fakeKernelEnv) == "1" {
		// The connection file is the last argument, after the test flags.
		os.Exit(synthkernel.Main(os.Args[len(os.Args)-1:]))
	}
	os.Exit(m.Run())
}
