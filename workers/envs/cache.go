package envs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// Cache unpacks environment archives from the object store into Dir, one
// folder per digest, on first use. A folder is complete once it has its
// name: it is unpacked under a temporary name and renamed, so a worker
// that dies midway leaves only a temporary folder behind.
type Cache struct {
	Dir   string
	Store jetstream.ObjectStore

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// NewCache returns a cache in dir (created 0755: kernels read it).
func NewCache(dir string, store jetstream.ObjectStore) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("environment cache: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	return &Cache{Dir: abs, Store: store, locks: map[string]*sync.Mutex{}}, nil
}

func (c *Cache) lock(digest string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locks[digest]
	if !ok {
		l = &sync.Mutex{}
		c.locks[digest] = l
	}
	return l
}

// Ensure returns the folder of ref's environment, unpacking it first if
// this host has not yet. The archive's bytes must hash to its digest.
func (c *Cache) Ensure(ctx context.Context, ref *broker.EnvRef) (string, error) {
	if ref == nil || !broker.ValidDigest(ref.Digest) {
		return "", errors.New("environment: no valid archive digest")
	}
	final := filepath.Join(c.Dir, ref.Digest)
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	l := c.lock(ref.Digest)
	l.Lock()
	defer l.Unlock()
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	obj, err := c.Store.Get(ctx, ref.Digest)
	if err != nil {
		return "", fmt.Errorf("environment %s: archive %s: %w", ref.Name, ref.Digest, err)
	}
	defer obj.Close()
	dir, err := UnpackInto(c.Dir, ref.Digest, obj)
	if err != nil {
		return "", fmt.Errorf("environment %s: %w", ref.Name, err)
	}
	return dir, nil
}

// UnpackInto unpacks the archive read from r, whose bytes must hash to
// digest, into cache/<digest> and returns that folder; one already there
// is kept. It is unpacked under a temporary name and renamed, so a folder
// with its final name is complete. Local workers use it through Cache,
// and `kernelbus-launcher unpack-env` on SSH hosts.
func UnpackInto(cache, digest string, r io.Reader) (string, error) {
	if !broker.ValidDigest(digest) {
		return "", fmt.Errorf("%q is not an archive digest", digest)
	}
	final := filepath.Join(cache, digest)
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	tmp, err := os.CreateTemp(cache, ".download-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := copyVerified(tmp, r, digest); err != nil {
		return "", err
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	dir := filepath.Join(cache, ".unpack-"+hex.EncodeToString(rnd[:]))
	if err := Unpack(tmp, dir, final); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	if err := os.Rename(dir, final); err != nil {
		_ = os.RemoveAll(dir)
		// Another process on this host unpacked it meanwhile.
		if fi, serr := os.Stat(final); serr == nil && fi.IsDir() {
			return final, nil
		}
		return "", err
	}
	return final, nil
}

// download fetches ref's archive into a temporary file of c.Dir, checks
// that its bytes hash to the digest, and returns it open at its start.
func (c *Cache) download(ctx context.Context, ref *broker.EnvRef) (*os.File, error) {
	obj, err := c.Store.Get(ctx, ref.Digest)
	if err != nil {
		return nil, fmt.Errorf("environment %s: archive %s: %w", ref.Name, ref.Digest, err)
	}
	defer obj.Close()
	tmp, err := os.CreateTemp(c.Dir, ".download-*")
	if err != nil {
		return nil, err
	}
	if err := copyVerified(tmp, obj, ref.Digest); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return nil, fmt.Errorf("environment %s: %w", ref.Name, err)
	}
	return tmp, nil
}

// copyVerified copies r to f, fails unless the bytes hash to digest, and
// leaves f at its start.
func copyVerified(f *os.File, r io.Reader, digest string) error {
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), r); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if got := "sha256-" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("the archive's digest is %s, not %s", got, digest)
	}
	_, err := f.Seek(0, io.SeekStart)
	return err
}

// archiveDir is the folder of c.Dir that holds archives as they are
// stored (for resource managers that ship them: YARN, SSH); digests never
// start with a dot, so it cannot be an unpacked environment's.
const archiveDir = ".archives"

// Archive returns the path of ref's archive on this host,
// <Dir>/.archives/<digest>.tar.gz, downloading it first if this host has
// not yet. Its bytes hash to its digest; resource managers that unpack
// archives themselves (YARN's localizer) or elsewhere (an SSH host) take
// it from there.
func (c *Cache) Archive(ctx context.Context, ref *broker.EnvRef) (string, error) {
	if ref == nil || !broker.ValidDigest(ref.Digest) {
		return "", errors.New("environment: no valid archive digest")
	}
	dir := filepath.Join(c.Dir, archiveDir)
	final := filepath.Join(dir, ref.Digest+".tar.gz")
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() {
		return final, nil
	}
	l := c.lock("archive " + ref.Digest)
	l.Lock()
	defer l.Unlock()
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("environment cache: %w", err)
	}
	tmp, err := c.download(ctx, ref)
	if err != nil {
		return "", err
	}
	_ = tmp.Chmod(0o644)
	_ = tmp.Close()
	if err := os.Rename(tmp.Name(), final); err != nil {
		_ = os.Remove(tmp.Name())
		return "", err
	}
	return final, nil
}
