//go:build linux

package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
)

// These tests need no privileges: they check the pure parts (encodings, specs, error text).

func TestUserPort(t *testing.T) {
	for _, port := range []uint16{15001, 1, 0x1234} {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], userPort(port))
		if got := binary.BigEndian.Uint16(b[:2]); got != port || b[2] != 0 || b[3] != 0 {
			t.Errorf("userPort(%d) memory = %x, want the port in network order then zeros", port, b)
		}
	}
}

func TestBe32(t *testing.T) {
	v := uint32(be32(127, 0, 0, 1))
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	if b != [4]byte{127, 0, 0, 1} {
		t.Errorf("be32(127,0,0,1) memory = %v", b)
	}
}

func TestMapLayouts(t *testing.T) {
	spec := outboundSpec(DefaultMark)
	for name, size := range map[string]struct{ key, value uintptr }{
		mapEnrolled:     {8, unsafe.Sizeof(enrollValue{})},
		mapOrigByCookie: {8, unsafe.Sizeof(origDst{})},
		mapOrigByPeer:   {unsafe.Sizeof(peerKey{}), unsafe.Sizeof(origDst{})},
	} {
		m := spec.Maps[name]
		if uintptr(m.KeySize) != size.key || uintptr(m.ValueSize) != size.value {
			t.Errorf("map %s: key/value size %d/%d, Go types %d/%d", name, m.KeySize, m.ValueSize, size.key, size.value)
		}
	}
}

func TestSpecsAreDeterministic(t *testing.T) {
	for _, mk := range []func() *ebpf.CollectionSpec{
		func() *ebpf.CollectionSpec { return outboundSpec(0x539) },
		func() *ebpf.CollectionSpec { return inboundSpec(15008) },
	} {
		a, b := mk(), mk()
		for name, p := range a.Programs {
			if got, want := fmt.Sprint(p.Instructions), fmt.Sprint(b.Programs[name].Instructions); got != want {
				t.Errorf("program %s differs between two builds", name)
			}
			if n := len(p.Instructions); n > 100 {
				t.Errorf("program %s has %d instructions; expected a small program", name, n)
			}
		}
	}
}

func TestCheckFeaturesNamesTheMissingOne(t *testing.T) {
	fs := []feature{
		{"present thing", "4.0", func() error { return nil }},
		{"BPF_PROG_TYPE_FOO", "9.9", func() error { return fmt.Errorf("foo: %w", ebpf.ErrNotSupported) }},
		{"never reached", "1.0", func() error { t.Error("probe after a failure ran"); return nil }},
	}
	err := checkFeatures(fs)
	if !errors.Is(err, ebpf.ErrNotSupported) || !strings.Contains(err.Error(), "BPF_PROG_TYPE_FOO") || !strings.Contains(err.Error(), "Linux >= 9.9") {
		t.Errorf("checkFeatures() = %v; want ErrNotSupported naming BPF_PROG_TYPE_FOO and Linux >= 9.9", err)
	}
	other := errors.New("operation not permitted")
	err = checkFeatures([]feature{{"x", "1.0", func() error { return other }}})
	if !errors.Is(err, other) || errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("checkFeatures(EPERM) = %v; want the error as is, not ErrNotSupported", err)
	}
}
