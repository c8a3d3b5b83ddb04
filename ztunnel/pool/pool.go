// Package pool keeps HBONE client connections for reuse, keyed by source
// identity, destination identity and destination address, so that opening a
// proxied TCP connection costs one HTTP/2 stream instead of a TLS handshake.
//
// It follows Istio ztunnel's pool: at most 100 streams per connection (or the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS if lower), a new connection when all
// are full, callers for one key share an in-flight dial, connections idle for
// 5 minutes are closed, and connections the peer closed or sent GOAWAY on are
// dropped and redialed.
//
// The pool does not create sockets or TLS configurations: [Config.Dial] does
// (in the right network namespace, with the source workload's certificate).
// It does not log. It may be imported by the ztunnel's outbound path and the
// waypoint.
package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/ztunnel/hbone"
)

// Key identifies the connections that may carry a stream: streams share a
// connection only if they have the same source identity (the certificate the
// client presents), destination identity (the one the server must prove) and
// destination address.
type Key struct {
	Src, Dst spiffeid.ID
	Addr     netip.AddrPort
}

func (k Key) String() string {
	return fmt.Sprintf("%s->%s@%s", k.Src, k.Dst, k.Addr)
}

// Config configures a [Pool]. Each field documents its default.
type Config struct {
	// Dial opens a new HBONE connection for k: it creates the socket, dials
	// k.Addr and runs hbone.NewClientConn with k.Src's certificate,
	// authorizing k.Dst. Required.
	Dial func(ctx context.Context, k Key) (*hbone.ClientConn, error)

	// MaxStreamsPerConn caps concurrent streams per connection. Default 100.
	MaxStreamsPerConn int

	// IdleTimeout closes connections that carried no stream for this long.
	// Default 5m.
	IdleTimeout time.Duration

	// MaxKeys bounds the number of keys remembered; the least recently used
	// key is evicted and its connections close once they are idle (active
	// streams are never cut). Default 10000.
	MaxKeys int

	// Now is the clock used for idle accounting. Default time.Now.
	Now func() time.Time

	// Epoch, if set, names the credentials a new connection for k would be made with (for the
	// ztunnel: the serial of the source identity's current certificate). A connection made in
	// another epoch takes no new streams and closes once idle, so after a certificate rotation
	// new streams travel on connections that present the new certificate, while streams already
	// open keep their connection.
	// An error fails the Connect.
	Epoch func(ctx context.Context, k Key) (string, error)
}

// Stats are pool counters, for metrics and debug dumps.
type Stats struct {
	Keys          int   // keys remembered
	Conns         int   // open connections, including draining ones
	Streams       int   // streams open or being opened
	Dials         int64 // dials started, total
	DialErrors    int64 // dials failed, total
	IdleClosed    int64 // connections closed for idleness, total
	EvictedClosed int64 // connections closed because their key was evicted, total
	Retired       int64 // connections retired because their epoch (certificate) changed, total
}

// Pool is a set of HBONE connections. It is safe for concurrent use.
type Pool struct {
	cfg Config

	mu      sync.Mutex
	keys    *simplelru.LRU[Key, *entry]
	closed  bool
	stats   Stats
	toClose []*conn // closed by the caller of unlock
}

type entry struct {
	conns []*conn
}

// conn is a pooled connection, or a dial in flight (cc == nil, ready open).
type conn struct {
	cc       *hbone.ClientConn
	ready    chan struct{} // closed when the dial finished
	err      error         // dial error, set before ready is closed
	streams  int           // reserved + active streams
	idle     time.Time     // when streams last dropped to 0
	detached bool          // no longer in its entry: close when idle
	isClosed bool
	epoch    string // Config.Epoch when dialed
}

// New returns a Pool. Call Run to close idle connections in the background,
// or Sweep periodically.
func New(cfg Config) (*Pool, error) {
	if cfg.Dial == nil {
		return nil, errors.New("new pool: Dial is required")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 10000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Pool{cfg: cfg}
	keys, err := simplelru.NewLRU(cfg.MaxKeys, p.evicted)
	if err != nil {
		return nil, fmt.Errorf("new pool: %w", err)
	}
	p.keys = keys
	return p, nil
}

// evicted runs under p.mu when the LRU drops a key.
func (p *Pool) evicted(_ Key, e *entry) {
	for _, c := range e.conns {
		c.detached = true
		if c.streams == 0 && c.cc != nil {
			p.stats.EvictedClosed++
			p.closeLocked(c)
		}
	}
	e.conns = nil
}

func (p *Pool) unlock() {
	cs := p.toClose
	p.toClose = nil
	p.mu.Unlock()
	for _, c := range cs {
		c.cc.Close()
	}
}

func (p *Pool) closeLocked(c *conn) {
	if c.isClosed || c.cc == nil {
		return
	}
	c.isClosed = true
	p.stats.Conns--
	p.toClose = append(p.toClose, c)
}

// Connect opens a stream to authority over a pooled connection for k,
// dialing one if every connection is full or none exists. Concurrent callers
// for one key wait for a dial in flight rather than dialing themselves. The
// stream's slot is released when the returned Conn is closed (or both of its
// halves are).
//
// ctx bounds the wait for a connection and for the CONNECT answer. A dial runs
// with the ctx of the Connect that started it; if it fails, every Connect
// waiting for it gets the error.
func (p *Pool) Connect(ctx context.Context, k Key, authority string, hdr http.Header) (*hbone.Conn, error) {
	return p.connect(ctx, k, func(cc *hbone.ClientConn) (*hbone.Conn, error) { return cc.Connect(ctx, authority, hdr) })
}

// ConnectFrom is [Pool.Connect] with [hbone.ClientConn.ConnectFrom]: the stream reads what it
// sends from src itself. src is read only once a stream was accepted, so a retry on another
// connection starts from its first byte.
func (p *Pool) ConnectFrom(ctx context.Context, k Key, authority string, hdr http.Header, src net.Conn) (*hbone.Conn, error) {
	return p.connect(ctx, k, func(cc *hbone.ClientConn) (*hbone.Conn, error) { return cc.ConnectFrom(ctx, authority, hdr, src) })
}

func (p *Pool) connect(ctx context.Context, k Key, open func(*hbone.ClientConn) (*hbone.Conn, error)) (*hbone.Conn, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var c *conn
		c, err = p.reserve(ctx, k)
		if err != nil {
			return nil, err
		}
		var hc *hbone.Conn
		hc, err = open(c.cc)
		if err == nil {
			hc.OnDone(func() { p.release(c) })
			return hc, nil
		}
		p.release(c)
		var se *hbone.StatusError
		if errors.As(err, &se) || ctx.Err() != nil || c.cc.CanTakeNewRequest() {
			break
		}
		// The connection died under us (GOAWAY, reset): redial once.
		p.mu.Lock()
		p.detachLocked(k, c)
		p.unlock()
	}
	return nil, fmt.Errorf("pool connect %s: %w", k.Addr, err)
}

// reserve returns a ready connection for k with one stream slot reserved.
func (p *Pool) reserve(ctx context.Context, k Key) (*conn, error) {
	var epoch string
	if p.cfg.Epoch != nil {
		var err error
		if epoch, err = p.cfg.Epoch(ctx, k); err != nil {
			return nil, fmt.Errorf("pool connect %s: %w", k.Addr, err)
		}
	}
	p.mu.Lock()
	if p.closed {
		p.unlock()
		return nil, fmt.Errorf("pool connect %s: pool is closed", k.Addr)
	}
	e, ok := p.keys.Get(k)
	if !ok {
		e = &entry{}
		p.keys.Add(k, e)
	}
	c := p.pickLocked(k, e, epoch)
	if c != nil {
		c.streams++
		p.stats.Streams++
		ready := c.cc != nil
		p.unlock()
		if ready {
			return c, nil
		}
		select {
		case <-c.ready:
		case <-ctx.Done():
			p.release(c)
			return nil, fmt.Errorf("pool connect %s: waiting for dial: %w", k.Addr, context.Cause(ctx))
		}
		if c.err != nil {
			p.release(c)
			return nil, c.err
		}
		return c, nil
	}
	// Dial a new connection; others may join while it is in flight.
	c = &conn{ready: make(chan struct{}), streams: 1, epoch: epoch}
	e.conns = append(e.conns, c)
	p.stats.Dials++
	p.stats.Streams++
	p.unlock()

	cc, err := p.cfg.Dial(ctx, k)
	p.mu.Lock()
	if err != nil {
		p.stats.DialErrors++
		c.err = fmt.Errorf("pool dial %s: %w", k, err)
		p.detachLocked(k, c)
	} else {
		c.cc = cc
		p.stats.Conns++
		if c.detached || p.closed { // evicted or pool closed while dialing
			c.detached = true
		}
	}
	close(c.ready)
	p.unlock()
	if c.err != nil {
		p.release(c)
		return nil, c.err
	}
	return c, nil
}

// pickLocked returns a connection of e with a free slot (possibly still
// dialing), dropping dead ones and those of another epoch, or nil.
func (p *Pool) pickLocked(k Key, e *entry, epoch string) *conn {
	var found *conn
	live := e.conns[:0]
	for _, c := range e.conns {
		stale := c.epoch != epoch
		if stale || (c.cc != nil && !c.cc.CanTakeNewRequest()) {
			if stale {
				p.stats.Retired++
			}
			c.detached = true
			if c.streams == 0 && c.cc != nil {
				p.closeLocked(c)
			}
			continue
		}
		live = append(live, c)
		if found == nil && c.streams < p.limit(c) {
			found = c
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	return found
}

func (p *Pool) limit(c *conn) int {
	n := p.cfg.MaxStreamsPerConn
	if c.cc != nil {
		if m := c.cc.State().MaxConcurrentStreams; m > 0 && int(m) < n {
			n = int(m)
		}
	}
	return n
}

// detachLocked removes c from k's entry; it closes once idle.
func (p *Pool) detachLocked(k Key, c *conn) {
	c.detached = true
	if e, ok := p.keys.Peek(k); ok {
		for i, x := range e.conns {
			if x == c {
				e.conns = append(e.conns[:i], e.conns[i+1:]...)
				break
			}
		}
	}
	if c.streams == 0 {
		p.closeLocked(c)
	}
}

func (p *Pool) release(c *conn) {
	p.mu.Lock()
	c.streams--
	p.stats.Streams--
	if c.streams == 0 {
		c.idle = p.cfg.Now()
		if c.detached || p.closed {
			p.closeLocked(c)
		}
	}
	p.unlock()
}

// Sweep closes connections that have been idle for IdleTimeout or were closed
// by the peer, and forgets keys left without connections. It returns the
// number of connections closed. Run calls it periodically.
func (p *Pool) Sweep() int {
	p.mu.Lock()
	now := p.cfg.Now()
	n := 0
	var empty []Key
	for _, k := range p.keys.Keys() {
		e, _ := p.keys.Peek(k)
		live := e.conns[:0]
		for _, c := range e.conns {
			switch {
			case c.cc == nil:
				live = append(live, c) // dialing
				continue
			case c.streams == 0 && (now.Sub(c.idle) >= p.cfg.IdleTimeout || !c.cc.CanTakeNewRequest()):
				p.stats.IdleClosed++
				p.closeLocked(c)
				n++
				continue
			case !c.cc.CanTakeNewRequest():
				c.detached = true
				continue
			}
			live = append(live, c)
		}
		clear(e.conns[len(live):])
		e.conns = live
		if len(live) == 0 {
			empty = append(empty, k)
		}
	}
	for _, k := range empty {
		p.keys.Remove(k) // evicted() finds no connections
	}
	p.unlock()
	return n
}

// Run calls Sweep every IdleTimeout/4 (at least once a second) until ctx
// ends, then closes the pool.
func (p *Pool) Run(ctx context.Context) error {
	every := max(p.cfg.IdleTimeout/4, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return p.Close()
		case <-t.C:
			p.Sweep()
		}
	}
}

// Close closes every idle connection now and every busy one as soon as its
// streams end; later Connects fail. It is safe to call more than once.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	p.keys.Purge() // evicted() detaches and closes idle connections
	p.unlock()
	return nil
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Keys = p.keys.Len()
	return s
}
