package hbone_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/relay"
)

// tcpPair returns both ends of a loopback TCP connection: app is the workload's end, proxy the
// end a ztunnel accepted.
func tcpPair(tb testing.TB) (app, proxy *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	p := <-acc
	if p == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { a.Close(); p.Close() })
	return a.(*net.TCPConn), p.(*net.TCPConn)
}

// The proxy path with ConnectFrom: the stream reads the app's bytes itself, RelayPulled copies
// the answer back, half-closes travel both ways and both byte counts are right.
func TestConnectFromRelayPulled(t *testing.T) {
	t.Parallel()
	for _, size := range []int64{0, 5, 8 << 20} {
		e := newEnv(t, echo)
		app, proxy := tcpPair(t)
		c, err := e.dial(t).ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			up, down int64
			err      error
		}
		done := make(chan result, 1)
		go func() {
			up, down, err := relay.RelayPulled(proxy, c)
			done <- result{up, down, err}
		}()
		sent := make(chan []byte, 1)
		go func() {
			h := sha256.New()
			if _, err := io.Copy(app, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{2}), size), h)); err != nil {
				t.Errorf("app write: %v", err)
			}
			app.CloseWrite()
			sent <- h.Sum(nil)
		}()
		h := sha256.New()
		n, err := io.Copy(h, app) // the echo, until the stream's END_STREAM became the app's EOF
		if err != nil || n != size {
			t.Fatalf("size %d: app read %d bytes, %v; want %d, nil", size, n, err, size)
		}
		if !bytes.Equal(h.Sum(nil), <-sent) {
			t.Errorf("size %d: echoed data differs from sent data", size)
		}
		r := <-done
		if r.err != nil || r.up != size || r.down != size {
			t.Errorf("size %d: RelayPulled() = %d, %d, %v; want %d, %d, nil", size, r.up, r.down, r.err, size, size)
		}
		if err := c.SendErr(); err != nil {
			t.Errorf("size %d: SendErr() = %v, want nil after the app's EOF", size, err)
		}
	}
}

// A refused stream reads nothing from its source: the caller still has every byte.
func TestConnectFromRejectedLeavesSource(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(_ context.Context, s *hbone.Stream) { s.Reject(http.StatusUnauthorized, "denied by policy") })
	app, proxy := tcpPair(t)
	if _, err := io.WriteString(app, "early bytes"); err != nil {
		t.Fatal(err)
	}
	_, err := e.dial(t).ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("ConnectFrom() = %v, want a 401 *StatusError", err)
	}
	proxy.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(proxy, buf, len("early bytes"))
	if err != nil || string(buf[:n]) != "early bytes" {
		t.Errorf("source after the refusal: read %q, %v; want \"early bytes\"", buf[:n], err)
	}
}

func TestConnectFromBadUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	cc := e.dial(t)
	if _, err := cc.ConnectFrom(context.Background(), "10.0.1.5:80", nil, nil); err == nil || !strings.Contains(err.Error(), "nil source") {
		t.Errorf("ConnectFrom(nil source) = %v, want an error naming the nil source", err)
	}
	_, proxy := tcpPair(t)
	c, err := cc.ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "ConnectFrom") {
		t.Errorf("Write() = %v, want an error saying the stream reads its source", err)
	}
	// The connection still carries ordinary streams.
	c2, err := cc.Connect(context.Background(), "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := roundTrip(t, c2, "still fine"); got != "still fine" {
		t.Errorf("echo on the same connection = %q", got)
	}
}

// Close releases a read blocked on the source without closing the source, and the stream's slot
// is released (OnDone).
func TestConnectFromCloseReleasesSource(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	app, proxy := tcpPair(t)
	cc := e.dial(t)
	c, err := cc.ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	c.OnDone(func() { close(released) })
	c.Close()
	select {
	case <-c.SendDone():
	case <-time.After(10 * time.Second):
		t.Fatal("SendDone not closed after Close: the source read is still blocked")
	}
	<-released
	if cc.ActiveStreams() != 0 {
		t.Errorf("ActiveStreams() = %d after Close, want 0", cc.ActiveStreams())
	}
	if _, err := app.Write([]byte("x")); err != nil { // the source itself is still open
		t.Errorf("app write after Close: %v", err)
	}
}

// CloseWrite stops reading the source and half-closes: the peer reads EOF, the answer still
// arrives.
func TestConnectFromCloseWrite(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	app, proxy := tcpPair(t)
	c, err := e.dial(t).ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(app, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite() = %v", err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after CloseWrite the echo ends: read %q, %v; want EOF", rest, err)
	}
	if err := c.SendErr(); err != nil {
		t.Errorf("SendErr() = %v, want nil after CloseWrite", err)
	}
}

// An app that resets its connection makes RelayPulled report the reset and close both ends.
func TestRelayPulledSourceReset(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	app, proxy := tcpPair(t)
	c, err := e.dial(t).ConnectFrom(context.Background(), "10.0.1.5:80", nil, proxy)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := relay.RelayPulled(proxy, c)
		done <- err
	}()
	io.WriteString(app, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(app, buf); err != nil {
		t.Fatal(err)
	}
	app.SetLinger(0)
	app.Close() // RST
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("RelayPulled() = %v, want the connection reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RelayPulled did not return after the app's reset")
	}
	if _, err := c.Read(buf); err == nil {
		t.Error("stream still readable after RelayPulled returned")
	}
}
