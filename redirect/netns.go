//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// NetnsCookie returns the cookie of the network namespace at path (for example
// /run/netns/NAME or /proc/PID/ns/net): the value bpf_get_netns_cookie returns for sockets in it,
// and what [Redirector.Enroll] takes. It creates a socket inside the namespace to read
// SO_NETNS_COOKIE.
//
// Requires Linux >= 5.14 and CAP_SYS_ADMIN.
func NetnsCookie(path string) (uint64, error) {
	var cookie uint64
	err := InNetns(path, func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = netnsCookieFD(fd)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("redirect: netns cookie of %s: %w", path, err)
	}
	return cookie, nil
}

// ConnNetnsCookie returns the cookie of the network namespace a socket (a *net.TCPConn,
// *net.TCPListener or anything implementing syscall.Conn) was created in.
func ConnNetnsCookie(c syscall.Conn) (uint64, error) {
	var cookie uint64
	err := control(c, func(fd int) (err error) {
		cookie, err = netnsCookieFD(fd)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("redirect: %w", err)
	}
	return cookie, nil
}

func netnsCookieFD(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// control runs fn with the socket's descriptor. The descriptor is only valid during fn; this is
// how the package reads descriptors without File(), which would switch the socket to blocking
// mode and make Close hang behind a pending Accept.
func control(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw conn: %w", err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("raw conn control: %w", err)
	}
	return ferr
}

// InNetns runs fn on a locked OS thread inside the network namespace at path and moves the thread
// back afterwards; sockets fn creates stay in that namespace. If the thread cannot be moved back it stays locked, so the Go runtime retires it
// instead of reusing it in the wrong namespace.
func InNetns(path string, fn func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listenerFD checks that ln is a plain TCP listener and runs fn with its descriptor.
func listenerFD(ln net.Listener, fn func(fd int) error) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("listener %T has no socket (want *net.TCPListener)", ln)
	}
	return control(sc, func(fd int) error {
		proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			return fmt.Errorf("getsockopt SO_PROTOCOL: %w", err)
		}
		if proto != unix.IPPROTO_TCP {
			if proto == unix.IPPROTO_MPTCP {
				return fmt.Errorf("listener %s is MPTCP, which cannot go into a SOCKMAP: create it with net.ListenConfig.SetMultipathTCP(false)", ln.Addr())
			}
			return fmt.Errorf("listener %s: protocol %d, want TCP", ln.Addr(), proto)
		}
		acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return fmt.Errorf("getsockopt SO_ACCEPTCONN: %w", err)
		}
		if acc != 1 {
			return fmt.Errorf("socket %s is not listening", ln.Addr())
		}
		return fn(fd)
	})
}
