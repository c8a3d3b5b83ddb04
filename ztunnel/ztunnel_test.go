package ztunnel_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
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

// node is one in-process ztunnel with its logs.
type node struct {
	*ztunneltest.Node
	security *logBuffer
	access   *logBuffer
}

// mesh is the test's view of a ztunneltest.Mesh: its CA, and nodes stopped at cleanup.
type mesh struct {
	*ztunneltest.Mesh
	t  testing.TB
	ca *catest.CA
}

func newMesh(t testing.TB, snap *nodeconfig.Snapshot) *mesh {
	t.Helper()
	c := catest.New(t, "cluster.local")
	m, err := ztunneltest.New(ztunneltest.Config{Snapshot: snap, Signer: c, Bundle: c.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{Mesh: m, t: t, ca: c}
}

func (m *mesh) startNode(name string) *node {
	m.t.Helper()
	n := &node{security: &logBuffer{}, access: &logBuffer{}}
	zn, err := m.StartNode(name, ztunneltest.Logs{Access: n.access, Security: n.security})
	if err != nil {
		m.t.Fatal(err)
	}
	n.Node = zn
	m.t.Cleanup(func() {
		if err := zn.Stop(); err != nil {
			m.t.Errorf("ztunnel %s Run: %v", name, err)
		}
	})
	return n
}

func (m *mesh) update(mutate func(s *nodeconfig.Snapshot)) {
	m.t.Helper()
	if err := m.Update(mutate); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mesh) dialFrom(src string, dst netip.AddrPort) (*net.TCPConn, error) {
	return m.DialFrom(netip.MustParseAddr(src), dst)
}

func (m *mesh) dialPlain(src string, dst netip.AddrPort) (*net.TCPConn, error) {
	return m.DialPlain(netip.MustParseAddr(src), dst)
}

var randomNet = ztunneltest.RandomNet

func ip(p [3]byte, host byte) string { return ztunneltest.IP(p, host).String() }

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
	m := newMesh(t, articleSnapshot(p))
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
	denyBefore := metricValue(t, n2.Registry, "warren_ztunnel_authz_decisions_total", map[string]string{"decision": "deny"})
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
	denyAfter := metricValue(t, n2.Registry, "warren_ztunnel_authz_decisions_total", map[string]string{"decision": "deny"})
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
