//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 as the HBONE base; x/net marks it deprecated in favour of net/http, whose HTTP/2 we may move to once it serves CONNECT streams on pre-dialed connections the same way.

package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/warren-mesh/warren/ztunnel/sockets"
)

// ServerConfig configures a [Server].
type ServerConfig struct {
	// TLSConfig is the server TLS configuration, normally from
	// [ServerTLSConfig]. Required; it must verify client certificates.
	TLSConfig *tls.Config

	// Handler is called for every valid CONNECT, in its own goroutine, with a
	// context that ends when the stream or the connection ends. It must answer
	// with [Stream.Accept] or [Stream.Reject]; if it returns without either,
	// the peer gets 503. After Accept, the stream ends when Handler returns.
	// Required.
	Handler func(ctx context.Context, s *Stream)

	// HandshakeTimeout drops a peer that has not completed the TLS handshake
	// in time. Zero means 10s.
	HandshakeTimeout time.Duration

	// MaxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS advertised to each
	// client. Zero means 1000 (clients pool at 100 per connection).
	MaxStreams uint32

	// ShutdownTimeout bounds how long Serve waits, after its context ended,
	// for streams to finish before closing connections. Zero means 10s.
	ShutdownTimeout time.Duration
}

// Server accepts HBONE connections and hands each valid CONNECT stream to
// [ServerConfig.Handler].
type Server struct {
	cfg ServerConfig
	h1  *http.Server
	h2  *http2.Server

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	draining bool
	wg       sync.WaitGroup
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("new hbone server: TLSConfig is required (use ServerTLSConfig)")
	}
	if cfg.TLSConfig.ClientAuth < tls.RequireAnyClientCert {
		return nil, errors.New("new hbone server: TLSConfig does not require client certificates (use ServerTLSConfig)")
	}
	if cfg.Handler == nil {
		return nil, errors.New("new hbone server: Handler is required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = defaultMaxStream
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, conns: make(map[net.Conn]struct{})}
	s.h1 = &http.Server{
		Handler:        http.HandlerFunc(s.serveHTTP),
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       log.New(io.Discard, "", 0), // libraries do not log
	}
	s.h2 = &http2.Server{
		MaxConcurrentStreams:         cfg.MaxStreams,
		MaxReadFrameSize:             serverMaxFrame,
		MaxUploadBufferPerConnection: connWindow,
		MaxUploadBufferPerStream:     streamWindow,
	}
	// ConfigureServer lets h1.Shutdown send GOAWAY on every connection.
	if err := http2.ConfigureServer(s.h1, s.h2); err != nil {
		return nil, fmt.Errorf("new hbone server: %w", err)
	}
	return s, nil
}

// Serve accepts connections from ln until ctx ends or ln fails, serving each
// in its own goroutine. When ctx ends it closes ln, sends GOAWAY on every
// connection, waits up to ShutdownTimeout for streams to finish and then
// closes what is left. It returns nil after a shutdown caused by ctx, else
// the accept error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	base := context.WithoutCancel(ctx)
	var err error
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			break
		}
		if !s.track(c) {
			c.Close()
			continue
		}
		go func() {
			defer s.untrack(c)
			_ = s.serveConn(base, c) // the error concerns one peer only
		}()
	}
	if ctx.Err() == nil {
		return fmt.Errorf("hbone serve %s: %w", ln.Addr(), err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	s.Shutdown(sctx)
	return nil
}

// ServeConn serves one accepted connection (for callers that accept
// themselves) and returns when it is closed. It returns the handshake error
// if the TLS handshake fails. When ctx ends the connection is closed at once;
// use [Server.Shutdown] for a graceful drain.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	if !s.track(c) {
		c.Close()
		return fmt.Errorf("hbone serve %s: server is shutting down", c.RemoteAddr())
	}
	defer s.untrack(c)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	return s.serveConn(context.WithoutCancel(ctx), c)
}

// Shutdown stops new connections, sends GOAWAY on every connection and
// waits for them to finish, until ctx ends; then it closes the rest and waits
// for their goroutines. It returns ctx's error if connections had to be
// closed forcibly.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	_ = s.h1.Shutdown(ctx) // runs the http2 GOAWAY hook; h1 itself has no listeners
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// ActiveConns returns the number of connections being served, including
// ones still in the TLS handshake.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

type connInfoKey struct{}

// connInfo is computed once per connection and shared by its streams.
type connInfo struct {
	peer   spiffeid.ID
	certs  []*x509.Certificate
	local  netip.AddrPort
	remote netip.AddrPort
	laddr  net.Addr
	raddr  net.Addr
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	btc := newBatchedTLS(c, func(c net.Conn) *tls.Conn { return tls.Server(c, s.cfg.TLSConfig) })
	tc := btc.Conn
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return fmt.Errorf("hbone handshake from %s: %w", c.RemoteAddr(), err)
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol != ALPN {
		return fmt.Errorf("hbone handshake from %s: client negotiated ALPN %q, want %q", c.RemoteAddr(), st.NegotiatedProtocol, ALPN)
	}
	if len(st.PeerCertificates) == 0 {
		return fmt.Errorf("hbone handshake from %s: client sent no certificate", c.RemoteAddr())
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("hbone handshake from %s: client certificate: %w", c.RemoteAddr(), err)
	}
	info := &connInfo{
		peer:   id,
		certs:  st.PeerCertificates,
		local:  sockets.AddrPort(c.LocalAddr()),
		remote: sockets.AddrPort(c.RemoteAddr()),
		laddr:  c.LocalAddr(),
		raddr:  c.RemoteAddr(),
	}
	s.h2.ServeConn(btc, &http2.ServeConnOpts{
		Context:    context.WithValue(ctx, connInfoKey{}, info),
		BaseConfig: s.h1,
		Handler:    s.h1.Handler,
	})
	return nil
}

// Stream is one CONNECT request received by a [Server], handed to
// [ServerConfig.Handler]. The handler answers it exactly once, with Accept or
// Reject.
type Stream struct {
	// Authority is the requested destination, the CONNECT ":authority".
	Authority netip.AddrPort
	// Peer is the client's SPIFFE ID, from its verified certificate.
	Peer spiffeid.ID
	// PeerCertificates is the client's verified certificate chain.
	PeerCertificates []*x509.Certificate
	// RemoteAddr and LocalAddr are the outer TCP connection's addresses.
	RemoteAddr, LocalAddr netip.AddrPort
	// Header holds the request headers (forwarded, baggage, traceparent...).
	Header http.Header

	w         http.ResponseWriter
	r         *http.Request
	info      *connInfo
	responded bool
}

// Reject answers the CONNECT with code and ends the stream. Istio semantics:
// 400 malformed request, 401 denied by policy, 503 upstream unreachable.
// reason is sent to the peer as the response body: keep secrets out of it.
func (s *Stream) Reject(code int, reason string) {
	if s.responded {
		return
	}
	s.responded = true
	h := s.w.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	s.w.WriteHeader(code)
	if reason != "" {
		_, _ = s.w.Write([]byte(reason))
	}
}

// Accept answers the CONNECT with 200 and returns the stream as a Conn: Read
// returns what the client sends, Write sends to the client. The stream ends
// when the handler returns (see [Conn.CloseWrite]).
func (s *Stream) Accept() (*Conn, error) {
	if s.responded {
		return nil, errors.New("hbone accept: stream already answered")
	}
	s.responded = true
	s.w.WriteHeader(http.StatusOK)
	fl, ok := s.w.(interface{ FlushError() error })
	if !ok {
		return nil, errors.New("hbone accept: response writer cannot flush")
	}
	if err := fl.FlushError(); err != nil {
		return nil, fmt.Errorf("hbone accept %s from %s: %w", s.Authority, s.RemoteAddr, err)
	}
	return &Conn{
		body:   s.r.Body,
		rw:     s.w,
		flush:  fl.FlushError,
		local:  s.info.laddr,
		remote: s.info.raddr,
	}, nil
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	if r.Method != http.MethodConnect {
		http.Error(w, "hbone: method must be CONNECT", http.StatusBadRequest)
		return
	}
	ap, err := netip.ParseAddrPort(r.Host)
	if err != nil {
		http.Error(w, "hbone: authority must be ip:port", http.StatusBadRequest)
		return
	}
	st := &Stream{
		Authority:        ap,
		Peer:             info.peer,
		PeerCertificates: info.certs,
		RemoteAddr:       info.remote,
		LocalAddr:        info.local,
		Header:           r.Header,
		w:                w,
		r:                r,
		info:             info,
	}
	s.cfg.Handler(r.Context(), st)
	if !st.responded {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}
