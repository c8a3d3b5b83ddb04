package oci

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Extract finds ref (see Find) and extracts it under cacheDir (see Image.Extract).
func (l *Layout) Extract(ref, cacheDir string) (string, error) {
	img, err := l.Find(ref)
	if err != nil {
		return "", err
	}
	return img.Extract(cacheDir)
}

// Extract applies the image's layers in order into a new directory under cacheDir and returns it:
// the image's root filesystem. Whiteouts of lower layers are honoured. An entry that would land
// outside the directory fails the extraction: a name with "..", or a path, hard link or whiteout
// through a symbolic link that points outside (such links themselves are kept: in the container
// they resolve inside its root). So does a layer whose content does not match its digest. Device
// nodes and FIFOs are skipped; owners are applied only when running as root.
//
// The directory is named after the manifest digest (cacheDir/sha256-<hex>) and appears whole or not
// at all, so a second Extract of the same image costs nothing and concurrent ones are safe. Callers
// share it: they must not write into it.
func (img *Image) Extract(cacheDir string) (string, error) {
	h, err := v1.NewHash(img.Digest)
	if err != nil {
		return "", fmt.Errorf("extract image %s: %w", img.Ref, err)
	}
	final := filepath.Join(cacheDir, h.Algorithm+"-"+h.Hex)
	if st, err := os.Stat(final); err == nil && st.IsDir() {
		return final, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("extract image %s (can the cache directory be created?): %w", img.Ref, err)
	}
	removeStaleExtractions(cacheDir, time.Now().Add(-staleExtraction))
	tmp, err := os.MkdirTemp(cacheDir, ".extract-"+h.Hex[:12]+"-")
	if err != nil {
		return "", fmt.Errorf("extract image %s: %w", img.Ref, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("extract image %s: %w", img.Ref, err)
	}
	if err := img.extractTo(tmp); err != nil {
		return "", fmt.Errorf("extract image %s: %w", img.Ref, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another extraction of the same image won the race.
		if st, serr := os.Stat(final); serr == nil && st.IsDir() {
			return final, nil
		}
		return "", fmt.Errorf("extract image %s: %w", img.Ref, err)
	}
	done = true
	return final, nil
}

// staleExtraction is how old a temporary extraction directory must be to count as left behind by
// a process that died: no extraction takes that long.
const staleExtraction = time.Hour

// removeStaleExtractions deletes the temporary extraction directories in cacheDir older than before.
// It is best effort: a failure only leaves garbage.
func removeStaleExtractions(cacheDir string, before time.Time) {
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".extract-") {
			continue
		}
		if info, err := e.Info(); err == nil && info.ModTime().Before(before) {
			os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}

func (img *Image) extractTo(dir string) error {
	unlock, err := lockDir(img.layout.dir, unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &extractor{root: root, chown: os.Geteuid() == 0, dirModes: map[string]fs.FileMode{}}
	for i, d := range img.layers {
		if err := x.layer(img.layout.dir, d); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, d.Digest, err)
		}
	}
	return x.finish()
}

type extractor struct {
	root     *os.Root
	chown    bool
	dirModes map[string]fs.FileMode
}

// layer applies one layer: first its whiteouts (they hide what lower layers put there), then its
// content. The blob is read twice; both reads are checked against its digest.
func (x *extractor) layer(dir string, d v1.Descriptor) error {
	var whiteouts []string
	var opaque []string
	err := x.readLayer(dir, d, func(p string, h *tar.Header, _ io.Reader) error {
		base := path.Base(p)
		switch {
		case base == whiteoutOpaque:
			opaque = append(opaque, path.Dir(p))
		case strings.HasPrefix(base, whiteoutPrefix):
			name := strings.TrimPrefix(base, whiteoutPrefix)
			if name == "" || name == "." || name == ".." {
				return fmt.Errorf("entry %q: bad whiteout", h.Name)
			}
			whiteouts = append(whiteouts, path.Join(path.Dir(p), name))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range opaque {
		if err := x.clearDir(o); err != nil {
			return fmt.Errorf("opaque whiteout of %q: %w", o, err)
		}
	}
	for _, w := range whiteouts {
		if err := x.root.RemoveAll(w); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("whiteout of %q: %w", w, err)
		}
		x.forgetDirs(w)
	}
	return x.readLayer(dir, d, func(p string, h *tar.Header, r io.Reader) error {
		if strings.HasPrefix(path.Base(p), whiteoutPrefix) {
			return nil
		}
		if err := x.entry(p, h, r); err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
		return nil
	})
}

// readLayer calls fn for each entry of the layer blob d with the entry's path inside the root.
func (x *extractor) readLayer(dir string, d v1.Descriptor, fn func(p string, h *tar.Header, r io.Reader) error) error {
	blob, err := openBlob(dir, d)
	if err != nil {
		return err
	}
	defer blob.Close()
	var r io.Reader
	switch d.MediaType {
	case types.OCILayer, types.DockerLayer, types.OCIRestrictedLayer, types.DockerForeignLayer:
		zr, err := gzip.NewReader(blob)
		if err != nil {
			if cerr := blob.check(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("not gzip: %w", err)
		}
		defer zr.Close()
		r = zr
	case types.OCIUncompressedLayer, types.OCIUncompressedRestrictedLayer:
		r = blob
	default:
		return fmt.Errorf("layer media type %q is not supported (gzip or uncompressed tar only)", d.MediaType)
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if cerr := blob.check(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("tar: %w", err)
		}
		p, err := entryPath(h.Name)
		if err != nil {
			return err
		}
		if err := fn(p, h, tr); err != nil {
			if cerr := blob.check(); cerr != nil {
				return cerr
			}
			return err
		}
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		if cerr := blob.check(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("decompress: %w", err)
	}
	return blob.check()
}

// entryPath is the clean, root-relative path of a tar entry name; "." is the root itself. A name
// that climbs out of the root is an error.
func entryPath(name string) (string, error) {
	c := path.Clean(name)
	if path.IsAbs(c) {
		c = strings.TrimLeft(c, "/")
		if c == "" {
			c = "."
		}
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("entry %q points outside the root filesystem: refusing the layer", name)
	}
	return c, nil
}

func (x *extractor) entry(p string, h *tar.Header, r io.Reader) error {
	mode := h.FileInfo().Mode()
	if p == "." {
		if h.Typeflag == tar.TypeDir {
			x.dirModes[p] = mode.Perm() | mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
			return nil
		}
		return fmt.Errorf("only a directory entry can name the root directory")
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if st, err := x.root.Lstat(p); err == nil && !st.IsDir() {
			if err := x.root.Remove(p); err != nil {
				return err
			}
		}
		if err := x.root.MkdirAll(p, 0o755); err != nil {
			return err
		}
		x.dirModes[p] = mode.Perm() | mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
	case tar.TypeReg: // archive/tar reports old TypeRegA entries as TypeReg.
		if err := x.replace(p); err != nil {
			return err
		}
		f, err := x.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Chmod(mode.Perm() | mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := x.root.Chtimes(p, h.ModTime, h.ModTime); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := x.replace(p); err != nil {
			return err
		}
		if err := x.root.Symlink(h.Linkname, p); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := entryPath(h.Linkname)
		if err != nil {
			return fmt.Errorf("hard link: %w", err)
		}
		if err := x.replace(p); err != nil {
			return err
		}
		if err := x.root.Link(target, p); err != nil {
			return err
		}
	default:
		// Devices, FIFOs and vendor extensions: a lab root filesystem does without them.
		return nil
	}
	if x.chown {
		if err := x.root.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
	}
	return nil
}

// replace makes way for a non-directory entry at p: its parent exists, p does not.
func (x *extractor) replace(p string) error {
	if err := x.root.MkdirAll(path.Dir(p), 0o755); err != nil {
		return err
	}
	if _, err := x.root.Lstat(p); err == nil {
		if err := x.root.RemoveAll(p); err != nil {
			return err
		}
		x.forgetDirs(p)
	}
	return nil
}

// clearDir removes what is inside the directory p, if it is one.
func (x *extractor) clearDir(p string) error {
	st, err := x.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !st.IsDir()) {
		return nil
	}
	if err != nil {
		return err
	}
	f, err := x.root.Open(p)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		c := path.Join(p, n)
		if err := x.root.RemoveAll(c); err != nil {
			return err
		}
		x.forgetDirs(c)
	}
	return nil
}

// forgetDirs drops the pending modes of p and what was under it.
func (x *extractor) forgetDirs(p string) {
	for d := range x.dirModes {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(x.dirModes, d)
		}
	}
}

// finish sets the directories' modes, deepest first, now that nothing more is written into them.
func (x *extractor) finish() error {
	dirs := make([]string, 0, len(x.dirModes))
	for d := range x.dirModes {
		dirs = append(dirs, d)
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range dirs {
		if err := x.root.Chmod(d, x.dirModes[d]); err != nil {
			return fmt.Errorf("directory %q: %w", d, err)
		}
	}
	return nil
}
