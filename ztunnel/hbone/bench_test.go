package hbone_test

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"

	"github.com/warren-mesh/warren/ztunnel/hbone"
)

func sink(_ context.Context, s *hbone.Stream) {
	c, err := s.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	buf := make([]byte, 256<<10) // like ztunnel/relay's largest buffer tier
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// tcpServer serves plain loopback TCP with handle per connection.
func tcpServer(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func BenchmarkThroughput(b *testing.B) {
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	run := func(b *testing.B, w io.Writer) {
		b.SetBytes(chunk)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := w.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("tcp", func(b *testing.B) {
		addr := tcpServer(b, func(c net.Conn) { io.Copy(io.Discard, c) })
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, sink)
		c, err := e.dial(b).Connect(context.Background(), "10.0.1.5:80", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
}

func BenchmarkNewStream(b *testing.B) {
	ping := []byte("ping")
	roundTrip := func(b *testing.B, c net.Conn) {
		var got [4]byte
		if _, err := c.Write(ping); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.Run("tcp", func(b *testing.B) {
		addr := tcpServer(b, func(c net.Conn) { io.Copy(c, c) })
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
	})
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, echo)
		cc := e.dial(b)
		b.ReportAllocs()
		for b.Loop() {
			c, err := cc.Connect(context.Background(), "10.0.1.5:80", nil)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
	})
}

// BenchmarkRequestResponse sends a 100-byte request on one long-lived stream and waits for its
// echo: the per-request cost of the HTTP/2 and TLS layers (framing, flushes, wake-ups), which
// dominates the latency at 1000 requests per second.
func BenchmarkRequestResponse(b *testing.B) {
	req := make([]byte, 100)
	run := func(b *testing.B, c net.Conn) {
		got := make([]byte, len(req))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("tcp", func(b *testing.B) {
		addr := tcpServer(b, func(c net.Conn) { io.Copy(c, c) })
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, echo)
		c, err := e.dial(b).Connect(context.Background(), "10.0.1.5:80", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
}

// BenchmarkIdleStreams opens streams that carried one round trip and then stay idle, and reports
// the Go memory (heap and goroutine stacks, both sides of the tunnel) each one holds: the cost
// of an idle proxied connection, less the relay and the sockets.
func BenchmarkIdleStreams(b *testing.B) {
	const streams = 500
	// echoes with a 1 KiB buffer, like the smallest tier of ztunnel/relay (io.Copy would hold 32 KiB)
	e := newEnv(b, func(_ context.Context, s *hbone.Stream) {
		c, err := s.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var buf [1 << 10]byte
		for {
			n, err := c.Read(buf[:])
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	cc := e.dial(b)
	inuse := func() uint64 {
		runtime.GC() // twice: the first only moves sync.Pool contents to the victim cache
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	var perStream float64
	for b.Loop() {
		before := inuse()
		var open []net.Conn
		for range streams {
			c, err := cc.Connect(context.Background(), "10.0.1.5:80", nil)
			if err != nil {
				b.Fatal(err)
			}
			var got [4]byte
			if _, err := c.Write([]byte("ping")); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, got[:]); err != nil {
				b.Fatal(err)
			}
			open = append(open, c)
		}
		perStream = float64(inuse()-before) / streams
		for _, c := range open {
			c.Close()
		}
	}
	b.ReportMetric(perStream, "B/stream")
}
