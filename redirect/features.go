//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// feature is one kernel capability the redirect needs.
type feature struct {
	name    string
	version string // first Linux release that has it
	probe   func() error
}

var requiredFeatures = []feature{
	{"BPF_PROG_TYPE_CGROUP_SOCK_ADDR (cgroup connect4/connect6)", "4.17", func() error {
		return features.HaveProgramType(ebpf.CGroupSockAddr)
	}},
	{"BPF_PROG_TYPE_SOCK_OPS", "4.13", func() error { return features.HaveProgramType(ebpf.SockOps) }},
	{"BPF_PROG_TYPE_SK_LOOKUP", "5.9", func() error { return features.HaveProgramType(ebpf.SkLookup) }},
	{"BPF_MAP_TYPE_SOCKMAP", "4.14", func() error { return features.HaveMapType(ebpf.SockMap) }},
	{"BPF_MAP_TYPE_LRU_HASH", "4.10", func() error { return features.HaveMapType(ebpf.LRUHash) }},
	{"cgroup getpeername4/getpeername6 hooks", "5.8", probeGetpeername},
	{"bpf_link for cgroup programs", "5.7", probeBPFLink},
	{"bpf_get_netns_cookie helper in cgroup sock_addr programs", "5.7", func() error {
		return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
	}},
	{"bpf_get_socket_cookie helper in cgroup sock_addr programs", "5.0", func() error {
		return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
	}},
	{"bpf_get_socket_cookie helper in sockops programs", "5.0", func() error {
		return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetSocketCookie)
	}},
	{"bpf_sk_assign helper in sk_lookup programs", "5.9", func() error {
		return features.HaveProgramHelper(ebpf.SkLookup, asm.FnSkAssign)
	}},
	{"SO_NETNS_COOKIE socket option", "5.14", probeNetnsCookieSockopt},
	{"SIOCGSKNS socket ioctl", "4.9", probeSIOCGSKNS},
	// Last: the verifier accepts the real programs (context fields such as bpf_sock_addr.sk and
	// SOCKMAP lookups from sk_lookup, which the checks above do not cover).
	{"the redirect programs (verifier)", "5.9", probePrograms},
}

var (
	probeOnce sync.Once
	probeErr  error
)

// Probe checks that the running kernel has every feature the redirect needs. A missing feature
// yields an error that wraps [ebpf.ErrNotSupported] and names the feature and the Linux release
// that brought it; other errors (for example missing privileges) are returned as they are. The
// result is computed once per process.
func Probe() error {
	probeOnce.Do(func() { probeErr = checkFeatures(requiredFeatures) })
	return probeErr
}

func checkFeatures(fs []feature) error {
	for _, f := range fs {
		err := f.probe()
		if err == nil {
			continue
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("redirect: kernel lacks %s (needs Linux >= %s): %w", f.name, f.version, err)
		}
		return fmt.Errorf("redirect: probe %s: %w", f.name, err)
	}
	return nil
}

// notSupported marks a probe failure that means "the kernel has no such thing".
func notSupported(err error) error {
	return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
}

func trivialProgram(t ebpf.ProgramType, a ebpf.AttachType) (*ebpf.Program, error) {
	return ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       t,
		AttachType: a,
		License:    programLicense,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
}

func probeGetpeername() error {
	for _, a := range []ebpf.AttachType{ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername} {
		p, err := trivialProgram(ebpf.CGroupSockAddr, a)
		if errors.Is(err, unix.EINVAL) {
			return notSupported(err)
		}
		if err != nil {
			return err
		}
		p.Close()
	}
	return nil
}

// probeBPFLink creates a cgroup link to an invalid descriptor: a kernel with bpf_link for cgroups
// answers EBADF.
func probeBPFLink() error {
	p, err := trivialProgram(ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect)
	if err != nil {
		return err
	}
	defer p.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  math.MaxInt32,
		Program: p,
		Attach:  ebpf.AttachCGroupInet4Connect,
	})
	switch {
	case err == nil:
		l.Close()
		return errors.New("link to an invalid descriptor succeeded")
	case errors.Is(err, unix.EBADF):
		return nil
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return notSupported(err)
	}
	return err
}

func probeNetnsCookieSockopt() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = netnsCookieFD(fd)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return notSupported(err)
	}
	return err
}

func probeSIOCGSKNS() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
		return notSupported(err)
	}
	if err != nil {
		return err
	}
	return unix.Close(ns)
}

func probePrograms() error {
	for _, spec := range []*ebpf.CollectionSpec{outboundSpec(DefaultMark), inboundSpec(DefaultHBONEPort)} {
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			var verr *ebpf.VerifierError
			if errors.As(err, &verr) {
				return notSupported(err)
			}
			return err
		}
		coll.Close()
	}
	return nil
}
