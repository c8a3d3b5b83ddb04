package relay_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/ztunnel/relay"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (client, server *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// wrapped hides *net.TCPConn so Relay takes the buffered path, as it does for
// TLS and HBONE connections.
type wrapped struct{ net.Conn }

func (w wrapped) CloseWrite() error { return w.Conn.(*net.TCPConn).CloseWrite() }

type relayed struct {
	app, upstream *net.TCPConn // the two outer ends
	done          chan result
}

type result struct {
	AToB, BToA int64
	Err        error
}

// start relays between two TCP connections: app <-> a ... b <-> upstream.
func start(tb testing.TB, buffered bool) *relayed {
	tb.Helper()
	app, a := tcpPair(tb)
	b, upstream := tcpPair(tb)
	var x, y net.Conn = a, b
	if buffered {
		x, y = wrapped{a}, wrapped{b}
	}
	r := &relayed{app: app, upstream: upstream, done: make(chan result, 1)}
	go func() {
		ab, ba, err := relay.Relay(x, y)
		r.done <- result{ab, ba, err}
	}()
	return r
}

func modes() []struct {
	name     string
	buffered bool
} {
	return []struct {
		name     string
		buffered bool
	}{{"splice", false}, {"buffered", true}}
}

func send(tb testing.TB, c *net.TCPConn, msg string) {
	tb.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		tb.Fatalf("Write() = %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		tb.Fatalf("CloseWrite() = %v", err)
	}
}

func readAll(tb testing.TB, c *net.TCPConn) string {
	tb.Helper()
	b, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("ReadAll() = %v", err)
	}
	return string(b)
}

func TestRelayHalfClose(t *testing.T) {
	t.Parallel()
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			t.Run("client closes first", func(t *testing.T) {
				r := start(t, m.buffered)
				send(t, r.app, "request")
				if got := readAll(t, r.upstream); got != "request" {
					t.Errorf("upstream read %q, want %q", got, "request")
				}
				send(t, r.upstream, "the response")
				if got := readAll(t, r.app); got != "the response" {
					t.Errorf("app read %q, want %q", got, "the response")
				}
				if diff := cmp.Diff(result{7, 12, nil}, <-r.done, cmp.Comparer(sameErr)); diff != "" {
					t.Errorf("Relay() (-want +got):\n%s", diff)
				}
			})
			t.Run("server closes first", func(t *testing.T) {
				r := start(t, m.buffered)
				send(t, r.upstream, "banner")
				if got := readAll(t, r.app); got != "banner" {
					t.Errorf("app read %q, want %q", got, "banner")
				}
				send(t, r.app, "bye")
				if got := readAll(t, r.upstream); got != "bye" {
					t.Errorf("upstream read %q, want %q", got, "bye")
				}
				if diff := cmp.Diff(result{3, 6, nil}, <-r.done, cmp.Comparer(sameErr)); diff != "" {
					t.Errorf("Relay() (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func sameErr(a, b error) bool { return (a == nil) == (b == nil) }

func TestRelayReset(t *testing.T) {
	t.Parallel()
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			r := start(t, m.buffered)
			r.app.SetLinger(0)
			r.app.Close() // RST
			// The other direction must end too: upstream sees the relay close.
			if _, err := io.ReadAll(r.upstream); err != nil && !errors.Is(err, net.ErrClosed) {
				t.Logf("upstream ReadAll() = %v", err) // EOF or reset, both fine
			}
			res := <-r.done
			if res.Err == nil {
				t.Errorf("Relay() error = nil after a reset, want the reset error")
			}
		})
	}
}

func TestRelayLarge(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			r := start(t, m.buffered)
			data := make([]byte, size)
			rand.NewChaCha8([32]byte{2}).Read(data)
			go func() {
				r.app.Write(data)
				r.app.CloseWrite()
			}()
			got, err := io.ReadAll(r.upstream)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("upstream received %d bytes, not equal to the %d sent", len(got), len(data))
			}
			r.upstream.CloseWrite()
			if res := <-r.done; res.AToB != size || res.Err != nil {
				t.Errorf("Relay() = %d, %d, %v; want %d, 0, nil", res.AToB, res.BToA, res.Err, size)
			}
		})
	}
}

func BenchmarkRelay(b *testing.B) {
	for _, m := range modes() {
		b.Run(m.name, func(b *testing.B) {
			r := start(b, m.buffered)
			buf := make([]byte, 256<<10)
			go io.Copy(io.Discard, r.upstream)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.app.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			r.app.CloseWrite()
			r.upstream.CloseWrite()
			<-r.done
		})
	}
}
