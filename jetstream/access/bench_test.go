package access_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/jetstream/access"
)

// BenchmarkMintLauncherCreds is what a worker spends per start minting a
// kernel's credentials (a new user nkey and a signed JWT).
func BenchmarkMintLauncherCreds(b *testing.B) {
	in, err := access.Generate()
	if err != nil {
		b.Fatal(err)
	}
	m, err := in.Minter()
	if err != nil {
		b.Fatal(err)
	}
	id := uuid.NewString()
	b.ResetTimer()
	for range b.N {
		if _, err := m.LauncherCreds(id, access.DefaultLauncherCredsTTL); err != nil {
			b.Fatal(err)
		}
	}
}
