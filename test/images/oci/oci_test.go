package oci

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestBuildWriteFindExtractRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	built := mustBuild(t, helloSpec("warren-lab/app:local"))
	if built.Ref != "docker.io/warren-lab/app:local" || built.Tag != "local" {
		t.Fatalf("built ref %q tag %q; want docker.io/warren-lab/app:local and local", built.Ref, built.Tag)
	}
	mustWrite(t, dir, built)

	l := mustOpen(t, dir)
	refs, err := l.Images()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"docker.io/warren-lab/app:local"}, refs); diff != "" {
		t.Errorf("Images() (-want +got):\n%s", diff)
	}

	// index.json carries the contract's annotations and the platform.
	idx, err := readIndexFile(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index.json has %d descriptors; want 1", len(idx.Manifests))
	}
	d := idx.Manifests[0]
	wantAnn := map[string]string{AnnotationImageName: "docker.io/warren-lab/app:local", AnnotationRefName: "local"}
	if diff := cmp.Diff(wantAnn, d.Annotations); diff != "" {
		t.Errorf("annotations (-want +got):\n%s", diff)
	}
	if d.MediaType != types.OCIManifestSchema1 || d.Platform == nil || d.Platform.OS+"/"+d.Platform.Architecture != HostPlatform() {
		t.Errorf("descriptor media type %q platform %+v; want an OCI manifest for %s", d.MediaType, d.Platform, HostPlatform())
	}

	for _, ref := range []string{"warren-lab/app:local", "docker.io/warren-lab/app:local", "index.docker.io/warren-lab/app:local"} {
		img, err := l.Find(ref)
		if err != nil {
			t.Fatalf("Find(%q): %v", ref, err)
		}
		if img.Digest != built.Digest || img.Size != built.Size || img.Platform != HostPlatform() {
			t.Errorf("Find(%q) = digest %s size %d platform %s; want %s %d %s", ref, img.Digest, img.Size, img.Platform, built.Digest, built.Size, HostPlatform())
		}
	}
	img, err := l.Find("warren-lab/app:local")
	if err != nil {
		t.Fatal(err)
	}
	wantCfg := Config{
		Entrypoint: []string{"/usr/local/bin/app"},
		Cmd:        []string{"--from", "cmd"},
		Env:        []string{DefaultPath, "GREETING=hi"},
		Labels: map[string]string{
			LabelTitle:   "app",
			LabelVersion: "0.1.0",
			LabelSource:  "https://github.com/warren-mesh/warren",
		},
	}
	if diff := cmp.Diff(wantCfg, img.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}

	cache := t.TempDir()
	rootfs, err := img.Extract(cache)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if want := filepath.Join(cache, "sha256-"+strings.TrimPrefix(built.Digest, "sha256:")); rootfs != want {
		t.Errorf("rootfs %s; want %s", rootfs, want)
	}
	for p, want := range map[string]os.FileMode{
		".":                 os.ModeDir | 0o755,
		"usr/local/bin":     os.ModeDir | 0o755,
		"usr/local/bin/app": 0o755,
		"tmp":               os.ModeDir | os.ModeSticky | 0o777,
		"usr":               os.ModeDir | 0o755,
	} {
		st, err := os.Lstat(filepath.Join(rootfs, p))
		if err != nil {
			t.Fatalf("extracted %s: %v", p, err)
		}
		if st.Mode() != want {
			t.Errorf("extracted %s mode %s; want %s", p, st.Mode(), want)
		}
	}

	// Run the extracted binary the way a runtime would: entrypoint + cmd, with the image's env.
	argv := append(slices.Clone(img.Config.Entrypoint), img.Config.Cmd...)
	cmd := exec.Command(filepath.Join(rootfs, argv[0]), argv[1:]...)
	cmd.Env = img.Config.Env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run extracted binary: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "hello --from cmd greeting=hi"; got != want {
		t.Errorf("extracted binary printed %q; want %q", got, want)
	}

	// A second extraction reuses the first: a file dropped into it survives.
	marker := filepath.Join(rootfs, "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := l.Extract("warren-lab/app:local", cache)
	if err != nil {
		t.Fatal(err)
	}
	if again != rootfs {
		t.Errorf("second Extract = %s; want %s", again, rootfs)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("second Extract re-extracted the image: %v", err)
	}
	entries, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("cache holds %d entries; want just the rootfs", len(entries))
	}
}

func TestDigestsAreReproducible(t *testing.T) {
	spec := helloSpec("ghcr.io/warren-mesh/warren-app:0.1.0")
	a, b := mustBuild(t, spec), mustBuild(t, spec)
	if a.Digest != b.Digest {
		t.Fatalf("two builds of the same spec: %s and %s", a.Digest, b.Digest)
	}
	da, db := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	mustWrite(t, da, a)
	mustWrite(t, db, b)
	if diff := cmp.Diff(treeOf(t, da), treeOf(t, db)); diff != "" {
		t.Errorf("two layouts of the same build differ (-a +b):\n%s", diff)
	}

	// Each input that matters changes the digest.
	changed := map[string]func(*Spec){
		"binary":  func(s *Spec) { s.Binaries[0].Path = testBinaries.other },
		"name":    func(s *Spec) { s.Binaries[0].Name = "app2" },
		"created": func(s *Spec) { s.Created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
		"cmd":     func(s *Spec) { s.Cmd = nil },
		"version": func(s *Spec) { s.Version = "0.2.0" },
		"arch":    func(s *Spec) { s.Arch = otherArch() },
	}
	for name, change := range changed {
		t.Run(name, func(t *testing.T) {
			s := helloSpec(spec.Ref)
			change(&s)
			if c := mustBuild(t, s); c.Digest == a.Digest {
				t.Errorf("changing the %s kept digest %s", name, a.Digest)
			}
		})
	}
}

func TestWriteReplacesSameRefAndDeletesItsBlobs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	// keep:1 shares its layer (the hello binary) with the first app:1, not its config.
	keepSpec := helloSpec("ghcr.io/warren-mesh/keep:1")
	keepSpec.Cmd = []string{"--keep"}
	keep := mustBuild(t, keepSpec)
	first := mustBuild(t, helloSpec("ghcr.io/warren-mesh/app:1"))
	mustWrite(t, dir, keep, first)

	s := helloSpec("ghcr.io/warren-mesh/app:1")
	s.Binaries[0].Path = testBinaries.other
	second := mustBuild(t, s)
	mustWrite(t, dir, second)

	l := mustOpen(t, dir)
	refs, err := l.Images()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ghcr.io/warren-mesh/app:1", "ghcr.io/warren-mesh/keep:1"}, refs); diff != "" {
		t.Errorf("Images() (-want +got):\n%s", diff)
	}
	img, err := l.Find("ghcr.io/warren-mesh/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != second.Digest {
		t.Errorf("app:1 is %s; want the second build %s", img.Digest, second.Digest)
	}
	if img, err := l.Find("ghcr.io/warren-mesh/keep:1"); err != nil || img.Digest != keep.Digest {
		t.Errorf("keep:1 = %v, %v; want %s", img, err, keep.Digest)
	}
	firstManifest, _ := first.image.Digest()
	firstConfig, _ := first.image.ConfigName()
	for what, d := range map[string]v1.Hash{"manifest": firstManifest, "config": firstConfig} {
		p, _ := blobPath(dir, d)
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the replaced image's %s is still in the layout (stat: %v)", what, err)
		}
	}
	sharedLayers, _ := first.image.Layers()
	shared, _ := sharedLayers[0].Digest()
	if p, _ := blobPath(dir, shared); !fileExists(p) {
		t.Errorf("the layer keep:1 shares with the replaced image was deleted")
	}
	// Every blob left is one a manifest reaches: nothing else.
	if err := collectGarbage(dir, mustIndex(t, dir)); err != nil {
		t.Fatal(err)
	}
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	// keep:1 and the second app:1 have different binaries, so nothing is shared: three blobs each.
	if len(blobs) != 6 {
		t.Errorf("layout holds %d blobs; want 6 (two images of three blobs)", len(blobs))
	}
}

func mustIndex(t testing.TB, dir string) *v1.IndexManifest {
	t.Helper()
	idx, err := readIndexFile(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestMultiPlatformRef(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	host := mustBuild(t, helloSpec("ghcr.io/warren-mesh/app:1"))
	foreignSpec := helloSpec("ghcr.io/warren-mesh/app:1")
	foreignSpec.Arch = otherArch()
	foreign := mustBuild(t, foreignSpec)
	onlyForeignSpec := helloSpec("ghcr.io/warren-mesh/foreign:1")
	onlyForeignSpec.Arch = otherArch()
	mustWrite(t, dir, foreign, host, mustBuild(t, onlyForeignSpec))

	idx := mustIndex(t, dir)
	if len(idx.Manifests) != 2 || idx.Manifests[0].MediaType != types.OCIImageIndex {
		t.Fatalf("index.json = %+v; want a nested index for app:1 and a manifest for foreign:1", idx.Manifests)
	}
	l := mustOpen(t, dir)
	img, err := l.Find("ghcr.io/warren-mesh/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != host.Digest {
		t.Errorf("Find picked %s; want this machine's %s", img.Digest, host.Digest)
	}
	_, err = l.Find("ghcr.io/warren-mesh/foreign:1")
	if err == nil || !strings.Contains(err.Error(), "is for linux/"+otherArch()) {
		t.Errorf("Find of an image for another platform: %v; want an error naming linux/%s", err, otherArch())
	}

	// Rewriting app:1 for one platform replaces the nested index.
	mustWrite(t, dir, host)
	idx = mustIndex(t, dir)
	if len(idx.Manifests) != 2 || idx.Manifests[1].MediaType != types.OCIManifestSchema1 {
		t.Errorf("after rewriting app:1 for one platform, index.json = %+v", idx.Manifests)
	}
}

func TestConcurrentExtract(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, dir, mustBuild(t, helloSpec("app:1")))
	l := mustOpen(t, dir)
	cache := t.TempDir()
	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Go(func() { paths[i], errs[i] = l.Extract("app:1", cache) })
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil || paths[i] != paths[0] {
			t.Errorf("extraction %d: %s, %v; want %s", i, paths[i], errs[i], paths[0])
		}
	}
	if _, err := os.Stat(filepath.Join(paths[0], "usr/local/bin/app")); err != nil {
		t.Error(err)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 1 {
		t.Errorf("cache holds %d entries after concurrent extractions; want 1", len(entries))
	}
}

func TestWriteTarball(t *testing.T) {
	b := mustBuild(t, helloSpec("ghcr.io/warren-mesh/app:0.1.0"))
	p := filepath.Join(t.TempDir(), "app-0.1.0.tar")
	if err := b.WriteTarball(p); err != nil {
		t.Fatal(err)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		t.Fatalf("read the tarball's manifest.json: %v", err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"ghcr.io/warren-mesh/app:0.1.0"}) {
		t.Errorf("manifest.json = %+v; want one image tagged ghcr.io/warren-mesh/app:0.1.0", m)
	}
	img, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := b.image.ConfigName()
	if cfg != want {
		t.Errorf("tarball config %s; want %s", cfg, want)
	}
	if err := b.WriteTarball(filepath.Join(t.TempDir(), "missing", "x.tar")); err == nil {
		t.Error("WriteTarball into a missing directory succeeded")
	}
}

func TestBuildBadInput(t *testing.T) {
	notFile := t.TempDir()
	tests := []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"empty ref", func(s *Spec) { s.Ref = "" }, "image reference is empty"},
		{"digest ref", func(s *Spec) { s.Ref = "app@sha256:" + strings.Repeat("a", 64) }, "references by digest are not supported"},
		{"bad ref", func(s *Spec) { s.Ref = "UPPER/app:1" }, `image reference "UPPER/app:1"`},
		{"no binaries", func(s *Spec) { s.Binaries = nil }, "no binaries"},
		{"missing binary", func(s *Spec) { s.Binaries[0].Path = "/nonexistent/app" }, "was it built?"},
		{"directory", func(s *Spec) { s.Binaries[0].Path = notFile }, "is not a regular file"},
		{"name with slash", func(s *Spec) { s.Binaries[0].Name = "a/b" }, "is not a plain file name"},
		{"dot-dot name", func(s *Spec) { s.Binaries[0].Name = ".." }, "is not a plain file name"},
		{"same name twice", func(s *Spec) {
			s.Binaries = append(s.Binaries, Binary{Path: testBinaries.other, Name: "app"})
		}, `name "app" given twice`},
		{"bad env", func(s *Spec) { s.Env = []string{"NOEQUALS"} }, `env "NOEQUALS" is not KEY=value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := helloSpec("app:1")
			tt.change(&s)
			_, err := Build(s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestWriteBadInput(t *testing.T) {
	b := mustBuild(t, helloSpec("app:1"))
	notLayout := t.TempDir()
	if err := os.WriteFile(filepath.Join(notLayout, "precious"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	badVersion := t.TempDir()
	if err := os.WriteFile(filepath.Join(badVersion, "oci-layout"), []byte(`{"imageLayoutVersion":"9"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dir  string
		imgs []*Built
		want string
	}{
		{"no images", t.TempDir(), nil, "no images"},
		{"same image twice", t.TempDir(), []*Built{b, b}, "given twice for " + HostPlatform()},
		{"not built", t.TempDir(), []*Built{{Ref: "x"}}, "was not made by Build"},
		{"non-empty directory", notLayout, []*Built{b}, "is not an OCI layout"},
		{"layout version", badVersion, []*Built{b}, `image layout version "9" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(tt.dir, tt.imgs...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Write: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestOpenAndFindBadInput(t *testing.T) {
	good := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, good, mustBuild(t, helloSpec("ghcr.io/warren-mesh/a:1")), mustBuild(t, helloSpec("ghcr.io/warren-mesh/b:1")))

	noIndex := t.TempDir()
	if err := os.WriteFile(filepath.Join(noIndex, "oci-layout"), []byte(layoutFileContent), 0o644); err != nil {
		t.Fatal(err)
	}
	badIndex := t.TempDir()
	if err := os.WriteFile(filepath.Join(badIndex, "oci-layout"), []byte(layoutFileContent), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badIndex, "index.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, dir, want string }{
		{"missing directory", filepath.Join(t.TempDir(), "nope"), "run `make images`"},
		{"no oci-layout", t.TempDir(), "run `make images`"},
		{"no index.json", noIndex, "index.json"},
		{"corrupt index.json", badIndex, "index.json is not an image index"},
	} {
		t.Run("open "+tt.name, func(t *testing.T) {
			_, err := Open(tt.dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open: %v; want an error containing %q", err, tt.want)
			}
		})
	}

	l := mustOpen(t, good)
	for _, tt := range []struct{ name, ref, want string }{
		{"unknown ref", "ghcr.io/warren-mesh/c:1", "image ghcr.io/warren-mesh/c:1 is not in layout " + good + "; it has: ghcr.io/warren-mesh/a:1, ghcr.io/warren-mesh/b:1"},
		{"other tag", "ghcr.io/warren-mesh/a:2", "it has: ghcr.io/warren-mesh/a:1"},
		{"empty ref", "", "image reference is empty"},
		{"digest ref", "a@sha256:" + strings.Repeat("0", 64), "references by digest are not supported"},
	} {
		t.Run("find "+tt.name, func(t *testing.T) {
			_, err := l.Find(tt.ref)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Find: %v; want an error containing %q", err, tt.want)
			}
		})
	}

	empty := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, empty, mustBuild(t, helloSpec("x:1")))
	if err := os.WriteFile(filepath.Join(empty, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := mustOpen(t, empty).Find("x:1"); err == nil || !strings.Contains(err.Error(), "it has no images") {
		t.Errorf("Find in an empty layout: %v; want it to say the layout has no images", err)
	}
}

// corrupt flips a byte of the blob with digest d in the layout at dir.
func corrupt(t testing.TB, dir string, d v1.Hash) {
	t.Helper()
	p, err := blobPath(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptedLayout(t *testing.T) {
	build := func(t *testing.T) (string, *Built) {
		dir := filepath.Join(t.TempDir(), "oci")
		b := mustBuild(t, helloSpec("app:1"))
		mustWrite(t, dir, b)
		return dir, b
	}
	t.Run("layer", func(t *testing.T) {
		dir, b := build(t)
		layers, _ := b.image.Layers()
		d, _ := layers[0].Digest()
		corrupt(t, dir, d)
		img, err := mustOpen(t, dir).Find("app:1")
		if err != nil {
			t.Fatalf("Find reads no layers, so it should succeed: %v", err)
		}
		cache := t.TempDir()
		_, err = img.Extract(cache)
		if !errors.Is(err, errDigestMismatch) {
			t.Fatalf("Extract of a corrupted layer: %v; want a digest mismatch", err)
		}
		if entries, _ := os.ReadDir(cache); len(entries) != 0 {
			t.Errorf("a failed extraction left %d entries in the cache", len(entries))
		}
	})
	t.Run("truncated layer", func(t *testing.T) {
		dir, b := build(t)
		layers, _ := b.image.Layers()
		d, _ := layers[0].Digest()
		p, _ := blobPath(dir, d)
		if err := os.Truncate(p, 100); err != nil {
			t.Fatal(err)
		}
		_, err := mustOpen(t, dir).Extract("app:1", t.TempDir())
		if !errors.Is(err, errDigestMismatch) {
			t.Fatalf("Extract of a truncated layer: %v; want a digest mismatch", err)
		}
	})
	t.Run("config", func(t *testing.T) {
		dir, b := build(t)
		d, _ := b.image.ConfigName()
		corrupt(t, dir, d)
		_, err := mustOpen(t, dir).Find("app:1")
		if !errors.Is(err, errDigestMismatch) {
			t.Fatalf("Find with a corrupted config: %v; want a digest mismatch", err)
		}
	})
	t.Run("manifest", func(t *testing.T) {
		dir, b := build(t)
		d, _ := b.image.Digest()
		corrupt(t, dir, d)
		_, err := mustOpen(t, dir).Find("app:1")
		if !errors.Is(err, errDigestMismatch) {
			t.Fatalf("Find with a corrupted manifest: %v; want a digest mismatch", err)
		}
	})
	t.Run("missing blob", func(t *testing.T) {
		dir, b := build(t)
		d, _ := b.image.ConfigName()
		p, _ := blobPath(dir, d)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		_, err := mustOpen(t, dir).Find("app:1")
		if err == nil || !strings.Contains(err.Error(), "is missing from the layout") {
			t.Fatalf("Find with a missing config blob: %v; want it to say the blob is missing", err)
		}
	})
}

func TestIndexJSONIsValidOCI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	mustWrite(t, dir, mustBuild(t, helloSpec("app:1")))
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != string(types.OCIImageIndex) {
		t.Errorf("index.json schemaVersion %d mediaType %q; want 2 and %s", idx.SchemaVersion, idx.MediaType, types.OCIImageIndex)
	}
	lf, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if err != nil || checkLayoutFile(lf) != nil {
		t.Errorf("oci-layout = %q, %v", lf, err)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestLeftoversOfDeadProcessesAreCleaned(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	b := mustBuild(t, helloSpec("app:1"))
	mustWrite(t, dir, b)
	deadBlob := filepath.Join(dir, "blobs", "sha256", ".tmp-abc-123")
	deadIndex := filepath.Join(dir, ".index.json.tmp-456")
	for _, p := range []string{deadBlob, deadIndex} {
		if err := os.WriteFile(p, []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, dir, b)
	for _, p := range []string{deadBlob, deadIndex} {
		if fileExists(p) {
			t.Errorf("Write left the dead writer's %s", filepath.Base(p))
		}
	}

	cache := t.TempDir()
	old, young := filepath.Join(cache, ".extract-old"), filepath.Join(cache, ".extract-young")
	for _, p := range []string{old, young} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * staleExtraction)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if _, err := mustOpen(t, dir).Extract("app:1", cache); err != nil {
		t.Fatal(err)
	}
	if fileExists(old) {
		t.Error("Extract left a stale temporary extraction")
	}
	if !fileExists(young) {
		t.Error("Extract removed a temporary extraction that may still be running")
	}
}

func TestBuildDefaultsToThisMachine(t *testing.T) {
	s := helloSpec("app:1")
	s.OS, s.Arch = "", ""
	if b := mustBuild(t, s); b.Platform != HostPlatform() {
		t.Errorf("Build without a platform made %s; want %s", b.Platform, HostPlatform())
	}
}

// TestLayoutPassesAnotherReader reads a layout back with go-containerregistry's own layout reader
// and validator (digests, sizes, diff IDs, media types), so the layout is not only readable by us.
func TestLayoutPassesAnotherReader(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	foreign := helloSpec("ghcr.io/warren-mesh/app:1")
	foreign.Arch = otherArch()
	mustWrite(t, dir, mustBuild(t, helloSpec("ghcr.io/warren-mesh/app:1")), mustBuild(t, foreign), mustBuild(t, helloSpec("single:1")))
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Errorf("go-containerregistry rejects the layout: %v", err)
	}
}
