package pool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/pool"
)

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

// mesh is one trust domain with client identities and HBONE servers.
type mesh struct {
	ca      *testCA
	clients map[spiffeid.ID]*x509svid.SVID
	dstID   spiffeid.ID

	mu    sync.Mutex
	raws  []net.Conn // client-side TCP conns, in dial order
	dials atomic.Int64
}

func newMesh(tb testing.TB) *mesh {
	tb.Helper()
	m := &mesh{ca: newTestCA(tb, "cluster.local"), clients: map[spiffeid.ID]*x509svid.SVID{}}
	for _, sa := range []string{"sa-a", "sa-c"} {
		s := m.ca.svid(tb, "ns-a", sa)
		m.clients[s.ID] = s
	}
	m.dstID = spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-b/sa/sa-b")
	return m
}

func (m *mesh) id(sa string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-a/sa/" + sa)
}

// server starts an HBONE echo server and returns its address and a counter of
// completed TLS handshakes.
func (m *mesh) server(tb testing.TB) (netip.AddrPort, *atomic.Int64) {
	tb.Helper()
	var handshakes atomic.Int64
	conf := hbone.ServerTLSConfig(m.ca.svid(tb, "ns-b", "sa-b"), m.ca.bundle(), tlsconfig.AuthorizeMemberOf(m.ca.td))
	conf.VerifyConnection = func(tls.ConnectionState) error {
		handshakes.Add(1)
		return nil
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{TLSConfig: conf, Handler: echo, ShutdownTimeout: 2 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.Serve(ctx, ln)
		close(done)
	}()
	tb.Cleanup(func() { cancel(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort(), &handshakes
}

// dial is a Config.Dial that presents k.Src's certificate. It accepts any
// server of the trust domain so that tests can vary k.Dst freely.
func (m *mesh) dial(ctx context.Context, k pool.Key) (*hbone.ClientConn, error) {
	m.dials.Add(1)
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", k.Addr.String())
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.raws = append(m.raws, raw)
	m.mu.Unlock()
	conf := hbone.ClientTLSConfig(m.clients[k.Src], m.ca.bundle(), tlsconfig.AuthorizeMemberOf(m.ca.td))
	return hbone.NewClientConn(ctx, raw, conf, hbone.ClientOptions{})
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newPool(tb testing.TB, cfg pool.Config) *pool.Pool {
	tb.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func roundTrip(tb testing.TB, c *hbone.Conn, msg string) {
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
	if string(got) != msg {
		tb.Fatalf("echo = %q, want %q", got, msg)
	}
}

// openConcurrently opens n streams for k at once and keeps them open.
func openConcurrently(tb testing.TB, p *pool.Pool, k pool.Key, n int) []*hbone.Conn {
	tb.Helper()
	conns := make([]*hbone.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = p.Connect(context.Background(), k, "10.0.1.5:80", nil) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("Connect() #%d = %v", i, err)
		}
	}
	tb.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

func TestSharedHandshake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		streams   int
		wantConns int
	}{
		{1, 1},
		{100, 1},
		{101, 2},
		{150, 2},
		{200, 2},
		{201, 3},
	}
	m := newMesh(t)
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			addr, handshakes := m.server(t)
			p := newPool(t, pool.Config{Dial: m.dial})
			k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}
			conns := openConcurrently(t, p, k, tt.streams)
			if got := handshakes.Load(); got != int64(tt.wantConns) {
				t.Errorf("%d concurrent streams: %d TLS handshakes, want %d", tt.streams, got, tt.wantConns)
			}
			want := pool.Stats{Keys: 1, Conns: tt.wantConns, Streams: tt.streams, Dials: int64(tt.wantConns)}
			if diff := cmp.Diff(want, p.Stats()); diff != "" {
				t.Errorf("Stats() (-want +got):\n%s", diff)
			}
			roundTrip(t, conns[len(conns)-1], "still works")
		})
	}
}

func TestSeparateKeys(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr1, hs1 := m.server(t)
	addr2, hs2 := m.server(t)
	p := newPool(t, pool.Config{Dial: m.dial})
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-b/sa/other")
	keys := []pool.Key{
		{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr1},
		{Src: m.id("sa-c"), Dst: m.dstID, Addr: addr1}, // other source
		{Src: m.id("sa-a"), Dst: other, Addr: addr1},   // other destination identity
		{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr2}, // other address
		{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr1}, // same as the first
	}
	for _, k := range keys {
		c, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
		if err != nil {
			t.Fatalf("Connect(%v) = %v", k, err)
		}
		defer c.Close()
	}
	if got, want := []int64{hs1.Load(), hs2.Load()}, []int64{3, 1}; !cmp.Equal(got, want) {
		t.Errorf("handshakes per server = %v, want %v", got, want)
	}
	if got := p.Stats(); got.Keys != 4 || got.Conns != 4 {
		t.Errorf("Stats() = %+v, want 4 keys and 4 conns", got)
	}
}

func TestIdleClose(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr, handshakes := m.server(t)
	clk := &clock{now: time.Unix(1_000_000, 0)}
	p := newPool(t, pool.Config{Dial: m.dial, IdleTimeout: time.Minute, Now: clk.Now})
	k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}

	c, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute)
	if got := p.Sweep(); got != 0 {
		t.Errorf("Sweep() with an active stream closed %d connections, want 0", got)
	}
	roundTrip(t, c, "x")
	c.Close()
	clk.Add(59 * time.Second)
	if got := p.Sweep(); got != 0 {
		t.Errorf("Sweep() before IdleTimeout closed %d connections, want 0", got)
	}
	clk.Add(time.Second)
	if got := p.Sweep(); got != 1 {
		t.Errorf("Sweep() after IdleTimeout closed %d connections, want 1", got)
	}
	want := pool.Stats{Dials: 1, IdleClosed: 1}
	if diff := cmp.Diff(want, p.Stats()); diff != "" {
		t.Errorf("Stats() after idle close (-want +got):\n%s", diff)
	}
	c, err = p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "redialed")
	if got := handshakes.Load(); got != 2 {
		t.Errorf("handshakes = %d, want 2", got)
	}
}

func TestRedialBrokenConn(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr, handshakes := m.server(t)
	p := newPool(t, pool.Config{Dial: m.dial})
	k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}
	c, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "first")
	c.Close()

	m.mu.Lock()
	m.raws[0].Close() // the connection breaks
	m.mu.Unlock()

	c, err = p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatalf("Connect() after the connection broke = %v, want a redial", err)
	}
	defer c.Close()
	roundTrip(t, c, "second")
	if got := handshakes.Load(); got != 2 {
		t.Errorf("handshakes = %d, want 2", got)
	}
	if got := p.Stats().Conns; got != 1 {
		t.Errorf("Stats().Conns = %d, want 1", got)
	}
}

func TestDialError(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close() // nothing listens: connection refused
	p := newPool(t, pool.Config{Dial: m.dial})
	k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}
	_, err = p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Connect() = %v, want ECONNREFUSED", err)
	}
	want := pool.Stats{Keys: 1, Dials: 1, DialErrors: 1}
	if diff := cmp.Diff(want, p.Stats()); diff != "" {
		t.Errorf("Stats() (-want +got):\n%s", diff)
	}
}

func TestEvictKeepsActiveStreams(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr, _ := m.server(t)
	p := newPool(t, pool.Config{Dial: m.dial, MaxKeys: 1})
	k1 := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}
	k2 := pool.Key{Src: m.id("sa-c"), Dst: m.dstID, Addr: addr}
	c1, err := p.Connect(context.Background(), k1, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := p.Connect(context.Background(), k2, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c1, "evicted key, stream still alive")
	c1.Close()
	got := p.Stats()
	want := pool.Stats{Keys: 1, Conns: 1, Streams: 1, Dials: 2}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(pool.Stats{}, "EvictedClosed")); diff != "" {
		t.Errorf("Stats() after the evicted key's stream ended (-want +got):\n%s", diff)
	}
}

func TestClosedPool(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr, _ := m.server(t)
	p := newPool(t, pool.Config{Dial: m.dial})
	p.Close()
	if _, err := p.Connect(context.Background(), pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}, "10.0.1.5:80", nil); err == nil {
		t.Errorf("Connect() on a closed pool succeeded, want an error")
	}
}

func TestEpochRetiresConnections(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	addr, handshakes := m.server(t)
	var epoch atomic.Value
	epoch.Store("serial-1")
	p := newPool(t, pool.Config{Dial: m.dial, Epoch: func(context.Context, pool.Key) (string, error) { return epoch.Load().(string), nil }})
	k := pool.Key{Src: m.id("sa-a"), Dst: m.dstID, Addr: addr}

	old, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	// The source's certificate rotates: new streams need a connection made with it.
	epoch.Store("serial-2")
	fresh, err := p.Connect(context.Background(), k, "10.0.1.5:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, fresh, "new certificate")
	fresh.Close()
	if got := handshakes.Load(); got != 2 {
		t.Errorf("handshakes after the epoch changed = %d, want 2", got)
	}
	// The stream opened before the rotation keeps working on its old connection, which closes
	// once that stream ends.
	roundTrip(t, old, "old stream still works")
	old.Close()
	want := pool.Stats{Keys: 1, Conns: 1, Dials: 2, Retired: 1}
	if diff := cmp.Diff(want, p.Stats()); diff != "" {
		t.Errorf("Stats() (-want +got):\n%s", diff)
	}
}
