//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 as the HBONE base; x/net marks it deprecated in favour of net/http, whose HTTP/2 we may move to once it serves CONNECT streams on pre-dialed connections the same way.

package hbone_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/warren-mesh/warren/ztunnel/hbone"
)

// env is one trust domain with a running HBONE server on loopback.
type env struct {
	ca     *testCA
	server *x509svid.SVID
	client *x509svid.SVID
	srv    *hbone.Server
	addr   string
}

// echo accepts the stream and echoes it until the client half-closes.
func echo(_ context.Context, s *hbone.Stream) {
	c, err := s.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(c, c)
	c.CloseWrite()
}

func newEnv(tb testing.TB, handler func(context.Context, *hbone.Stream), mod ...func(*hbone.ServerConfig)) *env {
	tb.Helper()
	e := &env{ca: newTestCA(tb, "cluster.local")}
	e.server = e.ca.svid(tb, "ns-b", "sa-b")
	e.client = e.ca.svid(tb, "ns-a", "sa-a")
	cfg := hbone.ServerConfig{
		TLSConfig:       hbone.ServerTLSConfig(e.server, e.ca.bundle(), tlsconfig.AuthorizeMemberOf(e.ca.td)),
		Handler:         handler,
		ShutdownTimeout: 2 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	srv, err := hbone.NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve() = %v, want nil", err)
		}
	})
	e.srv, e.addr = srv, ln.Addr().String()
	return e
}

// clientTLS is the client configuration of e's client identity, expecting
// e's server identity.
func (e *env) clientTLS() *tls.Config {
	return hbone.ClientTLSConfig(e.client, e.ca.bundle(), tlsconfig.AuthorizeID(e.server.ID))
}

func dial(tb testing.TB, addr string, conf *tls.Config) (*hbone.ClientConn, error) {
	tb.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := hbone.NewClientConn(context.Background(), raw, conf, hbone.ClientOptions{})
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { cc.Close() })
	return cc, nil
}

func (e *env) dial(tb testing.TB) *hbone.ClientConn {
	tb.Helper()
	cc, err := dial(tb, e.addr, e.clientTLS())
	if err != nil {
		tb.Fatal(err)
	}
	return cc
}

func roundTrip(tb testing.TB, c *hbone.Conn, msg string) string {
	tb.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		tb.Fatalf("Write() = %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		tb.Fatalf("CloseWrite() = %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("ReadAll() = %v", err)
	}
	return string(got)
}

func TestConnectEcho(t *testing.T) {
	t.Parallel()
	type seen struct {
		Peer      string
		Authority string
		Forwarded string
		Trace     string
		Remote    bool
	}
	got := make(chan seen, 1)
	e := newEnv(t, func(ctx context.Context, s *hbone.Stream) {
		got <- seen{
			Peer:      s.Peer.String(),
			Authority: s.Authority.String(),
			Forwarded: s.Header.Get(hbone.HeaderForwarded),
			Trace:     s.Header.Get(hbone.HeaderTraceparent),
			Remote:    s.RemoteAddr.IsValid() && s.LocalAddr.IsValid(),
		}
		echo(ctx, s)
	})
	cc := e.dial(t)
	if got, want := cc.PeerID(), e.server.ID; got != want {
		t.Errorf("PeerID() = %v, want %v", got, want)
	}
	hdr := http.Header{}
	fwd := hbone.Forwarded(netip.MustParseAddrPort("10.0.0.7:40000"), "b.ns-b.svc.cluster.local")
	hdr.Set(hbone.HeaderForwarded, fwd)
	hdr.Set(hbone.HeaderTraceparent, "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00")
	c, err := cc.Connect(context.Background(), "10.0.1.5:8080", hdr)
	if err != nil {
		t.Fatalf("Connect() = %v", err)
	}
	defer c.Close()
	if got, want := roundTrip(t, c, "hello over hbone"), "hello over hbone"; got != want {
		t.Errorf("echo = %q, want %q", got, want)
	}
	want := seen{
		Peer:      "spiffe://cluster.local/ns/ns-a/sa/sa-a",
		Authority: "10.0.1.5:8080",
		Forwarded: `for="10.0.0.7:40000";host=b.ns-b.svc.cluster.local`,
		Trace:     "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00",
		Remote:    true,
	}
	if diff := cmp.Diff(want, <-got); diff != "" {
		t.Errorf("server saw (-want +got):\n%s", diff)
	}
	if got, want := c.RemoteAddr().String(), e.addr; got != want {
		t.Errorf("RemoteAddr() = %s, want %s", got, want)
	}
}

func TestBadAuthority(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	cc := e.dial(t)
	for _, authority := range []string{"foo", "10.0.0.1", "host:80", "10.0.0.1:http"} {
		t.Run(authority, func(t *testing.T) {
			_, err := cc.Connect(context.Background(), authority, nil)
			var se *hbone.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Connect(%q) = %v, want a *StatusError", authority, err)
			}
			if se.Code != http.StatusBadRequest {
				t.Errorf("Connect(%q) status = %d, want 400", authority, se.Code)
			}
		})
	}
}

func TestNotConnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	conf := e.clientTLS()
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: conf}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			req, err := http.NewRequest(method, "https://"+e.addr+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("RoundTrip() = %v", err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("%s status = %d, want 400", method, res.StatusCode)
			}
		})
	}
}

func TestReject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(context.Context, *hbone.Stream)
		want    int
	}{
		{"denied", func(_ context.Context, s *hbone.Stream) { s.Reject(http.StatusUnauthorized, "denied by policy") }, 401},
		{"unreachable", func(_ context.Context, s *hbone.Stream) { s.Reject(http.StatusServiceUnavailable, "") }, 503},
		{"no answer", func(context.Context, *hbone.Stream) {}, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.handler)
			_, err := e.dial(t).Connect(context.Background(), "10.0.1.5:8080", nil)
			var se *hbone.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Connect() = %v, want a *StatusError", err)
			}
			if se.Code != tt.want {
				t.Errorf("Connect() status = %d, want %d (err %v)", se.Code, tt.want, err)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	evil := newTestCA(t, "evil.local")
	evilSVID := evil.svid(t, "ns-a", "sa-a")
	noCert := tlsconfig.TLSClientConfig(e.ca.bundle(), tlsconfig.AuthorizeAny())
	noCert.MinVersion, noCert.NextProtos = tls.VersionTLS13, []string{hbone.ALPN}
	tests := []struct {
		name string
		conf *tls.Config
	}{
		{"other trust domain", hbone.ClientTLSConfig(evilSVID, e.ca.bundle(), tlsconfig.AuthorizeAny())},
		{"no client certificate", noCert},
		{"wrong server identity", hbone.ClientTLSConfig(e.client, e.ca.bundle(),
			tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// With TLS 1.3 the client's handshake completes before the
			// server checks the client certificate, so the rejection may
			// surface on the first stream instead.
			cc, err := dial(t, e.addr, tt.conf)
			if err == nil {
				_, err = cc.Connect(context.Background(), "10.0.1.5:80", nil)
			}
			if err == nil {
				t.Fatal("handshake and Connect succeeded, want an error")
			}
		})
	}
	c, err := e.dial(t).Connect(context.Background(), "10.0.1.5:80", nil)
	if err != nil {
		t.Fatalf("good client after refused ones: Connect() = %v", err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "still serving"); got != "still serving" {
		t.Errorf("echo = %q, want %q", got, "still serving")
	}
}

func TestOversizedHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	tc, err := tls.Dial("tcp", e.addr, e.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(time.Minute)) // hang guard, not an assertion
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	headers := func(streamID uint32, extra int) {
		t.Helper()
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.1.5:80"})
		for ; extra > 0; extra -= 4 << 10 {
			// Several fields: one field over the limit is a decoding error.
			enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("x", 4<<10), Sensitive: true})
		}
		block := buf.Bytes()
		const chunk = 16 << 10
		first := block[:min(chunk, len(block))]
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: streamID, BlockFragment: first, EndHeaders: len(block) <= chunk}); err != nil {
			t.Fatal(err)
		}
		for rest := block[len(first):]; len(rest) > 0; {
			n := min(chunk, len(rest))
			if err := fr.WriteContinuation(streamID, n == len(rest), rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
	}
	status := func(streamID uint32) string {
		t.Helper()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("ReadFrame() = %v, waiting for stream %d", err, streamID)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				if f.StreamID == streamID {
					return f.PseudoValue("status")
				}
			case *http2.GoAwayFrame:
				t.Fatalf("server sent GOAWAY %v", f.ErrCode)
			}
		}
	}
	headers(1, 20<<10)
	if got, want := status(1), "431"; got != want {
		t.Errorf("oversized CONNECT: status %s, want %s", got, want)
	}
	headers(3, 0)
	if got, want := status(3), "200"; got != want {
		t.Errorf("CONNECT after the oversized one, same connection: status %s, want %s", got, want)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo, func(c *hbone.ServerConfig) { c.HandshakeTimeout = 100 * time.Millisecond })
	tests := []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"partial client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if _, err := raw.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			raw.SetReadDeadline(time.Now().Add(time.Minute)) // hang guard
			n, err := raw.Read(make([]byte, 1))
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read() = %d, %v; want the server to drop the stalled peer", n, err)
			}
		})
	}
	waitFor(t, "server connections back to 0", func() bool { return e.srv.ActiveConns() == 0 })
}

// waitFor polls cond; it fails the test if cond stays false for a long time.
// It is a hang guard, not a timing assertion.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHandshakeTimeoutReleasesGoroutines(t *testing.T) {
	// Not parallel: counts goroutines.
	e := newEnv(t, echo, func(c *hbone.ServerConfig) { c.HandshakeTimeout = 50 * time.Millisecond })
	base := runtime.NumGoroutine()
	var conns []net.Conn
	for range 20 {
		raw, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, raw)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Minute)) // hang guard
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read() = %v, want the server to drop the stalled peer", err)
		}
		c.Close()
	}
	waitFor(t, "server connections back to 0", func() bool { return e.srv.ActiveConns() == 0 })
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

func TestHalfClose(t *testing.T) {
	t.Parallel()
	const request, response = "GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\nbody"
	got := make(chan string, 1)
	e := newEnv(t, func(_ context.Context, s *hbone.Stream) {
		c, err := s.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := io.ReadAll(c) // until the client's CloseWrite
		if err != nil {
			got <- "read error: " + err.Error()
			return
		}
		got <- string(req)
		io.WriteString(c, response)
		c.CloseWrite()
	})
	c, err := e.dial(t).Connect(context.Background(), "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := roundTrip(t, c, request), response; got != want {
		t.Errorf("client read %q, want %q", got, want)
	}
	if got, want := <-got, request; got != want {
		t.Errorf("server read %q, want %q", got, want)
	}
}

func TestLargeTransfer(t *testing.T) {
	t.Parallel()
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	e := newEnv(t, echo)
	c, err := e.dial(t).Connect(context.Background(), "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), h)
		if _, err := io.Copy(c, src); err != nil {
			t.Errorf("write: %v", err)
		}
		c.CloseWrite()
		sent <- h.Sum(nil)
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if n != size {
		t.Errorf("read %d bytes, want %d", n, size)
	}
	if got, want := h.Sum(nil), <-sent; !bytes.Equal(got, want) {
		t.Errorf("echoed data differs from sent data")
	}
}

func TestConnectContext(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	handlerDone := make(chan error, 1)
	stalled := newEnv(t, func(ctx context.Context, s *hbone.Stream) {
		started <- struct{}{}
		<-ctx.Done() // never answers; ends when the client resets the stream
		handlerDone <- ctx.Err()
	})
	cc := stalled.dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	if _, err := cc.Connect(ctx, "10.0.1.5:80", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Connect(ctx canceled while waiting) = %v, want context.Canceled", err)
	}
	if err := <-handlerDone; err == nil {
		t.Errorf("server handler context not canceled after the client gave up")
	}
	if got := cc.ActiveStreams(); got != 0 {
		t.Errorf("ActiveStreams() after failed Connect = %d, want 0", got)
	}

	// The ctx given to Connect bounds the wait for the answer, not the stream.
	cc = newEnv(t, echo).dial(t)
	ctx, cancel = context.WithCancel(context.Background())
	c, err := cc.Connect(ctx, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	if got := roundTrip(t, c, "after cancel"); got != "after cancel" {
		t.Errorf("echo = %q, want %q", got, "after cancel")
	}
	if got := cc.ActiveStreams(); got != 0 {
		t.Errorf("ActiveStreams() after both halves closed = %d, want 0", got)
	}
}

func TestDeadline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, echo)
	c, err := e.dial(t).Connect(context.Background(), "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read() after past deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write() after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestForwarded(t *testing.T) {
	t.Parallel()
	tests := []struct {
		client netip.AddrPort
		host   string
		want   string
	}{
		{netip.MustParseAddrPort("10.0.0.7:40000"), "b.ns.svc.cluster.local", `for="10.0.0.7:40000";host=b.ns.svc.cluster.local`},
		{netip.MustParseAddrPort("[fd00::1]:4000"), "b", `for="[fd00::1]:4000";host=b`},
		{netip.MustParseAddrPort("10.0.0.7:1"), "", `for="10.0.0.7:1"`},
	}
	for _, tt := range tests {
		if got := hbone.Forwarded(tt.client, tt.host); got != tt.want {
			t.Errorf("Forwarded(%v, %q) = %s, want %s", tt.client, tt.host, got, tt.want)
		}
	}
}

func TestNewTraceparent(t *testing.T) {
	t.Parallel()
	a, b := hbone.NewTraceparent(), hbone.NewTraceparent()
	if a == b {
		t.Errorf("NewTraceparent() returned %s twice", a)
	}
	parts := strings.Split(a, "-")
	got := []int{len(parts), len(parts[0]), len(parts[1]), len(parts[2]), len(parts[3])}
	if diff := cmp.Diff([]int{4, 2, 32, 16, 2}, got); diff != "" {
		t.Errorf("NewTraceparent() = %s, field lengths (-want +got):\n%s", a, diff)
	}
	if !strings.HasPrefix(a, "00-") || !strings.HasSuffix(a, "-00") {
		t.Errorf("NewTraceparent() = %s, want version 00 and flags 00", a)
	}
}
