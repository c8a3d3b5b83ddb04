//go:build linux

package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/netns"
)

func TestMain(m *testing.M) { netns.Main(m) }

// requireRedirect skips (fails under CI=true) unless the test runs as root on a kernel with
// everything the redirect needs.
func requireRedirect(tb testing.TB) {
	tb.Helper()
	netns.RequireRoot(tb)
	if err := redirect.Probe(); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			netns.SkipOrFail(tb, "%v", err)
		}
		tb.Fatalf("Probe() = %v", err)
	}
}

func TestProbe(t *testing.T) {
	requireRedirect(t)
}

var (
	podIP     = netip.MustParseAddr("10.77.0.2")
	remoteIP  = netip.MustParseAddr("10.77.0.1")
	podIP6    = netip.MustParseAddr("fd77::2")
	remoteIP6 = netip.MustParseAddr("fd77::1")
)

// world is a simulated node: a pod netns (enrolled or not) linked to a "remote" netns by a veth,
// a parent cgroup carrying the outbound programs and a pod cgroup below it.
type world struct {
	r             *redirect.Redirector
	pod, remote   *netns.NS
	parent, podCg *netns.Cgroup
	podCookie     uint64
	outbound      chan outboundHit
	outboundPort  uint16
}

type outboundHit struct {
	client netip.AddrPort
	orig   netip.AddrPort
	err    error
}

func newWorld(t testing.TB) *world {
	t.Helper()
	return newWorldWith(t, false)
}

// newWorldWith builds the world; with bare, the outbound listeners only accept and close (for
// benchmarks).
func newWorldWith(t testing.TB, bare bool) *world {
	t.Helper()
	requireRedirect(t)
	w := &world{outbound: make(chan outboundHit, 16), outboundPort: redirect.DefaultOutboundPort}
	w.parent = netns.NewCgroup(t)
	w.podCg = w.parent.Child(t)
	w.pod, w.remote = netns.New(t), netns.New(t)
	netns.Veth(t,
		w.pod, []netip.Prefix{netip.PrefixFrom(podIP, 24), netip.PrefixFrom(podIP6, 64)},
		w.remote, []netip.Prefix{netip.PrefixFrom(remoteIP, 24), netip.PrefixFrom(remoteIP6, 64)})

	r, err := redirect.New(redirect.Config{CgroupPath: w.parent.Path})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	w.r = r

	// The real destination: answers "direct".
	ln := w.remote.Listen(t, "tcp", ":80")
	netns.Serve(ln, func(net.Conn) string { return "direct" })

	// The ztunnel's outbound listener inside the pod, on the dual-stack wildcard (the pod IPs, and
	// loopback for a pod enrolled without addresses): answers "proxied <original destination>".
	for _, addr := range []string{":15001"} {
		ln := w.pod.Listen(t, "tcp", addr)
		if bare {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			continue
		}
		netns.Serve(ln, func(c net.Conn) string {
			orig, err := r.OriginalDst(c)
			w.outbound <- outboundHit{client: c.RemoteAddr().(*net.TCPAddr).AddrPort(), orig: orig, err: err}
			if err != nil {
				return "proxy error: " + err.Error()
			}
			return "proxied " + orig.String()
		})
	}
	// An application listening on loopback inside the pod.
	ln = w.pod.Listen(t, "tcp", "127.0.0.1:7070")
	netns.Serve(ln, func(net.Conn) string { return "local" })

	cookie, err := redirect.NetnsCookie(w.pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := w.pod.Cookie(t); cookie != want {
		t.Fatalf("NetnsCookie(%s) = %d, want %d", w.pod.Path, cookie, want)
	}
	w.podCookie = cookie
	return w
}

func (w *world) drainOutbound() []outboundHit {
	var hits []outboundHit
	for {
		select {
		case h := <-w.outbound:
			hits = append(hits, h)
		default:
			return hits
		}
	}
}

func TestOutbound(t *testing.T) {
	w := newWorld(t)
	if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
		t.Fatal(err)
	}
	if got, err := w.r.Enrolled(); err != nil || len(got) != 1 || got[0] != w.podCookie {
		t.Fatalf("Enrolled() = %v, %v; want [%d]", got, err, w.podCookie)
	}

	dst4 := netip.AddrPortFrom(remoteIP, 80)
	mapped := netip.AddrPortFrom(netip.AddrFrom16(remoteIP.As16()), 80)
	dst6 := netip.AddrPortFrom(remoteIP6, 80)
	local := netip.MustParseAddrPort("127.0.0.1:7070")

	tests := []struct {
		name      string
		cg        *netns.Cgroup
		dst       netip.AddrPort
		opts      netns.DialOptions
		wantReply string
		wantPeer  netip.AddrPort
	}{
		{"ipv4 redirected", w.podCg, dst4, netns.DialOptions{}, "proxied " + dst4.String(), dst4},
		{"ipv4-mapped on an AF_INET6 socket redirected", w.podCg, mapped, netns.DialOptions{Network: "tcp6"}, "proxied " + dst4.String(), mapped},
		{"ipv6 redirected", w.podCg, dst6, netns.DialOptions{}, "proxied " + dst6.String(), dst6},
		{"ztunnel mark not redirected", w.podCg, dst4, netns.DialOptions{Mark: redirect.DefaultMark}, "direct", dst4},
		{"ztunnel mark not redirected (ipv6)", w.podCg, dst6, netns.DialOptions{Mark: redirect.DefaultMark}, "direct", dst6},
		{"other mark redirected", w.podCg, dst4, netns.DialOptions{Mark: 0x538}, "proxied " + dst4.String(), dst4},
		{"loopback not redirected", w.podCg, local, netns.DialOptions{}, "local", local},
		{"ipv4-mapped loopback not redirected", w.podCg, netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), 7070), netns.DialOptions{Network: "tcp6"}, "local", netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), 7070)},
		// MPTCP: connect4 runs for the first subflow, so the connection is redirected and the proxy
		// finds its destination, but getpeername runs for the MPTCP socket, whose cookie differs:
		// the application sees the listener's address. Known gap (see the package doc).
		{"mptcp redirected (getpeername shows the listener)", w.podCg, dst4, netns.DialOptions{MPTCP: true}, "proxied " + dst4.String(), netip.AddrPortFrom(podIP, 15001)},
		{"process outside the cgroup not redirected", nil, dst4, netns.DialOptions{}, "direct", dst4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.drainOutbound()
			got := w.pod.Dial(t, tt.cg, tt.dst, tt.opts)
			if got.Err != "" || got.Reply != tt.wantReply || got.Peer != tt.wantPeer {
				t.Errorf("dial %s = %+v; want reply %q, peer %s", tt.dst, got, tt.wantReply, tt.wantPeer)
			}
			hits := w.drainOutbound()
			if strings.HasPrefix(tt.wantReply, "proxied") {
				if len(hits) != 1 || unmap(hits[0].client) != unmap(got.Local) {
					t.Errorf("proxy saw %+v, want one connection from %s", hits, got.Local)
				}
				// The application's local address is the pod's own, as without the redirect.
				wantLocal := podIP
				if tt.dst.Addr().Is6() && !tt.dst.Addr().Is4In6() {
					wantLocal = podIP6
				}
				if unmap(got.Local).Addr() != wantLocal {
					t.Errorf("application's local address = %s, want %s", got.Local, wantLocal)
				}
			} else if len(hits) != 0 {
				t.Errorf("proxy saw %+v, want nothing", hits)
			}
		})
	}

	t.Run("unenrolled not redirected", func(t *testing.T) {
		if err := w.r.Unenroll(w.podCookie); err != nil {
			t.Fatal(err)
		}
		if err := w.r.Unenroll(w.podCookie); err != nil {
			t.Fatalf("second Unenroll() = %v", err)
		}
		for _, dst := range []netip.AddrPort{dst4, mapped, dst6} {
			got := w.pod.Dial(t, w.podCg, dst, netns.DialOptions{Network: map[bool]string{true: "tcp6", false: ""}[dst == mapped]})
			if got.Reply != "direct" || got.Peer != dst {
				t.Errorf("dial %s while unenrolled = %+v, want a direct connection", dst, got)
			}
		}
		if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
			t.Fatal(err)
		}
		if got := w.pod.Dial(t, w.podCg, dst4, netns.DialOptions{}); got.Reply != "proxied "+dst4.String() {
			t.Errorf("dial after re-enrolling = %+v", got)
		}
	})

	t.Run("enrolled without addresses: loopback", func(t *testing.T) {
		if err := w.r.Enroll(w.podCookie); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
				t.Fatal(err)
			}
		}()
		for _, tt := range []struct {
			dst       netip.AddrPort
			network   string
			wantLocal netip.Addr
		}{
			{dst4, "", netip.MustParseAddr("127.0.0.1")},
			{mapped, "tcp6", netip.MustParseAddr("127.0.0.1")},
			{dst6, "", netip.IPv6Loopback()},
		} {
			w.drainOutbound()
			got := w.pod.Dial(t, w.podCg, tt.dst, netns.DialOptions{Network: tt.network})
			if got.Reply != "proxied "+unmap(tt.dst).String() || unmap(got.Local).Addr() != tt.wantLocal {
				t.Errorf("dial %s = %+v, want proxied from %s", tt.dst, got, tt.wantLocal)
			}
			if hits := w.drainOutbound(); len(hits) != 1 || unmap(hits[0].client) != unmap(got.Local) {
				t.Errorf("proxy saw %+v, want one connection from %s", hits, got.Local)
			}
		}
	})

	t.Run("only an IPv6 address: IPv4 destinations go to loopback", func(t *testing.T) {
		if err := w.r.Enroll(w.podCookie, podIP6); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
				t.Fatal(err)
			}
		}()
		if got := w.pod.Dial(t, w.podCg, dst4, netns.DialOptions{}); got.Reply != "proxied "+dst4.String() || unmap(got.Local).Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("dial %s = %+v", dst4, got)
		}
		if got := w.pod.Dial(t, w.podCg, dst6, netns.DialOptions{}); got.Reply != "proxied "+dst6.String() || got.Local.Addr() != podIP6 {
			t.Errorf("dial %s = %+v", dst6, got)
		}
	})

	t.Run("invalid pod address", func(t *testing.T) {
		for _, ip := range []netip.Addr{{}, netip.MustParseAddr("127.0.0.1"), netip.IPv6Unspecified()} {
			if err := w.r.Enroll(w.podCookie+1, ip); err == nil {
				t.Errorf("Enroll(%v) succeeded", ip)
			}
		}
	})

	t.Run("another enrolled pod does not enroll this one", func(t *testing.T) {
		other := netns.New(t)
		if err := w.r.Unenroll(w.podCookie); err != nil {
			t.Fatal(err)
		}
		if err := w.r.Enroll(other.Cookie(t)); err != nil {
			t.Fatal(err)
		}
		if got := w.pod.Dial(t, w.podCg, dst4, netns.DialOptions{}); got.Reply != "direct" {
			t.Errorf("dial from the unenrolled pod = %+v, want direct", got)
		}
		if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
			t.Fatal(err)
		}
	})
}

func TestOriginalDstNotRedirected(t *testing.T) {
	w := newWorld(t)
	// A connection the proxy accepts that was not redirected (a process outside the cgroup dials
	// the listener directly).
	c, err := w.pod.DialIn(t.Context(), netip.MustParseAddrPort("127.0.0.1:15001"), netns.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case h := <-w.outbound:
		if !errors.Is(h.err, redirect.ErrNotRedirected) {
			t.Errorf("OriginalDst(not redirected) = %v, %v; want ErrNotRedirected", h.orig, h.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("proxy did not accept")
	}
	if _, err := w.r.OriginalDstOf(w.podCookie+1, netip.MustParseAddrPort("127.0.0.1:1")); !errors.Is(err, redirect.ErrNotRedirected) {
		t.Errorf("OriginalDstOf(unknown) = %v, want ErrNotRedirected", err)
	}
}

// TestOutboundManyConnections checks that every redirected connection's original destination is
// found by the time the proxy accepts it (sockops runs before the client's final ACK).
func TestOutboundManyConnections(t *testing.T) {
	w := newWorld(t)
	if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
		t.Fatal(err)
	}
	// One helper process in the pod cgroup makes n connections back to back.
	const n = 300
	done := make(chan struct{})
	var missed []outboundHit
	go func() {
		defer close(done)
		for range n {
			select {
			case h := <-w.outbound:
				if h.err != nil || h.orig != netip.AddrPortFrom(remoteIP, 80) {
					missed = append(missed, h)
				}
			case <-time.After(10 * time.Second):
				missed = append(missed, outboundHit{err: errors.New("timeout")})
				return
			}
		}
	}()
	res := w.pod.BenchConnect(t, w.podCg, netip.AddrPortFrom(remoteIP, 80), netns.DialOptions{}, n)
	<-done
	if res.N != n || len(missed) != 0 {
		t.Errorf("%d connects: %d without the right original destination: %v", res.N, len(missed), missed[:min(len(missed), 5)])
	}
}

func TestInbound(t *testing.T) {
	w := newWorld(t)
	// The application, on all addresses.
	app := w.pod.Listen(t, "tcp", ":8080")
	netns.Serve(app, func(c net.Conn) string { return "app" })
	// The ztunnel's inbound listeners (dual-stack, so IPv4 and IPv6 connections can be assigned).
	hbone := w.pod.Listen(t, "tcp", ":15008")
	plain := w.pod.Listen(t, "tcp", ":15006")
	reply := func(name string) func(net.Conn) string {
		return func(c net.Conn) string {
			return fmt.Sprintf("%s local=%s", name, unmap(c.LocalAddr().(*net.TCPAddr).AddrPort()))
		}
	}
	netns.Serve(hbone, reply("hbone"))
	netns.Serve(plain, reply("plaintext"))

	in, err := w.r.AttachInbound(hbone, plain)
	if err != nil {
		t.Fatalf("AttachInbound() = %v", err)
	}
	if in.NetnsCookie() != w.podCookie {
		t.Errorf("NetnsCookie() = %d, want %d", in.NetnsCookie(), w.podCookie)
	}
	if _, err := w.r.AttachInbound(hbone, plain); err == nil {
		t.Error("second AttachInbound for the same netns succeeded")
	}

	type dial struct {
		from *netns.NS
		dst  netip.AddrPort
		opts netns.DialOptions
	}
	check := func(t *testing.T, d dial, want string) {
		t.Helper()
		c, err := d.from.DialIn(t.Context(), d.dst, d.opts)
		if err != nil {
			if want == "refused" && errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
			t.Errorf("dial %s: %v, want %q", d.dst, err, want)
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b strings.Builder
		buf := make([]byte, 256)
		for {
			n, err := c.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if got := b.String(); got != want {
			t.Errorf("dial %s (opts %+v) got %q, want %q", d.dst, d.opts, got, want)
		}
	}
	pod8080 := netip.AddrPortFrom(podIP, 8080)
	tests := []struct {
		name string
		d    dial
		want string
	}{
		{"app port to plaintext", dial{w.remote, pod8080, netns.DialOptions{}}, "plaintext local=10.77.0.2:8080"},
		{"any port to plaintext", dial{w.remote, netip.AddrPortFrom(podIP, 9999), netns.DialOptions{}}, "plaintext local=10.77.0.2:9999"},
		{"15008 to hbone", dial{w.remote, netip.AddrPortFrom(podIP, 15008), netns.DialOptions{}}, "hbone local=10.77.0.2:15008"},
		{"ipv6 to plaintext", dial{w.remote, netip.AddrPortFrom(podIP6, 8080), netns.DialOptions{}}, "plaintext local=[fd77::2]:8080"},
		{"ipv6 15008 to hbone", dial{w.remote, netip.AddrPortFrom(podIP6, 15008), netns.DialOptions{}}, "hbone local=[fd77::2]:15008"},
		{"loopback in the pod not captured", dial{w.pod, netip.MustParseAddrPort("127.0.0.1:8080"), netns.DialOptions{}}, "app"},
		{"ipv6 loopback in the pod not captured", dial{w.pod, netip.MustParseAddrPort("[::1]:8080"), netns.DialOptions{}}, "app"},
		{"forward leg from 127.0.0.6 not captured", dial{w.pod, pod8080, netns.DialOptions{Bind: netip.MustParseAddrPort("127.0.0.6:0"), Mark: redirect.DefaultMark}}, "app"},
		{"self-sourced forward leg not captured", dial{w.pod, pod8080, netns.DialOptions{Bind: netip.AddrPortFrom(podIP, 0), Mark: redirect.DefaultMark}}, "app"},
		{"self-sourced ipv6 forward leg not captured", dial{w.pod, netip.AddrPortFrom(podIP6, 8080), netns.DialOptions{Bind: netip.AddrPortFrom(podIP6, 0), Mark: redirect.DefaultMark}}, "app"},
		// The outbound listener is bound on the pod IPs, but connections from elsewhere to it are
		// handed to the plaintext listener (which refuses the reserved port in the ztunnel).
		{"15001 from another pod to plaintext", dial{w.remote, netip.AddrPortFrom(podIP, 15001), netns.DialOptions{}}, "plaintext local=10.77.0.2:15001"},
		{"ipv6 15001 from another pod to plaintext", dial{w.remote, netip.AddrPortFrom(podIP6, 15001), netns.DialOptions{}}, "plaintext local=[fd77::2]:15001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { check(t, tt.d, tt.want) })
	}

	t.Run("redirected outbound reaches the outbound listener (self-sourced)", func(t *testing.T) {
		if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = w.r.Unenroll(w.podCookie) }()
		for _, dst := range []netip.AddrPort{netip.AddrPortFrom(remoteIP, 80), netip.AddrPortFrom(remoteIP6, 80)} {
			w.drainOutbound()
			got := w.pod.Dial(t, w.podCg, dst, netns.DialOptions{})
			if got.Reply != "proxied "+dst.String() || got.Peer != dst {
				t.Errorf("dial %s = %+v, want proxied", dst, got)
			}
			if hits := w.drainOutbound(); len(hits) != 1 || hits[0].err != nil || unmap(hits[0].client) != unmap(got.Local) {
				t.Errorf("proxy saw %+v, want one connection from %s", hits, got.Local)
			}
		}
	})

	t.Run("listener gone: refused, not delivered to the app", func(t *testing.T) {
		plain.Close()
		check(t, dial{w.remote, pod8080, netns.DialOptions{}}, "refused")
	})

	t.Run("detached: the app is reached directly", func(t *testing.T) {
		if err := in.Close(); err != nil {
			t.Fatal(err)
		}
		check(t, dial{w.remote, pod8080, netns.DialOptions{}}, "app")
	})
}

func TestAttachInboundRejectsBadListeners(t *testing.T) {
	w := newWorld(t)
	other := netns.New(t)
	good := w.pod.Listen(t, "tcp", ":15008")
	elsewhere := other.Listen(t, "tcp", ":15006")

	var mptcp net.Listener
	err := w.pod.Do(func() (err error) {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(true)
		mptcp, err = lc.Listen(context.Background(), "tcp", ":15006")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mptcp.Close()

	if _, err := w.r.AttachInbound(good, mptcp); err == nil || !strings.Contains(err.Error(), "MPTCP") {
		t.Errorf("AttachInbound(MPTCP listener) = %v, want an error naming MPTCP", err)
	}
	if _, err := w.r.AttachInbound(good, elsewhere); err == nil || !strings.Contains(err.Error(), "different netns") {
		t.Errorf("AttachInbound(listeners in two netns) = %v, want an error", err)
	}
}

func TestCloseDetaches(t *testing.T) {
	w := newWorld(t)
	if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(remoteIP, 80)
	if got := w.pod.Dial(t, w.podCg, dst, netns.DialOptions{}); got.Reply != "proxied "+dst.String() {
		t.Fatalf("before Close: %+v", got)
	}
	if err := w.r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := w.pod.Dial(t, w.podCg, dst, netns.DialOptions{}); got.Reply != "direct" {
		t.Errorf("after Close: %+v, want direct", got)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := redirect.New(redirect.Config{}); err == nil {
		t.Error("New without CgroupPath succeeded")
	}
	if _, err := redirect.New(redirect.Config{CgroupPath: "/nonexistent/wrn"}); err == nil {
		t.Error("New with a missing cgroup succeeded")
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
