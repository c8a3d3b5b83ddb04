package pool_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/warren-mesh/warren/ztunnel/pool"
)

// BenchmarkConnect opens a new proxied stream per op (plus a 4-byte round
// trip) through the pool, next to a new plain TCP connection per op.
func BenchmarkConnect(b *testing.B) {
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
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
	})
	b.Run("pool", func(b *testing.B) {
		m := newMesh(b)
		addr, _ := m.server(b)
		p := newPool(b, pool.Config{Dial: m.dial})
		k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}
		b.ReportAllocs()
		for b.Loop() {
			c, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
		if got := p.Stats().Dials; got != 1 {
			b.Errorf("Stats().Dials = %d, want 1", got)
		}
	})
}
