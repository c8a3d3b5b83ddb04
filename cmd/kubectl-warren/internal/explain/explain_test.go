package explain_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/explain"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

const td = "spiffe://cluster.local"

// article is the article's policy on two nodes: service-a and service-c on node-1, service-b on
// node-2, only service-a may call service-b on 8080; 9090 has no Server.
func article(p [3]byte) *nodeconfig.Snapshot {
	wl := func(name, node string, host byte) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + name, Name: name + "-0", Namespace: "default", ServiceAccount: name,
			Addresses: []string{ztunneltest.IP(p, host).String()}, Node: node, Ready: true,
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		}
	}
	b := wl("service-b", "node-2", 3)
	b.Servers = []string{"default/service-b"}
	return &nodeconfig.Snapshot{
		Version: "v1", TrustDomain: "cluster.local",
		Workloads: []*nodeconfig.Workload{wl("service-a", "node-1", 2), b, wl("service-c", "node-1", 4)},
		Services: []*nodeconfig.Service{{Name: "service-b", Namespace: "default", Addresses: []string{"10.96.0.10"},
			Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}},
			Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "uid-service-b"}}}},
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

func get(t testing.TB, addr, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: decode into the plugin's types: %v", path, err)
	}
}

// TestWhyAgreesWithLiveZtunnel runs real ztunnels (in-process, loopback, real certificates) on
// the article's policy, reads node-2's /config_dump with the plugin's wire types, and checks that
// why's verdict for each case is what the live ztunnel does to a real connection.
func TestWhyAgreesWithLiveZtunnel(t *testing.T) {
	p := ztunneltest.RandomNet()
	ca := catest.New(t, "cluster.local")
	m, err := ztunneltest.New(ztunneltest.Config{Snapshot: article(p), Signer: ca, Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node-1", "node-2"} {
		zn, err := m.StartNode(n, ztunneltest.Logs{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Stop must return once the ztunnel has drained; if it does not, fail with every
			// goroutine's stack rather than hang the package's test run.
			done := make(chan error, 1)
			go func() { done <- zn.Stop() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stop %s: %v", n, err)
				}
			case <-time.After(2 * time.Minute):
				var buf strings.Builder
				_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
				t.Errorf("ztunnel %s still draining after 2m; goroutines:\n%s", n, buf.String())
			}
		})
		if n == "node-2" {
			var d admin.ConfigDump
			get(t, zn.Admin, admin.PathConfigDump, &d)
			var cs admin.Certificates
			get(t, zn.Admin, admin.PathCertificates, &cs)
			if len(cs.Certificates) != 1 || len(cs.Certificates[0].Decoded) == 0 || cs.Certificates[0].ID != td+"/ns/default/sa/service-b" {
				t.Fatalf("node-2 certificates as the plugin decodes them: %+v", cs)
			}
			testWhy(t, m, p, d)
		}
	}
}

func testWhy(t *testing.T, m *ztunneltest.Mesh, p [3]byte, d admin.ConfigDump) {
	b := ztunneltest.IP(p, 3)
	ln, err := net.Listen("tcp", netip.AddrPortFrom(b, 8080).String())
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
			go func() {
				defer c.Close()
				buf := make([]byte, 3)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write([]byte("ok\n"))
				}
			}()
		}
	}()
	cfg, err := explain.Decode("node-2", d.Config)
	if err != nil {
		t.Fatal(err)
	}
	dst := cfg.Workload("uid-service-b", "", "")
	for _, tc := range []struct {
		name   string
		host   byte
		meshed bool
		want   explain.Decision
	}{
		{"service-a allowed by the policy", 2, true, explain.Decision{
			Verdict: "allow", PolicyKind: "AuthorizationPolicy", Policy: "default/service-a-to-b", Server: "default/service-b",
			Checks: []explain.Check{{Policy: "default/service-a-to-b", Target: "Server/service-b", Result: "matched",
				Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Reason: "identity matched"}},
		}},
		{"service-c denied: not in meshtls", 4, true, explain.Decision{
			Verdict: "deny", PolicyKind: "Server", Policy: "default/service-b (accessPolicy deny)", Server: "default/service-b",
			Checks: []explain.Check{{Policy: "default/service-a-to-b", Target: "Server/service-b", Result: "failed",
				Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Failed: []string{"meshTLS"},
				Reason: "identity " + td + "/ns/default/sa/service-c not in meshtls of default/service-a-to-b"}},
		}},
		{"unmeshed client denied: no identity", 9, false, explain.Decision{
			Verdict: "deny", PolicyKind: "Server", Policy: "default/service-b (accessPolicy deny)", Server: "default/service-b",
			Checks: []explain.Check{{Policy: "default/service-a-to-b", Target: "Server/service-b", Result: "failed",
				Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Failed: []string{"meshTLS"},
				Reason: "no client identity; meshtls of default/service-a-to-b requires one"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := explain.Source{Name: tc.name, Addr: ztunneltest.IP(p, tc.host)}
			if tc.meshed {
				src.Identity = spiffeid.RequireFromString(td + "/ns/default/sa/" + map[byte]string{2: "service-a", 4: "service-c"}[tc.host])
			}
			got, err := cfg.Why(src, dst, 8080)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(explain.Decision{}, "Source", "SourceIdentity", "SourceAddress", "Destination", "Port", "Node", "ConfigVersion", "Reason")); diff != "" {
				t.Errorf("why (-want +got):\n%s", diff)
			}
			// The live ztunnel does the same to a real connection.
			var c net.Conn
			if tc.meshed {
				c, err = m.DialFrom(src.Addr, netip.AddrPortFrom(b, 8080))
			} else {
				c, err = m.DialPlain(src.Addr, netip.AddrPortFrom(b, 8080))
			}
			live := "deny"
			if err == nil {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write([]byte("hi\n"))
				buf := make([]byte, 3)
				if n, _ := io.ReadFull(c, buf); n == 3 && string(buf) == "ok\n" {
					live = "allow"
				}
				c.Close()
			}
			if live != got.Verdict {
				t.Errorf("why says %s, the live ztunnel did %s", got.Verdict, live)
			}
		})
	}
}

func TestWhyBadInput(t *testing.T) {
	p := ztunneltest.RandomNet()
	if _, err := explain.Decode("node-1", nil); err == nil || !strings.Contains(err.Error(), "has no config yet") {
		t.Errorf("empty config: %v", err)
	}
	if _, err := explain.Decode("node-1", []byte("{not json")); err == nil || !strings.Contains(err.Error(), "config of node node-1") {
		t.Errorf("bad config: %v", err)
	}
	snap := article(p)
	snap.Workloads = append(snap.Workloads, &nodeconfig.Workload{Uid: "uid-plain", Name: "plain-0", Namespace: "plain", ServiceAccount: "x", Addresses: []string{"10.0.0.9"}})
	cfg := mustConfig(t, snap)
	a := explain.Source{Name: "a", Identity: spiffeid.RequireFromString(td + "/ns/default/sa/service-a")}
	for _, tc := range []struct {
		name string
		run  func() error
		want string
	}{
		{"destination not meshed", func() error { _, err := cfg.Why(a, cfg.Workload("uid-plain", "", ""), 80); return err }, "run: kubectl warren namespace enable plain"},
		{"unknown service", func() error { _, _, err := cfg.ServiceTargets("default", "nope", 80); return err }, "service default/nope is not in the mesh config"},
		{"service port", func() error { _, _, err := cfg.ServiceTargets("default", "service-b", 81); return err }, "has no port 81 (ports: 80)"},
		{"policy of unmeshed pod", func() error { _, err := cfg.PolicyOf(cfg.Workload("uid-plain", "", ""), 80); return err }, "is not in the mesh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("err %v; want one line containing %q", err, tc.want)
			}
		})
	}
	// Nothing else broke: the same config still answers.
	if d, err := cfg.Why(a, cfg.Workload("uid-service-b", "", ""), 8080); err != nil || d.Verdict != "allow" {
		t.Errorf("after bad input: %+v, %v", d, err)
	}
}

func mustConfig(t testing.TB, s *nodeconfig.Snapshot) *explain.Config {
	t.Helper()
	raw, err := protojsonMarshal(s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := explain.Decode("node-2", raw)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServiceAndPolicy(t *testing.T) {
	cfg := mustConfig(t, article(ztunneltest.RandomNet()))
	label, targets, err := cfg.ServiceTargets("default", "service-b", 80)
	if err != nil || label != "default/service-b:80" || len(targets) != 1 || targets[0].Port != 8080 {
		t.Fatalf("service targets %q %+v %v", label, targets, err)
	}
	b := cfg.Workload("uid-service-b", "", "")
	got, err := cfg.PolicyOf(b, 8080)
	if err != nil {
		t.Fatal(err)
	}
	want := explain.Policy{Pod: "default/service-b-0", Port: 8080, Node: "node-2", ConfigVersion: "v1", Server: "default/service-b", ServerPort: "8080", Access: "deny",
		Authorizations: []explain.Authorization{{Policy: "default/service-a-to-b", Target: "Server/service-b",
			Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Identities: []string{td + "/ns/default/sa/service-a"}, EnforcedBy: "ztunnel"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("policy 8080 (-want +got):\n%s", diff)
	}
	got, err = cfg.PolicyOf(b, 9090)
	if err != nil || got.Server != "" || got.Access != "all-unauthenticated" || got.DefaultFrom != "mesh" {
		t.Errorf("policy 9090: %+v %v; want the mesh default", got, err)
	}
}
