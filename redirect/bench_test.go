//go:build linux

package redirect_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/netns"
)

// BenchmarkConnect measures one blocking TCP connect() from a pod's application to a listener in
// the pod, over loopback, in three set-ups:
//
//   - no-bpf: the application is outside the cgroup carrying the programs;
//   - bpf-not-redirected: the programs run (enrolled pod, loopback destination) but do not rewrite;
//   - redirected: the application dials a remote address and lands on the outbound listener.
//
// The listener accepts and closes (no OriginalDst lookup, which the ztunnel adds per connection). Reported: mean, p50 and p99 per connect (ns/op is the mean).
func BenchmarkConnect(b *testing.B) {
	requireRedirect(b)
	w := newWorldWith(b, true)
	if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
		b.Fatal(err)
	}
	listener := netip.MustParseAddrPort("127.0.0.1:15001") // loopback: not redirected; the wildcard listener accepts it
	cases := []struct {
		name string
		cg   *netns.Cgroup
		dst  netip.AddrPort
	}{
		{"no-bpf", nil, listener},
		{"bpf-not-redirected", w.podCg, listener},
		{"redirected", w.podCg, netip.AddrPortFrom(remoteIP, 80)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			res := w.pod.BenchConnect(b, c.cg, c.dst, netns.DialOptions{}, b.N)
			b.ReportMetric(float64(res.Mean.Nanoseconds()), "ns/op")
			b.ReportMetric(float64(res.P50.Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(res.P99.Nanoseconds()), "p99-ns")
		})
	}
}

// BenchmarkProgramRuntime reports the in-kernel run time of each program (kernel BPF statistics,
// enabled for the duration of the benchmark) per run, and how often it runs per connection:
// b.N redirected outbound connects from the pod plus b.N inbound connects captured by sk_lookup.
func BenchmarkProgramRuntime(b *testing.B) {
	requireRedirect(b)
	w := newWorldWith(b, true)
	if err := w.r.Enroll(w.podCookie, podIP, podIP6); err != nil {
		b.Fatal(err)
	}
	hbone, plain := w.pod.Listen(b, "tcp", ":15008"), w.pod.Listen(b, "tcp", ":15006")
	for _, ln := range []net.Listener{hbone, plain} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	in, err := w.r.AttachInbound(hbone, plain)
	if err != nil {
		b.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("kernel BPF statistics: %v", err)
	}
	defer stats.Close()
	before, err := redirect.ProgramStats(w.r, in)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	w.pod.BenchConnect(b, w.podCg, netip.AddrPortFrom(remoteIP, 80), netns.DialOptions{}, b.N)
	w.remote.BenchConnect(b, nil, netip.AddrPortFrom(podIP, 8080), netns.DialOptions{}, b.N)
	b.StopTimer()
	after, err := redirect.ProgramStats(w.r, in)
	if err != nil {
		b.Fatal(err)
	}
	for name, a := range after {
		runs := a.RunCount - before[name].RunCount
		if runs == 0 {
			continue
		}
		rt := a.Runtime - before[name].Runtime
		b.ReportMetric(float64(rt.Nanoseconds())/float64(runs), name+"-ns/run")
		b.ReportMetric(float64(runs)/float64(b.N), name+"-runs/conn")
	}
}
