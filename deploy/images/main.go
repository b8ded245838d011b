// Command images builds the kernelbus container images without a container
// engine or a base image, as OCI image layouts:
//
//	go run ./deploy/images --kernelbus bin/static/kernelbus \
//	    --launcher bin/static/kernelbus-launcher --tag 0.3.0 --out bin/images
//
// writes bin/images/kernelbus (the gateway: `kernelbus frontend|worker|...`,
// with kernelbus-launcher beside it for the local pool) and
// bin/images/kernelbus-launcher (only the launcher, the layer kernel images
// copy it from). Both binaries must be static (CGO_ENABLED=0); each image
// also holds the CA certificates, passwd and group entries for the
// non-root user 65532 and a /tmp. Push with any OCI tool, e.g.
// `skopeo copy oci:bin/images/kernelbus:0.3.0 docker://REGISTRY/kernelbus:0.3.0`.
package main

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kernelbus/kernelbus/deploy/images/ociimage"
)

// The images' non-root user (the number distroless images use).
const uid = 65532

func main() {
	kb := flag.String("kernelbus", "", "static kernelbus binary")
	launcher := flag.String("launcher", "", "static kernelbus-launcher binary")
	tag := flag.String("tag", "dev", "tag of both images")
	out := flag.String("out", "bin/images", "folder for the two OCI layouts")
	caFile := flag.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied to /etc/ssl/certs/ca-certificates.crt (empty: none)")
	archive := flag.Bool("tar", false, "also write each layout as <name>.tar (an oci-archive)")
	flag.Parse()
	if err := run(*kb, *launcher, *tag, *out, *caFile, *archive); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(kb, launcher, tag, out, caFile string, archive bool) error {
	if kb == "" || launcher == "" {
		return errors.New("--kernelbus and --launcher are required (build them with CGO_ENABLED=0)")
	}
	base, err := baseFiles(caFile)
	if err != nil {
		return err
	}
	kbBin, err := staticBinary(kb)
	if err != nil {
		return err
	}
	lBin, err := staticBinary(launcher)
	if err != nil {
		return err
	}
	labels := map[string]string{"org.opencontainers.image.source": "https://github.com/kernelbus/kernelbus", "org.opencontainers.image.version": tag}
	env := []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/home/kernelbus"}
	user := fmt.Sprint(uid, ":", uid)
	images := map[string]ociimage.Image{
		"kernelbus": {Tag: tag, User: user, Env: env, WorkingDir: "/home/kernelbus", Labels: labels,
			Entrypoint: []string{"/usr/local/bin/kernelbus"}, Cmd: []string{"--help"},
			Files: append(append([]ociimage.File{}, base...),
				ociimage.File{Path: "usr/local/bin/kernelbus", Mode: 0o755, Data: kbBin},
				ociimage.File{Path: "usr/local/bin/kernelbus-launcher", Mode: 0o755, Data: lBin})},
		"kernelbus-launcher": {Tag: tag, User: user, Env: env, WorkingDir: "/home/kernelbus", Labels: labels,
			Entrypoint: []string{"/usr/local/bin/kernelbus-launcher"},
			Files: append(append([]ociimage.File{}, base...),
				ociimage.File{Path: "usr/local/bin/kernelbus-launcher", Mode: 0o755, Data: lBin})},
	}
	for name, img := range images {
		dir := filepath.Join(out, name)
		digest, err := ociimage.Write(dir, img)
		if err != nil {
			return err
		}
		fmt.Printf("%s:%s %s (oci layout %s)\n", name, tag, digest, dir)
		if archive {
			if err := tarDir(dir, dir+".tar"); err != nil {
				return err
			}
		}
	}
	return nil
}

// baseFiles is what a scratch image lacks for a Go server: CA certificates
// for TLS to NATS and the API server, a named non-root user, and /tmp.
func baseFiles(caFile string) ([]ociimage.File, error) {
	files := []ociimage.File{
		{Path: "etc/passwd", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nkernelbus:x:%d:%d:kernelbus:/home/kernelbus:/sbin/nologin\n", uid, uid)},
		{Path: "etc/group", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:\nkernelbus:x:%d:\n", uid)},
		// Go's resolver reads this: /etc/hosts before DNS, as in distroless.
		{Path: "etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "tmp/", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "home/kernelbus/", Mode: fs.ModeDir | 0o755, UID: uid, GID: uid},
	}
	if caFile != "" {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-certs: %w (install Debian's ca-certificates or pass --ca-certs '')", err)
		}
		files = append(files, ociimage.File{Path: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: ca})
	}
	return files, nil
}

// staticBinary reads an ELF executable and refuses one that needs a dynamic
// loader: there is none in the image.
func staticBinary(p string) ([]byte, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", p)
		}
	}
	return os.ReadFile(p)
}

// tarDir writes the layout folder as a tar with the layout at its root.
func tarDir(dir, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			h.Name += "/"
		}
		h.ModTime, h.Uname, h.Gname = h.ModTime.Truncate(0), "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("%s: %w", dst, err)
	}
	return nil
}
