package report_test

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/explain"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/report"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func golden(t *testing.T, name string, v any, table func(w io.Writer)) {
	t.Helper()
	var buf bytes.Buffer
	if err := report.Print(&buf, report.Table, v, table); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

var cert = admin.Certificate{
	ID: "spiffe://cluster.local/ns/default/sa/service-a", State: "valid", Serial: "1a2b",
	NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(22 * time.Hour), RotateAt: now.Add(10 * time.Hour),
	Decoded: []admin.ChainCert{
		{Subject: "", Issuer: "O=warren,CN=warren root", Serial: "1a2b", URIs: []string{"spiffe://cluster.local/ns/default/sa/service-a"}, NotAfter: now.Add(22 * time.Hour)},
		{Subject: "O=warren,CN=warren root", Issuer: "O=warren,CN=warren root", Serial: "1", NotAfter: now.Add(24 * 365 * time.Hour), IsCA: true},
	},
}

var decisions = []explain.Decision{
	{Source: "default/service-a", SourceIdentity: "spiffe://cluster.local/ns/default/sa/service-a", SourceAddress: "10.244.1.2",
		Destination: "default/service-b", Port: 8080, Node: "node-2", ConfigVersion: "42", Verdict: "allow",
		PolicyKind: "AuthorizationPolicy", Policy: "default/service-a-to-b", Server: "default/service-b",
		Reason: "authorization default/service-a-to-b on server default/service-b matched",
		Checks: []explain.Check{{Policy: "default/service-a-to-b", Target: "Server/service-b", Result: "matched",
			Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Reason: "identity matched"}}},
	{Source: "10.244.1.9", SourceAddress: "10.244.1.9", Destination: "default/service-b", Service: "default/service-b:80",
		Port: 8080, Node: "node-2", ConfigVersion: "42", Verdict: "deny", PolicyKind: "Server",
		Policy: "default/service-b (accessPolicy deny)", Server: "default/service-b",
		Reason: "no authorization on server default/service-b matched (no client identity; meshtls of default/service-a-to-b requires one); server access policy deny",
		Checks: []explain.Check{{Policy: "default/service-a-to-b", Target: "Server/service-b", Result: "failed", Failed: []string{"meshTLS"},
			Authentications: []string{"MeshTLSAuthentication/default/service-a"}, Reason: "no client identity; meshtls of default/service-a-to-b requires one"}}},
	{Source: "default/service-a", SourceIdentity: "spiffe://cluster.local/ns/default/sa/service-a", Destination: "default/service-b",
		Port: 9090, Node: "node-2", ConfigVersion: "42", Verdict: "allow", PolicyKind: "Default", Policy: "all-unauthenticated",
		Reason: "no server covers the port; mesh default policy all-unauthenticated", Request: "GET /foo/bar", Route: "HTTP default/b-route rule 0", Waypoint: "default/waypoint"},
}

func TestTables(t *testing.T) {
	golden(t, "identity", nil, func(w io.Writer) {
		report.IdentityTable(w, []report.PodIdentity{
			{Pod: "default/service-a", Node: "node-1", SPIFFEID: cert.ID, Certificate: &cert},
		}, now)
	})
	golden(t, "why", nil, func(w io.Writer) { report.WhyTable(w, decisions) })
	golden(t, "policy", nil, func(w io.Writer) {
		report.PolicyTable(w, explain.Policy{Pod: "default/service-b", Port: 8080, Node: "node-2", ConfigVersion: "42", Server: "default/service-b",
			ServerPort: "8080", Access: "deny", Authorizations: []explain.Authorization{
				{Policy: "default/service-a-to-b", Target: "Server/service-b", Authentications: []string{"MeshTLSAuthentication/default/service-a"},
					Identities: []string{"spiffe://cluster.local/ns/default/sa/service-a"}, EnforcedBy: "ztunnel"},
				{Policy: "default/get-foo", Target: "HTTPRoute/b-route", Networks: []string{"10.0.0.0/8 except 10.9.0.0/16"}, EnforcedBy: "waypoint"},
			}})
		fmt.Fprintln(w)
		report.PolicyTable(w, explain.Policy{Pod: "default/service-b", Port: 9090, Node: "node-2", ConfigVersion: "42", Access: "all-unauthenticated", DefaultFrom: "mesh"})
	})
	golden(t, "status", nil, func(w io.Writer) {
		report.StatusTable(w, report.Status{
			Namespaces: []report.NamespaceStatus{{Name: "default", Mode: "ambient", Pods: 3, Meshed: 3, Waypoint: "waypoint"}, {Name: "plain", Pods: 2}},
			Ztunnels: []report.ZtunnelStatus{
				{Node: "node-1", Pod: "warren-ztunnel-node-1", Ready: true, BuildVersion: "v0.1.0", ConfigVersion: "42", Workloads: 2, Certificates: 2,
					Expiring: []string{"spiffe://cluster.local/ns/default/sa/c (failed: ca down, expires in 40m0s)"}},
				{Node: "node-2", Pod: "warren-ztunnel-node-2", Error: "ztunnel on node node-2 is not reachable through the API server: connection refused"},
			},
			Waypoints: []report.WaypointStatus{{Namespace: "default", Name: "waypoint", Programmed: "True", Serves: []string{"namespace/default"}}},
		})
	})
	snap := &nodeconfig.Snapshot{
		Workloads: []*nodeconfig.Workload{
			{Name: "service-a", Namespace: "default", ServiceAccount: "service-a", Addresses: []string{"10.244.1.2"}, Node: "node-1", TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE},
			{Name: "plain-x", Namespace: "plain", Addresses: []string{"10.244.1.3"}, Node: "node-1"},
			{Name: "service-b", Namespace: "default", ServiceAccount: "service-b", Addresses: []string{"10.244.2.2"}, Node: "node-2",
				TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, Waypoint: &nodeconfig.GatewayAddress{Namespace: "default", Name: "waypoint"}},
		},
		Services: []*nodeconfig.Service{{Name: "service-b", Namespace: "default", Addresses: []string{"10.96.0.10"},
			Ports: []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 81, TargetPortName: "http"}}, Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "b"}}}},
		Servers: []*nodeconfig.Server{
			{Name: "service-b", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080}, Authorizations: []*nodeconfig.Authorization{
				{Name: "service-a-to-b", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER, AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"}},
				{Name: "get-foo", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, Route: "b-route"},
			}},
			{Name: "admin", Namespace: "default", Port: &nodeconfig.Server_PortName{PortName: "admin"}, AccessPolicy: nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT},
		},
	}
	golden(t, "zc-workloads", nil, func(w io.Writer) { report.WorkloadsTable(w, "node-1", snap.Workloads) })
	golden(t, "zc-services", nil, func(w io.Writer) { report.ServicesTable(w, "node-1", snap.Services) })
	golden(t, "zc-policies", nil, func(w io.Writer) { report.PoliciesTable(w, "node-2", snap.Servers) })
	golden(t, "zc-certificates", nil, func(w io.Writer) {
		report.CertificatesTable(w, []report.NodeCertificates{{Node: "node-1", Certificates: []admin.Certificate{cert,
			{ID: "spiffe://cluster.local/ns/default/sa/c", State: "pending"}}}}, now)
	})
	golden(t, "zc-connections", nil, func(w io.Writer) {
		report.ConnectionsTable(w, []admin.Connections{{Node: "node-2",
			Workloads: []admin.WorkloadConnections{{Name: "default/service-b", Identity: "spiffe://cluster.local/ns/default/sa/service-b", OpenInbound: 1, Pool: admin.PoolStats{Conns: 1, Streams: 2}}},
			Recent: []admin.ConnectionRecord{
				{Start: now.Add(-time.Minute), Direction: "inbound", Mode: "hbone", Src: "10.244.1.2:40000", Dst: "10.244.2.2:8080", DstWorkload: "default/service-b",
					SrcIdentity: "spiffe://cluster.local/ns/default/sa/service-a", DstIdentity: "spiffe://cluster.local/ns/default/sa/service-b", Upstream: 8, Downstream: 30, Duration: 1500 * time.Microsecond},
				{Start: now.Add(-time.Second), Direction: "inbound", Mode: "plaintext", Src: "10.244.1.9:40001", Dst: "10.244.2.2:8080", Error: "denied: no client identity"},
			}}})
	})
	golden(t, "authz", nil, func(w io.Writer) {
		report.EventsTable(w, []admin.SecurityEvent{{Time: now.Add(-time.Minute), Node: "node-2", Type: "deny", Src: "10.244.1.3:51234",
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/service-c", DstWorkload: "default/service-b", Dst: "10.244.2.2:8080",
			PolicyKind: "Server", Policy: "default/service-b", Server: "default/service-b",
			Reason: "no authorization on server default/service-b matched (identity spiffe://cluster.local/ns/default/sa/service-c not in meshtls of default/service-a-to-b); server access policy deny"}})
	})
	golden(t, "waypoints", nil, func(w io.Writer) {
		report.WaypointsTable(w, []report.Waypoint{{Namespace: "default", Name: "waypoint", Programmed: "Unknown", BoundBy: []string{"namespace/default", "service/service-b"}}})
	})
}

func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{{"", "table", false}, {"json", "json", false}, {"yaml", "yaml", false}, {"wide", "", true}} {
		f, err := report.ParseFormat(tc.in)
		if string(f) != tc.want || (err != nil) != tc.err {
			t.Errorf("ParseFormat(%q) = %q, %v", tc.in, f, err)
		}
		if err != nil && !strings.Contains(err.Error(), "use -o table, -o json or -o yaml") {
			t.Errorf("ParseFormat(%q): %v; want the formats named", tc.in, err)
		}
	}
	var buf bytes.Buffer
	if err := report.Print(&buf, report.YAML, decisions[:1], nil); err != nil || !strings.Contains(buf.String(), "verdict: allow") {
		t.Errorf("yaml: %q %v", buf.String(), err)
	}
	buf.Reset()
	if err := report.Print(&buf, report.JSON, decisions[:1], nil); err != nil || !strings.Contains(buf.String(), `"verdict": "allow"`) {
		t.Errorf("json: %q %v", buf.String(), err)
	}
}

func TestUntil(t *testing.T) {
	for d, want := range map[time.Duration]string{
		22 * time.Hour: "22h", 90 * time.Minute: "1h30m", 4*time.Minute + 10*time.Second: "4m10s", 5 * time.Second: "5s",
		-3 * time.Minute: "-3m0s", 72 * time.Hour: "3d",
	} {
		if got := report.Until(now.Add(d), now); got != want {
			t.Errorf("Until(%v) = %q, want %q", d, got, want)
		}
	}
}
