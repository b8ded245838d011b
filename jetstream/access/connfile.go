package access

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ConnFile is what a nats.conn says: how to reach an installation's NATS
// (`kernelbus serve` writes one into its data folder; `kernelbus nats-auth
// init` one for an operator's own cluster).
type ConnFile struct {
	// URL of the NATS servers (comma separated).
	URL string
	// AuthDir is the folder of role credentials files (and MinterFileName).
	AuthDir string
	// CA is the CA certificate (PEM file) the servers' TLS certificates
	// chain to; empty when the bus has no TLS or a public CA.
	CA string
}

// ReadConnFile reads a nats.conn: lines url=, auth= and ca=. Relative
// paths are relative to the file's folder, so an installation's folder can
// move or be mounted elsewhere.
func ReadConnFile(path string) (ConnFile, error) {
	var c ConnFile
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	rel := func(v string) string {
		if v != "" && !filepath.IsAbs(v) {
			return filepath.Join(filepath.Dir(path), v)
		}
		return v
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "url":
			c.URL = v
		case "auth":
			c.AuthDir = rel(v)
		case "ca":
			c.CA = rel(v)
		}
	}
	if c.URL == "" {
		return c, fmt.Errorf("%s: no url= line", path)
	}
	return c, nil
}
