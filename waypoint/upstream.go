//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 for h2c to the app over HBONE streams; net/http's own HTTP/2 cannot take pre-dialed unencrypted connections the same way.

package waypoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/pool"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// errDenied: a retry went to an endpoint the client may not reach.
var errDenied = errors.New("denied by policy")

// defaultRetryCodes are retried when a RouteRetry lists none.
var defaultRetryCodes = []uint32{500, 502, 503, 504}

// upstream forwards requests to endpoints: HTTP/1.1 or HTTP/2 (h2c) as the client spoke, over
// HBONE streams from the waypoint's pool. Both transports keep app connections (each an HBONE
// stream) open for reuse, keyed by endpoint address.
type upstream struct {
	w  *Waypoint
	h1 *http.Transport
	h2 *http2.Transport
}

func newUpstream(w *Waypoint) *upstream {
	u := &upstream{w: w}
	u.h1 = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return w.dialApp(ctx, addr)
		},
		MaxIdleConnsPerHost:    100,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: int64(w.cfg.MaxHeaderBytes),
	}
	u.h2 = &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) {
			return w.dialApp(ctx, addr)
		},
		DisableCompression: true,
		MaxHeaderListSize:  uint32(w.cfg.MaxHeaderBytes),
		ReadIdleTimeout:    30 * time.Second,
		IdleConnTimeout:    90 * time.Second,
	}
	return u
}

func (u *upstream) close() {
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
}

// RoundTrip sends the request to its chosen endpoint, retrying per the route rule's retry
// policy on the next endpoints of the same backend.
func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	f, _ := req.Context().Value(forwardKey{}).(*forward)
	if f == nil {
		return nil, errors.New("waypoint upstream: request without a routing decision")
	}
	var rt http.RoundTripper = u.h1
	if f.info.h2 {
		rt = u.h2
	}
	attempts := 1 + int(f.retry.GetAttempts())
	codes := f.retry.GetCodes()
	if len(codes) == 0 {
		codes = defaultRetryCodes
	}
	backoff := time.Duration(f.retry.GetBackoffMs()) * time.Millisecond
	ep := f.ep
	for i := 0; ; i++ {
		if i > 0 {
			if err := sleep(req.Context(), backoff<<(i-1)); err != nil {
				return nil, err
			}
			next, err := f.c.endpoint(f.dst, f.backend)
			if err != nil {
				return nil, err
			}
			if next.Addr != ep.Addr && !u.w.authorize(f, next) {
				return nil, errDenied
			}
			ep = next
			req = req.Clone(req.Context())
			req.URL.Host = ep.Addr.String()
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, fmt.Errorf("waypoint retry: %w", err)
				}
				req.Body = body
			}
		}
		areq, cancel := req, context.CancelFunc(nil)
		if f.backendTimeout > 0 {
			var ctx context.Context
			ctx, cancel = context.WithTimeout(req.Context(), f.backendTimeout)
			areq = req.WithContext(ctx)
		}
		res, err := rt.RoundTrip(areq)
		last := i+1 >= attempts
		if !last && retryable(req, res, err, codes) {
			if res != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 4<<10))
				res.Body.Close()
			}
			if cancel != nil {
				cancel()
			}
			continue
		}
		if cancel != nil {
			if err != nil {
				cancel()
			} else {
				res.Body = &cancelBody{ReadCloser: res.Body, cancel: cancel}
			}
		}
		return res, err
	}
}

// retryable reports whether an attempt may be retried: a status code of the list, or a failure
// to reach the endpoint; the body must be replayable.
func retryable(req *http.Request, res *http.Response, err error, codes []uint32) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	if err != nil {
		return req.Context().Err() == nil
	}
	return slices.Contains(codes, uint32(res.StatusCode))
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cancelBody ends an attempt's context when the response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// dialApp opens an app connection to an endpoint, addr being "podIP:targetPort".
func (w *Waypoint) dialApp(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial endpoint %q: %w", addr, err)
	}
	c := w.current()
	if c == nil {
		return nil, errors.New("dial endpoint: no config")
	}
	return w.dialEndpoint(ctx, c.view, ap)
}

// dialEndpoint opens a stream to an endpoint: HBONE to its ztunnel (podIP:15008, authority
// podIP:port) from the pool, presenting the waypoint's certificate; plain TCP for a workload
// outside the mesh.
func (w *Waypoint) dialEndpoint(ctx context.Context, view *state.View, ep netip.AddrPort) (net.Conn, error) {
	wl := view.WorkloadByAddr(ep.Addr())
	if wl == nil || wl.GetTunnelProtocol() != nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE {
		c, err := w.cfg.Dial(ctx, "tcp", ep.String())
		if err != nil {
			return nil, fmt.Errorf("dial endpoint %s: %w", ep, err)
		}
		return c, nil
	}
	id, err := view.Identity(wl)
	if err != nil {
		return nil, err
	}
	key := pool.Key{Src: w.cfg.Identity, Dst: id, Addr: netip.AddrPortFrom(ep.Addr(), w.cfg.EndpointHBONEPort)}
	hdr := http.Header{
		hbone.HeaderTraceparent: []string{hbone.NewTraceparent()},
	}
	c, err := w.pool.Connect(ctx, key, ep.String(), hdr)
	if err != nil {
		return nil, fmt.Errorf("dial endpoint %s/%s at %s: %w", wl.GetNamespace(), wl.GetName(), ep, err)
	}
	return c, nil
}

// dialHBONE dials a pooled HBONE connection presenting the waypoint's certificate and requiring
// the endpoint's identity.
func (w *Waypoint) dialHBONE(ctx context.Context, k pool.Key) (*hbone.ClientConn, error) {
	raw, err := w.cfg.Dial(ctx, "tcp", k.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial hbone %s: %w (is the endpoint's ztunnel running?)", k.Addr, err)
	}
	tlsConf := hbone.ClientTLSConfig(w.cfg.SVID, w.cfg.Bundle, tlsconfig.AuthorizeID(k.Dst))
	cc, err := hbone.NewClientConn(ctx, raw, tlsConf, hbone.ClientOptions{})
	if err != nil {
		return nil, fmt.Errorf("dial hbone %s as %s to %s: %w", k.Addr, k.Src, k.Dst, err)
	}
	return cc, nil
}
