package envs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type member struct {
	name, link, body string
	typ              byte
}

func archive(t *testing.T, members ...member) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: 0o755, Size: int64(len(m.body))}
		if m.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if m.typ == tar.TypeReg {
			_, _ = tw.Write([]byte(m.body))
		}
	}
	_ = tw.Close()
	_ = gz.Close()
	return &b
}

const okManifest = `{"v":1,"prefix":"/build/env","rewrite":["bin/tool"]}`

// TestUnpackRelocates: files naming the build folder name the new one.
func TestUnpackRelocates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	a := archive(t,
		member{name: "bin/", typ: tar.TypeDir},
		member{name: "bin/tool", typ: tar.TypeReg, body: "#!/build/env/bin/python\nprint()\n"},
		member{name: "lib64", typ: tar.TypeSymlink, link: "lib"},
		member{name: manifestName, typ: tar.TypeReg, body: okManifest})
	if err := Unpack(a, dir, "/final/place"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "bin/tool"))
	if !strings.HasPrefix(string(b), "#!/final/place/bin/python\n") {
		t.Fatalf("not relocated: %q", b)
	}
}

// TestUnpackRefusesEscapes: an archive from the bus is data, not trusted:
// members outside the folder, links leading out, writes through links and
// archives without a manifest are refused, and nothing lands outside.
func TestUnpackRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]member{
		"dot-dot":       {{name: "../escaped", typ: tar.TypeReg, body: "x"}},
		"absolute":      {{name: filepath.Join(outside, "escaped"), typ: tar.TypeReg, body: "x"}},
		"absolute link": {{name: "bin", typ: tar.TypeSymlink, link: outside}},
		"link up":       {{name: "up", typ: tar.TypeSymlink, link: "../.."}},
		"through link": {
			{name: "a/", typ: tar.TypeDir},
			{name: "a/b", typ: tar.TypeSymlink, link: "."},
			{name: "a/b/c", typ: tar.TypeReg, body: "x"},
		},
		"device":      {{name: "dev", typ: tar.TypeChar}},
		"no manifest": {{name: "bin/", typ: tar.TypeDir}},
		"manifest names outside": {
			{name: manifestName, typ: tar.TypeReg, body: `{"v":1,"prefix":"/b","rewrite":["../../etc/passwd"]}`},
		},
	}
	for name, members := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "env")
			if err := Unpack(archive(t, members...), dir, "/final"); err == nil {
				t.Fatal("unpacked")
			}
			if _, err := os.Lstat(filepath.Join(outside, "escaped")); err == nil {
				t.Fatal("a file landed outside the environment")
			}
		})
	}
}
