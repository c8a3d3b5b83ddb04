// Package outbound is the sending side of one workload's ztunnel proxy: it accepts the
// connections the redirect captured on the workload's :15001, finds where each was going (a
// workload, a service VIP, or somewhere outside the mesh), and carries it there: inside HBONE to
// the destination pod's :15008 (or its waypoint) on a pooled mTLS connection that presents this
// workload's certificate, or as plain TCP for destinations outside the mesh.
//
// Where the original destination comes from is a seam (Config.OriginalDst): the eBPF redirect in
// the real data path, an explicit table in tests. Only the ztunnel component imports this package.
package outbound

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

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/pool"
	"github.com/warren-mesh/warren/ztunnel/relay"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// Config of one workload's outbound proxy.
type Config struct {
	// UID names the source workload in the state; Identity is its SPIFFE ID.
	UID      string
	Identity spiffeid.ID
	// Listener is the bound :15001 listener.
	Listener net.Listener
	// OriginalDst returns where an accepted connection was going.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	Store       *state.Store
	// Pool carries HBONE streams; its dials present the source workload's certificate.
	Pool *pool.Pool
	// Dial connects to destinations outside the mesh, from the workload.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// HBONEPort is where meshed workloads accept HBONE; zero means 15008.
	HBONEPort uint16
	// ConnectTimeout bounds reaching the destination (HBONE or plain); zero means 10s.
	ConnectTimeout time.Duration
	Telemetry      *telemetry.Telemetry
	Log            *slog.Logger
}

// Proxy is one workload's outbound proxy.
type Proxy struct {
	cfg Config
	log *slog.Logger
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// New checks the config; the proxy serves once Run is called.
func New(cfg Config) (*Proxy, error) {
	if cfg.Listener == nil || cfg.OriginalDst == nil || cfg.Store == nil || cfg.Pool == nil ||
		cfg.Dial == nil || cfg.Telemetry == nil || cfg.Log == nil || cfg.Identity.IsZero() {
		return nil, errors.New("new outbound proxy: listener, original-destination lookup, store, pool, dial, identity, telemetry and log are required")
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = nodeconfig.DefaultHBONEPort
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return &Proxy{
		cfg:   cfg,
		log:   cfg.Log.With("workload", cfg.UID, "component", "outbound"),
		conns: make(map[net.Conn]struct{}),
	}, nil
}

// Run accepts until ctx ends, then closes the listener and every open connection.
func (p *Proxy) Run(ctx context.Context) error {
	ln := p.cfg.Listener
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var err error
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			var ne net.Error
			if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			break
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(ctx, c)
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("accept outbound on %s: %w", ln.Addr(), err)
}

// Route is where a connection goes.
type Route struct {
	// Mode is HBONE or Passthrough.
	Mode telemetry.Mode
	// Dst is the original destination.
	Dst netip.AddrPort
	// Next is the address dialed: a pod's or waypoint's HBONE port, or the plain destination.
	Next netip.AddrPort
	// Authority is the CONNECT authority: podIP:port, or the original VIP:port to a waypoint.
	Authority netip.AddrPort
	// Identity is the SPIFFE ID the next hop must present (HBONE only).
	Identity spiffeid.ID
	// Workload is "namespace/name" of the destination workload, service or waypoint.
	Workload string
	// Host is the destination service's hostname, when reached through one.
	Host string
}

// Resolve decides how a connection from the source workload to dst is carried.
func Resolve(view *state.View, src *nodeconfig.Workload, dst netip.AddrPort, hbonePort uint16) (Route, error) {
	r := Route{Mode: telemetry.Passthrough, Dst: dst, Next: dst}
	if svc := view.ServiceByAddr(dst.Addr()); svc != nil {
		r.Workload = svc.GetNamespace() + "/" + svc.GetName()
		r.Host = svc.GetHostname()
		if wp := svc.GetWaypoint(); wp != nil && !isWaypoint(view, src, wp) {
			return toWaypoint(view, r, wp, hbonePort)
		}
		_, ep, err := view.PickEndpoint(dst)
		if err != nil {
			return r, err
		}
		r.Workload = ep.Workload.GetNamespace() + "/" + ep.Workload.GetName()
		r.Dst = ep.Addr
		r.Next = ep.Addr
		return toWorkload(view, r, ep.Workload, ep.Addr, hbonePort)
	}
	if w := view.WorkloadByAddr(dst.Addr()); w != nil {
		r.Workload = w.GetNamespace() + "/" + w.GetName()
		if wp := w.GetWaypoint(); wp != nil && !isWaypoint(view, src, wp) {
			return toWaypoint(view, r, wp, hbonePort)
		}
		return toWorkload(view, r, w, dst, hbonePort)
	}
	return r, nil
}

func toWorkload(view *state.View, r Route, w *nodeconfig.Workload, dst netip.AddrPort, hbonePort uint16) (Route, error) {
	if w.GetTunnelProtocol() != nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE {
		return r, nil
	}
	id, err := view.Identity(w)
	if err != nil {
		return r, err
	}
	r.Mode = telemetry.HBONE
	r.Identity = id
	r.Authority = dst
	r.Next = netip.AddrPortFrom(dst.Addr(), hbonePort)
	return r, nil
}

// toWaypoint sends the connection to the destination's waypoint. A waypoint address that is a
// Service VIP of the view (the waypoint Gateway's Service) is resolved to one of its ready
// pods here, as for any Service: nothing else in the path would translate a VIP.
func toWaypoint(view *state.View, r Route, wp *nodeconfig.GatewayAddress, hbonePort uint16) (Route, error) {
	id, err := spiffeid.FromString(wp.GetIdentity())
	if err != nil {
		return r, fmt.Errorf("waypoint %s/%s: identity %q: %w", wp.GetNamespace(), wp.GetName(), wp.GetIdentity(), err)
	}
	addr, err := netip.ParseAddr(wp.GetAddress())
	if err != nil {
		return r, fmt.Errorf("waypoint %s/%s: address %q: %w", wp.GetNamespace(), wp.GetName(), wp.GetAddress(), err)
	}
	port := uint16(wp.GetHbonePort())
	if port == 0 {
		port = hbonePort
	}
	next := netip.AddrPortFrom(addr, port)
	if view.ServiceByAddr(addr) != nil {
		_, ep, err := view.PickEndpoint(next)
		if err != nil {
			return r, fmt.Errorf("waypoint %s/%s: %w (is the waypoint Deployment running?)", wp.GetNamespace(), wp.GetName(), err)
		}
		next = ep.Addr
	}
	r.Mode = telemetry.HBONE
	r.Identity = id
	r.Authority = r.Dst
	r.Next = next
	r.Workload = wp.GetNamespace() + "/" + wp.GetName()
	return r, nil
}

// isWaypoint reports whether the source workload is that waypoint (a waypoint's own traffic to
// the service it serves must not loop back to itself).
func isWaypoint(view *state.View, src *nodeconfig.Workload, wp *nodeconfig.GatewayAddress) bool {
	if src == nil {
		return false
	}
	id, err := view.Identity(src)
	return err == nil && id.String() == wp.GetIdentity()
}

func (p *Proxy) handle(ctx context.Context, c net.Conn) {
	start := time.Now()
	srcAP := sockets.AddrPort(c.RemoteAddr())
	rec := telemetry.Connection{Direction: telemetry.Outbound, Src: srcAP, SrcIdentity: p.cfg.Identity.String()}
	fail := func(mode telemetry.Mode, err error) {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // reset: the client must not take the close for an answer
		}
		c.Close()
		rec.Mode = mode
		rec.Err = err
		rec.Duration = time.Since(start)
		p.cfg.Telemetry.Closed(rec)
	}
	dst, err := p.cfg.OriginalDst(c)
	if err != nil {
		fail(telemetry.Passthrough, fmt.Errorf("original destination of %s: %w", srcAP, err))
		return
	}
	rec.Dst = dst
	view := p.cfg.Store.Load()
	if view == nil {
		fail(telemetry.Passthrough, errors.New("no config yet"))
		return
	}
	route, err := Resolve(view, view.WorkloadByUID(p.cfg.UID), dst, p.cfg.HBONEPort)
	rec.DstWorkload = route.Workload
	if err != nil {
		fail(route.Mode, err)
		return
	}
	rec.Mode = route.Mode
	if route.Next != route.Dst {
		rec.Via = route.Next
	}
	p.cfg.Telemetry.Opened(telemetry.Outbound, route.Mode)

	cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	var up net.Conn
	var hc *hbone.Conn
	if route.Mode == telemetry.HBONE {
		rec.DstIdentity = route.Identity.String()
		// The stream reads the workload's bytes itself, from the 200 on: no copy loop and no
		// goroutine of ours in that direction.
		hc, err = p.cfg.Pool.ConnectFrom(cctx, pool.Key{Src: p.cfg.Identity, Dst: route.Identity, Addr: route.Next},
			route.Authority.String(), p.headers(view, srcAP, route), c)
	} else {
		up, err = p.cfg.Dial(cctx, "tcp", route.Next.String())
	}
	cancel()
	if err != nil {
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			err = fmt.Errorf("denied by %s (%s): %w", route.Workload, route.Next, err)
		}
		fail(route.Mode, err)
		return
	}
	if hc != nil {
		rec.Upstream, rec.Downstream, rec.Err = relay.RelayPulled(c, hc)
		hc.Close()
	} else {
		rec.Upstream, rec.Downstream, rec.Err = relay.Relay(c, up)
		up.Close()
	}
	c.Close()
	rec.Duration = time.Since(start)
	p.cfg.Telemetry.Closed(rec)
}

// headers are the CONNECT request headers Istio's ztunnel sends.
func (p *Proxy) headers(view *state.View, src netip.AddrPort, r Route) http.Header {
	h := make(http.Header, 3)
	h.Set("Forwarded", hbone.Forwarded(src, r.Host))
	h.Set("Traceparent", hbone.NewTraceparent())
	if w := view.WorkloadByUID(p.cfg.UID); w != nil {
		h.Set("Baggage", "k8s.namespace.name="+w.GetNamespace()+",k8s.pod.name="+w.GetName())
	}
	return h
}
