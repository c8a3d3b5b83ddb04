package ztunnel_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/hbone"
)

func TestDefaultPolicies(t *testing.T) {
	t.Parallel()
	type client int
	const (
		meshed client = iota // service-a, through its outbound proxy and HBONE
		plain                // an unmeshed client, to the plaintext inbound port
	)
	tests := []struct {
		policy nodeconfig.DefaultPolicy
		// inCluster says whether the test's addresses count as cluster networks.
		inCluster bool
		client    client
		allow     bool
		audit     bool
	}{
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED, false, meshed, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED, false, plain, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED, false, meshed, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED, true, plain, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED, true, meshed, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED, false, meshed, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED, true, plain, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED, true, plain, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED, false, plain, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED, true, meshed, true, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, true, meshed, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, true, plain, false, false},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT, false, meshed, true, true},
		{nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT, false, plain, true, true},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/cluster=%v/%s", strings.TrimPrefix(tc.policy.String(), "DEFAULT_POLICY_"), tc.inCluster, map[client]string{meshed: "meshed", plain: "plaintext"}[tc.client])
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := randomNet()
			snap := articleSnapshot(p)
			snap.Workloads[1].Servers = nil // no Server: the default decides
			snap.Servers = nil
			snap.Workloads[1].DefaultInboundPolicy = tc.policy
			snap.Defaults = &nodeconfig.MeshDefaults{ClusterNetworks: []string{"10.0.0.0/8"}}
			if tc.inCluster {
				snap.Defaults.ClusterNetworks = []string{"127.0.0.0/8"}
			}
			m := newMesh(t, snap)
			m.startNode("node-1")
			n2 := m.startNode("node-2")
			startApp(t, netip.MustParseAddrPort(ip(p, 3)+":8080"), "b")
			dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")

			var c net.Conn
			var err error
			if tc.client == meshed {
				c, err = m.dialFrom(ip(p, 2), dst)
			} else {
				c, err = m.dialPlain(ip(p, 9), dst)
			}
			var got string
			if err == nil {
				// A denied plaintext client may see the reset already at connect.
				got, err = roundTrip(c, "hi")
				c.Close()
			}
			if allowed := err == nil && got == "hello from b: hi\n"; allowed != tc.allow {
				t.Fatalf("connection answered %q, %v; want allowed=%v", got, err, tc.allow)
			}
			events := map[string]int{}
			waitFor(t, func() bool {
				events["deny"] = len(n2.security.lines(map[string]string{"event": "deny"}))
				events["audit"] = len(n2.security.lines(map[string]string{"event": "audit"}))
				return events["deny"]+events["audit"] > 0 || (tc.allow && !tc.audit)
			}, "a security event")
			want := map[string]int{"deny": 0, "audit": 0}
			if !tc.allow {
				want["deny"] = 1
			}
			if tc.audit {
				want["audit"] = 1
			}
			if events["deny"] != want["deny"] || events["audit"] != want["audit"] {
				t.Errorf("security events = %v; want %v", events, want)
			}
			if !tc.allow {
				ev := n2.security.lines(map[string]string{"event": "deny"})[0]
				if ev["policy.kind"] != "Default" {
					t.Errorf("deny decided by %v %v; want the default policy", ev["policy.kind"], ev["policy"])
				}
			}
		})
	}
}

func TestPoolSharesOneTLSConnection(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	n1 := m.startNode("node-1")
	m.startNode("node-2")
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	// A server that holds every connection open until released, so all 100 are concurrent.
	ln, err := net.Listen("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release := make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "open\n")
				<-release
			}()
		}
	}()

	const n = 100
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := m.dialFrom(ip(p, 2), dst)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			buf := make([]byte, 5)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wl := workload(t, n1.Ztunnel, "default/service-a-0")
	if wl.Pool.Dials != 1 || wl.Pool.Conns != 1 {
		t.Errorf("after %d concurrent connections the pool made %d dials and holds %d connections; want 1 and 1", n, wl.Pool.Dials, wl.Pool.Conns)
	}
	close(release)
	for _, c := range conns {
		c.Close()
	}
}

func workload(t testing.TB, zt *ztunnel.Ztunnel, name string) ztunnel.Enrolled {
	t.Helper()
	for _, w := range zt.Workloads() {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("workload %s not enrolled", name)
	return ztunnel.Enrolled{}
}

func TestHalfClose(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	m.startNode("node-1")
	m.startNode("node-2")
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	// The app reads the whole request until the client's FIN, then answers and closes.
	ln, err := net.Listen("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes", len(req))
	}()
	c, err := m.dialFrom(ip(p, 2), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(make([]byte, 100_000)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 100000 bytes" {
		t.Fatalf("response after half-close = %q, %v; want %q", got, err, "got 100000 bytes")
	}
}

func TestInboundBadRequests(t *testing.T) {
	t.Parallel()
	p := randomNet()
	snap := articleSnapshot(p)
	snap.Workloads[1].DefaultInboundPolicy = nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED
	m := newMesh(t, snap)
	m.startNode("node-1")
	m.startNode("node-2")
	startApp(t, netip.MustParseAddrPort(ip(p, 3)+":8080"), "b")
	hboneB := ip(p, 3) + ":15008"
	tests := []struct {
		name      string
		authority string
		code      int
	}{
		{"upstream unreachable", ip(p, 3) + ":9999", http.StatusServiceUnavailable},
		{"authority is another workload", ip(p, 2) + ":8080", http.StatusBadRequest},
		{"authority is not in the mesh", "192.0.2.1:8080", http.StatusBadRequest},
		{"authority is a ztunnel port", ip(p, 3) + ":15008", http.StatusBadRequest},
		{"authority is not ip:port", "service-b:8080", http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hboneConnect(t, m, "service-a", hboneB, tc.authority)
			var se *hbone.StatusError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Fatalf("CONNECT %s = %v; want status %d", tc.authority, err, tc.code)
			}
		})
	}
	// The ztunnel keeps serving good requests.
	c, err := hboneConnect(t, m, "service-a", hboneB, ip(p, 3)+":8080")
	if err != nil {
		t.Fatalf("good CONNECT after bad ones: %v", err)
	}
	got, err := roundTrip(c, "still there")
	if err != nil || got != "hello from b: still there\n" {
		t.Fatalf("good CONNECT answered %q, %v", got, err)
	}
}

func TestPolicyChangeRevokesOpenConnections(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	m.startNode("node-1")
	n2 := m.startNode("node-2")
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	ln, err := net.Listen("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	c, err := m.dialFrom(ip(p, 2), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	echo := func() error {
		if _, err := io.WriteString(c, "ping"); err != nil {
			return err
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(c, buf)
		return err
	}
	if err := echo(); err != nil {
		t.Fatalf("echo before the change: %v", err)
	}
	// Unrelated change: the connection stays.
	m.update(func(s *nodeconfig.Snapshot) { s.Workloads[0].Ready = false })
	if err := echo(); err != nil {
		t.Fatalf("echo after an unrelated change: %v", err)
	}
	// service-a loses its authorization: the open connection is closed.
	m.update(func(s *nodeconfig.Snapshot) {
		s.Servers[0].Authorizations[0].MeshTls.Identities = []string{td + "/ns/default/sa/someone-else"}
	})
	buf := make([]byte, 1)
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("read after revocation = %d bytes; want the connection closed", n)
	}
	waitFor(t, func() bool { return len(n2.security.lines(map[string]string{"event": "revoke"})) == 1 }, "one revoke event")
	if v := metricValue(t, n2.Registry, "warren_ztunnel_connections_revoked_total", nil); v != 1 {
		t.Errorf("revoked counter = %v; want 1", v)
	}
}

func TestServiceAndPassthrough(t *testing.T) {
	t.Parallel()
	p := randomNet()
	snap := articleSnapshot(p)
	snap.Workloads[1].Servers, snap.Servers = nil, nil
	// A second service-b replica on node-1, and a Service in front of both with a named target port.
	b2 := &nodeconfig.Workload{
		Uid: "uid-service-b-1", Name: "service-b-1", Namespace: "default", ServiceAccount: "service-b",
		Addresses: []string{ip(p, 5)}, Node: "node-1", Ready: true,
		TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
		Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
	}
	snap.Workloads = append(snap.Workloads, b2)
	vip := ip(p, 100)
	snap.Services = []*nodeconfig.Service{{
		Name: "service-b", Namespace: "default", Hostname: "service-b.default.svc.cluster.local",
		Addresses: []string{vip},
		Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPortName: "http"}},
		Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "uid-service-b"}, {WorkloadUid: "uid-service-b-1"}},
	}}
	m := newMesh(t, snap)
	m.startNode("node-1")
	n2 := m.startNode("node-2")
	startApp(t, netip.MustParseAddrPort(ip(p, 3)+":8080"), "b0")
	startApp(t, netip.MustParseAddrPort(ip(p, 5)+":8080"), "b1")
	// Outside the mesh: a plain server on an address no workload has.
	startApp(t, netip.MustParseAddrPort(ip(p, 200)+":7000"), "outside")

	seen := map[string]int{}
	for range 4 {
		c, err := m.dialFrom(ip(p, 2), netip.MustParseAddrPort(vip+":80"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := roundTrip(c, "x")
		c.Close()
		if err != nil {
			t.Fatalf("via service: %v", err)
		}
		seen[strings.Fields(got)[2]]++
	}
	if seen["b0:"] != 2 || seen["b1:"] != 2 {
		t.Errorf("4 connections to the service VIP reached %v; want round-robin 2 and 2", seen)
	}
	// The CONNECT for a service carried the service hostname in forwarded.
	waitFor(t, func() bool { return len(n2.access.lines(map[string]string{"direction": "inbound"})) >= 2 }, "inbound access lines")

	c, err := m.dialFrom(ip(p, 2), netip.MustParseAddrPort(ip(p, 200)+":7000"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := roundTrip(c, "out")
	c.Close()
	if err != nil || got != "hello from outside: out\n" {
		t.Fatalf("passthrough = %q, %v", got, err)
	}
}

func TestAdminConfigDump(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	n1 := m.startNode("node-1")
	m.startNode("node-2")
	waitFor(t, func() bool {
		d, _ := n1.Ztunnel.Dump()
		return len(d.Certificates) == 2
	}, "certificates for both local workloads")
	resp, err := http.Get("http://" + n1.Admin + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /config_dump = %d %s", resp.StatusCode, body)
	}
	if strings.Contains(string(body), "PRIVATE KEY") {
		t.Fatal("config dump contains a private key")
	}
	var d ztunnel.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	if d.Node != "node-1" || d.Version != "v1" || len(d.Workloads) != 2 {
		t.Errorf("dump node=%q version=%q workloads=%d; want node-1 v1 2", d.Node, d.Version, len(d.Workloads))
	}
	ids := map[string]bool{}
	for _, c := range d.Certificates {
		ids[c.ID] = true
		if c.Serial == "" || !c.NotAfter.After(time.Now()) {
			t.Errorf("certificate %s: serial %q not-after %v; want a serial and a future expiry", c.ID, c.Serial, c.NotAfter)
		}
	}
	for _, want := range []string{td + "/ns/default/sa/service-a", td + "/ns/default/sa/service-c"} {
		if !ids[want] {
			t.Errorf("dump certificates %v; missing %s", ids, want)
		}
	}
	if !strings.Contains(string(d.Config), "service-a-to-b") {
		t.Errorf("dump config does not include the policy: %s", d.Config)
	}
}

func TestAdminProfilesOnlyFromLocalhost(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	n1 := m.startNode("node-1")
	get := func(from string) int {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		resp, err := c.Get("http://" + n1.Admin + "/debug/pprof/heap")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("127.0.0.1"); got != http.StatusOK {
		t.Errorf("heap profile from loopback = %d; want 200", got)
	}
	// The admin port in the test listens on loopback, so a non-loopback caller cannot be made
	// here; localOnly's refusal is checked through its handler directly below.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/debug/pprof/heap", nil)
	req.RemoteAddr = "10.1.2.3:4567"
	ztunnel.LocalOnlyForTest(http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("profile from 10.1.2.3 = %d; want 403", rec.Code)
	}
}
