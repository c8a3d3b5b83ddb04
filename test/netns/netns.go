//go:build linux

// Package netns holds helpers for the network-namespace test tier: named network namespaces,
// veth links and addresses, cgroup v2 directories standing in for pods, and helper processes
// that run inside a cgroup and a netns (the "applications" of simulated pods).
//
// Everything it creates is named wrn-<random> and removed at test cleanup, by name. Tests using
// it need root; [RequireRoot] skips them otherwise, except under CI=true, where a test that cannot
// run fails instead (MISSION: a tier that cannot run under CI must fail, not skip).
//
// Packages whose tests start helper processes ([NS.Dial] with a cgroup, [NS.BenchConnect]) must
// call [Main] from TestMain. It needs the ip command (iproute2). Test code only.
package netns

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/redirect"
)

// SkipOrFail skips the test, or fails it when CI=true.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg + " (CI=true: this tier must run)")
	}
	tb.Skip(msg + "; with CI=true this fails")
}

// RequireRoot skips the test unless it runs as root with the ip command available (fails under
// CI=true).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(tb, "network-namespace test needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		SkipOrFail(tb, "network-namespace test needs the ip command (iproute2): %v", err)
	}
}

// Name returns a fresh name "wrn-" plus 8 random hex digits (12 bytes, short enough for an
// interface name).
func Name() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "wrn-" + hex.EncodeToString(b[:])
}

// NS is a named network namespace (/run/netns/<Name>) with lo up.
type NS struct {
	Name string
	Path string
}

// New creates a network namespace and removes it at cleanup.
func New(tb testing.TB) *NS {
	tb.Helper()
	RequireRoot(tb)
	name := Name()
	run(tb, "ip", "netns", "add", name)
	ns := &NS{Name: name, Path: filepath.Join("/run/netns", name)}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.IP(tb, "link", "set", "lo", "up")
	return ns
}

// IP runs `ip -n <ns> args...` and fails the test on error.
func (ns *NS) IP(tb testing.TB, args ...string) {
	tb.Helper()
	run(tb, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// Do runs fn on a locked OS thread inside the namespace (see [InNetns]). Sockets fn creates stay
// in the namespace.
func (ns *NS) Do(fn func() error) error { return InNetns(ns.Path, fn) }

// Cookie returns the namespace's netns cookie.
func (ns *NS) Cookie(tb testing.TB) uint64 {
	tb.Helper()
	var cookie uint64
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		tb.Fatalf("netns cookie of %s: %v", ns.Name, err)
	}
	return cookie
}

// Listen opens a TCP listener (MPTCP off) inside the namespace and closes it at cleanup.
// network is "tcp", "tcp4" or "tcp6".
func (ns *NS) Listen(tb testing.TB, network, addr string) *net.TCPListener {
	tb.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// DialOptions are the options of [NS.DialIn] and [NS.Dial].
type DialOptions struct {
	// Network is "tcp4" (AF_INET socket) or "tcp6" (AF_INET6 socket, dual-stack, so IPv4-mapped
	// addresses work). Empty means by address family.
	Network string
	// Mark, if non-zero, is set as SO_MARK.
	Mark uint32
	// Bind, if valid, is the local address.
	Bind netip.AddrPort
	// MPTCP makes helper processes ([NS.Dial], [NS.BenchConnect]) use an MPTCP socket.
	MPTCP bool
}

// DialIn connects from inside the namespace in this process (so from this process's cgroup).
func (ns *NS) DialIn(ctx context.Context, addr netip.AddrPort, opts DialOptions) (net.Conn, error) {
	network := opts.Network
	if network == "" {
		network = "tcp4"
		if addr.Addr().Is6() {
			network = "tcp6"
		}
	}
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if opts.Mark != 0 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(opts.Mark))
			}
		})
		return errors.Join(err, serr)
	}}
	d.SetMultipathTCP(false)
	if opts.Bind.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(opts.Bind)
	}
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr.String())
		return err
	})
	return c, err
}

// InNetns runs fn on a locked OS thread inside the network namespace at path; see
// [redirect.InNetns].
func InNetns(path string, fn func() error) error { return redirect.InNetns(path, fn) }

// Veth links namespace a (address aAddr) with namespace b (address bAddr) and brings both ends
// up. More addresses can be added with [NS.IP] on the returned interface names. IPv6 addresses
// are added without duplicate address detection so they work at once.
func Veth(tb testing.TB, a *NS, aAddrs []netip.Prefix, b *NS, bAddrs []netip.Prefix) (aIf, bIf string) {
	tb.Helper()
	aIf, bIf = Name(), Name()
	run(tb, "ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	for _, side := range []struct {
		ns    *NS
		ifc   string
		addrs []netip.Prefix
	}{{a, aIf, aAddrs}, {b, bIf, bAddrs}} {
		for _, p := range side.addrs {
			args := []string{"addr", "add", p.String(), "dev", side.ifc}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			side.ns.IP(tb, args...)
		}
		side.ns.IP(tb, "link", "set", side.ifc, "up")
	}
	return aIf, bIf
}

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Cgroup is a cgroup v2 directory created by a test.
type Cgroup struct {
	Path string
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on unified
// hosts, /sys/fs/cgroup/unified in hybrid mode).
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) > 0 && fs[0] == "cgroup2" {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// NewCgroup creates a cgroup directly under the cgroup v2 mount and removes it at cleanup.
func NewCgroup(tb testing.TB) *Cgroup {
	tb.Helper()
	RequireRoot(tb)
	root, err := Cgroup2Mount()
	if err != nil {
		SkipOrFail(tb, "cgroup v2: %v", err)
	}
	return newCgroup(tb, root)
}

// Child creates a cgroup below cg and removes it at cleanup (before cg).
func (cg *Cgroup) Child(tb testing.TB) *Cgroup {
	tb.Helper()
	return newCgroup(tb, cg.Path)
}

func newCgroup(tb testing.TB, parent string) *Cgroup {
	p := filepath.Join(parent, Name())
	if err := os.Mkdir(p, 0o755); err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// A process that just exited may take a moment to leave the cgroup.
		var err error
		for range 50 {
			if err = unix.Rmdir(p); err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		tb.Errorf("remove cgroup %s: %v", p, err)
	})
	return &Cgroup{Path: p}
}
