package access_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/jetstream/access"
	"github.com/nats-io/jwt/v2"
)

// Minted credentials read back as they were minted, by ReadCreds and by
// the jwt package (what nats.go's creds loader uses); credentials that are
// not a user JWT and a seed are refused with a reason.
func TestLauncherCredsReadBack(t *testing.T) {
	m := newMinter(t)
	id := uuid.NewString()
	creds, err := m.LauncherCreds(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	info, err := access.ReadCreds([]byte(creds))
	if err != nil || info.Name != id || time.Until(info.Expires) < 59*time.Minute || time.Until(info.Expires) > time.Hour {
		t.Fatalf("ReadCreds: %+v %v, want name %s and an expiry in an hour", info, err, id)
	}
	userJWT, seed, err := access.SplitCreds([]byte(creds))
	if err != nil || !strings.HasPrefix(seed, "SU") {
		t.Fatalf("SplitCreds: %v (seed %.2s…)", err, seed)
	}
	// The server's view: the JWT verifies and names the kernel.
	uc, err := jwt.DecodeUserClaims(userJWT)
	if err != nil || uc.Name != id {
		t.Fatalf("user JWT: %v %+v", err, uc)
	}
	j, s, _ := strings.Cut(creds, "SEED")
	for _, bad := range []string{"", "no markers at all", j, "-----BEGIN NATS USER JWT-----\nnot.a.jwt\n------END NATS USER JWT------\n" + "SEED" + s} {
		if _, err := access.ReadCreds([]byte(bad)); err == nil {
			t.Errorf("ReadCreds(%.40q) accepted bad credentials", bad)
		}
	}
}
