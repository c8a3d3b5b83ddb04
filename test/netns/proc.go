//go:build linux

package netns

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helper processes re-execute the test binary with these variables set; [Main] runs the helper
// instead of the tests.
const (
	envCommand = "WARREN_NETNS_HELPER"
	envNetns   = "WARREN_NETNS_PATH"
	envArgs    = "WARREN_NETNS_ARGS"
)

// Main runs the tests, or a helper command when the process is a helper started by this package.
// Call it from TestMain: func TestMain(m *testing.M) { netns.Main(m) }.
func Main(m *testing.M) {
	if cmd := os.Getenv(envCommand); cmd != "" {
		os.Exit(helperMain(cmd))
	}
	os.Exit(m.Run())
}

// DialResult is what a helper process saw when it connected.
type DialResult struct {
	Local netip.AddrPort // getsockname
	Peer  netip.AddrPort // getpeername: what the application believes it is connected to
	Reply string         // everything the server sent before closing
	Err   string         // non-empty if the connect or the read failed
	// ConnectTime is how long connect() took.
	ConnectTime time.Duration
	// Cgroup is the helper's cgroup v2 path relative to the mount (from /proc/self/cgroup).
	Cgroup string
}

type dialArgs struct {
	Addr netip.AddrPort
	Opts DialOptions
	N    int // bench: number of connects
}

// Dial connects to addr from a new helper process that starts in cgroup cg (nil: this process's
// cgroup) and runs in the namespace: it reports its socket's addresses as the kernel shows them to
// an application, and reads until the server closes (5 s timeout).
func (ns *NS) Dial(tb testing.TB, cg *Cgroup, addr netip.AddrPort, opts DialOptions) DialResult {
	tb.Helper()
	var res DialResult
	ns.helper(tb, cg, "dial", dialArgs{Addr: addr, Opts: opts}, &res)
	return res
}

// BenchResult is the connect() latency a helper process measured.
type BenchResult struct {
	N              int
	Mean, P50, P99 time.Duration
}

// BenchConnect runs n blocking connect() calls to addr from a helper process in cg and the
// namespace, timing each one. Connections are closed with RST so no TIME_WAIT piles up.
func (ns *NS) BenchConnect(tb testing.TB, cg *Cgroup, addr netip.AddrPort, opts DialOptions, n int) BenchResult {
	tb.Helper()
	var res BenchResult
	ns.helper(tb, cg, "bench", dialArgs{Addr: addr, Opts: opts, N: n}, &res)
	return res
}

func (ns *NS) helper(tb testing.TB, cg *Cgroup, cmd string, args any, out any) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("helper: %v", err)
	}
	a, err := json.Marshal(args)
	if err != nil {
		tb.Fatalf("helper: %v", err)
	}
	c := exec.Command(exe)
	c.Env = append(os.Environ(), envCommand+"="+cmd, envNetns+"="+ns.Path, envArgs+"="+string(a),
		// Under -race the runtime sleeps 1 s at exit by default.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if cg != nil {
		dir, err := os.Open(cg.Path)
		if err != nil {
			tb.Fatalf("helper: open cgroup: %v", err)
		}
		defer dir.Close()
		c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	if err := c.Run(); err != nil {
		tb.Fatalf("helper %s: %v\nstderr: %s", cmd, err, stderr.Bytes())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		tb.Fatalf("helper %s: bad output %q: %v (stderr: %s)", cmd, stdout.Bytes(), err, stderr.Bytes())
	}
}

// helperMain runs in the helper process. Everything happens on one locked OS thread with raw
// system calls, so every socket is created in the target namespace.
func helperMain(cmd string) int {
	runtime.LockOSThread()
	var args dialArgs
	if err := json.Unmarshal([]byte(os.Getenv(envArgs)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "bad args:", err)
		return 2
	}
	ns, err := os.Open(os.Getenv(envNetns))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		fmt.Fprintln(os.Stderr, "setns:", err)
		return 2
	}
	ns.Close()
	var out any
	switch cmd {
	case "dial":
		out = helperDial(args)
	case "bench":
		res, err := helperBench(args)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		out = res
	default:
		fmt.Fprintln(os.Stderr, "unknown helper command", cmd)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func helperDial(a dialArgs) DialResult {
	var res DialResult
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok {
				res.Cgroup = p
			}
		}
	}
	fd, err := socketFor(a)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	start := time.Now()
	err = unix.Connect(fd, sockaddr(a.Addr, family(a)))
	res.ConnectTime = time.Since(start)
	if err != nil {
		res.Err = "connect: " + err.Error()
		return res
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		res.Local = addrPort(sa)
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		res.Peer = addrPort(sa)
	}
	var buf bytes.Buffer
	b := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, b)
		if n > 0 {
			buf.Write(b[:n])
		}
		if err != nil {
			res.Err = "read: " + err.Error()
			break
		}
		if n == 0 {
			break
		}
	}
	res.Reply = buf.String()
	return res
}

func helperBench(a dialArgs) (BenchResult, error) {
	lat := make([]time.Duration, 0, a.N)
	sa := sockaddr(a.Addr, family(a))
	var total time.Duration
	for range a.N {
		fd, err := socketFor(a)
		if err != nil {
			return BenchResult{}, err
		}
		start := time.Now()
		err = unix.Connect(fd, sa)
		d := time.Since(start)
		if err != nil {
			unix.Close(fd)
			return BenchResult{}, fmt.Errorf("connect: %w", err)
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
		lat = append(lat, d)
		total += d
	}
	if a.N == 0 {
		return BenchResult{}, nil
	}
	slices.Sort(lat)
	return BenchResult{
		N:    a.N,
		Mean: total / time.Duration(a.N),
		P50:  lat[len(lat)/2],
		P99:  lat[len(lat)*99/100],
	}, nil
}

func family(a dialArgs) int {
	switch a.Opts.Network {
	case "tcp4":
		return unix.AF_INET
	case "tcp6":
		return unix.AF_INET6
	}
	if a.Addr.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func socketFor(a dialArgs) (int, error) {
	fam := family(a)
	proto := unix.IPPROTO_TCP
	if a.Opts.MPTCP {
		proto = unix.IPPROTO_MPTCP
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if fam == unix.AF_INET6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	if a.Opts.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(a.Opts.Mark)); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("SO_MARK: %w", err)
		}
	}
	if a.Opts.Bind.IsValid() {
		if err := unix.Bind(fd, sockaddr(a.Opts.Bind, fam)); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("bind: %w", err)
		}
	}
	return fd, nil
}

func sockaddr(ap netip.AddrPort, fam int) unix.Sockaddr {
	if fam == unix.AF_INET {
		return &unix.SockaddrInet4{Addr: ap.Addr().Unmap().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// Serve accepts connections on ln until it is closed, writing reply(conn) to each and closing
// it. It returns at once; the accept loop ends when ln is closed.
func Serve(ln net.Listener, reply func(net.Conn) string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, reply(c))
			}()
		}
	}()
}
