// Package ociimage writes and reads single-layer OCI images without a
// container engine: the kernelbus images are static Go binaries plus the few
// files every process expects (CA certificates, a passwd entry, /tmp), so a
// tar layer written here is the whole image and no base image is pulled.
// The output is an OCI image layout (a folder, or that folder as a tar), which
// skopeo, crane, podman, containerd and registries' upload tools accept.
package ociimage

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
	"sort"
	"strings"
	"time"
)

// Media types of the OCI image spec.
const (
	MediaManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaConfig   = "application/vnd.oci.image.config.v1+json"
	MediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaIndex    = "application/vnd.oci.image.index.v1+json"
	// RefName is the index annotation that names an image's tag.
	RefName = "org.opencontainers.image.ref.name"
)

// File is one entry of the layer. A Path ending in "/" is a folder.
type File struct {
	Path     string
	Mode     fs.FileMode
	UID, GID int
	Data     []byte
}

// Image is what Write puts in a layout.
type Image struct {
	// Tag names the image in the layout's index (ref.name), e.g. "0.3.0".
	Tag   string
	Files []File
	// Entrypoint, Cmd, Env, User, WorkingDir and Labels go to the image's
	// config as a container runtime reads them.
	Entrypoint, Cmd, Env []string
	User, WorkingDir     string
	Labels               map[string]string
	// Created is the image's and every file's time; zero: the Unix epoch,
	// so the same inputs give the same digests.
	Created time.Time
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type imageConfig struct {
	Created      string `json:"created"`
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		User       string            `json:"User,omitempty"`
		Env        []string          `json:"Env,omitempty"`
		Entrypoint []string          `json:"Entrypoint,omitempty"`
		Cmd        []string          `json:"Cmd,omitempty"`
		WorkingDir string            `json:"WorkingDir,omitempty"`
		Labels     map[string]string `json:"Labels,omitempty"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []map[string]string `json:"history"`
}

// Write writes img as an OCI image layout into dir (created; an existing
// layout there gets the image added to its index, replacing one of the same
// tag). It returns the manifest's digest.
func Write(dir string, img Image) (string, error) {
	if img.Tag == "" {
		return "", errors.New("ociimage: an image needs a tag")
	}
	layer, diffID, err := layerTar(img)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return "", err
	}
	layerDesc, err := putBlob(dir, MediaLayer, layer)
	if err != nil {
		return "", err
	}
	var cfg imageConfig
	cfg.Created = img.Created.UTC().Format(time.RFC3339)
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config.User, cfg.Config.Env, cfg.Config.Entrypoint, cfg.Config.Cmd = img.User, img.Env, img.Entrypoint, img.Cmd
	cfg.Config.WorkingDir, cfg.Config.Labels = img.WorkingDir, img.Labels
	cfg.RootFS.Type, cfg.RootFS.DiffIDs = "layers", []string{diffID}
	cfg.History = []map[string]string{{"created": cfg.Created, "created_by": "kernelbus deploy/images (static binaries, no base image)"}}
	cb, _ := json.Marshal(cfg)
	cfgDesc, err := putBlob(dir, MediaConfig, cb)
	if err != nil {
		return "", err
	}
	mb, _ := json.Marshal(manifest{SchemaVersion: 2, MediaType: MediaManifest, Config: cfgDesc, Layers: []descriptor{layerDesc}})
	mDesc, err := putBlob(dir, MediaManifest, mb)
	if err != nil {
		return "", err
	}
	mDesc.Annotations = map[string]string{RefName: img.Tag}
	mDesc.Platform = &platform{Architecture: "amd64", OS: "linux"}

	idx := index{SchemaVersion: 2, MediaType: MediaIndex}
	if b, err := os.ReadFile(filepath.Join(dir, "index.json")); err == nil {
		if err := json.Unmarshal(b, &idx); err != nil {
			return "", fmt.Errorf("ociimage: %s/index.json: %w", dir, err)
		}
	}
	kept := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.Annotations[RefName] != img.Tag {
			kept = append(kept, d)
		}
	}
	idx.Manifests = append(kept, mDesc)
	ib, _ := json.MarshalIndent(idx, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	return mDesc.Digest, nil
}

// layerTar returns the gzipped layer and the digest of its uncompressed tar
// (the config's diff_id). Parent folders are added as needed.
func layerTar(img Image) ([]byte, string, error) {
	files := map[string]File{}
	for _, f := range img.Files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" || p == "." {
			return nil, "", fmt.Errorf("ociimage: bad path %q", f.Path)
		}
		if strings.HasSuffix(f.Path, "/") {
			f.Mode |= fs.ModeDir
		}
		files[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := files[d]; !ok {
				files[d] = File{Mode: fs.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, n := range names {
		f := files[n]
		h := &tar.Header{Name: n, Mode: int64(f.Mode.Perm()), Uid: f.UID, Gid: f.GID, ModTime: img.Created, Format: tar.FormatPAX}
		if f.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if f.Mode.IsDir() {
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, "", err
		}
		if !f.Mode.IsDir() {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, "", err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(raw.Bytes())
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), "sha256:" + hex.EncodeToString(sum[:]), nil
}

func putBlob(dir, media string, b []byte) (descriptor, error) {
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644); err != nil {
		return descriptor{}, err
	}
	return descriptor{MediaType: media, Digest: "sha256:" + h, Size: int64(len(b))}, nil
}

func readBlob(dir, digest string) ([]byte, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 || strings.ContainsAny(h, "/.") {
		return nil, fmt.Errorf("ociimage: unsupported digest %q", digest)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", h))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != h {
		return nil, fmt.Errorf("ociimage: blob %s does not match its digest", digest)
	}
	return b, nil
}

// Config is what a runtime needs from an unpacked image.
type Config struct {
	Entrypoint, Cmd, Env []string
	User, WorkingDir     string
}

// Unpack extracts the image tagged tag ("" : the only one) of the layout in
// dir into dest, checking every digest on the way, and returns its config.
// Entries that would land outside dest are refused.
func Unpack(dir, tag, dest string) (*Config, error) {
	ib, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var idx index
	if err := json.Unmarshal(ib, &idx); err != nil {
		return nil, fmt.Errorf("ociimage: index.json: %w", err)
	}
	var md *descriptor
	for i, d := range idx.Manifests {
		if (tag == "" && len(idx.Manifests) == 1) || d.Annotations[RefName] == tag {
			md = &idx.Manifests[i]
		}
	}
	if md == nil {
		return nil, fmt.Errorf("ociimage: no image tagged %q in %s", tag, dir)
	}
	mb, err := readBlob(dir, md.Digest)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, err
	}
	cb, err := readBlob(dir, m.Config.Digest)
	if err != nil {
		return nil, err
	}
	var ic imageConfig
	if err := json.Unmarshal(cb, &ic); err != nil {
		return nil, err
	}
	if len(ic.RootFS.DiffIDs) != len(m.Layers) {
		return nil, errors.New("ociimage: layers and diff_ids differ in number")
	}
	for i, l := range m.Layers {
		lb, err := readBlob(dir, l.Digest)
		if err != nil {
			return nil, err
		}
		if err := untar(bytes.NewReader(lb), dest, ic.RootFS.DiffIDs[i]); err != nil {
			return nil, err
		}
	}
	c := ic.Config
	return &Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, User: c.User, WorkingDir: c.WorkingDir}, nil
}

func untar(r io.Reader, dest, diffID string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	h := sha256.New()
	tr := tar.NewReader(io.TeeReader(zr, h))
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := path.Clean("/" + hd.Name)
		if name == "/" {
			continue
		}
		target := filepath.Join(dest, filepath.FromSlash(name))
		mode := fs.FileMode(hd.Mode).Perm()
		switch hd.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			if hd.Mode&0o1000 != 0 {
				mode |= fs.ModeSticky
			}
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("ociimage: %s: only folders and regular files are supported", hd.Name)
		}
		if os.Geteuid() == 0 {
			_ = os.Lchown(target, hd.Uid, hd.Gid)
		}
	}
	// The rest of the stream (tar padding) counts toward the diff_id too.
	if _, err := io.Copy(h, zr); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID {
		return fmt.Errorf("ociimage: layer content %s does not match diff_id %s", got, diffID)
	}
	return nil
}
