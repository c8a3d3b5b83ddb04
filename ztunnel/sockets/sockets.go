// Package sockets is the ztunnel's socket seam: how one workload's listeners and upstream
// connections are created. Host creates them in the ztunnel's own network namespace, bound to the
// workload's address (standalone mode and tests); the in-pod implementation that enters the pod's
// network namespace comes with the eBPF redirect. Every socket can carry the ztunnel's SO_MARK so
// the redirect skips it, and MPTCP is off because MPTCP sockets cannot go into a SOCKMAP.
//
// It is a library: no logging. The ztunnel and its data-plane packages (hbone, inbound,
// outbound, nodeagent) and cmd/warren-ztunnel import it.
package sockets

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mark is the SO_MARK on every socket the ztunnel opens inside a pod's network namespace.
const Mark = 0x539

// Factory makes one workload's sockets.
type Factory interface {
	// Listen binds a TCP listener on addr.
	Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	// Dial connects to addr from the workload (its address is the source).
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

// Host creates sockets in the current network namespace.
type Host struct {
	// Source, when valid, is the local address of dialed connections (the workload's IP).
	Source netip.Addr
	// Mark, when non-zero, is set as SO_MARK on every socket (needs CAP_NET_ADMIN).
	Mark uint32
}

// Listen implements Factory.
func (h Host) Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: h.control(true)}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// Dial implements Factory.
func (h Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: h.control(false)}
	d.SetMultipathTCP(false)
	if h.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: h.Source.AsSlice()}
	}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

func (h Host) control(listen bool) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if listen {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
					return
				}
			}
			if h.Mark != 0 {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(h.Mark)); serr != nil {
					serr = fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", h.Mark, serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// AddrPort returns a TCP address as an AddrPort with IPv4-mapped IPv6 addresses unmapped: the
// in-pod listeners are dual-stack and see IPv4 peers that way, while policy, logs and the HBONE
// forwarded header want the plain IPv4 form. An address that is not ip:port gives the zero value.
func AddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	if t, ok := a.(*net.TCPAddr); ok {
		ap = t.AddrPort()
	} else if a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
