package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinDir is where Build puts the binaries in the image.
const BinDir = "/usr/local/bin"

// DefaultPath is the PATH of every image Build makes.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Binary is one file Build copies into BinDir.
type Binary struct {
	// Path is the already-built binary on this machine.
	Path string
	// Name is its file name in the image; empty means filepath.Base(Path).
	Name string
}

// Spec describes an image made of binaries: one layer holding BinDir/<name> for each binary (mode
// 0755, owner 0:0, mtime Created), plus /tmp (mode 1777). The same binaries and Spec always give the
// same digests.
type Spec struct {
	// Ref is the image's reference, e.g. ghcr.io/warren-mesh/warren-ztunnel:0.1.0 or
	// warren-lab/app:local (that is docker.io/warren-lab/app:local).
	Ref string
	// Binaries go to BinDir; at least one.
	Binaries []Binary
	// Entrypoint defaults to [BinDir/<name of the first binary>].
	Entrypoint []string
	// Cmd is the image's default arguments.
	Cmd []string
	// Env is added after DefaultPath ("KEY=value" each).
	Env []string
	// WorkingDir is the image's working directory (empty: the runtime's default, /).
	WorkingDir string
	// OS and Arch are the platform; empty means linux and the architecture this program runs on
	// (runtime.GOARCH), the one `go build` targets by default. They only label the image: Build
	// does not check the binaries' format.
	OS, Arch string
	// Version, Source and Title become the labels org.opencontainers.image.{version,source,title};
	// Title defaults to the name of the first binary.
	Version, Source, Title string
	// Labels are more config labels.
	Labels map[string]string
	// Created is the image's creation time and every file's mtime; zero means the Unix epoch, so
	// that builds are reproducible. `make images` passes $SOURCE_DATE_EPOCH when it is set.
	Created time.Time
}

// Built is an image Build made, not yet written anywhere.
type Built struct {
	// Ref is the full reference (containerd's spelling: docker.io/..., tag always present).
	Ref string
	// Tag is Ref's tag.
	Tag string
	// Platform is os/arch.
	Platform string
	// Digest is the image manifest's digest ("sha256:...").
	Digest string
	// Size is the bytes of the manifest, the config and the compressed layers.
	Size int64

	image v1.Image
	os    string
	arch  string
}

// Build makes the image spec describes. It reads the binaries into memory.
func Build(spec Spec) (*Built, error) {
	full, tag, err := NormalizeRef(spec.Ref)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	files, err := readBinaries(spec.Binaries)
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", full, err)
	}
	osName, arch := spec.OS, spec.Arch
	if osName == "" {
		osName = "linux"
	}
	if arch == "" {
		arch = runtime.GOARCH
	}
	for _, e := range spec.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("build image %s: env %q is not KEY=value", full, e)
		}
	}
	created := spec.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC().Truncate(time.Second)

	layerTar, err := layerTar(files, created)
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", full, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("build image %s: layer: %w", full, err)
	}

	entrypoint := spec.Entrypoint
	if len(entrypoint) == 0 {
		entrypoint = []string{path.Join(BinDir, files[0].name)}
	}
	title := spec.Title
	if title == "" {
		title = files[0].name
	}
	labels := map[string]string{LabelTitle: title}
	if spec.Version != "" {
		labels[LabelVersion] = spec.Version
	}
	if spec.Source != "" {
		labels[LabelSource] = spec.Source
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	cfg := &v1.ConfigFile{
		Architecture: arch,
		OS:           osName,
		Created:      v1.Time{Time: created},
		Config: v1.Config{
			Entrypoint: entrypoint,
			Cmd:        spec.Cmd,
			Env:        append([]string{DefaultPath}, spec.Env...),
			WorkingDir: spec.WorkingDir,
			Labels:     labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("build image %s: config: %w", full, err)
	}
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = f.name
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "warren test/images: " + strings.Join(names, " ") + " in " + BinDir,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("build image %s: add layer: %w", full, err)
	}
	b, err := newBuilt(full, tag, osName, arch, img)
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", full, err)
	}
	return b, nil
}

// newBuilt wraps img, whose reference is full (normalized) with tag tag, for Write.
func newBuilt(full, tag, osName, arch string, img v1.Image) (*Built, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("digest: %w", err)
	}
	size, err := imageSize(img)
	if err != nil {
		return nil, err
	}
	return &Built{Ref: full, Tag: tag, Platform: osName + "/" + arch, Digest: d.String(), Size: size, image: img, os: osName, arch: arch}, nil
}

// WriteTarball writes the image as a `docker save` tarball (manifest.json, config, layers), the
// format `docker load` and `kind load image-archive` take. The file appears whole or not at all.
func (b *Built) WriteTarball(file string) error {
	ref, err := nameTag(b.Ref)
	if err != nil {
		return fmt.Errorf("write tarball %s: %w", file, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write tarball (is the directory there and writable?): %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tarball.Write(ref, b.image, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write tarball %s: %w", file, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write tarball %s: %w", file, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write tarball %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write tarball: %w", err)
	}
	return nil
}

type binaryFile struct {
	name string
	data []byte
}

func readBinaries(bins []Binary) ([]binaryFile, error) {
	if len(bins) == 0 {
		return nil, fmt.Errorf("no binaries: an image needs at least one")
	}
	var files []binaryFile
	seen := map[string]bool{}
	for _, b := range bins {
		n := b.Name
		if n == "" {
			n = filepath.Base(b.Path)
		}
		if n == "" || n == "." || n == ".." || n == "/" || strings.ContainsAny(n, `/\`) {
			return nil, fmt.Errorf("binary %q: name %q is not a plain file name", b.Path, n)
		}
		if seen[n] {
			return nil, fmt.Errorf("binary %q: name %q given twice", b.Path, n)
		}
		seen[n] = true
		st, err := os.Stat(b.Path)
		if err != nil {
			return nil, fmt.Errorf("binary %q (was it built?): %w", b.Path, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("binary %q is not a regular file (%s)", b.Path, st.Mode().Type())
		}
		data, err := os.ReadFile(b.Path)
		if err != nil {
			return nil, fmt.Errorf("binary %q: %w", b.Path, err)
		}
		files = append(files, binaryFile{name: n, data: data})
	}
	return files, nil
}

// layerTar is the uncompressed layer: the directories down to BinDir, /tmp and the binaries in name
// order, all owned by 0:0 with mtime t.
func layerTar(files []binaryFile, t time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: t, Format: tar.FormatPAX})
	}
	var dirs []string
	for d := strings.TrimPrefix(BinDir, "/"); d != "."; d = path.Dir(d) {
		dirs = append(dirs, d)
	}
	slices.Reverse(dirs)
	for _, d := range dirs {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b binaryFile) int { return strings.Compare(a.name, b.name) })
	for _, f := range sorted {
		h := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     path.Join(strings.TrimPrefix(BinDir, "/"), f.name),
			Mode:     0o755,
			Size:     int64(len(f.data)),
			ModTime:  t,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("manifest: %w", err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("manifest: %w", err)
	}
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}
