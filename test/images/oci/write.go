package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

const (
	layoutFileName    = "oci-layout"
	layoutFileContent = `{"imageLayoutVersion":"1.0.0"}`
	indexFileName     = "index.json"
	blobsDirName      = "blobs"
)

// Write adds images to the OCI layout at dir, creating the layout (and dir) if needed. Images with
// the same Ref and different platforms become one multi-platform entry (a nested image index); a
// Ref already in the layout is replaced, and blobs nothing references any more are deleted. Writers
// and readers of one layout exclude each other with a lock on dir, so the lab can read while `make
// images` writes.
func Write(dir string, images ...*Built) error {
	if len(images) == 0 {
		return fmt.Errorf("write layout %s: no images", dir)
	}
	groups := map[string][]*Built{}
	var order []string
	for _, b := range images {
		if b == nil || b.image == nil {
			return fmt.Errorf("write layout %s: an image was not made by Build", dir)
		}
		for _, o := range groups[b.Ref] {
			if o.Platform == b.Platform {
				return fmt.Errorf("write layout %s: image %s given twice for %s", dir, b.Ref, b.Platform)
			}
		}
		if groups[b.Ref] == nil {
			order = append(order, b.Ref)
		}
		groups[b.Ref] = append(groups[b.Ref], b)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write layout (can the directory be created?): %w", err)
	}
	unlock, err := lockDir(dir, unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	defer unlock()

	if err := ensureLayoutFile(dir); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	index, err := readIndexFile(dir, true)
	if err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}

	var added []v1.Descriptor
	for _, ref := range order {
		desc, err := writeRef(dir, groups[ref])
		if err != nil {
			return fmt.Errorf("write layout %s: image %s: %w", dir, ref, err)
		}
		added = append(added, desc)
	}

	index.Manifests = slices.DeleteFunc(index.Manifests, func(d v1.Descriptor) bool {
		r, ok := descriptorRef(d)
		return ok && groups[r] != nil
	})
	index.Manifests = append(index.Manifests, added...)
	raw, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return fmt.Errorf("write layout %s: index: %w", dir, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, indexFileName), append(raw, '\n')); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	if err := collectGarbage(dir, index); err != nil {
		return fmt.Errorf("write layout %s: delete unreferenced blobs: %w", dir, err)
	}
	return nil
}

// writeRef writes the blobs of one reference's images and returns its index.json descriptor.
func writeRef(dir string, imgs []*Built) (v1.Descriptor, error) {
	slices.SortFunc(imgs, func(a, b *Built) int { return strings.Compare(a.Platform, b.Platform) })
	ann := map[string]string{AnnotationImageName: imgs[0].Ref, AnnotationRefName: imgs[0].Tag}
	var descs []v1.Descriptor
	for _, b := range imgs {
		if err := writeImageBlobs(dir, b.image); err != nil {
			return v1.Descriptor{}, fmt.Errorf("%s: %w", b.Platform, err)
		}
		raw, err := b.image.RawManifest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		d, err := b.image.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		descs = append(descs, v1.Descriptor{
			MediaType:   types.OCIManifestSchema1,
			Digest:      d,
			Size:        int64(len(raw)),
			Platform:    &v1.Platform{OS: b.os, Architecture: b.arch},
			Annotations: ann,
		})
	}
	if len(descs) == 1 {
		return descs[0], nil
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: descs}
	raw, err := json.Marshal(idx)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("image index: %w", err)
	}
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("image index: %w", err)
	}
	if err := writeBlob(dir, h, n, bytes.NewReader(raw)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("image index: %w", err)
	}
	return v1.Descriptor{MediaType: types.OCIImageIndex, Digest: h, Size: n, Annotations: ann}, nil
}

func writeImageBlobs(dir string, img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		n, err := l.Size()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		err = writeBlob(dir, d, n, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := writeBlob(dir, cfgName, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	m, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := writeBlob(dir, d, int64(len(m)), bytes.NewReader(m)); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

// writeBlob stores r as blobs/<alg>/<hex>, checking its digest and size. A blob already there with
// the right size is kept.
func writeBlob(dir string, h v1.Hash, size int64, r io.Reader) error {
	if h.Algorithm != "sha256" {
		return fmt.Errorf("blob %s: only sha256 digests are supported", h)
	}
	bdir := filepath.Join(dir, blobsDirName, h.Algorithm)
	file := filepath.Join(bdir, h.Hex)
	if st, err := os.Stat(file); err == nil && st.Mode().IsRegular() && st.Size() == size {
		return nil
	}
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	tmp, err := os.CreateTemp(bdir, ".tmp-"+h.Hex+"-*")
	if err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	defer os.Remove(tmp.Name())
	vr := newVerifier(r, h, size)
	if _, err := io.Copy(tmp, vr); err != nil {
		tmp.Close()
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := vr.check(); err != nil {
		tmp.Close()
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	return nil
}

func ensureLayoutFile(dir string) error {
	p := filepath.Join(dir, layoutFileName)
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		if len(entries) != 0 {
			return fmt.Errorf("directory is not empty and is not an OCI layout (no %s file): choose an empty or new directory", layoutFileName)
		}
		return writeFileAtomic(p, []byte(layoutFileContent))
	}
	if err != nil {
		return err
	}
	return checkLayoutFile(raw)
}

func checkLayoutFile(raw []byte) error {
	var lf struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(raw, &lf); err != nil {
		return fmt.Errorf("%s is not JSON: %w", layoutFileName, err)
	}
	if lf.Version != "1.0.0" {
		return fmt.Errorf("%s: image layout version %q is not supported (want 1.0.0)", layoutFileName, lf.Version)
	}
	return nil
}

// readIndexFile reads index.json; a missing one is an empty index when missingOK.
func readIndexFile(dir string, missingOK bool) (*v1.IndexManifest, error) {
	raw, err := os.ReadFile(filepath.Join(dir, indexFileName))
	if missingOK && errors.Is(err, os.ErrNotExist) {
		return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}, nil
	}
	if err != nil {
		return nil, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s is not an image index: %w", indexFileName, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("%s: schemaVersion %d is not supported (want 2)", indexFileName, idx.SchemaVersion)
	}
	return idx, nil
}

// descriptorRef is the normalized reference an index.json descriptor is annotated with.
func descriptorRef(d v1.Descriptor) (string, bool) {
	r, ok := d.Annotations[AnnotationImageName]
	if !ok || r == "" {
		return "", false
	}
	if full, _, err := NormalizeRef(r); err == nil {
		return full, true
	}
	return r, true
}

// collectGarbage deletes the blobs index does not reach, and temporary files writers that died
// left behind. The caller holds the exclusive lock.
func collectGarbage(dir string, index *v1.IndexManifest) error {
	keep := map[v1.Hash]bool{}
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if depth > 8 {
			return fmt.Errorf("image indexes nested deeper than 8")
		}
		keep[d.Digest] = true
		switch d.MediaType {
		case types.OCIImageIndex, types.DockerManifestList:
			raw, err := readBlobFile(dir, d)
			if err != nil {
				return err
			}
			idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
			if err != nil {
				return fmt.Errorf("index %s: %w", d.Digest, err)
			}
			for _, c := range idx.Manifests {
				if err := walk(c, depth+1); err != nil {
					return err
				}
			}
		case types.OCIManifestSchema1, types.DockerManifestSchema2:
			raw, err := readBlobFile(dir, d)
			if err != nil {
				return err
			}
			m, err := v1.ParseManifest(bytes.NewReader(raw))
			if err != nil {
				return fmt.Errorf("manifest %s: %w", d.Digest, err)
			}
			keep[m.Config.Digest] = true
			for _, l := range m.Layers {
				keep[l.Digest] = true
			}
		}
		return nil
	}
	for _, d := range index.Manifests {
		if err := walk(d, 0); err != nil {
			return err
		}
	}
	top, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, f := range top {
		if strings.HasPrefix(f.Name(), "."+indexFileName+".tmp-") {
			if err := os.Remove(filepath.Join(dir, f.Name())); err != nil {
				return err
			}
		}
	}
	algs, err := os.ReadDir(filepath.Join(dir, blobsDirName))
	if err != nil {
		return err
	}
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, blobsDirName, a.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			// Under the exclusive lock no writer is at work: a temporary file is a dead writer's.
			if keep[v1.Hash{Algorithm: a.Name(), Hex: f.Name()}] {
				continue
			}
			if err := os.Remove(filepath.Join(dir, blobsDirName, a.Name(), f.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFileAtomic(file string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// lockDir takes a flock on dir (LOCK_SH or LOCK_EX) and returns its release.
func lockDir(dir string, how int) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock: %w", err)
	}
	return func() { f.Close() }, nil
}
