package ztunnel_test

import (
	"io"
	"net"
	"net/netip"
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
