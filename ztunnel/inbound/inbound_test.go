package inbound_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/inbound"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

const (
	wpID     = "spiffe://cluster.local/ns/default/sa/waypoint"
	clientID = "spiffe://cluster.local/ns/default/sa/client"
	bypass   = "waypoint bypass: default/b is served by waypoint default/waypoint; only " + wpID + " may connect"
)

// snapshot has workload b (10.0.1.3) bound to a waypoint and workload c (10.0.1.4) whose
// Service, not the pod, has one. The mesh default allows everyone, so every refusal below is the
// waypoint rule's.
func snapshot(bWaypoint bool) *nodeconfig.Snapshot {
	wp := &nodeconfig.GatewayAddress{Name: "waypoint", Namespace: "default", Address: "10.96.9.10", HbonePort: 15008, Identity: wpID}
	s := &nodeconfig.Snapshot{
		Defaults: &nodeconfig.MeshDefaults{DefaultInboundPolicy: nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED},
		Workloads: []*nodeconfig.Workload{
			{Uid: "b", Name: "b", Namespace: "default", ServiceAccount: "b", Addresses: []string{"10.0.1.3"}, Node: "node-1",
				TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, Ready: true, ProbePorts: []uint32{8081}},
			{Uid: "c", Name: "c", Namespace: "default", ServiceAccount: "c", Addresses: []string{"10.0.1.4"}, Node: "node-1",
				TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, Ready: true},
		},
		Services: []*nodeconfig.Service{{Name: "c", Namespace: "default", Addresses: []string{"10.96.0.4"},
			Ports: []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}}, Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "c"}}, Waypoint: wp}},
	}
	if bWaypoint {
		s.Workloads[0].Waypoint = wp
	}
	return s
}

// env is one workload's inbound proxy on loopback listeners, with an echo application behind it.
type env struct {
	ca        *catest.CA
	store     *state.Store
	tel       *telemetry.Telemetry
	proxy     *inbound.Proxy
	hboneAddr string
	plainAddr string
}

// start runs the inbound proxy of workload uid. Plaintext connections are taken as meant for
// plainDst; connections from 127.0.0.1 to probe ports are kubelet probes.
func start(tb testing.TB, ca *catest.CA, store *state.Store, uid, sa string, plainDst netip.AddrPort) *env {
	tb.Helper()
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { app.Close() })
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tel, err := telemetry.New(telemetry.Config{SecurityLog: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		tb.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/" + sa)
	var d net.Dialer
	p, err := inbound.New(inbound.Config{
		UID: uid, Identity: id, SVID: ca.SVID(tb, id), Bundle: ca.Bundle(),
		HBONE: hln, Plaintext: pln, Store: store,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", app.Addr().String())
		},
		OriginalDst:  func(net.Conn) (netip.AddrPort, error) { return plainDst, nil },
		ProbeSources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Telemetry:    tel, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return &env{ca: ca, store: store, tel: tel, proxy: p, hboneAddr: hln.Addr().String(), plainAddr: pln.Addr().String()}
}

// connect opens an HBONE stream as identity to authority.
func (e *env) connect(tb testing.TB, identity, authority string) (*hbone.Conn, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := net.Dial("tcp", e.hboneAddr)
	if err != nil {
		tb.Fatal(err)
	}
	svid := e.ca.SVID(tb, spiffeid.RequireFromString(identity))
	cc, err := hbone.NewClientConn(ctx, raw, hbone.ClientTLSConfig(svid, e.ca.Bundle(), tlsconfig.AuthorizeAny()), hbone.ClientOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc.Connect(ctx, authority, nil)
}

// echo fails unless c echoes a message.
func echo(tb testing.TB, c net.Conn) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		tb.Fatalf("write: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		tb.Fatalf("echo = %q, %v; want ping", buf, err)
	}
}

// event is the comparable part of a security event.
type event struct {
	Type                          telemetry.EventType
	SrcIdentity, DstWorkload, Dst string
	PolicyKind, Policy, Reason    string
}

func events(e *env) []event {
	var out []event
	for _, r := range e.tel.RecentEvents(time.Time{}) {
		out = append(out, event{r.Type, r.SrcIdentity, r.DstWorkload, r.Dst, r.PolicyKind, r.Policy, r.Reason})
	}
	return out
}

func newStore(tb testing.TB, s *nodeconfig.Snapshot) *state.Store {
	tb.Helper()
	v, err := state.Build(s)
	if err != nil {
		tb.Fatal(err)
	}
	return state.NewStore(v)
}

// TestWaypointOnlyHBONE: a workload with a waypoint admits the waypoint's identity and refuses
// every other peer with 401 and one security event naming the bypass; a workload whose Service
// (not the pod) has a waypoint keeps admitting direct traffic under its own policy.
func TestWaypointOnlyHBONE(t *testing.T) {
	t.Parallel()
	ca := catest.New(t, "cluster.local")
	store := newStore(t, snapshot(true))
	tests := []struct {
		name, uid, identity, authority string
		wantStatus                     int // 0: admitted
		wantEvents                     []event
	}{
		{name: "waypoint to b", uid: "b", identity: wpID, authority: "10.0.1.3:8080"},
		{name: "client bypassing the waypoint", uid: "b", identity: clientID, authority: "10.0.1.3:8080", wantStatus: http.StatusUnauthorized,
			wantEvents: []event{{telemetry.Deny, clientID, "default/b", "10.0.1.3:8080", inbound.KindWaypoint, "default/waypoint", bypass}}},
		{name: "b's own identity bypassing", uid: "b", identity: "spiffe://cluster.local/ns/default/sa/b", authority: "10.0.1.3:8080", wantStatus: http.StatusUnauthorized,
			wantEvents: []event{{telemetry.Deny, "spiffe://cluster.local/ns/default/sa/b", "default/b", "10.0.1.3:8080", inbound.KindWaypoint, "default/waypoint", bypass}}},
		{name: "waypoint identity to a probe port is still the waypoint", uid: "b", identity: wpID, authority: "10.0.1.3:8081"},
		{name: "service-level waypoint only: direct client to c", uid: "c", identity: clientID, authority: "10.0.1.4:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, ca, store, tc.uid, tc.uid, netip.AddrPort{})
			c, err := e.connect(t, tc.identity, tc.authority)
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("Connect = %v; want admitted", err)
				}
				echo(t, c)
				c.Close()
			} else {
				var se *hbone.StatusError
				if !errors.As(err, &se) || se.Code != tc.wantStatus {
					t.Fatalf("Connect = %v; want status %d", err, tc.wantStatus)
				}
			}
			if diff := cmp.Diff(tc.wantEvents, events(e)); diff != "" {
				t.Errorf("security events (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWaypointOnlyPlaintext: a plaintext client of a workload with a waypoint is refused (its
// connection reset, one event), except a kubelet probe to a probe port.
func TestWaypointOnlyPlaintext(t *testing.T) {
	t.Parallel()
	ca := catest.New(t, "cluster.local")
	store := newStore(t, snapshot(true))
	tests := []struct {
		name       string
		dst        netip.AddrPort
		admitted   bool
		wantEvents []event
	}{
		{name: "app port", dst: netip.MustParseAddrPort("10.0.1.3:8080"),
			wantEvents: []event{{telemetry.Deny, "", "default/b", "10.0.1.3:8080", inbound.KindWaypoint, "default/waypoint", bypass}}},
		{name: "kubelet probe", dst: netip.MustParseAddrPort("10.0.1.3:8081"), admitted: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, ca, store, "b", "b", tc.dst)
			c, err := net.Dial("tcp", e.plainAddr)
			switch {
			case err != nil && !tc.admitted && errors.Is(err, syscall.ECONNRESET):
				// Reset before connect returned: refused, as wanted.
			case err != nil:
				t.Fatal(err)
			case tc.admitted:
				defer c.Close()
				echo(t, c)
			default:
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if n, err := c.Read(make([]byte, 1)); err == nil {
					t.Fatalf("Read = %d bytes; want the connection closed", n)
				}
			}
			if diff := cmp.Diff(tc.wantEvents, events(e)); diff != "" {
				t.Errorf("security events (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWaypointBoundRevokesDirect: binding a waypoint closes the open direct connections, with
// a revoke event; the waypoint's own stay up.
func TestWaypointBoundRevokesDirect(t *testing.T) {
	t.Parallel()
	ca := catest.New(t, "cluster.local")
	store := newStore(t, snapshot(false))
	e := start(t, ca, store, "b", "b", netip.AddrPort{})
	direct, err := e.connect(t, clientID, "10.0.1.3:8080")
	if err != nil {
		t.Fatalf("direct Connect before the waypoint = %v", err)
	}
	echo(t, direct)
	via, err := e.connect(t, wpID, "10.0.1.3:8080")
	if err != nil {
		t.Fatalf("waypoint Connect = %v", err)
	}
	echo(t, via)

	v, err := state.Build(snapshot(true))
	if err != nil {
		t.Fatal(err)
	}
	store.Swap(v)
	// The revoked stream ends (EOF or reset) rather than running into the deadline.
	direct.SetDeadline(time.Now().Add(30 * time.Second))
	var ne net.Error
	if _, err := io.ReadAll(direct); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("direct connection still open after the waypoint was bound: %v", err)
	}
	echo(t, via)
	want := []event{{telemetry.Revoke, clientID, "default/b", "10.0.1.3:8080", inbound.KindWaypoint, "default/waypoint", "policy change: " + bypass}}
	if diff := cmp.Diff(want, events(e)); diff != "" {
		t.Errorf("security events (-want +got):\n%s", diff)
	}
	if got := e.proxy.Open(); got != 1 {
		t.Errorf("Open() = %d, want 1 (the waypoint's)", got)
	}
}
