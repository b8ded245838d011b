package ociimage

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteUnpack(t *testing.T) {
	dir, dest := t.TempDir(), t.TempDir()
	img := Image{Tag: "1.0", User: "65532:65532", Entrypoint: []string{"/bin/app"}, Env: []string{"A=b"},
		Files: []File{{Path: "bin/app", Mode: 0o755, Data: []byte("#!app")}, {Path: "tmp/", Mode: fs.ModeDir | fs.ModeSticky | 0o777}}}
	d1, err := Write(dir, img)
	if err != nil {
		t.Fatal(err)
	}
	// Same inputs, same digest: builds are reproducible.
	if d2, err := Write(t.TempDir(), img); err != nil || d2 != d1 {
		t.Fatalf("second build: %s %v, want %s", d2, err, d1)
	}
	cfg, err := Unpack(dir, "1.0", dest)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Entrypoint, " ") != "/bin/app" || cfg.User != "65532:65532" {
		t.Fatalf("config %+v", cfg)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "bin/app")); err != nil || string(b) != "#!app" {
		t.Fatalf("bin/app: %q %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dest, "tmp")); err != nil || st.Mode()&fs.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Fatalf("tmp: %v %v", st.Mode(), err)
	}
	if _, err := Unpack(dir, "2.0", t.TempDir()); err == nil {
		t.Fatal("unpacked a tag that is not there")
	}
	// A blob changed after the build is refused.
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	for _, b := range blobs {
		data, _ := os.ReadFile(b)
		if len(data) > 1000 || strings.HasPrefix(string(data), "{") {
			continue
		}
		data[len(data)-1] ^= 1
		if err := os.WriteFile(b, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Unpack(dir, "1.0", t.TempDir()); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("tampered layer: %v", err)
	}
}
