package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testBinaries are small static programs built once for the package's tests.
var testBinaries struct {
	dir   string
	hello string // prints "hello <args>" and $GREETING
	other string // the same program printing "other"
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "oci-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testBinaries.dir = dir
	testBinaries.hello, err = goBuild(dir, "hello")
	if err == nil {
		testBinaries.other, err = goBuild(dir, "other")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goBuild builds a static program that prints word, its arguments and $GREETING.
func goBuild(dir, word string) (string, error) {
	src := filepath.Join(dir, word+".go")
	prog := `package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	fmt.Printf("%s %s greeting=%s\n", "` + word + `", strings.Join(os.Args[1:], " "), os.Getenv("GREETING"))
}
`
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, word)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", word, err, b)
	}
	return out, nil
}

// helloSpec is an image of the hello binary for this machine.
func helloSpec(ref string) Spec {
	return Spec{
		Ref:      ref,
		Binaries: []Binary{{Path: testBinaries.hello, Name: "app"}},
		Cmd:      []string{"--from", "cmd"},
		Env:      []string{"GREETING=hi"},
		Arch:     runtime.GOARCH,
		Version:  "0.1.0",
		Source:   "https://github.com/warren-mesh/warren",
	}
}

func mustBuild(t testing.TB, spec Spec) *Built {
	t.Helper()
	b, err := Build(spec)
	if err != nil {
		t.Fatalf("Build(%s): %v", spec.Ref, err)
	}
	return b
}

func mustWrite(t testing.TB, dir string, imgs ...*Built) {
	t.Helper()
	if err := Write(dir, imgs...); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func mustOpen(t testing.TB, dir string) *Layout {
	t.Helper()
	l, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// tarEntry is one entry of a hand-made layer.
type tarEntry struct {
	name     string
	typ      byte
	body     string
	linkname string
	mode     int64
}

func file(name, body string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) tarEntry        { return tarEntry{name: name, typ: tar.TypeDir} }
func symlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, linkname: target}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeLink, linkname: target}
}

func tarBytes(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if e.typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: mode, Size: int64(len(e.body)), ModTime: time.Unix(0, 0)}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %q: %v", e.name, err)
		}
		if h.Size > 0 {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layersImage is an image for this machine made of hand-made layers, one per entry list.
func layersImage(t testing.TB, ref string, layers ...[]tarEntry) *Built {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, entries := range layers {
		data := tarBytes(t, entries)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer}); err != nil {
			t.Fatal(err)
		}
	}
	full, tag, err := NormalizeRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBuilt(full, tag, "linux", runtime.GOARCH, img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// otherArch is an architecture this machine is not.
func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// treeOf lists dir as "path mode [-> target | = content]" lines, for comparing extracted trees.
func treeOf(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += " = " + strings.TrimSpace(string(b))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
