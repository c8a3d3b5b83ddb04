// Package inbound is the receiving side of one workload's ztunnel proxy: it accepts HBONE on
// the workload's :15008 and plaintext on its :15006, authorizes each connection with the L4 policy
// engine (identity only from the mTLS peer certificate), dials the application, and splices bytes
// both ways. Connections that a later policy change no longer allows are closed.
//
// A workload served by a waypoint (Workload.waypoint) admits only the waypoint's identity: the
// waypoint has already applied the L4 and L7 rules with the real client's identity, so the
// workload's Servers are not applied again to it, and anyone else (a client dialing the pod's
// :15008 or :15006 directly) is refused as a waypoint bypass (HBONE 401, one security event).
// Kubelet probes still pass. A waypoint bound only to a Service (not the pod) does not count:
// direct traffic to the pod stays governed by the pod's own policy, as in Istio.
//
// The listeners are handed in already bound (in the pod's network namespace, by the ztunnel), so
// this package does no socket setup of its own. Only the ztunnel component imports it.
package inbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/authz"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/relay"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// ReservedPorts are the ztunnel's own in-pod ports; they are never valid destinations.
var reservedPorts = [...]uint16{15001, 15006, 15008}

// Config of one workload's inbound proxy.
type Config struct {
	// UID names the workload in the state.
	UID string
	// Identity is the workload's SPIFFE ID; SVID serves its certificate (it must follow rotation).
	Identity spiffeid.ID
	SVID     x509svid.Source
	// Bundle holds the trust anchors that client certificates must chain to.
	Bundle x509bundle.Source
	// HBONE and Plaintext are the bound listeners (:15008 and :15006); either may be nil.
	HBONE, Plaintext net.Listener
	// Store has the node's current config.
	Store *state.Store
	// Dial connects to the application inside the pod.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OriginalDst returns the destination a plaintext client meant. Nil uses the accepted
	// connection's local address, which is right when the redirect is sk_lookup.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// ProbeSources are addresses whose connections to a workload's probe ports are kubelet probes
	// (the node's own addresses).
	ProbeSources []netip.Addr
	// DialTimeout bounds the connect to the application; zero means 5s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds a client's TLS handshake; zero means 10s.
	HandshakeTimeout time.Duration
	Telemetry        *telemetry.Telemetry
	Log              *slog.Logger
}

// Proxy is one workload's inbound proxy.
type Proxy struct {
	cfg   Config
	srv   *hbone.Server
	log   *slog.Logger
	unsub func()

	mu    sync.Mutex
	conns map[*conn]struct{}
	wg    sync.WaitGroup
}

// conn is one open, authorized connection, kept so a policy change can revoke it.
type conn struct {
	src         authz.Source
	srcAP       netip.AddrPort
	dst         netip.AddrPort
	client, app net.Conn
}

func (c *conn) close() {
	c.client.Close()
	c.app.Close()
}

// New builds the proxy; it serves once Run is called.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Dial == nil || cfg.Telemetry == nil || cfg.Log == nil {
		return nil, errors.New("new inbound proxy: store, dial, telemetry and log are required")
	}
	if cfg.HBONE != nil && (cfg.SVID == nil || cfg.Bundle == nil || cfg.Identity.IsZero()) {
		return nil, errors.New("new inbound proxy: hbone needs the workload's identity, svid source and trust bundle")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	p := &Proxy{
		cfg:   cfg,
		log:   cfg.Log.With("workload", cfg.UID, "component", "inbound"),
		conns: make(map[*conn]struct{}),
	}
	if cfg.HBONE != nil {
		td := cfg.Identity.TrustDomain()
		tlsConf := hbone.ServerTLSConfig(cfg.SVID, cfg.Bundle, tlsconfig.AuthorizeMemberOf(td))
		srv, err := hbone.NewServer(hbone.ServerConfig{
			TLSConfig:        tlsConf,
			Handler:          p.serveHBONE,
			HandshakeTimeout: cfg.HandshakeTimeout,
		})
		if err != nil {
			return nil, fmt.Errorf("new inbound proxy: %w", err)
		}
		p.srv = srv
	}
	return p, nil
}

// Run serves until ctx ends, then closes the listeners and every open connection.
func (p *Proxy) Run(ctx context.Context) error {
	p.unsub = p.cfg.Store.Subscribe(func(_, cur *state.View) { p.recheck(cur) })
	defer p.unsub()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	running := 0
	if p.srv != nil {
		running++
		go func() { errc <- p.srv.Serve(ctx, p.cfg.HBONE) }()
	}
	if p.cfg.Plaintext != nil {
		running++
		go func() { errc <- p.servePlaintext(ctx) }()
	}
	var first error
	for range running {
		err := <-errc
		if err != nil && first == nil && ctx.Err() == nil {
			first = err
			cancel()
		}
	}
	p.closeAll()
	p.wg.Wait()
	return first
}

func (p *Proxy) servePlaintext(ctx context.Context) error {
	ln := p.cfg.Plaintext
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept plaintext on %s: %w", ln.Addr(), err)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handlePlaintext(ctx, c)
		}()
	}
}

func (p *Proxy) handlePlaintext(ctx context.Context, c net.Conn) {
	start := time.Now()
	srcAP := sockets.AddrPort(c.RemoteAddr())
	var dst netip.AddrPort
	var err error
	if p.cfg.OriginalDst != nil {
		dst, err = p.cfg.OriginalDst(c)
	} else {
		dst = sockets.AddrPort(c.LocalAddr())
		if !dst.IsValid() {
			err = fmt.Errorf("local address %s is not ip:port", c.LocalAddr())
		}
	}
	if err != nil {
		p.log.Debug("plaintext connection without original destination", "src", srcAP, "error", err)
		c.Close()
		return
	}
	p.cfg.Telemetry.Opened(telemetry.Inbound, telemetry.Plaintext)
	rec := telemetry.Connection{Direction: telemetry.Inbound, Mode: telemetry.Plaintext, Src: srcAP, Dst: dst}
	src := authz.Source{Addr: srcAP.Addr()}
	up, view, status, reason := p.admit(ctx, src, srcAP, dst, &rec)
	if status != http.StatusOK {
		// TCP deny: the client's connection is closed (reset, so it is not mistaken for a reply).
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
		rec.Err = errors.New(reason)
		rec.Duration = time.Since(start)
		p.cfg.Telemetry.Closed(rec)
		return
	}
	cn := &conn{src: src, srcAP: srcAP, dst: dst, client: c, app: up}
	p.track(cn, view)
	rec.Upstream, rec.Downstream, rec.Err = relay.Relay(c, up)
	p.forget(cn)
	cn.close()
	rec.Duration = time.Since(start)
	p.cfg.Telemetry.Closed(rec)
}

func (p *Proxy) serveHBONE(ctx context.Context, s *hbone.Stream) {
	start := time.Now()
	rec := telemetry.Connection{
		Direction:   telemetry.Inbound,
		Mode:        telemetry.HBONE,
		Src:         s.RemoteAddr,
		Dst:         s.Authority,
		SrcIdentity: s.Peer.String(),
		DstIdentity: p.cfg.Identity.String(),
	}
	p.cfg.Telemetry.Opened(telemetry.Inbound, telemetry.HBONE)
	// Identity comes only from the verified peer certificate; the address only serves network
	// rules, and it is the outer connection's, which in-pod dialing makes the source pod's.
	src := authz.Source{Identity: s.Peer, Addr: s.RemoteAddr.Addr()}
	up, view, status, reason := p.admit(ctx, src, s.RemoteAddr, s.Authority, &rec)
	if status != http.StatusOK {
		s.Reject(status, reason)
		rec.Err = errors.New(reason)
		rec.Duration = time.Since(start)
		p.cfg.Telemetry.Closed(rec)
		return
	}
	down, err := s.Accept()
	if err != nil {
		up.Close()
		rec.Err = err
		rec.Duration = time.Since(start)
		p.cfg.Telemetry.Closed(rec)
		return
	}
	cn := &conn{src: src, srcAP: s.RemoteAddr, dst: s.Authority, client: down, app: up}
	p.track(cn, view)
	rec.Upstream, rec.Downstream, rec.Err = relayStream(down, up)
	p.forget(cn)
	cn.close()
	rec.Duration = time.Since(start)
	p.cfg.Telemetry.Closed(rec)
}

// relayStream relays an accepted HBONE stream and the application connection. The x/net HTTP/2
// server ends a response (END_STREAM) only when the handler returns, so when the application has
// finished sending, the stream is ended at once rather than after the client half-closes too:
// the client reads everything and then EOF, and anything it still sends is discarded (the server
// resets the request side with NO_ERROR, as HTTP/2 section 8.1 allows).
func relayStream(down *hbone.Conn, up net.Conn) (upstream, downstream int64, err error) {
	sc := &serverConn{Conn: down, wrote: make(chan struct{})}
	type result struct {
		up, down int64
		err      error
	}
	res := make(chan result, 1)
	go func() {
		u, d, err := relay.Relay(sc, up)
		res <- result{u, d, err}
	}()
	select {
	case r := <-res:
		return r.up, r.down, r.err
	case <-sc.wrote:
	}
	down.CloseRead()
	r := <-res
	if errors.Is(r.err, net.ErrClosed) {
		r.err = nil // our own CloseRead ended the client-to-application direction
	}
	return r.up, r.down, r.err
}

// serverConn reports when the relay half-closes the stream's sending side.
type serverConn struct {
	*hbone.Conn
	wrote chan struct{}
	once  sync.Once
}

func (c *serverConn) CloseWrite() error {
	err := c.Conn.CloseWrite()
	c.once.Do(func() { close(c.wrote) })
	return err
}

// admit checks the destination, authorizes and dials the application. It returns the upstream
// connection, the config it decided on and 200, or a status (400 malformed, 401 denied, 503
// unreachable) and a reason.
func (p *Proxy) admit(ctx context.Context, src authz.Source, srcAP, dst netip.AddrPort, rec *telemetry.Connection) (net.Conn, *state.View, int, string) {
	view := p.cfg.Store.Load()
	if view == nil {
		return nil, nil, http.StatusServiceUnavailable, "no config yet"
	}
	w := view.WorkloadByUID(p.cfg.UID)
	if w == nil {
		return nil, nil, http.StatusServiceUnavailable, "workload not in config"
	}
	rec.DstWorkload = w.GetNamespace() + "/" + w.GetName()
	if reason := checkDestination(w, dst); reason != "" {
		return nil, nil, http.StatusBadRequest, reason
	}
	src.Probe = p.isProbe(w, src.Addr, dst.Port())
	dec := decide(view, w, dst.Port(), src)
	if !dec.Allow {
		p.event(telemetry.Deny, src, srcAP, dst, w, dec)
		return nil, nil, http.StatusUnauthorized, "denied: " + dec.Reason
	}
	if dec.Audit {
		p.event(telemetry.Audit, src, srcAP, dst, w, dec)
	} else {
		p.cfg.Telemetry.Allowed(dec.Policy.Kind, policyName(dec.Policy))
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	up, err := p.cfg.Dial(dctx, "tcp", dst.String())
	cancel()
	if err != nil {
		return nil, nil, http.StatusServiceUnavailable, fmt.Sprintf("dial application %s: %v", dst, err)
	}
	return up, view, http.StatusOK, ""
}

// KindWaypoint is the policy kind of decisions the waypoint rule makes, in security events and
// metrics (the policy label is the waypoint's "namespace/name").
const KindWaypoint = "Waypoint"

// decide authorizes a connection from src to w's port: a workload with a waypoint admits only
// the waypoint's identity (and kubelet probes); any other goes through the L4 policy engine.
func decide(view *state.View, w *nodeconfig.Workload, port uint16, src authz.Source) authz.Decision {
	wp := w.GetWaypoint()
	if wp == nil || src.Probe {
		return view.Authz().Evaluate(w, port, src)
	}
	ref := authz.PolicyRef{Kind: KindWaypoint, Namespace: wp.GetNamespace(), Name: wp.GetName()}
	if !src.Identity.IsZero() && wp.GetIdentity() != "" && src.Identity.String() == wp.GetIdentity() {
		return authz.Decision{Allow: true, Policy: ref, Reason: "from the workload's waypoint"}
	}
	return authz.Decision{Policy: ref, Reason: fmt.Sprintf("waypoint bypass: %s/%s is served by waypoint %s/%s; only %s may connect",
		w.GetNamespace(), w.GetName(), wp.GetNamespace(), wp.GetName(), wp.GetIdentity())}
}

// track registers an authorized connection for revocation. If the config changed since the
// decision, the connection is checked again at once, so no change slips between the two.
func (p *Proxy) track(cn *conn, decidedOn *state.View) {
	p.mu.Lock()
	p.conns[cn] = struct{}{}
	p.mu.Unlock()
	if cur := p.cfg.Store.Load(); cur != decidedOn {
		p.recheck(cur)
	}
}

// checkDestination returns why dst cannot be a destination of w, or "".
func checkDestination(w *nodeconfig.Workload, dst netip.AddrPort) string {
	for _, r := range reservedPorts {
		if dst.Port() == r {
			return fmt.Sprintf("port %d is reserved for the ztunnel", r)
		}
	}
	if dst.Port() == 0 {
		return "port 0"
	}
	want := dst.Addr().Unmap()
	for _, a := range w.GetAddresses() {
		if ip, err := netip.ParseAddr(a); err == nil && ip.Unmap() == want {
			return ""
		}
	}
	return fmt.Sprintf("%s is not an address of workload %s/%s", want, w.GetNamespace(), w.GetName())
}

func (p *Proxy) isProbe(w *nodeconfig.Workload, src netip.Addr, port uint16) bool {
	if len(p.cfg.ProbeSources) == 0 {
		return false
	}
	isProbePort := false
	for _, pp := range w.GetProbePorts() {
		if pp == uint32(port) {
			isProbePort = true
			break
		}
	}
	if !isProbePort {
		return false
	}
	src = src.Unmap()
	for _, a := range p.cfg.ProbeSources {
		if a.Unmap() == src {
			return true
		}
	}
	return false
}

func (p *Proxy) event(t telemetry.EventType, src authz.Source, srcAP, dst netip.AddrPort, w *nodeconfig.Workload, dec authz.Decision) {
	ev := telemetry.Event{
		Type:        t,
		Src:         srcAP,
		DstWorkload: w.GetNamespace() + "/" + w.GetName(),
		Dst:         dst,
		PolicyKind:  dec.Policy.Kind,
		Policy:      policyName(dec.Policy),
		Reason:      dec.Reason,
	}
	if !src.Identity.IsZero() {
		ev.SrcIdentity = src.Identity.String()
	}
	if dec.Server != nil {
		ev.Server = dec.Server.Namespace + "/" + dec.Server.Name
	}
	p.cfg.Telemetry.SecurityEvent(ev)
}

func policyName(r authz.PolicyRef) string {
	if r.Name == "" {
		return r.Default
	}
	if r.Namespace == "" {
		return r.Name
	}
	return r.Namespace + "/" + r.Name
}

func (p *Proxy) forget(cn *conn) {
	p.mu.Lock()
	delete(p.conns, cn)
	p.mu.Unlock()
}

// recheck closes open connections that the new config no longer allows.
func (p *Proxy) recheck(view *state.View) {
	if view == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	w := view.WorkloadByUID(p.cfg.UID)
	for cn := range p.conns {
		var dec authz.Decision
		if w == nil {
			dec = authz.Decision{Reason: "workload left the config", Policy: authz.PolicyRef{Kind: "Default", Default: "deny"}}
		} else {
			dec = decide(view, w, cn.dst.Port(), cn.src)
			if dec.Allow {
				continue
			}
			dec.Reason = "policy change: " + dec.Reason
		}
		if w != nil {
			p.event(telemetry.Revoke, cn.src, cn.srcAP, cn.dst, w, dec)
		}
		cn.close()
		delete(p.conns, cn)
	}
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cn := range p.conns {
		cn.close()
		delete(p.conns, cn)
	}
}

// Open returns the number of open, authorized connections.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}
