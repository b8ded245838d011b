package synthkernel

import (
	"crypto/rand"
	"encoding/hex"
)

func wireID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
