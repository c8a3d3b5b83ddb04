package authz

import (
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// TestEvaluateRoute: a waypoint counts the authorizations targeting the matched route, never
// those of other routes, and Evaluate (the ztunnel) never counts any of them.
func TestEvaluateRoute(t *testing.T) {
	routeAuthz := func(name string, kind nodeconfig.TargetKind, route, ns string, ids ...string) *nodeconfig.Authorization {
		return &nodeconfig.Authorization{
			Name: name, Namespace: ns, TargetKind: kind, Route: route,
			MeshTls: &nodeconfig.MeshTLS{Identities: ids},
		}
	}
	w := workload("default/b")
	snap := &nodeconfig.Snapshot{
		Version:   "1",
		Workloads: []*nodeconfig.Workload{w},
		Servers: []*nodeconfig.Server{serverOn("b", 8080, unspecified,
			routeAuthz("a-get-foo", targetHTTPRoute, "get-foo", "default", idA),
			routeAuthz("c-grpc", targetGRPCRoute, "grpc", "default", idC),
			meshTLSAuthz("c-server", idC),
		)},
	}
	e := mustCompile(t, snap)
	httpRoute := func(ns, name string) Route {
		return Route{Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Namespace: ns, Name: name}
	}
	tests := []struct {
		name   string
		id     string
		route  Route
		allow  bool
		policy string
	}{
		{"a on its route", idA, httpRoute("default", "get-foo"), true, "authorizationpolicy/default/a-get-foo"},
		{"a without a route", idA, Route{}, false, "server/default/b:deny"},
		{"a on another route", idA, httpRoute("default", "other"), false, "server/default/b:deny"},
		{"a on a same-named route of another namespace", idA, httpRoute("other", "get-foo"), false, "server/default/b:deny"},
		{"a on a GRPCRoute of the same name", idA, Route{Kind: nodeconfig.RouteKind_ROUTE_KIND_GRPC, Namespace: "default", Name: "get-foo"}, false, "server/default/b:deny"},
		{"c by the server authorization on any route", idC, httpRoute("default", "get-foo"), true, "authorizationpolicy/default/c-server"},
		{"nobody", "", httpRoute("default", "get-foo"), false, "server/default/b:deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.EvaluateRoute(w, 8080, src(t, tt.id, "10.0.0.1"), tt.route)
			if d.Allow != tt.allow || d.Policy.String() != tt.policy {
				t.Errorf("EvaluateRoute = %v, want allow=%v by %s", d, tt.allow, tt.policy)
			}
		})
	}
	// The ztunnel's Evaluate is unchanged: route authorizations never allow.
	if d := evaluate(t, e, w, 8080, src(t, idA, "10.0.0.1")); d.Allow {
		t.Errorf("Evaluate(a) = %v, want deny: route authorizations are for waypoints", d)
	}
}

func TestEvaluateRouteAllocs(t *testing.T) {
	w := workload("default/b")
	snap := &nodeconfig.Snapshot{
		Version:   "1",
		Workloads: []*nodeconfig.Workload{w},
		Servers: []*nodeconfig.Server{serverOn("b", 8080, unspecified, &nodeconfig.Authorization{
			Name: "r", Namespace: "default", TargetKind: targetHTTPRoute, Route: "r",
			MeshTls: &nodeconfig.MeshTLS{Identities: []string{idA}},
		})},
	}
	e := mustCompile(t, snap)
	s := src(t, idA, "10.0.0.1")
	r := Route{Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Namespace: "default", Name: "r"}
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	if n := testing.AllocsPerRun(100, func() { e.EvaluateRoute(w, 8080, s, r) }); n != 0 {
		t.Errorf("EvaluateRoute allocates %v times per allowed request, want 0", n)
	}
}
