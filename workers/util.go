package workers

import (
	"crypto/rand"
	"encoding/hex"
)

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
