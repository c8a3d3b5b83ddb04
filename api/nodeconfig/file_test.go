package nodeconfig_test

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

func TestParseArticle(t *testing.T) {
	data, err := os.ReadFile("testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := nodeconfig.Parse(data)
	if err != nil {
		t.Fatalf("Parse(article.yaml): %v", err)
	}
	if got := len(s.GetWorkloads()); got != 2 {
		t.Fatalf("workloads = %d; want 2", got)
	}
	srv := s.GetServers()[0]
	if srv.GetPortNumber() != 8080 || srv.GetAuthorizations()[0].GetMeshTls().GetIdentities()[0] != "spiffe://cluster.local/ns/default/sa/service-a" {
		t.Errorf("server = %v; want port 8080 allowing service-a", srv)
	}
	// Marshal then Parse gives back the same snapshot.
	out, err := nodeconfig.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := nodeconfig.Parse(out)
	if err != nil {
		t.Fatalf("Parse(Marshal(s)): %v", err)
	}
	if diff := cmp.Diff(s, back, protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func valid() *nodeconfig.Snapshot {
	return &nodeconfig.Snapshot{
		Workloads: []*nodeconfig.Workload{
			{Uid: "a", Name: "a", Namespace: "ns", ServiceAccount: "sa", Addresses: []string{"10.0.0.1"}, Servers: []string{"ns/s"}},
			{Uid: "b", Name: "b", Namespace: "ns", ServiceAccount: "sa", Addresses: []string{"10.0.0.2", "fd00::2"}},
		},
		Services: []*nodeconfig.Service{{
			Name: "svc", Namespace: "ns", Addresses: []string{"10.96.0.1"},
			Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}},
			Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "a"}},
		}},
		Servers: []*nodeconfig.Server{{Name: "s", Namespace: "ns", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080}}},
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *nodeconfig.Snapshot)
		want   string
	}{
		{"workload without uid", func(s *nodeconfig.Snapshot) { s.Workloads[0].Uid = "" }, "uid is required"},
		{"duplicate uid", func(s *nodeconfig.Snapshot) { s.Workloads[1].Uid = "a" }, "workload a: uid used twice"},
		{"missing service account", func(s *nodeconfig.Snapshot) { s.Workloads[0].ServiceAccount = "" }, "name, namespace and service account are required"},
		{"bad address", func(s *nodeconfig.Snapshot) { s.Workloads[0].Addresses = []string{"10.0.0.300"} }, `address "10.0.0.300" is not an IP`},
		{"shared address", func(s *nodeconfig.Snapshot) { s.Workloads[1].Addresses = []string{"10.0.0.1"} }, "address 10.0.0.1 is also workload a's"},
		{"mapped address clash", func(s *nodeconfig.Snapshot) { s.Workloads[1].Addresses = []string{"::ffff:10.0.0.1"} }, "address 10.0.0.1 is also workload a's"},
		{"port out of range", func(s *nodeconfig.Snapshot) {
			s.Workloads[0].Ports = []*nodeconfig.WorkloadPort{{Name: "x", Port: 70000}}
		}, "number 70000 out of range"},
		{"unknown server", func(s *nodeconfig.Snapshot) { s.Workloads[0].Servers = []string{"ns/nope"} }, `server "ns/nope" is not in the snapshot`},
		{"server without port", func(s *nodeconfig.Snapshot) { s.Servers[0].Port = nil }, "a port number or name is required"},
		{"server port 0", func(s *nodeconfig.Snapshot) { s.Servers[0].Port = &nodeconfig.Server_PortNumber{} }, "port 0 out of range"},
		{"duplicate server", func(s *nodeconfig.Snapshot) {
			s.Servers = append(s.Servers, proto.Clone(s.Servers[0]).(*nodeconfig.Server))
		}, "server ns/s: defined twice"},
		{"vip is a pod ip", func(s *nodeconfig.Snapshot) { s.Services[0].Addresses = []string{"10.0.0.2"} }, "address 10.0.0.2 is also workload b's"},
		{"endpoint unknown", func(s *nodeconfig.Snapshot) { s.Services[0].Endpoints[0].WorkloadUid = "zz" }, `endpoint workload "zz" is not in the snapshot`},
		{"service port without target", func(s *nodeconfig.Snapshot) { s.Services[0].Ports[0].TargetPort = 0 }, "needs a target port number or name"},
		{"service port twice", func(s *nodeconfig.Snapshot) {
			s.Services[0].Ports = append(s.Services[0].Ports, &nodeconfig.ServicePort{ServicePort: 80, TargetPort: 1})
		}, "port 80 listed twice"},
		{"bad trust domain", func(s *nodeconfig.Snapshot) { s.TrustDomain = "spiffe://Cluster" }, "trust domain"},
		{"waypoint address", func(s *nodeconfig.Snapshot) { s.Workloads[0].Waypoint = &nodeconfig.GatewayAddress{Address: "wp"} }, `waypoint: address "wp" is not an IP`},
	}
	if err := nodeconfig.Validate(valid()); err != nil {
		t.Fatalf("Validate(valid) = %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.mutate(s)
			err := nodeconfig.Validate(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not yaml", "workloads: [", "parse node config"},
		{"unknown field", "workloadz: []", `unknown field "workloadz"`},
		{"bad enum", "defaults: {defaultInboundPolicy: maybe}", "parse node config"},
		{"invalid content", "workloads: [{uid: a}]", "name, namespace and service account are required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nodeconfig.Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) = %v; want an error containing %q", tc.in, err, tc.want)
			}
		})
	}
}

// withRoute is valid() plus a route using every kind of reference.
func withRoute() *nodeconfig.Snapshot {
	s := valid()
	s.Routes = []*nodeconfig.Route{{
		Name: "r", Namespace: "ns", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP,
		Parents: []*nodeconfig.RouteParent{
			{Parent: &nodeconfig.RouteParent_Service{Service: "ns/svc"}, Port: 80},
			{Parent: &nodeconfig.RouteParent_Server{Server: "ns/s"}},
		},
		Rules: []*nodeconfig.RouteRule{{
			Matches: []*nodeconfig.RouteMatch{{
				Path:    &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX, Value: "/api"},
				Headers: []*nodeconfig.NamedMatch{{Name: "x", Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION, Value: "^a+$"}},
			}},
			Filters: []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: &nodeconfig.URLRewrite{
				Path: &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/"}},
			}}}},
			Backends: []*nodeconfig.RouteBackend{{Service: "ns/svc", Port: 80, Weight: 1}, {Weight: 1}},
		}},
	}}
	return s
}

// TestValidateRoutes shows each bad route reported alone, by name, and the valid route passing.
func TestValidateRoutes(t *testing.T) {
	if err := nodeconfig.Validate(withRoute()); err != nil {
		t.Fatalf("Validate(withRoute) = %v", err)
	}
	rule := func(s *nodeconfig.Snapshot) *nodeconfig.RouteRule { return s.Routes[0].Rules[0] }
	regex := func(v string) *nodeconfig.StringMatch {
		return &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION, Value: v}
	}
	tests := []struct {
		name   string
		mutate func(s *nodeconfig.Snapshot)
		want   string
	}{
		{"no name", func(s *nodeconfig.Snapshot) { s.Routes[0].Name = "" }, "routes[0]: name and namespace are required"},
		{"no kind", func(s *nodeconfig.Snapshot) { s.Routes[0].Kind = 0 }, "kind is required"},
		{"twice", func(s *nodeconfig.Snapshot) {
			s.Routes = append(s.Routes, proto.Clone(s.Routes[0]).(*nodeconfig.Route))
		}, "route ROUTE_KIND_HTTP ns/r: defined twice"},
		{"no parents", func(s *nodeconfig.Snapshot) { s.Routes[0].Parents = nil }, "no parents"},
		{"unknown parent service", func(s *nodeconfig.Snapshot) {
			s.Routes[0].Parents[0].Parent = &nodeconfig.RouteParent_Service{Service: "ns/nope"}
		}, `parent service "ns/nope" is not in the snapshot`},
		{"unknown parent server", func(s *nodeconfig.Snapshot) {
			s.Routes[0].Parents[1].Parent = &nodeconfig.RouteParent_Server{Server: "ns/nope"}
		}, `parent server "ns/nope" is not in the snapshot`},
		{"empty parent", func(s *nodeconfig.Snapshot) { s.Routes[0].Parents[0].Parent = nil }, "names neither a service nor a server"},
		{"unknown backend", func(s *nodeconfig.Snapshot) { rule(s).Backends[0].Service = "ns/gone" }, `rules[0]: backend service "ns/gone" is not in the snapshot`},
		{"bad path regex", func(s *nodeconfig.Snapshot) {
			rule(s).Matches = append(rule(s).Matches, &nodeconfig.RouteMatch{Path: regex("(")})
			rule(s).Filters = nil
		}, `path: regular expression "("`},
		{"bad header regex", func(s *nodeconfig.Snapshot) { rule(s).Matches[0].Headers[0].Value = "a**" }, `header x: regular expression "a**"`},
		{"bad query regex", func(s *nodeconfig.Snapshot) {
			rule(s).Matches[0].QueryParams = []*nodeconfig.NamedMatch{{Name: "q", Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION, Value: "[z-a]"}}
		}, `query parameter q: regular expression "[z-a]"`},
		{"bad grpc regex", func(s *nodeconfig.Snapshot) { rule(s).Matches[0].GrpcMethod = regex("(x") }, `grpc method: regular expression "(x"`},
		{"prefix rewrite without prefix match", func(s *nodeconfig.Snapshot) {
			rule(s).Matches[0].Path.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT
		}, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"},
		{"prefix rewrite on a backend", func(s *nodeconfig.Snapshot) {
			rule(s).Matches[0].Path.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT
			rule(s).Backends[0].Filters, rule(s).Filters = rule(s).Filters, nil
		}, "backend ns/svc: ReplacePrefixMatch needs"},
		{"redirect status", func(s *nodeconfig.Snapshot) {
			rule(s).Filters = []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: &nodeconfig.RequestRedirect{StatusCode: 307}}}}
		}, "redirect status 307: want 301 or 302"},
		{"empty filter", func(s *nodeconfig.Snapshot) { rule(s).Filters = []*nodeconfig.RouteFilter{{}} }, "an empty filter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := withRoute()
			tc.mutate(s)
			err := nodeconfig.Validate(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tc.want)
			}
			// Only the route is wrong: one problem, nothing else reported.
			if n := strings.Count(err.Error(), "\n"); n != 0 {
				t.Errorf("Validate reported %d problems, want 1:\n%v", n+1, err)
			}
		})
	}
}
