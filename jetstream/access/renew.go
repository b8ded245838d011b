package access

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
)

// DefaultLauncherCredsTTL is how long minted launcher credentials are
// valid. It is also how long a kernel's credentials keep working after
// the kernel ended (the revocation window): launchers renew theirs at
// half-life through SubjectRenew, and workers renew only for kernels that
// still run. Expiry, unlike revoking the user in the account JWT, needs no
// operator key in the workers and no resolver that accepts updates, so it
// works the same on the embedded server and on an operator's cluster with
// a MEMORY resolver.
const DefaultLauncherCredsTTL = 10 * time.Minute

// RenewReply is a worker's answer on SubjectRenew: fresh credentials for
// the kernel, or why there are none.
type RenewReply struct {
	Creds string `json:"creds,omitempty"`
	Error string `json:"error,omitempty"`
}

// CredsInfo is what a launcher reads from its credentials: whose they are
// and until when they are valid (zero: no expiry).
type CredsInfo struct {
	Name    string
	Expires time.Time
}

// ReadCreds decodes the user JWT of a credentials file's contents.
func ReadCreds(creds []byte) (CredsInfo, error) {
	j, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return CredsInfo{}, fmt.Errorf("credentials: %w", err)
	}
	uc, err := userClaims(j)
	if err != nil {
		return CredsInfo{}, fmt.Errorf("credentials: %w", err)
	}
	if _, err := jwt.ParseDecoratedNKey(creds); err != nil {
		return CredsInfo{}, fmt.Errorf("credentials: %w", err)
	}
	info := CredsInfo{Name: uc.Name}
	if uc.Expires > 0 {
		info.Expires = time.Unix(uc.Expires, 0)
	}
	return info, nil
}

// SplitCreds returns the user JWT and nkey seed of a credentials file's
// contents, for clients that take them apart (nats.UserJWTAndSeed).
func SplitCreds(creds []byte) (userJWT, seed string, err error) {
	if userJWT, err = jwt.ParseDecoratedJWT(creds); err != nil {
		return "", "", fmt.Errorf("credentials: %w", err)
	}
	kp, err := jwt.ParseDecoratedNKey(creds)
	if err != nil {
		return "", "", fmt.Errorf("credentials: %w", err)
	}
	s, err := kp.Seed()
	if err != nil {
		return "", "", fmt.Errorf("credentials: %w", err)
	}
	return userJWT, string(s), nil
}

// ErrKernelEnded is a renewal refused because the kernel no longer runs.
var ErrKernelEnded = errors.New("the kernel has ended: its credentials are not renewed")

// userClaims reads the name and expiry of a user JWT without checking its
// signature. jwt.DecodeUserClaims checks it only against the key the JWT
// itself names as issuer, which proves nothing (anyone can sign claims
// with a key of their own): the server checks the JWT against the account
// on connect. Skipping it saves a launcher the ed25519 verification and
// its one-time table set-up (2-3 % of a launcher's CPU to its first
// running, in the profile of scenario 5).
func userClaims(token string) (jwtClaims, error) {
	var c jwtClaims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errors.New("the user JWT does not have three parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return c, fmt.Errorf("the user JWT's claims: %w", err)
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return c, fmt.Errorf("the user JWT's claims: %w", err)
	}
	return c, nil
}

// jwtClaims are the claims of a user JWT that a launcher reads.
type jwtClaims struct {
	Name    string `json:"name"`
	Expires int64  `json:"exp"`
}
