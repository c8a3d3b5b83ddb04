//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 (h2c on inner HBONE streams); net/http's own HTTP/2 cannot serve or dial pre-established unencrypted connections the same way.

package waypoint

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/authz"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/relay"
)

// streamInfo is what every request of one inbound HBONE stream shares.
type streamInfo struct {
	peer      spiffeid.ID    // the client's identity (HBONE peer certificate)
	src       netip.AddrPort // the client's address (Forwarded, else the HBONE connection's)
	authority netip.AddrPort // the original destination
	h2        bool           // the client speaks HTTP/2 (the app gets HTTP/2 too)
}

type infoKey struct{}

// clientAddr is the original client's address: the for= of the Forwarded header the source
// ztunnel sends, else the HBONE connection's remote address (in-pod sockets carry the pod IP).
func clientAddr(s *hbone.Stream) netip.AddrPort {
	if f := s.Header.Get(hbone.HeaderForwarded); f != "" {
		for part := range strings.SplitSeq(f, ";") {
			v, ok := strings.CutPrefix(strings.TrimSpace(part), "for=")
			if !ok {
				continue
			}
			if ap, err := netip.ParseAddrPort(strings.Trim(v, `"`)); err == nil {
				return ap
			}
		}
	}
	return s.RemoteAddr
}

func (w *Waypoint) track(d int) {
	w.mu.Lock()
	w.streams += d
	w.mu.Unlock()
}

// handleStream serves one inbound HBONE stream.
func (w *Waypoint) handleStream(ctx context.Context, s *hbone.Stream) {
	w.track(1)
	defer w.track(-1)
	c := w.current()
	if c == nil {
		s.Reject(http.StatusServiceUnavailable, "waypoint has no config yet")
		return
	}
	info := &streamInfo{peer: s.Peer, src: clientAddr(s), authority: s.Authority}
	d, err := c.resolve(s.Authority, w.cfg.Identity.String())
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, errNotBound) {
			code = http.StatusUnauthorized
			w.tel.notBound(info, err)
		}
		s.Reject(code, "waypoint: "+err.Error())
		return
	}
	switch d.proto {
	case nodeconfig.AppProtocol_APP_PROTOCOL_TCP, nodeconfig.AppProtocol_APP_PROTOCOL_TLS:
		// Known opaque: authorize and connect before answering, so a deny is an HBONE 401.
		up, code, why := w.openOpaque(ctx, c, d, info)
		if up == nil {
			s.Reject(code, why)
			return
		}
		conn, err := s.Accept()
		if err != nil {
			up.Close()
			return
		}
		w.relayOpaque(conn, up)
		return
	}
	conn, err := s.Accept()
	if err != nil {
		return
	}
	var in net.Conn = conn
	proto := d.proto
	if proto == nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED {
		proto, in = w.detect(conn)
	}
	switch proto {
	case nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1:
		w.tel.stream("http1")
		w.serveInner(ctx, in, info, false)
	case nodeconfig.AppProtocol_APP_PROTOCOL_HTTP2, nodeconfig.AppProtocol_APP_PROTOCOL_GRPC:
		w.tel.stream("http2")
		info.h2 = true
		w.serveInner(ctx, in, info, true)
	default:
		up, _, _ := w.openOpaque(ctx, c, d, info)
		if up == nil {
			in.Close() // denied or unreachable after the HBONE 200: the client sees the close
			return
		}
		w.relayOpaque(in, up)
	}
}

// openOpaque authorizes an opaque TCP stream at L4 against the chosen endpoint and opens the
// upstream stream. On failure it returns the HBONE status and reason to answer with.
func (w *Waypoint) openOpaque(ctx context.Context, c *compiled, d destination, info *streamInfo) (net.Conn, int, string) {
	w.tel.stream("tcp")
	ep, err := c.endpoint(d, nil)
	if err != nil {
		return nil, http.StatusServiceUnavailable, "waypoint: " + err.Error()
	}
	dec := c.view.Authz().Evaluate(ep.Workload, ep.Addr.Port(), authz.Source{Identity: info.peer, Addr: info.src.Addr()})
	if !dec.Allow || dec.Audit {
		w.tel.decision(info, d, ep, "", dec)
	}
	if !dec.Allow {
		return nil, http.StatusUnauthorized, "waypoint: denied by policy"
	}
	cctx, cancel := context.WithTimeout(ctx, w.cfg.ConnectTimeout)
	defer cancel()
	up, err := w.dialEndpoint(cctx, c.view, ep.Addr)
	if err != nil {
		return nil, http.StatusServiceUnavailable, "waypoint: endpoint unreachable"
	}
	return up, 0, ""
}

func (w *Waypoint) relayOpaque(in, up net.Conn) {
	up2, down, _ := relay.Relay(in, up)
	w.tel.bytes(up2, down)
}

// h2Preface is the HTTP/2 client connection preface.
const h2Preface = http2.ClientPreface

// sniffed is the verdict on a stream's first bytes.
type sniffed int

const (
	sniffMore sniffed = iota
	sniffHTTP1
	sniffHTTP2
	sniffOpaque
)

// classify looks at a stream's first bytes: the HTTP/2 preface, an HTTP/1.x request line
// (a method token and a space), or anything else.
func classify(p []byte) sniffed {
	if len(p) == 0 {
		return sniffMore
	}
	n := min(len(p), len(h2Preface))
	if string(p[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return sniffHTTP2
		}
		return sniffMore
	}
	for i, b := range p {
		switch {
		case b == ' ' && i > 0:
			return sniffHTTP1
		case b >= 'A' && b <= 'Z', b == '-' || b == '_':
			if i >= 16 {
				return sniffOpaque
			}
		default:
			return sniffOpaque
		}
	}
	return sniffMore
}

type readResult struct {
	buf []byte
	err error
}

// detect reads the stream's first bytes to tell HTTP/1.x, HTTP/2 and opaque TCP apart. A client
// that sends nothing for DetectTimeout is opaque (server-first protocols). The returned conn
// replays the bytes read.
func (w *Waypoint) detect(c net.Conn) (nodeconfig.AppProtocol, net.Conn) {
	res := make(chan readResult, 1)
	var late atomic.Bool
	go func() {
		buf := make([]byte, 0, 64)
		var err error
		for {
			var n int
			n, err = c.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err != nil || late.Load() || classify(buf) != sniffMore || len(buf) == cap(buf) {
				break
			}
		}
		res <- readResult{buf, err}
	}()
	t := time.NewTimer(w.cfg.DetectTimeout)
	defer t.Stop()
	select {
	case r := <-res:
		pc := &prefixConn{Conn: c, pre: r.buf, err: r.err}
		switch classify(r.buf) {
		case sniffHTTP1:
			return nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1, pc
		case sniffHTTP2:
			return nodeconfig.AppProtocol_APP_PROTOCOL_HTTP2, pc
		}
		return nodeconfig.AppProtocol_APP_PROTOCOL_TCP, pc
	case <-t.C:
		late.Store(true)
		return nodeconfig.AppProtocol_APP_PROTOCOL_TCP, &prefixConn{Conn: c, late: res}
	}
}

// prefixConn replays bytes read during detection, then reads from Conn. With late set, the
// detection read is still pending and its result comes first.
type prefixConn struct {
	net.Conn
	pre  []byte
	err  error
	late chan readResult
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if p.late != nil {
		r := <-p.late
		p.late = nil
		p.pre, p.err = r.buf, r.err
	}
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	if p.err != nil {
		return 0, p.err
	}
	return p.Conn.Read(b)
}

// CloseWrite half-closes the underlying stream (for relay).
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// innerConn is the server side of an inner stream as the HTTP servers see it: one end of an
// in-memory pipe (whose deadlines, unlike an HBONE stream's, can be set and cleared freely),
// with the client's address as RemoteAddr.
type innerConn struct {
	net.Conn
	info   *streamInfo
	remote net.Addr
	local  net.Addr
	done   chan struct{}
	once   sync.Once
}

func (c *innerConn) RemoteAddr() net.Addr { return c.remote }
func (c *innerConn) LocalAddr() net.Addr  { return c.local }
func (c *innerConn) finished()            { c.once.Do(func() { close(c.done) }) }

func connContext(ctx context.Context, c net.Conn) context.Context {
	if ic, ok := c.(*innerConn); ok {
		return context.WithValue(ctx, infoKey{}, ic.info)
	}
	return ctx
}

func connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		if ic, ok := c.(*innerConn); ok {
			ic.finished()
		}
	}
}

// copyBufs are the pump buffers of inner streams.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func pump(dst io.Writer, src io.Reader) {
	bp := copyBufs.Get().(*[]byte)
	_, _ = io.CopyBuffer(dst, struct{ io.Reader }{src}, *bp)
	copyBufs.Put(bp)
}

// serveInner serves HTTP on the inner stream until the client or the server closes it.
func (w *Waypoint) serveInner(ctx context.Context, in net.Conn, info *streamInfo, h2 bool) {
	a, b := net.Pipe()
	ic := &innerConn{
		Conn: b, info: info, done: make(chan struct{}),
		remote: net.TCPAddrFromAddrPort(info.src), local: net.TCPAddrFromAddrPort(info.authority),
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client -> server
		defer wg.Done()
		pump(a, in)
		a.Close()
	}()
	go func() { // server -> client
		defer wg.Done()
		pump(in, a)
		in.Close() // ends the client -> server pump too
	}()
	stop := context.AfterFunc(w.ctx, func() { a.Close() })
	if h2 {
		w.h2.ServeConn(ic, &http2.ServeConnOpts{
			Context:    context.WithValue(ctx, infoKey{}, info),
			BaseConfig: w.h1,
			Handler:    w.h1.Handler,
		})
	} else {
		ln := &oneConnListener{c: ic}
		_ = w.h1.Serve(ln)
		<-ic.done
	}
	// The server is done: closing its end lets the server -> client pump deliver what is left
	// (a 400, a GOAWAY) and then close the stream, which ends the other pump.
	ic.Close()
	wg.Wait()
	stop()
}

// oneConnListener hands out one connection, then blocks until it is finished.
type oneConnListener struct {
	c    *innerConn
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.c, nil
	}
	<-l.c.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.local }
