package ztunnel_test

import (
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
)

// The end-to-end benchmarks run the whole L4 path in one process: app -> outbound proxy
// (node-1) -> pooled HBONE over mTLS -> inbound proxy (node-2) -> app, each next to the same
// workload over plain loopback TCP ("direct"), measured in the same run.
//
//	go test -run '^$' -bench 'Mesh' -benchtime 3s ./ztunnel/

// sink accepts connections and discards what they send; each connection is answered with one
// byte after the client half-closes.
func sink(tb testing.TB, at netip.AddrPort) {
	tb.Helper()
	ln, err := net.Listen("tcp", at.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write([]byte{1})
			}()
		}
	}()
}

func benchMesh(b *testing.B) (m *mesh, p [3]byte) {
	p = randomNet()
	snap := articleSnapshot(p)
	snap.Workloads[1].Servers, snap.Servers = nil, nil
	m = newMesh(b, snap)
	m.startNode("node-1")
	m.startNode("node-2")
	sink(b, netip.MustParseAddrPort(ip(p, 3)+":8080"))
	return m, p
}

func BenchmarkMeshThroughput(b *testing.B) {
	m, p := benchMesh(b)
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	buf := make([]byte, 256<<10)
	run := func(b *testing.B, dial func() (*net.TCPConn, error)) {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
	b.Run("direct", func(b *testing.B) {
		run(b, func() (*net.TCPConn, error) {
			c, err := net.Dial("tcp", dst.String())
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		})
	})
	b.Run("mesh", func(b *testing.B) {
		run(b, func() (*net.TCPConn, error) { return m.dialFrom(ip(p, 2), dst) })
	})
}

func BenchmarkMeshNewConnection(b *testing.B) {
	m, p := benchMesh(b)
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	one := make([]byte, 1)
	run := func(b *testing.B, dial func() (*net.TCPConn, error)) {
		for b.Loop() {
			c, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			c.Write([]byte("x"))
			c.CloseWrite()
			if _, err := io.ReadFull(c, one); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) {
		run(b, func() (*net.TCPConn, error) {
			c, err := net.Dial("tcp", dst.String())
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		})
	})
	b.Run("mesh", func(b *testing.B) {
		run(b, func() (*net.TCPConn, error) { return m.dialFrom(ip(p, 2), dst) })
	})
}

// BenchmarkMeshRequestResponse sends 100-byte requests on one long-lived connection and waits
// for each echo: the per-request cost of the whole path (both ztunnels, HTTP/2, TLS, relays),
// which dominates latency at 1000 requests per second.
func BenchmarkMeshRequestResponse(b *testing.B) {
	m, p := benchMesh(b)
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8081")
	ln, err := net.Listen("tcp", dst.String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	req := make([]byte, 100)
	run := func(b *testing.B, c *net.TCPConn) {
		defer c.Close()
		got := make([]byte, len(req))
		for b.Loop() {
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		c, err := net.Dial("tcp", dst.String())
		if err != nil {
			b.Fatal(err)
		}
		run(b, c.(*net.TCPConn))
	})
	b.Run("mesh", func(b *testing.B) {
		c, err := m.dialFrom(ip(p, 2), dst)
		if err != nil {
			b.Fatal(err)
		}
		run(b, c)
	})
}

// BenchmarkMeshIdleConnections opens connections through the whole path that carried one
// round trip and then stay idle, and reports the goroutines and the Go memory (heap and stacks)
// each costs, all four parties (apps, both ztunnels) together.
func BenchmarkMeshIdleConnections(b *testing.B) {
	const conns = 200
	m, p := benchMesh(b)
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8082")
	ln, err := net.Listen("tcp", dst.String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var buf [1]byte
				for {
					if _, err := c.Read(buf[:]); err != nil {
						return
					}
					c.Write(buf[:])
				}
			}()
		}
	}()
	measure := func() (goroutines int, mem uint64) {
		runtime.GC() // twice: the first only moves sync.Pool contents to the victim cache
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse + ms.StackInuse
	}
	var g, mem float64
	for b.Loop() {
		g0, m0 := measure()
		var open []net.Conn
		for range conns {
			c, err := m.dialFrom(ip(p, 2), dst)
			if err != nil {
				b.Fatal(err)
			}
			var one [1]byte
			if _, err := c.Write(one[:]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, one[:]); err != nil {
				b.Fatal(err)
			}
			open = append(open, c)
		}
		g1, m1 := measure()
		g, mem = float64(g1-g0)/conns, float64(m1-m0)/conns
		for _, c := range open {
			c.Close()
		}
	}
	b.ReportMetric(g, "goroutines/conn")
	b.ReportMetric(mem, "B/conn")
}
