//go:build linux

package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Pins under [Config.PinPath]: the maps by their names, the outbound links as link_<program>,
// and each pod's sk_lookup link as pods/<netns cookie>.
const (
	pinLinkPrefix = "link_"
	pinPodsDir    = "pods"
)

// preparePinPath checks that dir is (or would be) on a bpf filesystem and creates it.
func preparePinPath(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("redirect: pin path %q is not absolute", dir)
	}
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("redirect: pin path %s: %s is not on a bpf filesystem: bpffs must be mounted (mount -t bpf bpf /sys/fs/bpf)", dir, p)
			}
			break
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("redirect: pin path %s: statfs %s: %w", dir, p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("redirect: pin path %s: no bpf filesystem: bpffs must be mounted", dir)
		}
		p = parent
	}
	if err := os.MkdirAll(filepath.Join(dir, pinPodsDir), 0o700); err != nil {
		return fmt.Errorf("redirect: pin path: %w", err)
	}
	return nil
}

// attachPinned returns a link running prog, pinned at pin. If a link is pinned there already
// (left by a previous process), it is adopted: its program is replaced atomically with
// link.Update, so the hook is never without a program. If it cannot be updated, a new link is
// attached first and the old one is then unpinned and closed. With pin "", attach is called.
func attachPinned(pin string, prog *ebpf.Program, attach func() (link.Link, error)) (link.Link, error) {
	if pin == "" {
		return attach()
	}
	old, err := link.LoadPinnedLink(pin, nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	if old != nil {
		if err := old.Update(prog); err == nil {
			return old, nil
		}
	}
	l, err := attach()
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, err
	}
	if old != nil {
		_ = old.Unpin()
		_ = old.Close()
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return l, nil
}

// replaceIncompatiblePins removes the pins of maps under dir whose layout no longer matches spec
// (left by an older version), so that loading creates and pins new ones instead of failing with
// ebpf.ErrMapIncompatible. Programs of the older version keep their maps until their links are
// updated. The enrolled map is migrated: its netns cookies are re-enrolled without addresses
// (loopback targets, as the older version used) until the pods are enrolled again with theirs.
func replaceIncompatiblePins(dir string, spec *ebpf.CollectionSpec) error {
	for name, ms := range spec.Maps {
		pin := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("redirect: load pinned map %s: %w", pin, err)
		}
		if ms.Compatible(m) == nil {
			m.Close()
			continue
		}
		migrate := map[uint64]uint32{} // netns cookie -> port (user_port encoding)
		if name == mapEnrolled && m.KeySize() == 8 && m.ValueSize() >= 4 {
			var k uint64
			v := make([]byte, m.ValueSize())
			it := m.Iterate()
			for it.Next(&k, &v) {
				migrate[k] = binary.NativeEndian.Uint32(v[:4])
			}
		}
		err = m.Unpin()
		m.Close()
		if err != nil {
			return fmt.Errorf("redirect: replace incompatible pinned map %s: %w", pin, err)
		}
		if len(migrate) == 0 {
			continue
		}
		// Create the new map and pin it now, carrying the enrolled pods over.
		nm, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
		if err != nil {
			return fmt.Errorf("redirect: recreate pinned map %s: %w", pin, err)
		}
		for k, port := range migrate {
			v := enrollValue{Port: port}
			if err := nm.Put(k, v); err != nil {
				nm.Close()
				return fmt.Errorf("redirect: migrate pinned map %s: %w", pin, err)
			}
		}
		nm.Close()
	}
	return nil
}

func (r *Redirector) linkPin(prog string) string {
	if r.cfg.PinPath == "" {
		return ""
	}
	return filepath.Join(r.cfg.PinPath, pinLinkPrefix+prog)
}

func (r *Redirector) podPin(netnsCookie uint64) string {
	if r.cfg.PinPath == "" {
		return ""
	}
	return filepath.Join(r.cfg.PinPath, pinPodsDir, strconv.FormatUint(netnsCookie, 10))
}

// removePins detaches every link pinned under dir and removes dir.
func removePins(dir string) error {
	var links []string
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), pinLinkPrefix) {
			links = append(links, filepath.Join(dir, e.Name()))
		}
	}
	pods, err := os.ReadDir(filepath.Join(dir, pinPodsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range pods {
		links = append(links, filepath.Join(dir, pinPodsDir, e.Name()))
	}
	var errs []error
	for _, p := range links {
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", p, err))
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	errs = append(errs, os.RemoveAll(dir))
	return errors.Join(errs...)
}
