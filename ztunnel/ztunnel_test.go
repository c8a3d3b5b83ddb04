package ztunnel_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// logBuffer collects JSON log lines safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the decoded lines whose fields include all of match.
func (b *logBuffer) lines(match map[string]string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(m[k]) != v {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// origDst is the test's stand-in for the eBPF redirect's map: the original destination of a
// connection, keyed by the client's address.
type origDst struct{ m sync.Map }

func (o *origDst) lookup(c net.Conn) (netip.AddrPort, error) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	v, ok := o.m.Load(src)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("no original destination for %s", src)
	}
	return v.(netip.AddrPort), nil
}

// node is one in-process ztunnel with its logs and metrics.
type node struct {
	zt       *ztunnel.Ztunnel
	reg      *prometheus.Registry
	security *logBuffer
	access   *logBuffer
	admin    string
}

// mesh is a small mesh on loopback: workloads get addresses in a random 127.x.y.0/24 so that
// parallel tests and test binaries never collide on the fixed in-pod ports.
type mesh struct {
	t       testing.TB
	ca      *catest.CA
	store   *state.Store
	snap    *nodeconfig.Snapshot
	net     [3]byte
	orig    *origDst
	inOrig  *origDst
	nodes   map[string]*node
	version int
}

func newMesh(t testing.TB, snap *nodeconfig.Snapshot, prefix [3]byte) *mesh {
	t.Helper()
	m := &mesh{t: t, ca: catest.New(t, "cluster.local"), snap: snap, net: prefix, orig: &origDst{}, inOrig: &origDst{}, nodes: map[string]*node{}}
	v, err := state.Build(snap)
	if err != nil {
		t.Fatalf("state.Build: %v", err)
	}
	m.store = state.NewStore(v)
	return m
}

// randomNet returns a random 127.x.y prefix.
func randomNet() [3]byte {
	return [3]byte{127, byte(1 + rand.IntN(250)), byte(1 + rand.IntN(250))}
}

func ip(p [3]byte, host byte) string {
	return netip.AddrFrom4([4]byte{p[0], p[1], p[2], host}).String()
}

// startNode runs a ztunnel for node name and enrolls its workloads.
func (m *mesh) startNode(name string) *node {
	t := m.t
	t.Helper()
	n := &node{reg: prometheus.NewRegistry(), security: &logBuffer{}, access: &logBuffer{}}
	ids, err := identity.New(identity.Config{Signer: m.ca, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	zt, err := ztunnel.New(ztunnel.Config{
		Node:       name,
		Store:      m.store,
		Identities: ids,
		Bundle:     m.ca.Bundle(),
		Sockets: func(w *nodeconfig.Workload) (sockets.Factory, error) {
			return sockets.Host{Source: netip.MustParseAddr(w.GetAddresses()[0])}, nil
		},
		OriginalDst:        m.orig.lookup,
		InboundOriginalDst: m.inOrig.lookup,
		EnrollLocal:        true,
		AdminAddr:          "127.0.0.1:0",
		Registry:           n.reg,
		Log:                slog.New(slog.NewJSONHandler(io.Discard, nil)),
		AccessLog:          slog.New(slog.NewJSONHandler(n.access, nil)),
		SecurityLog:        slog.New(slog.NewJSONHandler(n.security, nil)),
		HandshakeTimeout:   2 * time.Second,
	})
	if err != nil {
		t.Fatalf("ztunnel.New: %v", err)
	}
	n.zt = zt
	n.admin = zt.Addrs()[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- zt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel %s Run: %v", name, err)
		}
	})
	// Run enrolls asynchronously; wait until the node's workloads are served.
	want := 0
	for _, w := range m.snap.GetWorkloads() {
		if w.GetNode() == name && w.GetTunnelProtocol() == nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE {
			want++
		}
	}
	waitFor(t, func() bool { return len(zt.Workloads()) == want }, "node %s enrolls %d workloads", name, want)
	m.nodes[name] = n
	return n
}

// update swaps in a modified copy of the snapshot.
func (m *mesh) update(mutate func(s *nodeconfig.Snapshot)) {
	m.t.Helper()
	mutate(m.snap)
	m.version++
	m.snap.Version = fmt.Sprintf("v%d", m.version+1)
	v, err := state.Build(m.snap)
	if err != nil {
		m.t.Fatalf("state.Build: %v", err)
	}
	m.store.Swap(v)
}

func waitFor(t testing.TB, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: "+format, args...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialFrom connects from the workload at src (as its app would) to dst through the workload's
// outbound listener, recording dst as the original destination first, as the redirect does.
func (m *mesh) dialFrom(src string, dst netip.AddrPort) (*net.TCPConn, error) {
	m.t.Helper()
	srcIP := netip.MustParseAddr(src)
	port := freePort(m.t, srcIP)
	local := netip.AddrPortFrom(srcIP, port)
	m.orig.m.Store(local, dst)
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", netip.AddrPortFrom(srcIP, ztunnel.OutboundPort).String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialPlain connects from an unmeshed client at src to dst's plaintext inbound port, recording
// dst as the original destination, as sk_lookup would make it.
func (m *mesh) dialPlain(src string, dst netip.AddrPort) (*net.TCPConn, error) {
	m.t.Helper()
	srcIP := netip.MustParseAddr(src)
	local := netip.AddrPortFrom(srcIP, freePort(m.t, srcIP))
	m.inOrig.m.Store(local, dst)
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", netip.AddrPortFrom(dst.Addr(), ztunnel.PlaintextPort).String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func freePort(t testing.TB, ip netip.Addr) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort().Port()
}

// app is a test application server: it answers each connection with "hello from <name>" after
// reading one line, and reports the peer address it saw.
type app struct {
	ln    net.Listener
	name  string
	peers chan netip.AddrPort
}

func startApp(t testing.TB, addr netip.AddrPort, name string) *app {
	t.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	a := &app{ln: ln, name: name, peers: make(chan netip.AddrPort, 1024)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				select {
				case a.peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
				default:
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "hello from %s: %s", name, line)
			}()
		}
	}()
	return a
}

// roundTrip sends one line and returns the answer up to EOF.
func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

const td = "spiffe://cluster.local"

// articleSnapshot is the article's example on two nodes: service-a and service-c on node-1,
// service-b on node-2, and only service-a may call service-b on 8080.
func articleSnapshot(p [3]byte) *nodeconfig.Snapshot {
	wl := func(name, node string, host byte) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + name, Name: name + "-0", Namespace: "default", ServiceAccount: name,
			Addresses: []string{ip(p, host)}, Node: node, Ready: true,
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		}
	}
	b := wl("service-b", "node-2", 3)
	b.Servers = []string{"default/service-b"}
	return &nodeconfig.Snapshot{
		Version:   "v1",
		Workloads: []*nodeconfig.Workload{wl("service-a", "node-1", 2), b, wl("service-c", "node-1", 4)},
		Servers: []*nodeconfig.Server{{
			Name: "service-b", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080},
			Authorizations: []*nodeconfig.Authorization{{
				Name: "service-a-to-b", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{td + "/ns/default/sa/service-a"}},
				AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"},
			}},
		}},
	}
}

func TestArticlePolicy(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p), p)
	m.startNode("node-1")
	n2 := m.startNode("node-2")
	startApp(t, netip.MustParseAddrPort(ip(p, 3)+":8080"), "b")
	dstB := netip.MustParseAddrPort(ip(p, 3) + ":8080")

	// service-a is allowed, and node-2's ztunnel saw its SPIFFE ID from the certificate.
	c, err := m.dialFrom(ip(p, 2), dstB)
	if err != nil {
		t.Fatal(err)
	}
	got, err := roundTrip(c, "hi")
	c.Close()
	if err != nil || got != "hello from b: hi\n" {
		t.Fatalf("service-a -> service-b = %q, %v; want the app's answer", got, err)
	}
	waitFor(t, func() bool {
		return len(n2.access.lines(map[string]string{"direction": "inbound", "src.identity": td + "/ns/default/sa/service-a"})) == 1
	}, "node-2 access log shows service-a's identity")

	// service-c is denied: the client's connection is closed without data.
	denyBefore := metricValue(t, n2.reg, "warren_ztunnel_authz_decisions_total", map[string]string{"decision": "deny"})
	c, err = m.dialFrom(ip(p, 4), dstB)
	if err != nil {
		t.Fatal(err)
	}
	got, err = roundTrip(c, "hi")
	c.Close()
	if got != "" || err == nil {
		t.Fatalf("service-c -> service-b = %q, %v; want a closed connection with an error", got, err)
	}
	waitFor(t, func() bool { return len(n2.security.lines(map[string]string{"event": "deny"})) == 1 }, "one deny event")
	ev := n2.security.lines(map[string]string{"event": "deny"})[0]
	wantEv := map[string]any{
		"src.identity": td + "/ns/default/sa/service-c",
		"dst.workload": "default/service-b-0",
		"dst.port":     float64(8080),
		"policy.kind":  "Server",
		"policy":       "default/service-b",
		"server":       "default/service-b",
	}
	for k, v := range wantEv {
		if diff := cmp.Diff(v, ev[k]); diff != "" {
			t.Errorf("deny event %s (-want +got):\n%s", k, diff)
		}
	}
	if !strings.HasPrefix(fmt.Sprint(ev["src.addr"]), ip(p, 4)+":") || ev["reason"] == "" {
		t.Errorf("deny event src.addr=%v reason=%v; want service-c's address and a reason", ev["src.addr"], ev["reason"])
	}
	denyAfter := metricValue(t, n2.reg, "warren_ztunnel_authz_decisions_total", map[string]string{"decision": "deny"})
	if denyAfter != denyBefore+1 {
		t.Errorf("deny counter went %v -> %v; want +1", denyBefore, denyAfter)
	}

	// The 401 itself, as an HBONE client sees it: service-c's certificate, straight to node-2.
	_, err = hboneConnect(t, m, "service-c", ip(p, 3)+":15008", dstB.String())
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("hbone CONNECT as service-c = %v; want status 401", err)
	}
}

// metricValue sums the samples of a counter whose labels include labels.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range mt.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			sum += mt.GetCounter().GetValue()
		}
	}
	return sum
}

// hboneConnect opens an HBONE stream as workload sa (with a certificate from the mesh CA) to a
// ztunnel's HBONE port.
func hboneConnect(t testing.TB, m *mesh, sa, hboneAddr, authority string) (*hbone.Conn, error) {
	t.Helper()
	svid := m.ca.SVID(t, spiffeid.RequireFromString(td+"/ns/default/sa/"+sa))
	raw, err := net.Dial("tcp", hboneAddr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { raw.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := hbone.NewClientConn(ctx, raw, hbone.ClientTLSConfig(svid, m.ca.Bundle(), tlsconfig.AuthorizeAny()), hbone.ClientOptions{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { cc.Close() })
	return cc.Connect(ctx, authority, http.Header{})
}
