package explain_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/explain"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

// l7 is the article's L7 example behind a waypoint: service-b (Server default/service-b :8080)
// with HTTPRoutes b-get-foo (GET /foo/bar; AuthorizationPolicy a-get-foo lets service-a only) and
// b-foo (PathPrefix /foo, no policy), a header-matched route b-admin (x-user: alice; policy
// lets service-c), and Service web :80 -> 8080 with a service-parent route web-api
// (PathPrefix /api; policy lets service-a) on the same pod.
func l7(p [3]byte) *nodeconfig.Snapshot {
	s := article(p)
	wp := &nodeconfig.GatewayAddress{Name: "waypoint", Namespace: "default", Address: ztunneltest.IP(p, 50).String(), Identity: td + "/ns/default/sa/waypoint"}
	b := s.Workloads[1]
	b.Waypoint = wp
	s.Services = append(s.Services, &nodeconfig.Service{Name: "web", Namespace: "default", Addresses: []string{"10.96.0.11"}, Waypoint: wp,
		Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}},
		Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "uid-service-b"}}})
	srv := s.Servers[0]
	srv.Authorizations = []*nodeconfig.Authorization{
		{Name: "a-get-foo", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, Route: "b-get-foo",
			MeshTls: &nodeconfig.MeshTLS{Identities: []string{td + "/ns/default/sa/service-a"}}, AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"}},
		{Name: "c-admin", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, Route: "b-admin",
			MeshTls: &nodeconfig.MeshTLS{Identities: []string{td + "/ns/default/sa/service-c"}}, AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-c"}},
		{Name: "a-web-api", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, Route: "web-api",
			MeshTls: &nodeconfig.MeshTLS{Identities: []string{td + "/ns/default/sa/service-a"}}, AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"}},
	}
	exact := func(v string) *nodeconfig.StringMatch {
		return &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT, Value: v}
	}
	prefix := func(v string) *nodeconfig.StringMatch {
		return &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX, Value: v}
	}
	server := []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Server{Server: "default/service-b"}}}
	backend := []*nodeconfig.RouteBackend{{Service: "default/web", Port: 80, Weight: 1}}
	s.Routes = []*nodeconfig.Route{
		{Name: "b-get-foo", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: server, CreationTime: 1,
			Rules: []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{{Method: "GET", Path: exact("/foo/bar")}}, Backends: backend}}},
		{Name: "b-foo", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: server, CreationTime: 2,
			Rules: []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{{Path: prefix("/foo")}}, Backends: backend}}},
		{Name: "b-admin", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: server, CreationTime: 3,
			Rules: []*nodeconfig.RouteRule{{Name: "alice", Matches: []*nodeconfig.RouteMatch{{Path: prefix("/admin"),
				Headers: []*nodeconfig.NamedMatch{{Name: "x-user", Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT, Value: "alice"}}}}, Backends: backend}}},
		{Name: "web-api", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, CreationTime: 4,
			Parents: []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: "default/web"}, Port: 80}},
			Rules:   []*nodeconfig.RouteRule{{Matches: []*nodeconfig.RouteMatch{{Path: prefix("/api")}}, Backends: backend}}},
	}
	return s
}

// TestWhyRequest explains HTTP requests on routes compiled by waypoint/route, as the waypoint
// does: the route that matches, then the L7 authorization of that route, or 404 when the
// Server has routes and none matches.
func TestWhyRequest(t *testing.T) {
	p := ztunneltest.RandomNet()
	cfg := mustConfig(t, l7(p))
	b := cfg.Workload("uid-service-b", "", "")
	id := func(sa string) explain.Source {
		return explain.Source{Name: sa, Identity: spiffeid.RequireFromString(td + "/ns/default/sa/" + sa), Addr: ztunneltest.IP(p, 2)}
	}
	for _, tc := range []struct {
		name string
		src  explain.Source
		req  explain.Request
		want explain.Decision
	}{
		{"service-a GET /foo/bar: allowed by the route's policy", id("service-a"), explain.Request{Method: "GET", Path: "/foo/bar"}, explain.Decision{
			Verdict: "allow", PolicyKind: "AuthorizationPolicy", Policy: "default/a-get-foo", Request: "GET /foo/bar", Route: "HTTP default/b-get-foo rule 0",
		}},
		{"service-c GET /foo/bar: denied, not in the route policy's identities", id("service-c"), explain.Request{Method: "GET", Path: "/foo/bar"}, explain.Decision{
			Verdict: "deny", PolicyKind: "Server", Policy: "default/service-b (accessPolicy deny)", Request: "GET /foo/bar", Route: "HTTP default/b-get-foo rule 0",
		}},
		{"service-a POST /foo/bar: the catch-all /foo route has no policy", id("service-a"), explain.Request{Method: "POST", Path: "/foo/bar"}, explain.Decision{
			Verdict: "deny", PolicyKind: "Server", Policy: "default/service-b (accessPolicy deny)", Request: "POST /foo/bar", Route: "HTTP default/b-foo rule 0",
		}},
		{"no route matches: 404", id("service-a"), explain.Request{Method: "GET", Path: "/elsewhere"}, explain.Decision{
			Verdict: "deny", PolicyKind: "Route", Policy: "none", Request: "GET /elsewhere",
			Reason: "no route of the parent matches the request: the waypoint answers 404",
		}},
		{"header match selects the admin route for service-c", id("service-c"),
			explain.Request{Method: "GET", Path: "/admin/x", Header: http.Header{"X-User": {"alice"}}}, explain.Decision{
				Verdict: "allow", PolicyKind: "AuthorizationPolicy", Policy: "default/c-admin", Request: "GET /admin/x", Route: "HTTP default/b-admin rule 0 (alice)",
			}},
		{"without the header no route matches", id("service-c"), explain.Request{Method: "GET", Path: "/admin/x", Header: http.Header{"X-User": {"bob"}}}, explain.Decision{
			Verdict: "deny", PolicyKind: "Route", Policy: "none", Request: "GET /admin/x",
			Reason: "no route of the parent matches the request: the waypoint answers 404",
		}},
		{"through the service: the service-parent route", id("service-a"), explain.Request{Method: "GET", Path: "/api/v1", Service: "default/web", ServicePort: 80}, explain.Decision{
			Verdict: "allow", PolicyKind: "AuthorizationPolicy", Policy: "default/a-web-api", Request: "GET /api/v1", Route: "HTTP default/web-api rule 0",
		}},
		{"through the service, a path no service route matches", id("service-a"), explain.Request{Method: "GET", Path: "/foo/bar", Service: "default/web", ServicePort: 80}, explain.Decision{
			Verdict: "deny", PolicyKind: "Route", Policy: "none", Request: "GET /foo/bar",
			Reason: "no route of the parent matches the request: the waypoint answers 404",
		}},
		{"unmeshed client GET /foo/bar", explain.Source{Name: "10.9.9.9", Addr: ztunneltest.IP(p, 9)}, explain.Request{Method: "GET", Path: "/foo/bar"}, explain.Decision{
			Verdict: "deny", PolicyKind: "Server", Policy: "default/service-b (accessPolicy deny)", Request: "GET /foo/bar", Route: "HTTP default/b-get-foo rule 0",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cfg.WhyRequest(tc.src, b, 8080, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			ignore := []string{"Source", "SourceIdentity", "SourceAddress", "Destination", "Port", "Node", "ConfigVersion", "Checks", "Server", "Waypoint"}
			if tc.want.Reason == "" {
				ignore = append(ignore, "Reason")
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(explain.Decision{}, ignore...)); diff != "" {
				t.Errorf("why (-want +got):\n%s", diff)
			}
			if got.Waypoint != "default/waypoint" || got.Server != "default/service-b" {
				t.Errorf("waypoint %q server %q; want default/waypoint, default/service-b", got.Waypoint, got.Server)
			}
			// The matched route's policies are marked as counted; the others stay with the
			// waypoint (never allowing for this request).
			for _, ch := range got.Checks {
				matched := got.Route != "" && strings.Contains(got.Route, "/"+map[string]string{
					"default/a-get-foo": "b-get-foo", "default/c-admin": "b-admin", "default/a-web-api": "web-api"}[ch.Policy]+" ")
				if (ch.Result == "route") != matched {
					t.Errorf("check %s: result %q for route %q", ch.Policy, ch.Result, got.Route)
				}
			}
		})
	}
	// At L4 alone, route-targeted policies never allow: the waypoint must see the request.
	d, err := cfg.Why(id("service-a"), b, 8080)
	if err != nil || d.Verdict != "deny" || len(d.Checks) != 3 {
		t.Errorf("L4 why on a Server whose policies all target routes: %+v %v", d, err)
	}
}

// TestWhyRequestBadInput: a request the waypoint could not parse is a clear error, and the
// config keeps answering.
func TestWhyRequestBadInput(t *testing.T) {
	p := ztunneltest.RandomNet()
	cfg := mustConfig(t, l7(p))
	a := explain.Source{Name: "a", Identity: spiffeid.RequireFromString(td + "/ns/default/sa/service-a")}
	b := cfg.Workload("uid-service-b", "", "")
	_, err := cfg.WhyRequest(a, b, 8080, explain.Request{Method: "GET IT", Path: "/foo/bar"})
	if err == nil || !strings.Contains(err.Error(), `request GET IT /foo/bar: net/http: invalid method "GET IT"`) {
		t.Errorf("bad method: %v", err)
	}
	plain := cfg.Workload("uid-service-a", "", "")
	plain.TunnelProtocol = nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_NONE
	if _, err := cfg.WhyRequest(a, plain, 8080, explain.Request{Method: "GET", Path: "/"}); err == nil || !strings.Contains(err.Error(), "is not in the mesh") {
		t.Errorf("unmeshed destination: %v", err)
	}
	if d, err := cfg.WhyRequest(a, b, 8080, explain.Request{Method: "GET", Path: "/foo/bar"}); err != nil || d.Verdict != "allow" {
		t.Errorf("after bad input: %+v %v", d, err)
	}
}
