package authz

import (
	"strings"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	withAuthz := func(a *nodeconfig.Authorization) *nodeconfig.Snapshot {
		return &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 8080, policyDeny, a)}}
	}
	withNet := func(n *nodeconfig.Network) *nodeconfig.Snapshot {
		return withAuthz(networkAuthz("service-a-to-b", n))
	}
	withID := func(id string) *nodeconfig.Snapshot {
		return withAuthz(meshTLSAuthz("service-a-to-b", id))
	}
	tests := []struct {
		name string
		snap *nodeconfig.Snapshot
		// want is the whole error when exact, else a prefix followed by a cause from the
		// standard library or go-spiffe.
		want  string
		exact bool
	}{
		{name: "nil snapshot", snap: nil, want: "compile authz: nil snapshot", exact: true},
		{
			name: "bad cidr",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.0/33"}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/33": `,
		},
		{
			name: "bad bare ip",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.256"}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.256": `,
		},
		{
			name: "empty cidr",
			snap: withNet(&nodeconfig.Network{}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "": empty`, exact: true,
		},
		{
			name: "zoned ip",
			snap: withNet(&nodeconfig.Network{Cidr: "fe80::1%eth0"}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "fe80::1%eth0": zones are not allowed`, exact: true,
		},
		{
			name: "bad except",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"10.1.0.0/99"}}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/8": except "10.1.0.0/99": `,
		},
		{
			name: "except outside cidr",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"192.168.0.0/16"}}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/8": except "192.168.0.0/16" is not inside the cidr`, exact: true,
		},
		{
			name: "except wider than cidr",
			snap: withNet(&nodeconfig.Network{Cidr: "10.1.0.0/16", Except: []string{"10.0.0.0/8"}}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.1.0.0/16": except "10.0.0.0/8" is not inside the cidr`, exact: true,
		},
		{
			name: "except of the other family",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"fd00::/8"}}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/8": except "fd00::/8" is not inside the cidr`, exact: true,
		},
		{
			name: "except negating the cidr",
			snap: withNet(&nodeconfig.Network{Cidr: "10.0.0.0/8", Except: []string{"10.0.0.0/8"}}),
			want: `compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/8": except "10.0.0.0/8" negates the whole cidr`, exact: true,
		},
		{
			name: "wildcard inside an identity",
			snap: withID("spiffe://x/ns/*/sa"),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "spiffe://x/ns/*/sa": wildcards are only allowed as "*" or a trailing "/*"`, exact: true,
		},
		{
			name: "not a spiffe id",
			snap: withID("foo"),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "foo": want a SPIFFE ID, "*" or a SPIFFE ID followed by "/*": `,
		},
		{
			name: "linkerd-style dotted suffix",
			snap: withID("*.default.serviceaccount.identity.linkerd.cluster.local"),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "*.default.serviceaccount.identity.linkerd.cluster.local": wildcards are only allowed`,
		},
		{
			name: "double wildcard",
			snap: withID("spiffe://cluster.local/ns/**"),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "spiffe://cluster.local/ns/**": wildcards are only allowed`,
		},
		{
			name: "trailing slash",
			snap: withID("spiffe://cluster.local/ns/a/"),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "spiffe://cluster.local/ns/a/": want a SPIFFE ID`,
		},
		{
			name: "empty identity",
			snap: withID(""),
			want: `compile authz: server default/b: authorization service-a-to-b: meshtls identity "": want a SPIFFE ID`,
		},
		{
			name: "meshtls without identities",
			snap: withAuthz(&nodeconfig.Authorization{Name: "x", Namespace: "default", TargetKind: targetServer, MeshTls: &nodeconfig.MeshTLS{}}),
			want: "compile authz: server default/b: authorization x: meshtls has no identities", exact: true,
		},
		{
			name: "unspecified target kind",
			snap: withAuthz(&nodeconfig.Authorization{Name: "x", Namespace: "default"}),
			want: "compile authz: server default/b: authorization x: unsupported target kind TARGET_KIND_UNSPECIFIED", exact: true,
		},
		{
			name: "route target without route",
			snap: withAuthz(&nodeconfig.Authorization{Name: "x", Namespace: "default", TargetKind: targetHTTPRoute}),
			want: "compile authz: server default/b: authorization x: route target without a route name", exact: true,
		},
		{
			name: "bad identity in a route authorization",
			snap: withAuthz(&nodeconfig.Authorization{Name: "x", Namespace: "default", TargetKind: targetGRPCRoute, Route: "r", MeshTls: &nodeconfig.MeshTLS{Identities: []string{"foo"}}}),
			want: `compile authz: server default/b: authorization x: meshtls identity "foo": `,
		},
		{
			name: "authorization from another namespace",
			snap: withAuthz(&nodeconfig.Authorization{Name: "x", Namespace: "other", TargetKind: targetNamespace, Networks: []*nodeconfig.Network{{Cidr: "nope"}}}),
			want: `compile authz: server default/b: authorization other/x: network "nope": `,
		},
		{
			name: "authorization without name",
			snap: withAuthz(&nodeconfig.Authorization{Namespace: "default", TargetKind: targetServer}),
			want: "compile authz: server default/b: authorization : namespace and name are required", exact: true,
		},
		{
			name: "server without port",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{{Name: "b", Namespace: "default"}}},
			want: "compile authz: server default/b: no port", exact: true,
		},
		{
			name: "server port zero",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 0, policyDeny)}},
			want: "compile authz: server default/b: port 0 out of range 1-65535", exact: true,
		},
		{
			name: "server port too large",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 70000, policyDeny)}},
			want: "compile authz: server default/b: port 70000 out of range 1-65535", exact: true,
		},
		{
			name: "server empty port name",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{{Name: "b", Namespace: "default", Port: &nodeconfig.Server_PortName{}}}},
			want: "compile authz: server default/b: empty port name", exact: true,
		},
		{
			name: "server unknown access policy",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 80, 17)}},
			want: "compile authz: server default/b: unknown access policy DefaultPolicy(17)", exact: true,
		},
		{
			name: "server without namespace",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{{Name: "b", Port: &nodeconfig.Server_PortNumber{PortNumber: 80}}}},
			want: `compile authz: server "/b": namespace and name are required`, exact: true,
		},
		{
			name: "duplicate server",
			snap: &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{serverOn("b", 80, policyDeny), serverOn("b", 81, policyDeny)}},
			want: "compile authz: server default/b: duplicate", exact: true,
		},
		{
			name: "workload references an unknown server",
			snap: &nodeconfig.Snapshot{
				Servers:   []*nodeconfig.Server{serverOn("b", 80, policyDeny)},
				Workloads: []*nodeconfig.Workload{workload("default/b", "default/missing")},
			},
			want: `compile authz: workload default/b-0: server "default/missing" is not in the snapshot`, exact: true,
		},
		{
			name: "workload unknown default policy",
			snap: &nodeconfig.Snapshot{Workloads: []*nodeconfig.Workload{{Name: "w", Namespace: "default", DefaultInboundPolicy: 9}}},
			want: "compile authz: workload default/w: unknown default inbound policy DefaultPolicy(9)", exact: true,
		},
		{
			name: "mesh unknown default policy",
			snap: &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{DefaultInboundPolicy: 9}},
			want: "compile authz: mesh defaults: unknown default inbound policy DefaultPolicy(9)", exact: true,
		},
		{
			name: "bad cluster network",
			snap: &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{ClusterNetworks: []string{"10.0.0.0/8", "cluster"}}},
			want: `compile authz: mesh defaults: cluster network "cluster": `,
		},
		{
			name: "short ipv4-mapped prefix",
			snap: &nodeconfig.Snapshot{Defaults: &nodeconfig.MeshDefaults{ClusterNetworks: []string{"::ffff:0.0.0.0/80"}}},
			want: `compile authz: mesh defaults: cluster network "::ffff:0.0.0.0/80": IPv4-mapped prefix shorter than /96`, exact: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := Compile(tt.snap)
			if err == nil {
				t.Fatalf("Compile() = %v, nil, want error %q", e, tt.want)
			}
			got := err.Error()
			if tt.exact && got != tt.want || !tt.exact && !strings.HasPrefix(got, tt.want) {
				t.Errorf("Compile() error = %q, want %q", got, tt.want)
			}
			if !tt.exact && got == tt.want {
				t.Errorf("Compile() error = %q, want a cause after the prefix", got)
			}
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		snap *nodeconfig.Snapshot
	}{
		{"empty snapshot", &nodeconfig.Snapshot{}},
		{"trust-domain-wide prefix", &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
			serverOn("b", 80, policyDeny, meshTLSAuthz("td", "spiffe://cluster.local/*")),
		}}},
		{"bare ipv6 and mapped networks", &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
			serverOn("b", 80, policyDeny, networkAuthz("n",
				&nodeconfig.Network{Cidr: "2001:db8::1"},
				&nodeconfig.Network{Cidr: "::ffff:10.0.0.0/104", Except: []string{"10.0.0.1"}},
				&nodeconfig.Network{Cidr: "10.0.0.1/8"}, // host bits are masked
			)),
		}}},
		{"authorization with no requirements", &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
			serverOn("b", 80, policyDeny, &nodeconfig.Authorization{Name: "all", Namespace: "default", TargetKind: targetServer}),
		}}},
	}
	for _, tt := range tests {
		if _, err := Compile(tt.snap); err != nil {
			t.Errorf("%s: Compile() error = %v, want nil", tt.name, err)
		}
	}
}

func TestMappedPrefixMatchesUnmappedSource(t *testing.T) {
	t.Parallel()
	e := mustCompile(t, &nodeconfig.Snapshot{Servers: []*nodeconfig.Server{
		serverOn("b", 80, policyDeny, networkAuthz("n", &nodeconfig.Network{Cidr: "::ffff:10.0.0.0/104", Except: []string{"10.0.0.1"}})),
		serverOn("c", 81, policyDeny, &nodeconfig.Authorization{Name: "all", Namespace: "default", TargetKind: targetServer}),
	}})
	dst := workload("default/b", "default/c")
	tests := []struct {
		port uint16
		addr string
		want bool
	}{
		{80, "10.2.3.4", true},
		{80, "::ffff:10.2.3.4", true},
		{80, "10.0.0.1", false},
		{80, "11.0.0.1", false},
		{81, "", true}, // no requirements: anything goes
	}
	for _, tt := range tests {
		if got := evaluate(t, e, dst, tt.port, src(t, "", tt.addr)).Allow; got != tt.want {
			t.Errorf("Evaluate(%d, from %q).Allow = %v, want %v", tt.port, tt.addr, got, tt.want)
		}
	}
}
