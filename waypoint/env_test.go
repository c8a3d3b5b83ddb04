//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 (h2c on inner HBONE streams); net/http's own HTTP/2 cannot serve or dial pre-established unencrypted connections the same way.

package waypoint_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/waypoint"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/relay"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

const td = "cluster.local"

func sa(name string) string { return "spiffe://" + td + "/ns/default/sa/" + name }

var (
	idA  = sa("service-a")
	idC  = sa("service-c")
	idWP = sa("waypoint")
)

// Host numbers in the test's 127.x.y.0/24.
const (
	hostWaypoint = 1
	hostB0       = 10
	hostWeb0     = 11
	hostWeb1     = 12
	hostWebV2    = 13
	hostGRPC     = 14
	hostTCP      = 15
	hostUnbound  = 16
	hostDown     = 17
	vipWeb       = 100
	vipWebV2     = 101
	vipGreeter   = 102
	vipDB        = 103
	vipEmpty     = 104
	vipDown      = 105
)

// testSnapshot is the mesh the waypoint serves:
//   - pod b-0 (service-b) :8080 under Server default/b, with the article's routes: b-get-foo
//     (GET /foo/bar, authorized for service-a only) and b-foo (PathPrefix /foo, no
//     authorization);
//   - Service web (web-0, web-1; port 80 -> named port http 8080) with an HTTPRoute exercising
//     weighted split, redirect, filters, timeout and retry; Service web-v2 (web-v2-0);
//   - Service greeter :9000 (grpc-0, Server default/greeter) with a GRPCRoute for
//     grpc.health.v1.Health/Check authorized for service-a only;
//   - Service db :5432 (tcp-0, app protocol TCP, Server default/db allowing service-a) and an
//     undeclared-protocol echo port 7000 on tcp-0;
//   - Service empty (no endpoints), Service down (its app is not listening), pod unbound-0 (not
//     bound to the waypoint).
func testSnapshot(n [3]byte) *nodeconfig.Snapshot {
	ip := func(h byte) string { return ztunneltest.IP(n, h).String() }
	gw := &nodeconfig.GatewayAddress{Name: "waypoint", Namespace: "default", Address: ip(hostWaypoint), Identity: idWP}
	pod := func(name, sa string, host byte, ports []*nodeconfig.WorkloadPort, servers ...string) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + name, Name: name, Namespace: "default", ServiceAccount: sa, Addresses: []string{ip(host)},
			Node: "node-1", Ports: ports, TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Waypoint: gw, Servers: servers, Ready: true,
		}
	}
	httpPort := []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}}
	unbound := pod("unbound-0", "x", hostUnbound, httpPort)
	unbound.Waypoint = nil
	svc := func(name string, vip byte, port, target uint32, app nodeconfig.AppProtocol, eps ...string) *nodeconfig.Service {
		s := &nodeconfig.Service{
			Name: name, Namespace: "default", Hostname: name + ".default.svc.cluster.local", Addresses: []string{ip(vip)},
			Ports:    []*nodeconfig.ServicePort{{ServicePort: port, TargetPort: target, AppProtocol: app}},
			Waypoint: gw,
		}
		for _, e := range eps {
			s.Endpoints = append(s.Endpoints, &nodeconfig.Endpoint{WorkloadUid: "uid-" + e})
		}
		return s
	}
	web := svc("web", vipWeb, 80, 0, 0, "web-0", "web-1")
	web.Ports[0].TargetPortName = "http"
	meshTLS := func(ids ...string) *nodeconfig.MeshTLS { return &nodeconfig.MeshTLS{Identities: ids} }
	prefix := func(p string) *nodeconfig.RouteMatch {
		return &nodeconfig.RouteMatch{Path: &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX, Value: p}}
	}
	backend := func(svc string, port, weight uint32) *nodeconfig.RouteBackend {
		return &nodeconfig.RouteBackend{Service: "default/" + svc, Port: port, Weight: weight}
	}
	webBackend := []*nodeconfig.RouteBackend{backend("web", 80, 1)}
	serverParent := func(s string) []*nodeconfig.RouteParent {
		return []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Server{Server: "default/" + s}}}
	}
	serviceParent := func(s string, port uint32) []*nodeconfig.RouteParent {
		return []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: "default/" + s}, Port: port}}
	}
	return &nodeconfig.Snapshot{
		Version:     "1",
		TrustDomain: td,
		Workloads: []*nodeconfig.Workload{
			pod("b-0", "service-b", hostB0, httpPort, "default/b"),
			pod("web-0", "web", hostWeb0, httpPort),
			pod("web-1", "web", hostWeb1, httpPort),
			pod("web-v2-0", "web", hostWebV2, httpPort),
			pod("grpc-0", "greeter", hostGRPC, []*nodeconfig.WorkloadPort{{Name: "grpc", Port: 9000}}, "default/greeter"),
			pod("tcp-0", "db", hostTCP, []*nodeconfig.WorkloadPort{
				{Name: "db", Port: 5432, AppProtocol: nodeconfig.AppProtocol_APP_PROTOCOL_TCP},
				{Name: "echo", Port: 7000},
			}, "default/db"),
			unbound,
			pod("down-0", "web", hostDown, httpPort),
		},
		Services: []*nodeconfig.Service{
			web,
			svc("web-v2", vipWebV2, 80, 8080, 0, "web-v2-0"),
			svc("greeter", vipGreeter, 9000, 9000, 0, "grpc-0"),
			svc("db", vipDB, 5432, 5432, nodeconfig.AppProtocol_APP_PROTOCOL_TCP, "tcp-0"),
			svc("empty", vipEmpty, 80, 8080, 0),
			svc("down", vipDown, 80, 8080, 0, "down-0"),
		},
		Servers: []*nodeconfig.Server{
			{Name: "b", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080}, Authorizations: []*nodeconfig.Authorization{
				{Name: "a-get-foo", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, Route: "b-get-foo", MeshTls: meshTLS(idA)},
			}},
			{Name: "greeter", Namespace: "default", Port: &nodeconfig.Server_PortName{PortName: "grpc"}, Authorizations: []*nodeconfig.Authorization{
				{Name: "a-health", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_GRPC_ROUTE, Route: "health-check", MeshTls: meshTLS(idA)},
			}},
			{Name: "db", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 5432}, Authorizations: []*nodeconfig.Authorization{
				{Name: "a-db", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER, MeshTls: meshTLS(idA)},
			}},
		},
		Routes: []*nodeconfig.Route{
			{Name: "b-get-foo", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: serverParent("b"), CreationTime: 1,
				Rules: []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{{
					Method: "GET", Path: &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT, Value: "/foo/bar"},
				}}}}},
			{Name: "b-foo", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: serverParent("b"), CreationTime: 2,
				Rules: []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{prefix("/foo")}}}},
			{Name: "web", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: serviceParent("web", 80), CreationTime: 3,
				Rules: []*nodeconfig.RouteRule{
					{Matches: []*nodeconfig.RouteMatch{prefix("/split")}, Backends: []*nodeconfig.RouteBackend{backend("web", 80, 1), backend("web-v2", 80, 3)}},
					{Matches: []*nodeconfig.RouteMatch{prefix("/old")}, Filters: []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: &nodeconfig.RequestRedirect{
						Path: &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/new"}}, StatusCode: 301,
					}}}}}, // a redirect rule needs no backend
					{Matches: []*nodeconfig.RouteMatch{prefix("/hdr")}, Filters: []*nodeconfig.RouteFilter{
						{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: &nodeconfig.HeaderModifier{
							Set: []*nodeconfig.Header{{Name: "X-Test", Value: "yes"}}, Remove: []string{"X-Drop"},
						}}},
						{Filter: &nodeconfig.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: &nodeconfig.HeaderModifier{
							Add: []*nodeconfig.Header{{Name: "X-Resp", Value: "done"}},
						}}},
						{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: &nodeconfig.URLRewrite{
							Path: &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/echo"}},
						}}},
					}, Backends: webBackend},
					{Matches: []*nodeconfig.RouteMatch{prefix("/slow")}, TimeoutMs: 200, Backends: webBackend},
					{Matches: []*nodeconfig.RouteMatch{prefix("/flaky")}, Retry: &nodeconfig.RouteRetry{Attempts: 2, Codes: []uint32{503}, BackoffMs: 1}, Backends: webBackend},
					{Matches: []*nodeconfig.RouteMatch{prefix("/unresolved")}, Backends: []*nodeconfig.RouteBackend{{Port: 80, Weight: 1}}},
					{Matches: []*nodeconfig.RouteMatch{prefix("/")}, Backends: webBackend},
				}},
			{Name: "health-check", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_GRPC, Parents: serviceParent("greeter", 9000), CreationTime: 4,
				Rules: []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{{
					GrpcService: &nodeconfig.StringMatch{Value: "grpc.health.v1.Health"},
					GrpcMethod:  &nodeconfig.StringMatch{Value: "Check"},
				}}, Backends: []*nodeconfig.RouteBackend{backend("greeter", 9000, 1)}}}},
		},
	}
}

// env is a waypoint on loopback with real apps behind real HBONE servers standing in for the
// destination ztunnels (they admit only the waypoint's identity, as a ztunnel does for workloads
// bound to a waypoint).
type env struct {
	net      [3]byte
	ca       *catest.CA
	store    *state.Store
	wp       *waypoint.Waypoint
	wpAddr   string
	admin    string
	reg      *prometheus.Registry
	security *syncBuffer
	flaky    atomic.Int64

	mu    sync.Mutex
	peers map[string]int // SPIFFE IDs seen by the destination ztunnels
	conns map[string]*hbone.ClientConn
	svids map[string]*x509svid.SVID // client certificates, by SPIFFE ID
	mesh  *ztunneltest.Mesh         // with envOptions.ztunnels
	nodes []*ztunneltest.Node
}

type envOptions struct {
	readHeaderTimeout time.Duration
	seed              uint64
	// ztunnels runs real ztunnels (ztunneltest) instead of the stand-ins: node-0 with the
	// clients client-a and client-c, node-1 with every other pod.
	ztunnels bool
	// mutate, when set, changes the snapshot before the waypoint starts.
	mutate func(*nodeconfig.Snapshot)
}

// Client pods of the ztunnels option.
const (
	hostClientA = 20
	hostClientC = 21
)

func newEnv(tb testing.TB, opt envOptions) *env {
	tb.Helper()
	e := &env{net: ztunneltest.RandomNet(), ca: catest.New(tb, td), security: &syncBuffer{}, peers: map[string]int{}, conns: map[string]*hbone.ClientConn{}}
	snap := testSnapshot(e.net)
	if opt.ztunnels {
		for _, c := range []struct {
			name, sa string
			host     byte
		}{{"client-a", "service-a", hostClientA}, {"client-c", "service-c", hostClientC}} {
			snap.Workloads = append(snap.Workloads, &nodeconfig.Workload{
				Uid: "uid-" + c.name, Name: c.name, Namespace: "default", ServiceAccount: c.sa,
				Addresses: []string{e.ip(c.host).String()}, Node: "node-0", Ready: true,
				TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			})
		}
	}
	if opt.mutate != nil {
		opt.mutate(snap)
	}
	view, err := state.Build(snap)
	if err != nil {
		tb.Fatalf("state.Build: %v", err)
	}
	e.store = state.NewStore(view)
	e.svids = map[string]*x509svid.SVID{}
	for _, id := range []string{idA, idC} {
		e.svids[id] = e.ca.SVID(tb, spiffeid.RequireFromString(id))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		e.mu.Lock()
		for _, c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		cancel()
		wg.Wait()
		for _, n := range e.nodes { // after the waypoint, whose pooled streams they would wait for
			n.Stop()
		}
	})

	// Apps and their destination ztunnels.
	for _, w := range snap.GetWorkloads() {
		ip := netip.MustParseAddr(w.GetAddresses()[0])
		if w.GetName() != "down-0" {
			e.startApp(tb, ctx, &wg, w.GetName(), ip)
		}
		if !opt.ztunnels {
			e.startZtunnel(tb, ctx, &wg, w, ip)
		}
	}
	if opt.ztunnels {
		mesh, err := ztunneltest.New(ztunneltest.Config{Snapshot: snap, Signer: e.ca, Bundle: e.ca.Bundle()})
		if err != nil {
			tb.Fatal(err)
		}
		e.mesh = mesh
		for _, node := range []string{"node-0", "node-1"} {
			n, err := mesh.StartNode(node, ztunneltest.Logs{})
			if err != nil {
				tb.Fatalf("start ztunnel %s: %v", node, err)
			}
			e.nodes = append(e.nodes, n)
		}
	}

	ln, err := net.Listen("tcp", netip.AddrPortFrom(e.ip(hostWaypoint), 15008).String())
	if err != nil {
		tb.Fatalf("listen waypoint: %v", err)
	}
	e.reg = prometheus.NewRegistry()
	cfg := waypoint.Config{
		Identity:          spiffeid.RequireFromString(idWP),
		SVID:              e.ca.SVID(tb, spiffeid.RequireFromString(idWP)),
		Bundle:            e.ca.Bundle(),
		Store:             e.store,
		HBONEListener:     ln,
		AdminAddr:         "127.0.0.1:0",
		Registry:          e.reg,
		Log:               slog.New(slog.DiscardHandler),
		SecurityLog:       slog.New(slog.NewJSONHandler(e.security, nil)),
		ReadHeaderTimeout: opt.readHeaderTimeout,
		DetectTimeout:     500 * time.Millisecond,
	}
	if opt.seed != 0 {
		r := rand.New(rand.NewPCG(opt.seed, opt.seed))
		var mu sync.Mutex
		cfg.Rand = func() uint64 { mu.Lock(); defer mu.Unlock(); return r.Uint64() }
	}
	e.wp, err = waypoint.New(cfg)
	if err != nil {
		tb.Fatalf("waypoint.New: %v", err)
	}
	addrs := e.wp.Addrs()
	e.wpAddr, e.admin = addrs[0].String(), addrs[1].String()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := e.wp.Run(ctx); err != nil {
			tb.Errorf("waypoint.Run: %v", err)
		}
	}()
	return e
}

// viaZtunnel is an HTTP/1.1 client in client pod host whose connections go through its real
// ztunnel (as the eBPF redirect would send them).
func (e *env) viaZtunnel(host byte, dst string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.mesh.DialFrom(e.ip(host), netip.MustParseAddrPort(dst))
		}, DisableKeepAlives: true}, // nothing stays open to delay the shutdown
		Timeout: 10 * time.Second,
	}
}

func (e *env) ip(host byte) netip.Addr { return ztunneltest.IP(e.net, host) }

func (e *env) addr(host byte, port uint16) string {
	return netip.AddrPortFrom(e.ip(host), port).String()
}

// startApp runs the pod's application: HTTP/1.1 and h2c on :8080, gRPC health on :9000, a TCP
// echo on :5432 and :7000.
func (e *env) startApp(tb testing.TB, ctx context.Context, wg *sync.WaitGroup, name string, ip netip.Addr) {
	tb.Helper()
	listen := func(port uint16) net.Listener {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
		if err != nil {
			tb.Fatalf("listen app %s: %v", name, err)
		}
		context.AfterFunc(ctx, func() { ln.Close() })
		return ln
	}
	switch name {
	case "grpc-0":
		srv := grpc.NewServer()
		hs := health.NewServer()
		healthpb.RegisterHealthServer(srv, hs)
		ln := listen(9000)
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ln) }()
		context.AfterFunc(ctx, srv.Stop)
	case "tcp-0":
		for _, port := range []uint16{5432, 7000} {
			ln := listen(port)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
				}
			}()
		}
	default:
		srv := &http.Server{Handler: e.appHandler(name), ReadHeaderTimeout: 5 * time.Second}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		ln := listen(8080)
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ln) }()
		context.AfterFunc(ctx, func() { srv.Close() })
	}
}

// echo is what the test apps answer.
type echo struct {
	Pod, Method, Path, Host, Proto string
	Header                         http.Header
}

func (e *env) appHandler(pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/slow"):
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		case strings.HasPrefix(r.URL.Path, "/flaky"):
			if e.flaky.Add(1) == 1 {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{Pod: pod, Method: r.Method, Path: r.URL.Path, Host: r.Host, Proto: r.Proto, Header: r.Header})
	})
}

// startZtunnel runs the stand-in for the pod's ztunnel: an HBONE server on ip:15008 with the
// pod's certificate that admits only the waypoint and relays to the app.
func (e *env) startZtunnel(tb testing.TB, ctx context.Context, wg *sync.WaitGroup, w *nodeconfig.Workload, ip netip.Addr) {
	tb.Helper()
	id := spiffeid.RequireFromString(sa(w.GetServiceAccount()))
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: hbone.ServerTLSConfig(e.ca.SVID(tb, id), e.ca.Bundle(), tlsconfig.AuthorizeAny()),
		Handler: func(ctx context.Context, s *hbone.Stream) {
			e.mu.Lock()
			e.peers[s.Peer.String()]++
			e.mu.Unlock()
			if s.Peer.String() != idWP {
				s.Reject(http.StatusUnauthorized, "only the waypoint")
				return
			}
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", s.Authority.String())
			if err != nil {
				s.Reject(http.StatusServiceUnavailable, "app unreachable")
				return
			}
			c, err := s.Accept()
			if err != nil {
				up.Close()
				return
			}
			_, _, _ = relay.Relay(c, up)
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 15008).String())
	if err != nil {
		tb.Fatalf("listen ztunnel %s: %v", w.GetName(), err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, ln) }()
}

// hboneConn returns a connection to the waypoint presenting the certificate of service account
// id, shared by the clients of that identity.
func (e *env) hboneConn(id string) (*hbone.ClientConn, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.conns[id]; c != nil && c.CanTakeNewRequest() {
		return c, nil
	}
	raw, err := net.Dial("tcp", e.wpAddr)
	if err != nil {
		return nil, fmt.Errorf("dial waypoint: %w", err)
	}
	c, err := hbone.NewClientConn(context.Background(), raw, hbone.ClientTLSConfig(e.svids[id], e.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(idWP))), hbone.ClientOptions{})
	if err != nil {
		return nil, fmt.Errorf("hbone handshake with waypoint as %s: %w", id, err)
	}
	e.conns[id] = c
	return c, nil
}

// connect opens an HBONE stream to the waypoint as id for authority, as a source ztunnel does.
func (e *env) connect(ctx context.Context, tb testing.TB, id, authority string) (net.Conn, error) {
	hdr := http.Header{hbone.HeaderForwarded: []string{hbone.Forwarded(netip.AddrPortFrom(e.ip(200), 40000), "")}}
	c, err := e.hboneConn(id)
	if err != nil {
		return nil, err
	}
	return c.Connect(ctx, authority, hdr)
}

func (e *env) h1(tb testing.TB, id, authority string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.connect(ctx, tb, id, authority)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

func (e *env) h2(tb testing.TB, id, authority string) *http.Client {
	return &http.Client{
		Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return e.connect(ctx, tb, id, authority)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

func (e *env) grpc(tb testing.TB, id, authority string) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient("passthrough:///"+authority,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return e.connect(ctx, tb, id, authority)
		}))
	if err != nil {
		tb.Fatalf("grpc.NewClient: %v", err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// get sends a request and returns the status, the decoded echo (if any) and the response.
func get(tb testing.TB, c *http.Client, method, path string, hdr http.Header) (int, echo, *http.Response) {
	tb.Helper()
	req, err := http.NewRequest(method, "http://svc.test"+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, path, err)
	}
	var ec echo
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(body, &ec); err != nil {
			tb.Fatalf("%s %s: decode %q: %v", method, path, body, err)
		}
	}
	return res.StatusCode, ec, res
}

// securityEvents returns the security-event lines logged so far.
func (e *env) securityEvents(tb testing.TB) []map[string]any {
	tb.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(e.security.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			tb.Fatalf("security log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// waitGoroutines waits until the number of goroutines is back to at most want, retrying, and
// fails with a dump if it does not get there.
func waitGoroutines(tb testing.TB, want int) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Fatalf("goroutines: %d, want at most %d (baseline); stacks:\n%s", n, want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runtimeGoroutines() int { return runtime.NumGoroutine() }

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// metric sums the samples of a metric whose labels contain every label of want ("" matches all).
func metric(tb testing.TB, e *env, name, want string) float64 {
	tb.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			ok := true
			for _, kv := range strings.Split(want, ",") {
				if kv == "" {
					continue
				}
				k, v, _ := strings.Cut(kv, "=")
				if labels[k] != strings.Trim(v, `"`) {
					ok = false
				}
			}
			if ok {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
