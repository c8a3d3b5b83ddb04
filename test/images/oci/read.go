package oci

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// maxMetadataBlob bounds the manifests, indexes and configs the reader loads into memory.
const maxMetadataBlob = 16 << 20

// Layout is an OCI image layout directory opened for reading. Every call reads index.json afresh,
// so a Layout sees images written after Open.
type Layout struct {
	dir string
}

// Config is the part of an image's config a runtime needs.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	Labels     map[string]string
}

// Image is one image of a layout, for this machine's platform.
type Image struct {
	// Ref is the full reference the layout names it by.
	Ref string
	// Digest is the image manifest's digest ("sha256:...").
	Digest string
	// Platform is os/arch.
	Platform string
	// Size is the bytes of the manifest, the config and the compressed layers.
	Size int64
	// Config is the image's runtime config.
	Config Config

	layout *Layout
	layers []v1.Descriptor
}

// Open opens the OCI layout at dir; it fails if dir has no oci-layout file or no readable index.json.
func Open(dir string) (*Layout, error) {
	raw, err := os.ReadFile(filepath.Join(dir, layoutFileName))
	if err != nil {
		return nil, fmt.Errorf("open image layout %s (run `make images` to make one): %w", dir, err)
	}
	if err := checkLayoutFile(raw); err != nil {
		return nil, fmt.Errorf("open image layout %s: %w", dir, err)
	}
	if _, err := readIndexFile(dir, false); err != nil {
		return nil, fmt.Errorf("open image layout %s: %w", dir, err)
	}
	return &Layout{dir: dir}, nil
}

// Dir is the layout's directory.
func (l *Layout) Dir() string { return l.dir }

// Images lists the references of the layout's images, sorted.
func (l *Layout) Images() ([]string, error) {
	idx, err := readIndexFile(l.dir, false)
	if err != nil {
		return nil, fmt.Errorf("list images of %s: %w", l.dir, err)
	}
	return refsOf(idx), nil
}

func refsOf(idx *v1.IndexManifest) []string {
	var refs []string
	for _, d := range idx.Manifests {
		if r, ok := descriptorRef(d); ok && !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	slices.Sort(refs)
	return refs
}

// HostPlatform is the platform Find picks: linux and the architecture this binary runs on.
func HostPlatform() string { return "linux/" + runtime.GOARCH }

// Find returns the image ref names, for HostPlatform. ref is matched the way a runtime would:
// "app:1" finds docker.io/library/app:1. Its manifest and config are checked against their digests.
func (l *Layout) Find(ref string) (*Image, error) {
	unlock, err := lockDir(l.dir, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("find image %s in %s: %w", ref, l.dir, err)
	}
	defer unlock()
	return l.find(ref)
}

func (l *Layout) find(ref string) (*Image, error) {
	full, _, err := NormalizeRef(ref)
	if err != nil {
		return nil, fmt.Errorf("find image: %w", err)
	}
	idx, err := readIndexFile(l.dir, false)
	if err != nil {
		return nil, fmt.Errorf("find image %s in %s: %w", full, l.dir, err)
	}
	var desc *v1.Descriptor
	for i, d := range idx.Manifests {
		if r, ok := descriptorRef(d); ok && r == full {
			desc = &idx.Manifests[i]
		}
	}
	if desc == nil {
		has := refsOf(idx)
		if len(has) == 0 {
			return nil, fmt.Errorf("image %s is not in layout %s: it has no images (run `make images`)", full, l.dir)
		}
		return nil, fmt.Errorf("image %s is not in layout %s; it has: %s", full, l.dir, strings.Join(has, ", "))
	}
	img, err := l.resolve(full, *desc)
	if err != nil {
		return nil, fmt.Errorf("find image %s in %s: %w", full, l.dir, err)
	}
	return img, nil
}

// resolve follows d (an image manifest, or an index of them) to this platform's image.
func (l *Layout) resolve(ref string, d v1.Descriptor) (*Image, error) {
	host := HostPlatform()
	switch d.MediaType {
	case types.OCIImageIndex, types.DockerManifestList:
		raw, err := readBlobFile(l.dir, d)
		if err != nil {
			return nil, err
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", d.Digest, err)
		}
		var have []string
		for _, c := range idx.Manifests {
			if c.Platform == nil {
				continue
			}
			p := c.Platform.OS + "/" + c.Platform.Architecture
			have = append(have, p)
			if p == host && (c.MediaType == types.OCIManifestSchema1 || c.MediaType == types.DockerManifestSchema2) {
				return l.image(ref, c)
			}
		}
		return nil, fmt.Errorf("no image for %s (it has: %s)", host, strings.Join(have, ", "))
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
		img, err := l.image(ref, d)
		if err != nil {
			return nil, err
		}
		if img.Platform != host {
			return nil, fmt.Errorf("the image is for %s, this machine is %s", img.Platform, host)
		}
		return img, nil
	default:
		return nil, fmt.Errorf("descriptor %s has media type %q, not an image manifest or index", d.Digest, d.MediaType)
	}
}

func (l *Layout) image(ref string, d v1.Descriptor) (*Image, error) {
	raw, err := readBlobFile(l.dir, d)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	rawCfg, err := readBlobFile(l.dir, m.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	size := int64(len(raw)) + m.Config.Size
	for _, ld := range m.Layers {
		size += ld.Size
	}
	return &Image{
		Ref:      ref,
		Digest:   d.Digest.String(),
		Platform: cf.OS + "/" + cf.Architecture,
		Size:     size,
		Config: Config{
			Entrypoint: cf.Config.Entrypoint,
			Cmd:        cf.Config.Cmd,
			Env:        cf.Config.Env,
			WorkingDir: cf.Config.WorkingDir,
			User:       cf.Config.User,
			Labels:     cf.Config.Labels,
		},
		layout: l,
		layers: m.Layers,
	}, nil
}

// blobPath is where a layout keeps the blob d.
func blobPath(dir string, h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 || strings.Trim(h.Hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("digest %q is not a sha256 digest", h)
	}
	return filepath.Join(dir, blobsDirName, h.Algorithm, h.Hex), nil
}

// readBlobFile reads a small blob and checks it against its descriptor.
func readBlobFile(dir string, d v1.Descriptor) ([]byte, error) {
	if d.Size > maxMetadataBlob {
		return nil, fmt.Errorf("blob %s: %d bytes is too big for a manifest or config", d.Digest, d.Size)
	}
	rc, err := openBlob(dir, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if err := rc.check(); err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return raw, nil
}

// blobReader reads a blob file and, through check, tells whether it matched its descriptor.
type blobReader struct {
	*verifier
	f *os.File
}

func (b *blobReader) Close() error { return b.f.Close() }

func openBlob(dir string, d v1.Descriptor) (*blobReader, error) {
	p, err := blobPath(dir, d.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("blob %s is missing from the layout (rerun `make images`): %w", d.Digest, err)
	}
	return &blobReader{verifier: newVerifier(f, d.Digest, d.Size), f: f}, nil
}

// verifier passes r through, hashing it; check tells whether exactly size bytes with digest want
// were read. Reading more than size bytes fails at once.
type verifier struct {
	r    io.Reader
	want v1.Hash
	size int64
	n    int64
	h    hash.Hash
}

var errDigestMismatch = errors.New("digest mismatch: the layout is corrupted (rerun `make images`)")

func newVerifier(r io.Reader, want v1.Hash, size int64) *verifier {
	return &verifier{r: r, want: want, size: size, h: sha256.New()}
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if v.n > v.size {
		return n, fmt.Errorf("more than the %d bytes its descriptor says: %w", v.size, errDigestMismatch)
	}
	return n, err
}

// check reads what is left of r and compares size and digest.
func (v *verifier) check() error {
	if _, err := io.Copy(io.Discard, v); err != nil {
		return err
	}
	if v.n != v.size {
		return fmt.Errorf("%d bytes, its descriptor says %d: %w", v.n, v.size, errDigestMismatch)
	}
	got := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", v.h.Sum(nil))}
	if got != v.want {
		return fmt.Errorf("content is %s: %w", got, errDigestMismatch)
	}
	return nil
}
