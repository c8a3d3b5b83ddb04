package route_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

const (
	testService = "ns/svc"
	httpKind    = nodeconfig.RouteKind_ROUTE_KIND_HTTP
	grpcKind    = nodeconfig.RouteKind_ROUTE_KIND_GRPC
	exactType   = nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT
	prefixType  = nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX
	regexType   = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
)

var svcParent = route.Parent{Service: testService, Port: 80}

// newRoute is a route in namespace "ns" attached to Service ns/svc (every port).
func newRoute(name string, kind nodeconfig.RouteKind, rules ...*nodeconfig.RouteRule) *nodeconfig.Route {
	return &nodeconfig.Route{
		Namespace: "ns",
		Name:      name,
		Kind:      kind,
		Parents:   []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: testService}}},
		Rules:     rules,
	}
}

func httpRoute(name string, rules ...*nodeconfig.RouteRule) *nodeconfig.Route {
	return newRoute(name, httpKind, rules...)
}

func grpcRoute(name string, rules ...*nodeconfig.RouteRule) *nodeconfig.Route {
	return newRoute(name, grpcKind, rules...)
}

// withHosts sets the route's hostnames.
func withHosts(r *nodeconfig.Route, hosts ...string) *nodeconfig.Route {
	r.Hostnames = hosts
	return r
}

// createdAt sets the route's creation time.
func createdAt(r *nodeconfig.Route, t int64) *nodeconfig.Route {
	r.CreationTime = t
	return r
}

// newRule is a rule with the given matches and one backend, ns/backend:8080.
func newRule(matches ...*nodeconfig.RouteMatch) *nodeconfig.RouteRule {
	return &nodeconfig.RouteRule{
		Matches:  matches,
		Backends: []*nodeconfig.RouteBackend{{Service: "ns/backend", Port: 8080, Weight: 1}},
	}
}

func pathMatch(t nodeconfig.StringMatchType, v string) *nodeconfig.RouteMatch {
	return &nodeconfig.RouteMatch{Path: &nodeconfig.StringMatch{Type: t, Value: v}}
}

func named(name string, t nodeconfig.StringMatchType, v string) *nodeconfig.NamedMatch {
	return &nodeconfig.NamedMatch{Name: name, Type: t, Value: v}
}

func grpcMatch(t nodeconfig.StringMatchType, service, method string) *nodeconfig.RouteMatch {
	m := &nodeconfig.RouteMatch{}
	if service != "" {
		m.GrpcService = &nodeconfig.StringMatch{Type: t, Value: service}
	}
	if method != "" {
		m.GrpcMethod = &nodeconfig.StringMatch{Type: t, Value: method}
	}
	return m
}

// compile compiles routes that must all be valid.
func compile(tb testing.TB, routes ...*nodeconfig.Route) *route.Table {
	tb.Helper()
	t, errs := route.Compile(routes)
	if len(errs) > 0 {
		tb.Fatalf("Compile: %v", errs)
	}
	return t
}

// newRequest is an HTTP/1.1 request; target is an absolute URL or a path (Host "svc").
func newRequest(method, target string, header ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	if r.Host == "example.com" && target[0] == '/' {
		r.Host = "svc"
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return r
}

// grpcRequest is an HTTP/2 gRPC call of /service/method.
func grpcRequest(service, method string, header ...string) *http.Request {
	r := newRequest(http.MethodPost, "/"+service+"/"+method, header...)
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	r.Header.Set("Content-Type", "application/grpc")
	return r
}

// matched summarizes a Match for comparisons: "name/rule/match", or "none".
func matched(m *route.Match) string {
	if m == nil {
		return "none"
	}
	return fmt.Sprintf("%s/%d/%d", m.Route.GetName(), m.RuleIndex, m.MatchIndex)
}
