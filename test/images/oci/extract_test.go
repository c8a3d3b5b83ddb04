package oci

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// extractLayers writes an image of the given layers to a new layout and extracts it.
func extractLayers(t *testing.T, layers ...[]tarEntry) (string, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, dir, layersImage(t, "test/layers:1", layers...))
	return mustOpen(t, dir).Extract("test/layers:1", t.TempDir())
}

func TestExtractAppliesLayersInOrder(t *testing.T) {
	lower := []tarEntry{
		dir("a/"), file("a/x", "x1"), file("a/y", "y1"),
		dir("b/"), file("b/z", "z1"), dir("b/sub/"), file("b/sub/deep", "deep"),
		dir("d/"), dir("d/old/"), file("d/old/f", "f"),
		file("fileToDir", "was a file"),
		dir("dirToFile/"), file("dirToFile/inner", "inner"),
		dir("usr/"), dir("usr/lib/"), symlink("lib", "usr/lib"),
		file("./dotted", "dot"),
		file("/absolute", "abs"),
		tarEntry{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		file("ro/inside", "in a read-only dir"),
	}
	upper := []tarEntry{
		file("a/.wh.x", ""),
		file("b/.wh..wh..opq", ""),
		file("b/new", "new"),
		dir("d/"), dir("d/old/"), file("d/old/g", "g"), file("d/.wh..wh..opq", ""),
		dir("fileToDir/"), file("fileToDir/child", "child"),
		file("dirToFile", "now a file"),
		file("lib/libfoo.so", "through the symlink"),
		file("a/y", "y2"),
		hardlink("a/y-link", "a/y"),
		file(".wh.nothing-there", ""),
	}
	rootfs, err := extractLayers(t, lower, upper)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	// Without root, the read-only directory would stop t.TempDir's cleanup.
	t.Cleanup(func() { os.Chmod(filepath.Join(rootfs, "ro"), 0o755) })
	want := []string{
		"a drwxr-xr-x",
		"a/y -rw-r--r-- = y2",
		"a/y-link -rw-r--r-- = y2",
		"absolute -rw-r--r-- = abs",
		"b drwxr-xr-x",
		"b/new -rw-r--r-- = new",
		"d drwxr-xr-x",
		"d/old drwxr-xr-x",
		"d/old/g -rw-r--r-- = g",
		"dirToFile -rw-r--r-- = now a file",
		"dotted -rw-r--r-- = dot",
		"fileToDir drwxr-xr-x",
		"fileToDir/child -rw-r--r-- = child",
		"lib Lrwxrwxrwx -> usr/lib",
		"ro dr-xr-xr-x",
		"ro/inside -rw-r--r-- = in a read-only dir",
		"usr drwxr-xr-x",
		"usr/lib drwxr-xr-x",
		"usr/lib/libfoo.so -rw-r--r-- = through the symlink",
	}
	if diff := cmp.Diff(want, treeOf(t, rootfs)); diff != "" {
		t.Errorf("extracted tree (-want +got):\n%s", diff)
	}
	a, _ := os.Stat(filepath.Join(rootfs, "a/y"))
	b, _ := os.Stat(filepath.Join(rootfs, "a/y-link"))
	if !os.SameFile(a, b) {
		t.Error("a/y-link is not a hard link to a/y")
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	// outside stands for the host: nothing may be written, changed or deleted there.
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	rel := func(depth int) string { return strings.Repeat("../", depth) + strings.TrimPrefix(outside, "/") }

	tests := []struct {
		name   string
		layers [][]tarEntry
		want   string
	}{
		{"dot-dot file", [][]tarEntry{{file("../evil", "x")}}, `entry "../evil" points outside the root filesystem`},
		{"dot-dot deep", [][]tarEntry{{file("a/../../evil", "x")}}, "points outside the root filesystem"},
		{"dot-dot directory", [][]tarEntry{{dir("../../evil/")}}, "points outside the root filesystem"},
		{"absolute symlink then write through it", [][]tarEntry{{symlink("link", outside), file("link/evil", "x")}}, `entry "link/evil"`},
		{"relative symlink then write through it", [][]tarEntry{{symlink("link", rel(12)), file("link/evil", "x")}}, `entry "link/evil"`},
		{"symlink in a lower layer", [][]tarEntry{{symlink("link", outside)}, {file("link/evil", "x")}}, `entry "link/evil"`},
		{"symlink then directory through it", [][]tarEntry{{symlink("link", outside), dir("link/sub/")}}, `entry "link/sub/"`},
		{"hard link out", [][]tarEntry{{hardlink("h", "../../../"+victim)}}, "hard link: entry"},
		{"hard link through a symlink", [][]tarEntry{{symlink("link", outside), hardlink("h", "link/victim")}}, `entry "h"`},
		{"whiteout through a symlink", [][]tarEntry{{symlink("link", outside)}, {file("link/.wh.victim", "")}}, `whiteout of "link/victim"`},
		{"opaque whiteout through a symlink", [][]tarEntry{{symlink("link", outside)}, {file("link/x/.wh..wh..opq", "")}}, `opaque whiteout of "link/x"`},
		{"whiteout of dot-dot", [][]tarEntry{{file("a/.wh...", "")}}, "bad whiteout"},
		{"whiteout climbing out", [][]tarEntry{{file("../.wh.victim", "")}}, "points outside the root filesystem"},
		{"file replacing the root", [][]tarEntry{{file(".", "x")}}, "only a directory entry can name the root directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := extractLayers(t, tt.layers...)
			t.Logf("Extract: %v", err)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Extract: %v; want an error containing %q", err, tt.want)
			}
			if diff := cmp.Diff([]string{"victim -rw-r--r-- = keep me"}, treeOf(t, outside)); diff != "" {
				t.Fatalf("the malicious layer changed the outside directory (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExtractUnsupportedMediaType(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, dir, layersImage(t, "x:1", []tarEntry{file("f", "x")}))
	img, err := mustOpen(t, dir).Find("x:1")
	if err != nil {
		t.Fatal(err)
	}
	img.layers[0].MediaType = "application/vnd.oci.image.layer.v1.tar+zstd"
	if _, err := img.Extract(t.TempDir()); err == nil || !strings.Contains(err.Error(), "is not supported") {
		t.Errorf("Extract of a zstd layer: %v; want it to say the media type is not supported", err)
	}
}

func TestExtractOpaqueWhiteoutOfASymlinkLeavesItsTargetAlone(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs, err := extractLayers(t, []tarEntry{symlink("link", outside)}, []tarEntry{file("link/.wh..wh..opq", "")})
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if diff := cmp.Diff([]string{"link Lrwxrwxrwx -> " + outside}, treeOf(t, rootfs)); diff != "" {
		t.Errorf("extracted tree (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"victim -rw-r--r-- = keep me"}, treeOf(t, outside)); diff != "" {
		t.Errorf("outside directory (-want +got):\n%s", diff)
	}
}
