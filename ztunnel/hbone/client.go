//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 as the HBONE base; x/net marks it deprecated in favour of net/http, whose HTTP/2 we may move to once it serves CONNECT streams on pre-dialed connections the same way.

package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// ClientOptions tunes a [ClientConn]. The zero value is ready to use.
type ClientOptions struct {
	// HandshakeTimeout bounds the TLS handshake in addition to ctx.
	// Zero means 10s.
	HandshakeTimeout time.Duration

	// ReadIdleTimeout, if positive, sends a PING health check when no frame
	// was received for that long; a connection whose PING is not answered
	// within PingTimeout is closed. Zero disables health checks.
	ReadIdleTimeout time.Duration

	// PingTimeout bounds the wait for a PING answer. Zero means 15s.
	PingTimeout time.Duration
}

// ClientConn is an established HBONE connection to one peer: a verified
// mutual TLS 1.3 session carrying HTTP/2. Each [ClientConn.Connect] opens one
// stream. It is safe for concurrent use.
type ClientConn struct {
	cc     *http2.ClientConn
	tc     *tls.Conn
	peer   spiffeid.ID
	certs  []*x509.Certificate
	local  net.Addr
	remote net.Addr
	active atomic.Int64
}

// NewClientConn runs the TLS handshake over raw, an already dialed TCP
// connection to the peer's HBONE port (dialing is the caller's, because the
// socket must be created in the right network namespace with the right mark),
// verifies that the peer negotiated ALPN "h2" and starts HTTP/2.
//
// The handshake is bounded by ctx and opts.HandshakeTimeout. NewClientConn
// takes ownership of raw: it is closed on error and by [ClientConn.Close].
func NewClientConn(ctx context.Context, raw net.Conn, tlsConf *tls.Config, opts ClientOptions) (*ClientConn, error) {
	timeout := opts.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	btc := newBatchedTLS(raw, func(c net.Conn) *tls.Conn { return tls.Client(c, tlsConf) })
	tc := btc.Conn
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone handshake with %s: %w%s", raw.RemoteAddr(), err, handshakeHint(err))
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol != ALPN {
		tc.Close()
		return nil, fmt.Errorf("hbone handshake with %s: peer negotiated ALPN %q, want %q (is %s an HBONE port?)",
			raw.RemoteAddr(), st.NegotiatedProtocol, ALPN, raw.RemoteAddr())
	}
	if len(st.PeerCertificates) == 0 {
		tc.Close()
		return nil, fmt.Errorf("hbone handshake with %s: peer sent no certificate", raw.RemoteAddr())
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone handshake with %s: peer certificate: %w (is it a SPIFFE SVID?)", raw.RemoteAddr(), err)
	}
	t := &http2.Transport{
		DisableCompression: true,
		MaxReadFrameSize:   maxFrameSize,
		MaxHeaderListSize:  maxHeaderBytes,
		ReadIdleTimeout:    opts.ReadIdleTimeout,
		PingTimeout:        opts.PingTimeout,
	}
	cc, err := t.NewClientConn(btc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone start http2 with %s: %w", raw.RemoteAddr(), err)
	}
	return &ClientConn{
		cc:     cc,
		tc:     tc,
		peer:   id,
		certs:  st.PeerCertificates,
		local:  raw.LocalAddr(),
		remote: raw.RemoteAddr(),
	}, nil
}

func handshakeHint(err error) string {
	var cv *tls.CertificateVerificationError
	var alert tls.AlertError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return " (is the peer an HBONE server? is port 15008 blocked by a NetworkPolicy?)"
	case errors.As(err, &alert):
		return " (the peer rejected our certificate: is it from the peer's trust domain?)"
	case errors.As(err, &cv), errors.Is(err, x509.ErrUnsupportedAlgorithm):
		return " (the peer's certificate failed verification: wrong trust domain or identity?)"
	case errors.Is(err, io.EOF):
		return " (the peer closed the connection: does it trust our certificate?)"
	}
	return ""
}

func connectHint(err error) string {
	var alert tls.AlertError
	if errors.As(err, &alert) {
		// With TLS 1.3 the server checks the client certificate after the
		// client's handshake returned, so a rejection surfaces here.
		return " (the peer rejected our certificate: is it from the peer's trust domain?)"
	}
	return ""
}

// PeerID returns the verified SPIFFE ID of the server.
func (c *ClientConn) PeerID() spiffeid.ID { return c.peer }

// PeerCertificates returns the server's verified certificate chain.
func (c *ClientConn) PeerCertificates() []*x509.Certificate { return c.certs }

// LocalAddr returns the local address of the TCP connection.
func (c *ClientConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the TCP connection.
func (c *ClientConn) RemoteAddr() net.Addr { return c.remote }

// CanTakeNewRequest reports whether the connection can open a new stream: it
// is not closed and has neither sent nor received GOAWAY.
func (c *ClientConn) CanTakeNewRequest() bool { return c.cc.CanTakeNewRequest() }

// ActiveStreams returns the number of streams opened by Connect (including
// ones whose CONNECT is still in flight) that are not finished yet.
func (c *ClientConn) ActiveStreams() int { return int(c.active.Load()) }

// State returns the x/net view of the connection: closed, closing (GOAWAY),
// the peer's MaxConcurrentStreams, when it last became idle.
func (c *ClientConn) State() http2.ClientConnState { return c.cc.State() }

// Ping sends a PING and waits for its acknowledgement.
func (c *ClientConn) Ping(ctx context.Context) error {
	if err := c.cc.Ping(ctx); err != nil {
		return fmt.Errorf("hbone ping %s: %w", c.remote, err)
	}
	return nil
}

// Shutdown closes the connection gracefully: it sends GOAWAY and waits for
// active streams to finish or ctx to end, then closes.
func (c *ClientConn) Shutdown(ctx context.Context) error {
	return c.cc.Shutdown(ctx)
}

// Close closes the connection at once, resetting any active streams.
func (c *ClientConn) Close() error {
	return c.cc.Close()
}

// Connect opens a stream to authority ("ip:port" of the destination, as
// Istio's ztunnel sends it) with a classic HTTP/2 CONNECT. hdr carries the
// extra request headers (forwarded, baggage, traceparent); it is not
// modified.
//
// ctx bounds the wait for the response headers only; the returned stream
// lives until it is closed. Connect returns once the response headers
// arrived: a 200 yields the stream, any other status a *StatusError (the
// stream is then closed).
func (c *ClientConn) Connect(ctx context.Context, authority string, hdr http.Header) (*Conn, error) {
	return c.connect(ctx, authority, hdr, nil)
}

// ConnectFrom opens a stream like [ClientConn.Connect] whose outgoing data the HTTP/2 layer reads
// from src itself: no pipe, no copy and no goroutine between src and the DATA frames. This is the
// proxy's hot path: one goroutine handoff and one copy less per read than Connect followed by a
// copy loop, and one goroutine less per proxied connection.
//
// Nothing is read from src before the peer answered 200; if it does not, src is untouched (the
// caller may retry). src's EOF half-closes the stream (END_STREAM), a read error resets it. The
// returned Conn is for the other direction: Read, CloseRead, Close and deadlines work as with
// Connect, Write fails, CloseWrite stops reading src and half-closes. [Conn.Sent],
// [Conn.SendDone] and [Conn.SendErr] report the outgoing direction. When the stream ends, a
// read still blocked on src is released by setting src's read deadline in the past; src is
// never closed.
func (c *ClientConn) ConnectFrom(ctx context.Context, authority string, hdr http.Header, src net.Conn) (*Conn, error) {
	if src == nil {
		return nil, fmt.Errorf("hbone connect %s via %s: nil source connection", authority, c.remote)
	}
	return c.connect(ctx, authority, hdr, newSource(src))
}

func (c *ClientConn) connect(ctx context.Context, authority string, hdr http.Header, src *source) (*Conn, error) {
	h := make(http.Header, len(hdr)+1)
	for k, v := range hdr {
		h[k] = v
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // x/net sends no user-agent for an empty value
	}
	var body io.ReadCloser
	var pw *io.PipeWriter
	if src != nil {
		body = src
	} else {
		body, pw = io.Pipe()
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	req := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Scheme: "https", Host: authority},
		Host:          authority,
		Header:        h,
		Body:          body,
		ContentLength: -1,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
	}).WithContext(sctx)

	c.active.Add(1)
	stop := context.AfterFunc(ctx, cancel)
	res, err := c.cc.RoundTrip(req)
	fail := func(err error) (*Conn, error) {
		if res != nil {
			res.Body.Close()
		}
		if pw != nil {
			pw.CloseWithError(err)
		} else {
			src.shut(err)
		}
		cancel()
		c.active.Add(-1)
		return nil, fmt.Errorf("hbone connect %s via %s: %w%s", authority, c.remote, err, connectHint(err))
	}
	if !stop() {
		if cerr := context.Cause(ctx); cerr != nil {
			return fail(cerr)
		}
	}
	if err != nil {
		return fail(err)
	}
	if res.StatusCode != http.StatusOK {
		return fail(&StatusError{Code: res.StatusCode, Status: res.Status})
	}
	conn := &Conn{
		body:   res.Body,
		pw:     pw,
		src:    src,
		cancel: cancel,
		local:  c.local,
		remote: c.remote,
	}
	conn.release = func() { c.active.Add(-1) }
	if src != nil {
		// The outgoing direction is done when the source is: that is the write side closing.
		src.onEnd(func() {
			if conn.setFlag(flagWriteClosed)&flagReadEOF != 0 {
				conn.doRelease()
			}
		})
		src.open()
	}
	return conn, nil
}
