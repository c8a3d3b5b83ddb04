//go:build linux

package sockets_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/test/netns"
	"github.com/warren-mesh/warren/ztunnel/sockets"
)

var (
	podIP    = netip.MustParseAddr("10.78.0.2")
	remoteIP = netip.MustParseAddr("10.78.0.3")
)

// sockInt reads an int socket option of a connection or listener.
func sockInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil || serr != nil {
		t.Fatalf("getsockopt: %v %v", err, serr)
	}
	return v
}

func netnsCookie(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v uint64
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE) }); err != nil || serr != nil {
		t.Fatalf("getsockopt SO_NETNS_COOKIE: %v %v", err, serr)
	}
	return v
}

// serve answers every connection with its peer address and closes it.
func serve(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String())
			c.Close()
		}
	}()
}

func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

func TestNetns(t *testing.T) {
	netns.RequireRoot(t)
	pod, remote := netns.New(t), netns.New(t)
	netns.Veth(t, pod, []netip.Prefix{netip.PrefixFrom(podIP, 24)}, remote, []netip.Prefix{netip.PrefixFrom(remoteIP, 24)})
	podCookie := pod.Cookie(t)

	f := &sockets.Netns{Path: pod.Path, Source: podIP, Mark: sockets.Mark}
	t.Cleanup(func() { f.Close() })
	ctx := t.Context()

	t.Run("listen in the pod", func(t *testing.T) {
		ln, err := f.Listen(ctx, netip.MustParseAddrPort("[::]:15008"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			t.Fatalf("listener is %T, want *net.TCPListener", ln)
		}
		if got := netnsCookie(t, tl); got != podCookie {
			t.Errorf("listener netns cookie = %d, want the pod's %d", got, podCookie)
		}
		if got := sockInt(t, tl, unix.SOL_SOCKET, unix.SO_MARK); got != sockets.Mark {
			t.Errorf("listener SO_MARK = %#x, want %#x", got, sockets.Mark)
		}
		if got := sockInt(t, tl, unix.SOL_SOCKET, unix.SO_PROTOCOL); got != unix.IPPROTO_TCP {
			t.Errorf("listener protocol = %d, want TCP (MPTCP off)", got)
		}
		serve(ln)
		c, err := remote.DialIn(ctx, netip.AddrPortFrom(podIP, 15008), netns.DialOptions{})
		if err != nil {
			t.Fatalf("dial the pod's listener from the remote: %v", err)
		}
		defer c.Close()
		if got := readAll(t, c); got != remoteIP.String() {
			t.Errorf("listener saw peer %q, want %s", got, remoteIP)
		}
	})

	remoteLn := remote.Listen(t, "tcp", ":80")
	serve(remoteLn)
	appLn := pod.Listen(t, "tcp", ":8080")
	serve(appLn)

	t.Run("dial from the pod IP", func(t *testing.T) {
		c, err := f.Dial(ctx, "tcp", netip.AddrPortFrom(remoteIP, 80).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := c.(*net.TCPConn)
		if got := netnsCookie(t, tc); got != podCookie {
			t.Errorf("conn netns cookie = %d, want the pod's %d", got, podCookie)
		}
		if got := sockInt(t, tc, unix.SOL_SOCKET, unix.SO_MARK); got != sockets.Mark {
			t.Errorf("conn SO_MARK = %#x, want %#x", got, sockets.Mark)
		}
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(remoteIP, 80) {
			t.Errorf("RemoteAddr = %s", got)
		}
		if got := readAll(t, c); got != podIP.String() {
			t.Errorf("remote saw peer %q, want the pod IP %s", got, podIP)
		}
	})

	t.Run("forward leg to the pod's own IP comes from 127.0.0.6", func(t *testing.T) {
		c, err := f.Dial(ctx, "tcp", netip.AddrPortFrom(podIP, 8080).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := readAll(t, c); got != "127.0.0.6" {
			t.Errorf("app saw peer %q, want 127.0.0.6", got)
		}
	})

	t.Run("loopback", func(t *testing.T) {
		c, err := f.Dial(ctx, "tcp", "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := readAll(t, c); got != "127.0.0.1" {
			t.Errorf("app saw peer %q, want 127.0.0.1", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		_, err := f.Dial(ctx, "tcp", netip.AddrPortFrom(remoteIP, 81).String())
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial a closed port = %v, want ECONNREFUSED", err)
		}
	})

	t.Run("context ends a pending connect", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		// 10.78.0.99 does not exist: ARP never resolves.
		_, err := f.Dial(dctx, "tcp", "10.78.0.99:80")
		if err == nil {
			t.Fatal("dial to a missing host succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Errorf("dial = %v, want the context's deadline", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("dial took %v", d)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for range 32 {
			wg.Go(func() {
				c, err := f.Dial(ctx, "tcp", netip.AddrPortFrom(remoteIP, 80).String())
				if err != nil {
					errs <- err
					return
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				b, err := io.ReadAll(c)
				c.Close()
				if err == nil && string(b) != podIP.String() {
					err = errors.New("wrong peer " + string(b))
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Listen(ctx, netip.MustParseAddrPort("127.0.0.1:0")); !errors.Is(err, sockets.ErrClosed) {
		t.Errorf("Listen after Close = %v, want ErrClosed", err)
	}
	if _, err := f.Dial(ctx, "tcp", "127.0.0.1:8080"); !errors.Is(err, sockets.ErrClosed) {
		t.Errorf("Dial after Close = %v, want ErrClosed", err)
	}
}

func TestNetnsBadPath(t *testing.T) {
	f := &sockets.Netns{Path: "/nonexistent/netns"}
	defer f.Close()
	if _, err := f.Listen(t.Context(), netip.MustParseAddrPort("127.0.0.1:0")); err == nil {
		t.Error("Listen in a missing netns succeeded")
	}
	if _, err := f.Dial(t.Context(), "tcp", "127.0.0.1:1"); err == nil {
		t.Error("Dial in a missing netns succeeded")
	}
	if _, err := (&sockets.Netns{}).Dial(t.Context(), "udp", "127.0.0.1:1"); err == nil {
		t.Error("udp Dial succeeded")
	}
}
