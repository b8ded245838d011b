// Package envs builds kernel environments and brings them to kernels. The
// build pool claims build requests from the bus, makes a venv with the
// chosen Python (python -m venv --copies), installs ipykernel and the
// requested packages into it, and packs it as a tar.gz stored in the
// JetStream object store under its digest. A worker unpacks an archive on
// first use into a cache folder named by the digest.
//
// A venv is not relocatable as pip leaves it: script shebangs, the
// activate scripts and pyvenv.cfg name the folder it was built in. The
// archive records that folder and which files name it (a manifest beside
// the files); unpacking rewrites those files for the folder it unpacks to.
// The interpreter itself is a copy that finds its standard library through
// pyvenv.cfg's home, so the kernel's host needs the same Python at the same
// path as the build host (as with any venv; conda-style environments that
// carry their own interpreter are not built yet).
package envs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// manifestName is the archive member that says how to relocate it.
const manifestName = ".kernelbus-env.json"

// manifest is what Pack records about an environment.
type manifest struct {
	V int `json:"v"`
	// Prefix is the folder the environment was built in.
	Prefix string `json:"prefix"`
	// Rewrite lists the text files (slash paths) that name Prefix.
	Rewrite []string `json:"rewrite"`
	Python  string   `json:"python"`
}

// maxRewrite bounds the files scanned for the build folder: scripts and
// configuration are small, binaries are left alone.
const maxRewrite = 1 << 20

// Pack writes the environment at prefix as a tar.gz to w and returns its
// digest ("sha256-<hex>") and size. Byte-code caches are left out (Python
// rebuilds them), so is anything that is neither a file, a folder nor a
// symbolic link inside the environment.
func Pack(prefix, python string, w io.Writer) (string, int64, error) {
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	gz, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return "", 0, err
	}
	tw := tar.NewWriter(gz)
	m := manifest{V: 1, Prefix: prefix, Python: python}
	old := []byte(prefix)
	err = filepath.WalkDir(prefix, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(prefix, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() && d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: rel, Mode: int64(info.Mode().Perm()), ModTime: info.ModTime()}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
			return tw.WriteHeader(hdr)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !linkInside(rel, target) {
				return fmt.Errorf("%s links outside the environment (%s)", rel, target)
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			return tw.WriteHeader(hdr)
		case !info.Mode().IsRegular():
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if len(data) <= maxRewrite && bytes.IndexByte(data, 0) < 0 && bytes.Contains(data, old) {
			m.Rewrite = append(m.Rewrite, rel)
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", prefix, err)
	}
	mb, _ := json.Marshal(m)
	if err := tw.WriteHeader(&tar.Header{Name: manifestName, Mode: 0o644, Size: int64(len(mb)), Typeflag: tar.TypeReg}); err != nil {
		return "", 0, err
	}
	if _, err := tw.Write(mb); err != nil {
		return "", 0, err
	}
	if err := tw.Close(); err != nil {
		return "", 0, err
	}
	if err := gz.Close(); err != nil {
		return "", 0, err
	}
	return "sha256-" + hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// linkInside reports whether a symbolic link at rel (slash path inside the
// environment) pointing at target stays inside the environment.
func linkInside(rel, target string) bool {
	if path.IsAbs(target) || strings.Contains(target, "\\") {
		return false
	}
	p := path.Join(path.Dir(rel), target)
	return p != ".." && !strings.HasPrefix(p, "../")
}

// maxUnpacked bounds what one archive may unpack to, so that an archive
// that inflates without end cannot fill the worker's disk.
const maxUnpacked = 8 << 30

// Unpack extracts the tar.gz r into dir (which must not exist yet) and
// relocates it to final, the folder dir will be renamed to. Members that
// would land outside dir (absolute names, "..", links leading out) fail the
// whole archive: an archive is data from the bus, not trusted.
func Unpack(r io.Reader, dir, final string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	tr := tar.NewReader(gz)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	var m *manifest
	var total int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("archive: %w", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if !fs.ValidPath(name) || name == "." || strings.Contains(name, "\\") {
			return fmt.Errorf("archive: member %q lies outside the environment", hdr.Name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := parentsInside(dir, dst); err != nil {
			return err
		}
		mode := os.FileMode(hdr.Mode).Perm() &^ 0o022
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, mode|0o700); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if !linkInside(name, hdr.Linkname) {
				return fmt.Errorf("archive: link %s leads outside the environment (%s)", name, hdr.Linkname)
			}
			if err := os.Symlink(hdr.Linkname, dst); err != nil {
				return err
			}
		case tar.TypeReg:
			total += hdr.Size
			if total > maxUnpacked {
				return fmt.Errorf("archive: unpacks to more than %d bytes", int64(maxUnpacked))
			}
			if name == manifestName {
				var mm manifest
				if err := json.NewDecoder(io.LimitReader(tr, 4<<20)).Decode(&mm); err != nil {
					return fmt.Errorf("archive: manifest: %w", err)
				}
				m = &mm
				continue
			}
			f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, io.LimitReader(tr, hdr.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive: member %s is of a kind environments do not hold", name)
		}
	}
	if m == nil || m.Prefix == "" {
		return errors.New("archive: no manifest: not a kernelbus environment")
	}
	for _, rel := range m.Rewrite {
		if !fs.ValidPath(rel) {
			return fmt.Errorf("archive: manifest names %q", rel)
		}
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := parentsInside(dir, p); err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, bytes.ReplaceAll(data, []byte(m.Prefix), []byte(final)), fi.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// parentsInside fails when a folder on the way from dir to p is a link:
// a member written through a link made by an earlier member could land
// anywhere.
func parentsInside(dir, p string) error {
	rel, err := filepath.Rel(dir, filepath.Dir(p))
	if err != nil {
		return err
	}
	cur := dir
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("archive: %s is written through the link %s", p, cur)
		}
	}
	return nil
}
