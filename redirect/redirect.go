//go:build linux

package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Defaults for [Config].
const (
	DefaultOutboundPort = 15001
	DefaultHBONEPort    = 15008
	DefaultMark         = 0x539
)

// ErrNotRedirected is returned by [Redirector.OriginalDst] for a connection the redirect has no
// record of: it was not redirected, or its record was evicted.
var ErrNotRedirected = errors.New("redirect: connection was not redirected")

// Config configures a [Redirector]. The zero value of every field but CgroupPath selects the
// documented default.
type Config struct {
	// CgroupPath is the cgroup v2 directory the outbound programs attach to; they act on sockets
	// created by processes in it or below it (in Kubernetes: the kubepods cgroup). Required.
	CgroupPath string
	// OutboundPort is the port of the ztunnel's outbound listener on the pod's IPs inside each
	// pod netns (see [Redirector.Enroll]). Default 15001.
	OutboundPort uint16
	// HBONEPort is the destination port that goes to the HBONE listener; every other port goes to
	// the plaintext listener. Default 15008.
	HBONEPort uint16
	// Mark is the SO_MARK of the ztunnel's own sockets, which are never redirected. Default 0x539.
	Mark uint32
	// PinPath, if set, is a directory on a bpf filesystem (e.g. /sys/fs/bpf/warren/<node>, created
	// if missing) where the links and maps are pinned so the redirect outlives the process: if it
	// dies, enrolled pods stay captured and fail closed (outbound connects are refused by the
	// empty <pod IP>:15001, inbound ones dropped by the sk_lookup program). [New] and
	// [Redirector.AttachInbound] adopt what a previous process pinned there, replacing its
	// programs atomically. [Redirector.Close] keeps the pins; [Redirector.Uninstall] removes them.
	// One PinPath per Redirector: two running with the same PinPath take each other's links.
	// Empty: nothing is pinned and the programs detach when the process ends.
	PinPath string
}

func (c Config) withDefaults() Config {
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.HBONEPort == 0 {
		c.HBONEPort = DefaultHBONEPort
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	return c
}

// Redirector owns the loaded programs and maps and their attachments. Its methods are safe for
// concurrent use.
type Redirector struct {
	cfg          Config
	enrolled     *ebpf.Map
	origByCookie *ebpf.Map
	origByPeer   *ebpf.Map
	progs        map[string]*ebpf.Program
	links        []link.Link
	inbound      *ebpf.CollectionSpec

	mu       sync.Mutex
	closed   bool
	attached map[uint64]*Inbound // by netns cookie
}

// New checks the kernel ([Probe]), loads the programs and attaches the outbound ones to
// cfg.CgroupPath with bpf_links. Pods are redirected once enrolled. Without [Config.PinPath],
// Close detaches everything; with it, New adopts the pinned maps and links of a previous process
// (its enrolled pods stay enrolled) and Close keeps them (see [Redirector.Uninstall]).
func New(cfg Config) (*Redirector, error) {
	cfg = cfg.withDefaults()
	if cfg.CgroupPath == "" {
		return nil, errors.New("redirect: Config.CgroupPath is required")
	}
	if fi, err := os.Stat(cfg.CgroupPath); err != nil {
		return nil, fmt.Errorf("redirect: cgroup: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("redirect: cgroup %s is not a directory", cfg.CgroupPath)
	}
	if err := Probe(); err != nil {
		return nil, err
	}

	spec := outboundSpec(cfg.Mark)
	var opts ebpf.CollectionOptions
	if cfg.PinPath != "" {
		if err := preparePinPath(cfg.PinPath); err != nil {
			return nil, err
		}
		// Maps pinned by name: an existing compatible pin is loaded and reused (the enrolled pods
		// and the connection records of the previous process carry over), else created and pinned.
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = cfg.PinPath
		if err := replaceIncompatiblePins(cfg.PinPath, spec); err != nil {
			return nil, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		return nil, fmt.Errorf("redirect: load outbound programs: %w", err)
	}
	r := &Redirector{
		cfg:          cfg,
		enrolled:     coll.Maps[mapEnrolled],
		origByCookie: coll.Maps[mapOrigByCookie],
		origByPeer:   coll.Maps[mapOrigByPeer],
		inbound:      inboundSpec(cfg.HBONEPort),
		attached:     make(map[uint64]*Inbound),
	}
	r.progs = coll.Programs
	cg, err := os.Open(cfg.CgroupPath)
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("redirect: open cgroup: %w", err)
	}
	defer cg.Close()
	// sockops first: a connection redirected by connect4/6 must always find its record.
	for _, name := range []string{progSockops, progGetpeername4, progGetpeername6, progConnect4, progConnect6} {
		prog := coll.Programs[name]
		l, err := attachPinned(r.linkPin(name), prog, func() (link.Link, error) {
			return link.AttachRawLink(link.RawLinkOptions{
				Target:  int(cg.Fd()),
				Program: prog,
				Attach:  spec.Programs[name].AttachType,
			})
		})
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("redirect: attach %s to %s: %w", name, cfg.CgroupPath, err)
		}
		r.links = append(r.links, l)
	}
	return r, nil
}

// Enroll starts redirecting the outbound TCP connections of the pod whose network namespace has
// the given cookie (see [NetnsCookie]) to its outbound listener at <pod IP>:OutboundPort. podIPs
// are the pod's addresses: the first IPv4 one receives the connects to IPv4 (and IPv4-mapped)
// destinations, the first IPv6 one those to native IPv6 destinations, so each connection's
// source address is the pod's own and the application's getsockname is unchanged. Without an
// address of a family, that family's connects go to loopback (127.0.0.1, ::1) instead, and the
// application sees a loopback local address. Enrolling again replaces the addresses. Connections
// already open are not affected.
func (r *Redirector) Enroll(netnsCookie uint64, podIPs ...netip.Addr) error {
	v := enrollValue{Port: userPort(r.cfg.OutboundPort)}
	var have4, have6 bool
	for _, ip := range podIPs {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast():
			return fmt.Errorf("redirect: enroll netns %d: %v is not a pod address", netnsCookie, ip)
		case ip.Is4() && !have4:
			v.IP4, have4 = ip.As4(), true
		case ip.Is6() && !have6:
			v.IP6, have6 = ip.As16(), true
		}
	}
	if err := r.enrolled.Put(netnsCookie, v); err != nil {
		return fmt.Errorf("redirect: enroll netns %d: %w", netnsCookie, err)
	}
	return nil
}

// Unenroll stops redirecting new connections of the pod. Unenrolling a pod that is not enrolled
// is not an error.
func (r *Redirector) Unenroll(netnsCookie uint64) error {
	if err := r.enrolled.Delete(netnsCookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("redirect: unenroll netns %d: %w", netnsCookie, err)
	}
	return nil
}

// Enrolled lists the enrolled netns cookies.
func (r *Redirector) Enrolled() ([]uint64, error) {
	var (
		out []uint64
		k   uint64
		v   enrollValue
	)
	it := r.enrolled.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("redirect: list enrolled: %w", err)
	}
	return out, nil
}

// OriginalDst returns where a connection accepted on a pod's outbound listener was going. It
// matches ztunnel/outbound.Config.OriginalDst. IPv4-mapped destinations are returned as IPv4.
// It costs one getsockopt and one map lookup; [Redirector.OriginalDstOf] skips the getsockopt when
// the caller knows the pod's netns cookie.
func (r *Redirector) OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination: %T has no socket", c)
	}
	cookie, err := ConnNetnsCookie(sc)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination: remote address %v is not TCP", c.RemoteAddr())
	}
	return r.OriginalDstOf(cookie, ta.AddrPort())
}

// OriginalDstOf returns the original destination of the redirected connection whose client is
// at client (the accepted connection's remote address) in the netns with the given cookie.
func (r *Redirector) OriginalDstOf(netnsCookie uint64, client netip.AddrPort) (netip.AddrPort, error) {
	key := peerKey{Netns: netnsCookie, Addr: client.Addr().As16(), Port: client.Port()}
	var v origDst
	if err := r.origByPeer.Lookup(&key, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.AddrPort{}, fmt.Errorf("%w: no record for client %s in netns %d", ErrNotRedirected, client, netnsCookie)
		}
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination of %s: %w", client, err)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(v.Addr).Unmap(), binary.BigEndian.Uint16(v.Port[:])), nil
}

// Close releases the programs, maps and links this process holds. Without [Config.PinPath] that
// detaches every program (outbound and all inbound attachments) and frees the maps. With it, the
// pinned links and maps stay: enrolled pods stay captured and fail closed until a new Redirector
// with the same PinPath adopts them (a restart or upgrade), or [Redirector.Uninstall] removes
// them. Redirected connections that are open stay open. Close is idempotent.
func (r *Redirector) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	inbound := r.attached
	r.attached = nil
	r.mu.Unlock()

	var errs []error
	for _, in := range inbound {
		errs = append(errs, in.close())
	}
	for i := len(r.links) - 1; i >= 0; i-- {
		errs = append(errs, r.links[i].Close())
	}
	for _, p := range r.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range []*ebpf.Map{r.enrolled, r.origByCookie, r.origByPeer} {
		errs = append(errs, m.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: close: %w", err)
	}
	return nil
}

// Uninstall is Close, then, with [Config.PinPath], detaches every link pinned under PinPath
// (including pods' inbound links left by earlier processes) and removes PinPath: enrolled pods
// connect directly again. It is for removing Warren from the node, not for a restart (which
// must keep the pods fail closed). It may be called after Close.
func (r *Redirector) Uninstall() error {
	err := r.Close()
	if r.cfg.PinPath != "" {
		if perr := removePins(r.cfg.PinPath); perr != nil {
			err = errors.Join(err, fmt.Errorf("redirect: uninstall: %w", perr))
		}
	}
	return err
}
