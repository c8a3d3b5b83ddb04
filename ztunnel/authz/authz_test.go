package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

const (
	idA = "spiffe://cluster.local/ns/default/sa/service-a"
	idC = "spiffe://cluster.local/ns/default/sa/service-c"
)

// Shorthands for the enums.
const (
	unspecified            = nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED
	policyAllUnauth        = nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED
	policyAllAuth          = nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED
	policyClusterAuth      = nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED
	policyClusterUnauth    = nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED
	policyDeny             = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	policyAudit            = nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT
	targetServer           = nodeconfig.TargetKind_TARGET_KIND_SERVER
	targetNamespace        = nodeconfig.TargetKind_TARGET_KIND_NAMESPACE
	targetHTTPRoute        = nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE
	targetGRPCRoute        = nodeconfig.TargetKind_TARGET_KIND_GRPC_ROUTE
	reasonArticleAllowed   = "authorization default/service-a-to-b on server default/b matched"
	reasonMeshDefaultAllow = "no server covers the port; mesh default policy all-unauthenticated"
)

// src builds a Source; id "" means no mTLS, addr "" means unknown.
func src(tb testing.TB, id, addr string) Source {
	tb.Helper()
	var s Source
	if id != "" {
		s.Identity = spiffeid.RequireFromString(id)
	}
	if addr != "" {
		s.Addr = netip.MustParseAddr(addr)
	}
	return s
}

func mustCompile(tb testing.TB, s *nodeconfig.Snapshot) *Engine {
	tb.Helper()
	e, err := Compile(s)
	if err != nil {
		tb.Fatalf("Compile: %v", err)
	}
	return e
}

// evaluate runs Evaluate and Explain and fails unless they agree on everything but Checks.
func evaluate(tb testing.TB, e *Engine, dst *nodeconfig.Workload, port uint16, s Source) Decision {
	tb.Helper()
	got := e.Evaluate(dst, port, s)
	if got.Checks != nil {
		tb.Errorf("Evaluate(%d, %+v).Checks = %v, want nil", port, s, got.Checks)
	}
	ex := e.Explain(dst, port, s)
	ex.Checks = nil
	if diff := cmp.Diff(got, ex); diff != "" {
		tb.Errorf("Evaluate and Explain(%d, %+v) disagree (-evaluate +explain):\n%s", port, s, diff)
	}
	return got
}

func serverOn(name string, port uint32, access nodeconfig.DefaultPolicy, authz ...*nodeconfig.Authorization) *nodeconfig.Server {
	return &nodeconfig.Server{
		Name: name, Namespace: "default",
		Port:           &nodeconfig.Server_PortNumber{PortNumber: port},
		AccessPolicy:   access,
		Authorizations: authz,
	}
}

func meshTLSAuthz(name string, ids ...string) *nodeconfig.Authorization {
	return &nodeconfig.Authorization{
		Name: name, Namespace: "default", TargetKind: targetServer,
		MeshTls:            &nodeconfig.MeshTLS{Identities: ids},
		AuthenticationRefs: []string{"MeshTLSAuthentication/default/" + name},
	}
}

func networkAuthz(name string, nets ...*nodeconfig.Network) *nodeconfig.Authorization {
	return &nodeconfig.Authorization{Name: name, Namespace: "default", TargetKind: targetServer, Networks: nets}
}

func workload(servers ...string) *nodeconfig.Workload {
	return &nodeconfig.Workload{
		Uid: "uid-b", Name: "b-0", Namespace: "default", ServiceAccount: "service-b",
		Addresses: []string{"10.0.1.2"},
		Ports:     []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}, {Name: "admin", Port: 9090}},
		Servers:   servers,
	}
}

// articleSnapshot is the article's example: only service-a may call service-b on 8080.
func articleSnapshot() (*nodeconfig.Snapshot, *nodeconfig.Workload) {
	w := workload("default/b")
	return &nodeconfig.Snapshot{
		Version:   "1",
		Workloads: []*nodeconfig.Workload{w},
		Servers:   []*nodeconfig.Server{serverOn("b", 8080, unspecified, meshTLSAuthz("service-a-to-b", idA))},
	}, w
}

func TestArticlePolicy(t *testing.T) {
	t.Parallel()
	snap, b := articleSnapshot()
	e := mustCompile(t, snap)
	serverB := &ServerRef{Namespace: "default", Name: "b"}
	accessDeny := PolicyRef{Kind: KindServer, Namespace: "default", Name: "b", Default: "deny"}

	tests := []struct {
		name string
		port uint16
		src  Source
		want Decision
	}{{
		name: "service-a allowed",
		port: 8080,
		src:  src(t, idA, "10.0.2.3"),
		want: Decision{
			Allow:  true,
			Policy: PolicyRef{Kind: KindAuthorizationPolicy, Namespace: "default", Name: "service-a-to-b"},
			Server: serverB,
			Reason: reasonArticleAllowed,
		},
	}, {
		name: "service-c denied",
		port: 8080,
		src:  src(t, idC, "10.0.2.4"),
		want: Decision{
			Policy: accessDeny,
			Server: serverB,
			Reason: "no authorization on server default/b matched (identity " + idC + " not in meshtls of default/service-a-to-b); server access policy deny",
		},
	}, {
		name: "no identity denied",
		port: 8080,
		src:  src(t, "", "10.0.2.4"),
		want: Decision{
			Policy: accessDeny,
			Server: serverB,
			Reason: "no authorization on server default/b matched (no client identity; meshtls of default/service-a-to-b requires one); server access policy deny",
		},
	}, {
		name: "other port uses the mesh default",
		port: 9090,
		src:  src(t, "", "203.0.113.9"),
		want: Decision{
			Allow:  true,
			Policy: PolicyRef{Kind: KindDefault, Default: "all-unauthenticated"},
			Reason: reasonMeshDefaultAllow,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := evaluate(t, e, b, tt.port, tt.src)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate(b, %d, %+v) mismatch (-want +got):\n%s", tt.port, tt.src, diff)
			}
		})
	}
}

func TestArticleStrings(t *testing.T) {
	t.Parallel()
	snap, b := articleSnapshot()
	e := mustCompile(t, snap)
	tests := []struct {
		src  Source
		port uint16
		want string
	}{
		{src(t, idA, "10.0.2.3"), 8080, "allow authorizationpolicy/default/service-a-to-b: " + reasonArticleAllowed},
		{src(t, idC, "10.0.2.3"), 8080, "deny server/default/b:deny: no authorization on server default/b matched (identity " + idC + " not in meshtls of default/service-a-to-b); server access policy deny"},
		{src(t, "", "10.0.2.3"), 9090, "allow default:all-unauthenticated: " + reasonMeshDefaultAllow},
	}
	for _, tt := range tests {
		if got := e.Evaluate(b, tt.port, tt.src).String(); got != tt.want {
			t.Errorf("Evaluate(b, %d, %+v).String() = %q, want %q", tt.port, tt.src, got, tt.want)
		}
	}
	if got, want := (PolicyRef{Kind: KindProbe}).String(), "probe"; got != want {
		t.Errorf("probe PolicyRef.String() = %q, want %q", got, want)
	}
	if got, want := (Decision{Allow: true, Audit: true, Policy: PolicyRef{Kind: KindDefault, Default: "audit"}, Reason: "r"}).String(), "audit default:audit: r"; got != want {
		t.Errorf("audit Decision.String() = %q, want %q", got, want)
	}
}

func TestExplainArticle(t *testing.T) {
	t.Parallel()
	snap, b := articleSnapshot()
	e := mustCompile(t, snap)
	ref := PolicyRef{Kind: KindAuthorizationPolicy, Namespace: "default", Name: "service-a-to-b"}
	got := e.Explain(b, 8080, src(t, idC, "10.0.2.4")).Checks
	want := []Check{{
		Authorization: ref,
		Target:        "Server/b",
		Result:        CheckFailed,
		Failed:        []Requirement{RequirementMeshTLS},
		Reason:        "identity " + idC + " not in meshtls of default/service-a-to-b",
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain(service-c).Checks mismatch (-want +got):\n%s", diff)
	}
	if got, want := got[0].String(), "authorizationpolicy/default/service-a-to-b Server/b failed: identity "+idC+" not in meshtls of default/service-a-to-b"; got != want {
		t.Errorf("Check.String() = %q, want %q", got, want)
	}
	got = e.Explain(b, 8080, src(t, idA, "10.0.2.4")).Checks
	want = []Check{{Authorization: ref, Target: "Server/b", Result: CheckMatched, Reason: "identity matched"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain(service-a).Checks mismatch (-want +got):\n%s", diff)
	}
}

// TestDefaultPolicies runs each default policy against identity present/absent and address
// inside/outside the cluster networks, applied three ways: as the mesh default, as the
// workload's default, and as the access policy of a Server with no authorizations.
func TestDefaultPolicies(t *testing.T) {
	t.Parallel()
	type client struct {
		name string
		src  Source
	}
	clients := []client{
		{"id/in-cluster", src(t, idA, "10.1.2.3")},
		{"id/outside", src(t, idA, "8.8.8.8")},
		{"no-id/in-cluster", src(t, "", "192.168.7.7")},
		{"no-id/outside", src(t, "", "2001:db8::1")},
	}
	// want[i] is the verdict for clients[i].
	tests := []struct {
		policy nodeconfig.DefaultPolicy
		want   [4]bool
		causes [4]string // the cause appended to the reason on deny
	}{
		{policyAllUnauth, [4]bool{true, true, true, true}, [4]string{}},
		{policyAllAuth, [4]bool{true, true, false, false}, [4]string{2: "client has no mesh identity", 3: "client has no mesh identity"}},
		{policyClusterAuth, [4]bool{true, false, false, false}, [4]string{1: "address 8.8.8.8 outside cluster networks", 2: "client has no mesh identity", 3: "client has no mesh identity"}},
		{policyClusterUnauth, [4]bool{true, false, true, false}, [4]string{1: "address 8.8.8.8 outside cluster networks", 3: "address 2001:db8::1 outside cluster networks"}},
		{policyDeny, [4]bool{}, [4]string{}},
		{policyAudit, [4]bool{true, true, true, true}, [4]string{}},
	}
	for _, tt := range tests {
		name := DefaultPolicy(tt.policy).String()
		cases := []struct {
			how    string
			snap   *nodeconfig.Snapshot
			dst    *nodeconfig.Workload
			policy PolicyRef
			server *ServerRef
			reason string
		}{{
			how: "mesh",
			snap: &nodeconfig.Snapshot{
				Defaults: &nodeconfig.MeshDefaults{DefaultInboundPolicy: tt.policy},
			},
			dst:    workload(),
			policy: PolicyRef{Kind: KindDefault, Default: name},
			reason: "no server covers the port; mesh default policy " + name,
		}, {
			how: "workload",
			// The mesh default is the opposite of most policies: the workload's must win.
			snap:   &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{DefaultInboundPolicy: policyDeny}},
			dst:    &nodeconfig.Workload{Name: "w", Namespace: "default", DefaultInboundPolicy: tt.policy},
			policy: PolicyRef{Kind: KindDefault, Default: name},
			reason: "no server covers the port; workload default policy " + name,
		}, {
			how:    "server-access",
			snap:   &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 8080, tt.policy)}},
			dst:    workload("default/b"),
			policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "b", Default: name},
			server: &ServerRef{Namespace: "default", Name: "b"},
			reason: "server default/b has no authorizations; server access policy " + name,
		}}
		for _, c := range cases {
			e := mustCompile(t, c.snap)
			for i, cl := range clients {
				t.Run(name+"/"+c.how+"/"+cl.name, func(t *testing.T) {
					want := Decision{
						Allow:  tt.want[i],
						Audit:  tt.policy == policyAudit,
						Policy: c.policy,
						Server: c.server,
						Reason: c.reason,
					}
					if c.how == "server-access" && want.Allow && !want.Audit {
						want.Reason = "no authorization on server default/b matched; server access policy " + name
					}
					if tt.causes[i] != "" {
						want.Reason += ": " + tt.causes[i]
					}
					got := evaluate(t, e, c.dst, 8080, cl.src)
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("Evaluate(%d, %+v) mismatch (-want +got):\n%s", 8080, cl.src, diff)
					}
				})
			}
		}
	}
}

func TestWorkloadDefaultOverridesMesh(t *testing.T) {
	t.Parallel()
	e := mustCompile(t, &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{DefaultInboundPolicy: policyDeny}})
	open := &nodeconfig.Workload{Name: "open", Namespace: "default", DefaultInboundPolicy: policyAllUnauth}
	closed := &nodeconfig.Workload{Name: "closed", Namespace: "default"}
	s := src(t, idA, "10.0.0.1")
	if d := evaluate(t, e, open, 80, s); !d.Allow || d.Reason != "no server covers the port; workload default policy all-unauthenticated" {
		t.Errorf("Evaluate(open) = %v, want allow by the workload default", d)
	}
	if d := evaluate(t, e, closed, 80, s); d.Allow || d.Reason != "no server covers the port; mesh default policy deny" {
		t.Errorf("Evaluate(closed) = %v, want deny by the mesh default", d)
	}
}

func TestClusterNetworksFromSnapshot(t *testing.T) {
	t.Parallel()
	e := mustCompile(t, &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{
		DefaultInboundPolicy: policyClusterUnauth,
		ClusterNetworks:      []string{"198.51.100.0/24", "203.0.113.7"},
	}})
	tests := []struct {
		addr string
		want bool
	}{
		{"198.51.100.20", true},
		{"203.0.113.7", true},
		{"203.0.113.8", false},
		{"10.0.0.1", false}, // the built-in defaults no longer apply
	}
	for _, tt := range tests {
		if got := evaluate(t, e, workload(), 80, src(t, "", tt.addr)).Allow; got != tt.want {
			t.Errorf("Evaluate(from %s).Allow = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestServerAccessPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		access nodeconfig.DefaultPolicy
		want   Decision
	}{{
		access: policyAudit,
		want: Decision{
			Allow: true, Audit: true,
			Policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "b", Default: "audit"},
			Server: &ServerRef{Namespace: "default", Name: "b"},
			Reason: "no authorization on server default/b matched (identity " + idC + " not in meshtls of default/service-a-to-b); server access policy audit",
		},
	}, {
		access: policyAllUnauth,
		want: Decision{
			Allow:  true,
			Policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "b", Default: "all-unauthenticated"},
			Server: &ServerRef{Namespace: "default", Name: "b"},
			Reason: "no authorization on server default/b matched; server access policy all-unauthenticated",
		},
	}}
	for _, tt := range tests {
		t.Run(DefaultPolicy(tt.access).String(), func(t *testing.T) {
			t.Parallel()
			e := mustCompile(t, &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
				serverOn("b", 8080, tt.access, meshTLSAuthz("service-a-to-b", idA)),
			}})
			got := evaluate(t, e, workload("default/b"), 8080, src(t, idC, "10.0.0.1"))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate(service-c) mismatch (-want +got):\n%s", diff)
			}
			// An authorization that matches still decides, even over audit.
			if d := evaluate(t, e, workload("default/b"), 8080, src(t, idA, "10.0.0.1")); d.Policy.Kind != KindAuthorizationPolicy || d.Audit {
				t.Errorf("Evaluate(service-a) = %v, want allow by the authorization, no audit", d)
			}
		})
	}
}

func TestNamedPortServer(t *testing.T) {
	t.Parallel()
	named := &nodeconfig.Server{
		Name: "web", Namespace: "default",
		Port:         &nodeconfig.Server_PortName{PortName: "http"},
		AccessPolicy: policyDeny,
	}
	e := mustCompile(t, &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{named}})
	withHTTP := workload("default/web") // http -> 8080, admin -> 9090
	noHTTP := &nodeconfig.Workload{
		Name: "other", Namespace: "default", Servers: []string{"default/web"},
		Ports: []*nodeconfig.WorkloadPort{{Name: "grpc", Port: 8080}},
	}
	tests := []struct {
		name    string
		dst     *nodeconfig.Workload
		port    uint16
		covered bool
	}{
		{"named port resolves", withHTTP, 8080, true},
		{"other declared port", withHTTP, 9090, false},
		{"undeclared port", withHTTP, 8081, false},
		{"pod without the name", noHTTP, 8080, false},
	}
	for _, tt := range tests {
		got := evaluate(t, e, tt.dst, tt.port, src(t, idA, "10.0.0.1"))
		if covered := got.Server != nil; covered != tt.covered || got.Allow == tt.covered {
			t.Errorf("%s: Evaluate(%s, %d) = %v (server %v), want covered=%v", tt.name, tt.dst.GetName(), tt.port, got, got.Server, tt.covered)
		}
	}
}

func TestAuthorizationMatching(t *testing.T) {
	t.Parallel()
	both := &nodeconfig.Authorization{
		Name: "a-from-pods", Namespace: "default", TargetKind: targetServer,
		MeshTls:  &nodeconfig.MeshTLS{Identities: []string{idA}},
		Networks: []*nodeconfig.Network{{Cidr: "10.0.0.0/8"}},
	}
	except := networkAuthz("pods-but-not-nodes",
		&nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"10.1.0.0/16", "10.2.0.7"}},
		&nodeconfig.Network{Cidr: "10.1.5.0/24"},
		&nodeconfig.Network{Cidr: "2001:db8::/32", Except: []string{"2001:db8:1::/48"}},
	)
	bareIP := networkAuthz("one-host", &nodeconfig.Network{Cidr: "192.168.1.5"})
	teamA := meshTLSAuthz("team-a", "spiffe://cluster.local/ns/team-a/*")
	anyID := meshTLSAuthz("any-identity", "*")
	namespaceWide := &nodeconfig.Authorization{
		Name: "ns-wide", Namespace: "default", TargetKind: targetNamespace,
		MeshTls: &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/ops/sa/prober", "spiffe://other.domain/*"}},
	}
	routeOnly := &nodeconfig.Authorization{
		Name: "route-a", Namespace: "default", TargetKind: targetHTTPRoute, Route: "foo-bar",
		MeshTls: &nodeconfig.MeshTLS{Identities: []string{"*"}},
	}
	grpcRouteOnly := &nodeconfig.Authorization{
		Name: "route-b", Namespace: "default", TargetKind: targetGRPCRoute, Route: "svc",
	}
	snap := &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
		serverOn("and", 1, policyDeny, both),
		serverOn("except", 2, policyDeny, except),
		serverOn("bare", 3, policyDeny, bareIP),
		serverOn("prefix", 4, policyDeny, teamA),
		serverOn("any", 5, policyDeny, anyID),
		serverOn("or", 6, policyDeny, anyID, both, bareIP, namespaceWide),
		serverOn("routes", 7, policyDeny, routeOnly, grpcRouteOnly),
		serverOn("mixed", 8, policyDeny, routeOnly, teamA),
	}}
	e := mustCompile(t, snap)
	dst := workload("default/and", "default/except", "default/bare", "default/prefix", "default/any", "default/or", "default/routes", "default/mixed")

	tests := []struct {
		name   string
		port   uint16
		src    Source
		allow  bool
		by     string // Name of the deciding AuthorizationPolicy when allowed
		reason string // checked when set
	}{
		{name: "and: both match", port: 1, src: src(t, idA, "10.9.9.9"), allow: true, by: "a-from-pods"},
		{name: "and: identity fails", port: 1, src: src(t, idC, "10.9.9.9"),
			reason: "no authorization on server default/and matched (identity " + idC + " not in meshtls of default/a-from-pods); server access policy deny"},
		{name: "and: network fails", port: 1, src: src(t, idA, "172.16.0.1"),
			reason: "no authorization on server default/and matched (address 172.16.0.1 not in networks of default/a-from-pods); server access policy deny"},
		{name: "and: no address", port: 1, src: src(t, idA, ""),
			reason: "no authorization on server default/and matched (client address unknown; networks of default/a-from-pods require one); server access policy deny"},
		{name: "and: ipv4-mapped source", port: 1, src: src(t, idA, "::ffff:10.9.9.9"), allow: true, by: "a-from-pods"},

		{name: "except: in cidr", port: 2, src: src(t, "", "10.3.0.1"), allow: true, by: "pods-but-not-nodes"},
		{name: "except: excepted range", port: 2, src: src(t, "", "10.1.9.1"),
			reason: "no authorization on server default/except matched (address 10.1.9.1 excluded by an except in networks of default/pods-but-not-nodes); server access policy deny"},
		{name: "except: excepted bare ip", port: 2, src: src(t, "", "10.2.0.7")},
		{name: "except: next to excepted ip", port: 2, src: src(t, "", "10.2.0.8"), allow: true, by: "pods-but-not-nodes"},
		{name: "except: excepted but in another network", port: 2, src: src(t, "", "10.1.5.5"), allow: true, by: "pods-but-not-nodes"},
		{name: "except: ipv6", port: 2, src: src(t, "", "2001:db8:2::1"), allow: true, by: "pods-but-not-nodes"},
		{name: "except: ipv6 excepted", port: 2, src: src(t, "", "2001:db8:1::1")},
		{name: "except: ipv4-mapped excepted", port: 2, src: src(t, "", "::ffff:10.1.9.1")},
		{name: "except: outside", port: 2, src: src(t, "", "11.0.0.1"),
			reason: "no authorization on server default/except matched (address 11.0.0.1 not in networks of default/pods-but-not-nodes); server access policy deny"},

		{name: "bare ip: itself", port: 3, src: src(t, "", "192.168.1.5"), allow: true, by: "one-host"},
		{name: "bare ip: neighbour", port: 3, src: src(t, "", "192.168.1.6")},

		{name: "prefix: member", port: 4, src: src(t, "spiffe://cluster.local/ns/team-a/sa/x", "10.0.0.1"), allow: true, by: "team-a"},
		{name: "prefix: deeper path", port: 4, src: src(t, "spiffe://cluster.local/ns/team-a/sa/x/y", "10.0.0.1"), allow: true, by: "team-a"},
		{name: "prefix: team-ab is not team-a", port: 4, src: src(t, "spiffe://cluster.local/ns/team-ab/sa/x", "10.0.0.1"),
			reason: "no authorization on server default/prefix matched (identity spiffe://cluster.local/ns/team-ab/sa/x not in meshtls of default/team-a); server access policy deny"},
		{name: "prefix: the prefix itself", port: 4, src: src(t, "spiffe://cluster.local/ns/team-a", "10.0.0.1")},
		{name: "prefix: other trust domain", port: 4, src: src(t, "spiffe://evil.local/ns/team-a/sa/x", "10.0.0.1")},

		{name: "star: any identity", port: 5, src: src(t, "spiffe://anything.example/x", "8.8.8.8"), allow: true, by: "any-identity"},
		{name: "star: no identity", port: 5, src: src(t, "", "10.0.0.1"),
			reason: "no authorization on server default/any matched (no client identity; meshtls of default/any-identity requires one); server access policy deny"},

		{name: "or: first by name decides", port: 6, src: src(t, idA, "10.0.0.1"), allow: true, by: "a-from-pods"},
		{name: "or: network-only one", port: 6, src: src(t, "", "192.168.1.5"), allow: true, by: "one-host"},
		{name: "or: identity from another trust domain", port: 6, src: src(t, "spiffe://other.domain/x", "8.8.8.8"), allow: true, by: "any-identity"},
		{name: "or: none", port: 6, src: src(t, "", "8.8.8.8"),
			reason: "no authorization on server default/or matched (no client identity; meshtls of default/a-from-pods requires one; 3 more); server access policy deny"},

		{name: "routes: never allow at L4", port: 7, src: src(t, idA, "10.0.0.1"),
			reason: "server default/routes has only route authorizations (2, enforced by waypoints); server access policy deny"},
		{name: "mixed: route ignored", port: 8, src: src(t, idA, "10.0.0.1"),
			reason: "no authorization on server default/mixed matched (identity " + idA + " not in meshtls of default/team-a); server access policy deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := evaluate(t, e, dst, tt.port, tt.src)
			if got.Allow != tt.allow {
				t.Fatalf("Evaluate(%d, %+v) = %v, want allow=%v", tt.port, tt.src, got, tt.allow)
			}
			if tt.allow && got.Policy != (PolicyRef{Kind: KindAuthorizationPolicy, Namespace: "default", Name: tt.by}) {
				t.Errorf("Evaluate(%d, %+v).Policy = %v, want authorizationpolicy/default/%s", tt.port, tt.src, got.Policy, tt.by)
			}
			if !tt.allow && got.Policy.Kind != KindServer {
				t.Errorf("Evaluate(%d, %+v).Policy = %v, want the server access policy", tt.port, tt.src, got.Policy)
			}
			if tt.reason != "" && got.Reason != tt.reason {
				t.Errorf("Evaluate(%d, %+v).Reason = %q, want %q", tt.port, tt.src, got.Reason, tt.reason)
			}
		})
	}

	t.Run("explain reports every requirement and every authorization", func(t *testing.T) {
		t.Parallel()
		ref := func(name string) PolicyRef {
			return PolicyRef{Kind: KindAuthorizationPolicy, Namespace: "default", Name: name}
		}
		got := e.Explain(dst, 6, src(t, idC, "8.8.8.8")).Checks
		want := []Check{{
			Authorization: ref("a-from-pods"), Target: "Server/or", Result: CheckFailed,
			Failed: []Requirement{RequirementMeshTLS, RequirementNetwork},
			Reason: "identity " + idC + " not in meshtls of default/a-from-pods; address 8.8.8.8 not in networks of default/a-from-pods",
		}, {
			Authorization: ref("any-identity"), Target: "Server/or", Result: CheckMatched, Reason: "identity matched",
		}, {
			Authorization: ref("ns-wide"), Target: "Namespace/default", Result: CheckFailed,
			Failed: []Requirement{RequirementMeshTLS},
			Reason: "identity " + idC + " not in meshtls of default/ns-wide",
		}, {
			Authorization: ref("one-host"), Target: "Server/or", Result: CheckFailed,
			Failed: []Requirement{RequirementNetwork},
			Reason: "address 8.8.8.8 not in networks of default/one-host",
		}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Explain(or).Checks mismatch (-want +got):\n%s", diff)
		}

		got = e.Explain(dst, 8, src(t, idA, "10.0.0.1")).Checks
		want = []Check{{
			Authorization: ref("route-a"), Target: "HTTPRoute/foo-bar", Result: CheckSkipped,
			Reason: "targets HTTPRoute/foo-bar; enforced by a waypoint, never at L4",
		}, {
			Authorization: ref("team-a"), Target: "Server/mixed", Result: CheckFailed,
			Failed: []Requirement{RequirementMeshTLS},
			Reason: "identity " + idA + " not in meshtls of default/team-a",
		}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Explain(mixed).Checks mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestProbe(t *testing.T) {
	t.Parallel()
	snap, b := articleSnapshot()
	b.ProbePorts = []uint32{8080, 15021}
	e := mustCompile(t, snap)
	probe := src(t, "", "10.0.1.1")
	probe.Probe = true
	tests := []struct {
		name string
		port uint16
		src  Source
		want Decision
	}{{
		name: "probe to a probe port behind a deny server",
		port: 8080,
		src:  probe,
		want: Decision{
			Allow:  true,
			Policy: PolicyRef{Kind: KindProbe},
			Server: &ServerRef{Namespace: "default", Name: "b"},
			Reason: "kubelet probe to a probe port",
		},
	}, {
		name: "probe to a probe port with no server",
		port: 15021,
		src:  probe,
		want: Decision{Allow: true, Policy: PolicyRef{Kind: KindProbe}, Reason: "kubelet probe to a probe port"},
	}, {
		name: "same client, not a probe",
		port: 8080,
		src:  src(t, "", "10.0.1.1"),
		want: Decision{
			Policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "b", Default: "deny"},
			Server: &ServerRef{Namespace: "default", Name: "b"},
			Reason: "no authorization on server default/b matched (no client identity; meshtls of default/service-a-to-b requires one); server access policy deny",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, evaluate(t, e, b, tt.port, tt.src)); diff != "" {
				t.Errorf("Evaluate(b, %d, %+v) mismatch (-want +got):\n%s", tt.port, tt.src, diff)
			}
		})
	}

	t.Run("probe flag on a port that is not a probe port", func(t *testing.T) {
		t.Parallel()
		dst := workload("default/b")
		dst.ProbePorts = []uint32{15021}
		if d := evaluate(t, e, dst, 8080, probe); d.Allow || d.Policy.Kind != KindServer {
			t.Errorf("Evaluate(8080, probe) = %v, want deny by the server", d)
		}
	})
}

func TestOverlappingServers(t *testing.T) {
	t.Parallel()
	e := mustCompile(t, &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
		serverOn("b", 8080, policyDeny, meshTLSAuthz("service-a-to-b", idA)),
		serverOn("a-open", 8080, policyAllUnauth),
		{Name: "c-named", Namespace: "default", Port: &nodeconfig.Server_PortName{PortName: "http"}},
	}})
	// Deliberately out of order: the choice must not depend on it.
	dst := workload("default/c-named", "default/b", "default/a-open")
	got := evaluate(t, e, dst, 8080, src(t, "", "10.0.0.1"))
	want := Decision{
		Allow:  true,
		Policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "a-open", Default: "all-unauthenticated"},
		Server: &ServerRef{Namespace: "default", Name: "a-open", Overlapping: []string{"default/b", "default/c-named"}},
		Reason: "no authorization on server default/a-open matched; server access policy all-unauthenticated; overlapping servers default/b, default/c-named ignored",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Evaluate(overlap) mismatch (-want +got):\n%s", diff)
	}
}

func TestFailClosed(t *testing.T) {
	t.Parallel()
	snap, _ := articleSnapshot()
	e := mustCompile(t, snap)
	tests := []struct {
		name string
		dst  *nodeconfig.Workload
		want Decision
	}{{
		name: "nil workload",
		dst:  nil,
		want: Decision{Policy: PolicyRef{Kind: KindDefault, Default: "deny"}, Reason: "no destination workload; failing closed"},
	}, {
		name: "server unknown to the engine",
		dst:  workload("default/b", "default/gone"),
		want: Decision{
			Policy: PolicyRef{Kind: KindServer, Namespace: "default", Name: "gone"},
			Reason: `workload references server "default/gone" missing from the config; failing closed`,
		},
	}, {
		name: "unknown workload default",
		dst:  &nodeconfig.Workload{Name: "w", DefaultInboundPolicy: 42},
		want: Decision{
			Policy: PolicyRef{Kind: KindDefault, Default: "DefaultPolicy(42)"},
			Reason: "no server covers the port; unknown workload default policy DefaultPolicy(42); failing closed",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, evaluate(t, e, tt.dst, 9090, src(t, idA, "10.0.0.1"))); diff != "" {
				t.Errorf("Evaluate mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefaultPolicyStrings(t *testing.T) {
	t.Parallel()
	for p := policyAllUnauth; p <= policyAudit; p++ {
		s := DefaultPolicy(p).String()
		got, err := ParseDefaultPolicy(s)
		if err != nil || got != p {
			t.Errorf("ParseDefaultPolicy(%q) = %v, %v, want %v", s, got, err, p)
		}
	}
	want := []string{"unspecified", "all-unauthenticated", "all-authenticated", "cluster-authenticated", "cluster-unauthenticated", "deny", "audit", "DefaultPolicy(7)"}
	var got []string
	for p := range nodeconfig.DefaultPolicy(len(want)) {
		got = append(got, DefaultPolicy(p).String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DefaultPolicy.String mismatch (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "Deny", "unspecified", "all_unauthenticated", " deny"} {
		if p, err := ParseDefaultPolicy(bad); err == nil {
			t.Errorf("ParseDefaultPolicy(%q) = %v, want error", bad, p)
		}
	}
	_, err := ParseDefaultPolicy("allow")
	if got, want := fmt.Sprint(err), `unknown default policy "allow" (want all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit)`; got != want {
		t.Errorf("ParseDefaultPolicy(allow) error = %q, want %q", got, want)
	}
}

func TestEngineVersion(t *testing.T) {
	t.Parallel()
	snap, _ := articleSnapshot()
	if got := mustCompile(t, snap).Version(); got != "1" {
		t.Errorf("Version() = %q, want %q", got, "1")
	}
}

// TestEvaluateAllocs pins the per-connection cost: decisions that allow without audit do not
// allocate.
func TestEvaluateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	snap, b := articleSnapshot()
	snap.Servers = append(snap.Servers, serverOn("mixed", 7070, policyDeny,
		networkAuthz("pods", &nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"10.9.0.0/16"}}),
		meshTLSAuthz("team-a", "spiffe://cluster.local/ns/team-a/*")))
	b.Servers = append(b.Servers, "default/mixed")
	b.ProbePorts = []uint32{15021}
	e := mustCompile(t, snap)
	a := src(t, idA, "10.0.2.3")
	probe := src(t, "", "10.0.1.1")
	probe.Probe = true
	tests := []struct {
		name string
		port uint16
		src  Source
	}{
		{"authorization", 8080, a},
		{"second authorization", 7070, src(t, "spiffe://cluster.local/ns/team-a/sa/x", "10.9.0.1")},
		{"mesh default", 9090, a},
		{"probe", 15021, probe},
	}
	for _, tt := range tests {
		var d Decision
		allocs := testing.AllocsPerRun(100, func() { d = e.Evaluate(b, tt.port, tt.src) })
		if !d.Allow {
			t.Fatalf("%s: Evaluate = %v, want allow", tt.name, d)
		}
		if allocs != 0 {
			t.Errorf("%s: Evaluate allocates %v times per call, want 0", tt.name, allocs)
		}
	}
}
