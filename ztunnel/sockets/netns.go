//go:build linux

package sockets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by a closed [Netns].
var ErrClosed = errors.New("sockets: netns factory closed")

// forwardSource is the source of inbound forward legs to the pod's own IPv4 address: the eBPF
// redirect does not capture connections from loopback sources (see package redirect).
var forwardSource = netip.MustParseAddr("127.0.0.6")

// Netns creates a workload's sockets inside its network namespace (in-pod mode): a socket keeps
// the netns it was created in, so listeners and upstream connections live in the pod and the
// source IP on the wire is the pod's. MPTCP is off and SO_MARK is set on every socket when Mark
// is non-zero, so the redirect skips the ztunnel's own connections.
//
// Only the socket(2) call needs the pod's netns: it runs on one goroutine per Netns that stays on
// a locked OS thread moved into the netns, serving requests over a channel (no setns per socket).
// Connects then proceed on the caller's goroutine, so a slow dial does not hold up the others.
//
// Use a *Netns (it has state); Close stops its goroutine. Its methods are safe for concurrent use.
type Netns struct {
	// Path is the network namespace (/run/netns/<name>, /proc/<pid>/ns/net, ...).
	Path string
	// Source, when valid, is the local address of dials to other hosts (the pod's IP). A dial to
	// Source itself (the inbound forward leg to the application) binds 127.0.0.6 for IPv4 and
	// Source for IPv6, so the redirect does not capture it again.
	Source netip.Addr
	// Mark, when non-zero, is set as SO_MARK on every socket (needs CAP_NET_ADMIN).
	Mark uint32

	mu       sync.Mutex
	started  bool
	closed   bool
	startErr error
	reqs     chan func()
	quit     chan struct{}
	done     chan struct{}
}

// start runs the netns goroutine once.
func (n *Netns) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.started {
		return n.startErr
	}
	n.started = true
	n.reqs, n.quit, n.done = make(chan func()), make(chan struct{}), make(chan struct{})
	ready := make(chan error, 1)
	go n.serve(ready)
	n.startErr = <-ready
	return n.startErr
}

// serve moves a locked OS thread into the netns and runs requests on it until Close. It never
// unlocks the thread: when it returns, the runtime retires the thread instead of reusing a thread
// that is in another netns.
func (n *Netns) serve(ready chan<- error) {
	defer close(n.done)
	runtime.LockOSThread()
	target, err := os.Open(n.Path)
	if err != nil {
		runtime.UnlockOSThread()
		ready <- fmt.Errorf("open netns: %w", err)
		return
	}
	err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
	target.Close()
	if err != nil {
		runtime.UnlockOSThread()
		ready <- fmt.Errorf("setns %s: %w", n.Path, err)
		return
	}
	ready <- nil
	for {
		select {
		case fn := <-n.reqs:
			fn()
		case <-n.quit:
			return
		}
	}
}

// do runs fn inside the netns.
func (n *Netns) do(fn func() error) error {
	if err := n.start(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	select {
	case n.reqs <- func() { errc <- fn() }:
	case <-n.quit:
		return ErrClosed
	}
	return <-errc
}

// Close stops the netns goroutine. Sockets already created stay open. Close is idempotent.
func (n *Netns) Close() error {
	n.mu.Lock()
	wasClosed, started := n.closed, n.started
	n.closed = true
	if !wasClosed && started {
		close(n.quit)
	}
	n.mu.Unlock()
	if started {
		<-n.done
	}
	return nil
}

// Listen implements Factory. An unspecified IPv6 address ([::]) binds the dual-stack wildcard.
func (n *Netns) Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: Host{Mark: n.Mark}.control(true)}
	lc.SetMultipathTCP(false)
	var ln net.Listener
	err := n.do(func() (err error) {
		ln, err = lc.Listen(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, n.Path, err)
	}
	return ln, nil
}

// Dial implements Factory. addr must be a literal IP:port (there is no name resolution inside a
// pod's netns here).
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := n.dial(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, n.Path, err)
	}
	return c, nil
}

func (n *Netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("network %q not supported", network)
	}
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	var local netip.Addr
	switch {
	case dst.Addr().IsLoopback():
	case dst.Addr() == n.Source.Unmap() && dst.Addr().Is4():
		local = forwardSource
	case n.Source.IsValid() && n.Source.Unmap().Is4() == dst.Addr().Is4():
		local = n.Source.Unmap()
	}
	family := unix.AF_INET
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}

	fd := -1
	err = n.do(func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	// From here on the socket is in the pod's netns whatever thread uses it.
	f := os.NewFile(uintptr(fd), "netns-dial") // non-blocking: registered with the poller
	defer f.Close()
	if n.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(n.Mark)); err != nil {
			return nil, fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", n.Mark, err)
		}
	}
	if local.IsValid() {
		// The port is picked at connect time, so many forward legs can share 127.0.0.6.
		_ = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(local, 0))); err != nil {
			return nil, fmt.Errorf("bind %s: %w", local, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	err = unix.Connect(fd, sockaddr(dst))
	switch {
	case err == nil:
	case errors.Is(err, unix.EINPROGRESS):
		if err := waitConnected(ctx, f); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	// FileConn duplicates the descriptor; the deferred Close drops the original.
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// waitConnected waits for a non-blocking connect to finish or ctx to end.
func waitConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = err
			return true
		}
		switch e := unix.Errno(v); e {
		case 0:
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = e
			return true
		}
		// SO_ERROR is also 0 before the connect finished: connected once there is a peer.
		if _, err := unix.Getpeername(int(fd)); err != nil {
			return false
		}
		return true
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return werr
	}
	return connErr
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}
