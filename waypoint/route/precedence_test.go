package route_test

import (
	"net/http"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// TestHTTPPrecedence shows each precedence criterion winning over the next one: in every case
// the winner loses on all the criteria after the one being shown (it is the newer route, the
// later rule ...), and both candidates are tried in both input orders.
func TestHTTPPrecedence(t *testing.T) {
	m := func(path *nodeconfig.StringMatch, method string, headers, query int) *nodeconfig.RouteMatch {
		rm := &nodeconfig.RouteMatch{Path: path, Method: method}
		for i := range headers {
			rm.Headers = append(rm.Headers, named("h"+string(rune('a'+i)), exactType, "1"))
		}
		for i := range query {
			rm.QueryParams = append(rm.QueryParams, named("q"+string(rune('a'+i)), exactType, "1"))
		}
		return rm
	}
	exact := func(v string) *nodeconfig.StringMatch { return &nodeconfig.StringMatch{Type: exactType, Value: v} }
	prefix := func(v string) *nodeconfig.StringMatch { return &nodeconfig.StringMatch{Type: prefixType, Value: v} }
	regex := func(v string) *nodeconfig.StringMatch { return &nodeconfig.StringMatch{Type: regexType, Value: v} }
	req := newRequest("GET", "/a/b?qa=1&qb=1", "ha", "1", "hb", "1")
	req.Host = "foo.example.com"

	tests := []struct {
		name          string
		winner, loser *nodeconfig.Route
	}{
		{
			name: "exact hostname over wildcard hostname",
			winner: createdAt(withHosts(httpRoute("winner",
				newRule(m(prefix("/"), "", 0, 0))), "foo.example.com"), 2),
			loser: createdAt(withHosts(httpRoute("loser",
				newRule(m(exact("/a/b"), "GET", 2, 2))), "*.example.com"), 1),
		},
		{
			name: "longer wildcard hostname over shorter",
			winner: createdAt(withHosts(httpRoute("winner",
				newRule(m(prefix("/"), "", 0, 0))), "*.example.com"), 2),
			loser: createdAt(withHosts(httpRoute("loser",
				newRule(m(exact("/a/b"), "GET", 2, 2))), "*.com"), 1),
		},
		{
			name: "any hostname match over no hostnames",
			winner: createdAt(withHosts(httpRoute("winner",
				newRule(m(prefix("/"), "", 0, 0))), "*.com"), 2),
			loser: createdAt(httpRoute("loser",
				newRule(m(exact("/a/b"), "GET", 2, 2))), 1),
		},
		{
			name:   "exact path over regular expression",
			winner: createdAt(httpRoute("winner", newRule(m(exact("/a/b"), "", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(regex("/a/.*"), "GET", 2, 2))), 1),
		},
		{
			name:   "exact path over path prefix",
			winner: createdAt(httpRoute("winner", newRule(m(exact("/a/b"), "", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a/b"), "GET", 2, 2))), 1),
		},
		{
			name:   "regular expression over path prefix",
			winner: createdAt(httpRoute("winner", newRule(m(regex("/a/.*"), "", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a/b"), "GET", 2, 2))), 1),
		},
		{
			name:   "regular expression over the default prefix /",
			winner: createdAt(httpRoute("winner", newRule(m(regex("/a/.*"), "", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule()), 1),
		},
		{
			name:   "longer path prefix over shorter",
			winner: createdAt(httpRoute("winner", newRule(m(prefix("/a/b/"), "", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a"), "GET", 2, 2))), 1),
		},
		{
			name:   "method over no method",
			winner: createdAt(httpRoute("winner", newRule(m(prefix("/a"), "GET", 0, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a/"), "", 2, 2))), 1),
		},
		{
			name:   "more header matches over fewer",
			winner: createdAt(httpRoute("winner", newRule(m(prefix("/a"), "GET", 2, 0))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a"), "GET", 1, 2))), 1),
		},
		{
			name:   "more query matches over fewer",
			winner: createdAt(httpRoute("winner", newRule(m(prefix("/a"), "GET", 1, 2))), 2),
			loser:  createdAt(httpRoute("loser", newRule(m(prefix("/a"), "GET", 1, 1))), 1),
		},
		{
			name:   "older route over newer",
			winner: createdAt(httpRoute("winner", newRule(m(prefix("/a"), "GET", 1, 1))), 1),
			loser:  createdAt(httpRoute("a-loser", newRule(m(prefix("/a"), "GET", 1, 1))), 2),
		},
		{
			name:   "namespace/name alphabetical on equal creation time",
			winner: createdAt(httpRoute("a-winner", newRule(m(prefix("/a"), "GET", 1, 1))), 1),
			loser:  createdAt(httpRoute("b-loser", newRule(m(prefix("/a"), "GET", 1, 1))), 1),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range [][]*nodeconfig.Route{{tt.winner, tt.loser}, {tt.loser, tt.winner}} {
				table := compile(t, order...)
				if got := table.Match(svcParent, req); got == nil || got.Route != tt.winner {
					t.Errorf("routes %s, %s: matched %s, want %s", order[0].GetName(), order[1].GetName(), matched(got), tt.winner.GetName())
				}
			}
			// The loser matches on its own: it lost on precedence, not on its conditions.
			if got := compile(t, tt.loser).Match(svcParent, req); got == nil {
				t.Errorf("the losing route %s does not match on its own", tt.loser.GetName())
			}
		})
	}
}

// TestPrecedenceWithinRoute: equal matches resolve to the first rule, then the first match.
func TestPrecedenceWithinRoute(t *testing.T) {
	table := compile(t, httpRoute("r",
		newRule(pathMatch(exactType, "/other")),
		newRule(pathMatch(prefixType, "/a"), pathMatch(prefixType, "/a/")),
		newRule(pathMatch(prefixType, "/a")),
		newRule(pathMatch(prefixType, "/a/b"), pathMatch(exactType, "/a/b/c")),
	))
	tests := []struct{ path, want string }{
		{"/a/x", "r/1/0"},   // rule 1 and 2 tie; rule 1 first, match 0 first
		{"/a/b/x", "r/3/0"}, // longer prefix in a later rule
		{"/a/b/c", "r/3/1"}, // exact match in a later match of the same rule
		{"/other", "r/0/0"},
		{"/", "none"},
	}
	for _, tt := range tests {
		if got := matched(table.Match(svcParent, newRequest("GET", tt.path))); got != tt.want {
			t.Errorf("%s matched %s, want %s", tt.path, got, tt.want)
		}
	}
}

// TestHostnameBeforeOtherCriteria: with hostnames in play the best candidate is not the first
// one that matches; a later, more specific hostname still wins.
func TestHostnameBeforeOtherCriteria(t *testing.T) {
	table := compile(t,
		createdAt(httpRoute("no-host", newRule(pathMatch(exactType, "/x"))), 1),
		createdAt(withHosts(httpRoute("wild", newRule(pathMatch(prefixType, "/x"))), "*.example.com"), 2),
		createdAt(withHosts(httpRoute("exact", newRule()), "a.example.com", "*.example.com"), 3),
	)
	tests := []struct{ host, want string }{
		{"a.example.com", "exact/0/-1"}, // exact hostname beats exact path and the older routes
		// Both routes match "*.example.com" (13 characters), so path precedence decides: wild's
		// /x prefix beats exact's default "/".
		{"b.example.com", "wild/0/0"},
		{"svc", "no-host/0/0"},
	}
	for _, tt := range tests {
		r := newRequest("GET", "/x")
		r.Host = tt.host
		if got := matched(table.Match(svcParent, r)); got != tt.want {
			t.Errorf("Host %s matched %s, want %s", tt.host, got, tt.want)
		}
	}
}

func TestGRPC(t *testing.T) {
	greeter := createdAt(grpcRoute("greeter",
		newRule(grpcMatch(exactType, "helloworld.Greeter", "SayHello")),
		newRule(grpcMatch(exactType, "helloworld.Greeter", "")),
		newRule(grpcMatch(exactType, "", "Check")),
		newRule(grpcMatch(regexType, `pkg\.v[0-9]+\.Store`, `(Get|List).*`)),
		newRule(&nodeconfig.RouteMatch{
			GrpcService: &nodeconfig.StringMatch{Type: exactType, Value: "hdr.Svc"},
			Headers:     []*nodeconfig.NamedMatch{named("x-tenant", exactType, "blue")},
		}),
	), 1)
	web := createdAt(httpRoute("web", newRule()), 0)
	table := compile(t, greeter, web)

	tests := []struct {
		name string
		req  *http.Request
		want string
	}{
		{"exact service and method", grpcRequest("helloworld.Greeter", "SayHello"), "greeter/0/0"},
		{"service only", grpcRequest("helloworld.Greeter", "SayGoodbye"), "greeter/1/0"},
		{"method only", grpcRequest("grpc.health.v1.Health", "Check"), "greeter/2/0"},
		{"regular expressions", grpcRequest("pkg.v2.Store", "ListItems"), "greeter/3/0"},
		{"regular expression is anchored", grpcRequest("xpkg.v2.Store", "ListItems"), "none"},
		{"header", grpcRequest("hdr.Svc", "M", "x-tenant", "blue"), "greeter/4/0"},
		{"header missing", grpcRequest("hdr.Svc", "M"), "none"},
		{"no route matches: no fallback to HTTPRoutes", grpcRequest("other.Svc", "M"), "none"},
		{"plain HTTP request goes to HTTPRoutes", newRequest("POST", "/helloworld.Greeter/SayHello"), "web/0/-1"},
		{"HTTP/1.1 with gRPC content type is not gRPC", func() *http.Request {
			r := newRequest("POST", "/helloworld.Greeter/SayHello", "Content-Type", "application/grpc")
			return r
		}(), "web/0/-1"},
		{"application/grpc+proto", func() *http.Request {
			r := grpcRequest("helloworld.Greeter", "SayHello")
			r.Header.Set("Content-Type", "application/grpc+proto")
			return r
		}(), "greeter/0/0"},
		{"application/grpc-web is not gRPC", func() *http.Request {
			r := grpcRequest("helloworld.Greeter", "SayHello")
			r.Header.Set("Content-Type", "application/grpc-web")
			return r
		}(), "web/0/-1"},
		{"malformed gRPC path matches no service condition", func() *http.Request {
			r := grpcRequest("helloworld.Greeter", "SayHello")
			r.URL.Path = "/helloworld.Greeter/SayHello/extra"
			return r
		}(), "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matched(table.Match(svcParent, tt.req)); got != tt.want {
				t.Errorf("matched %s, want %s", got, tt.want)
			}
		})
	}

	// Without a GRPCRoute on the parent, gRPC requests use HTTPRoutes.
	httpOnly := compile(t, httpRoute("web", newRule(pathMatch(prefixType, "/helloworld.Greeter"))))
	if got := matched(httpOnly.Match(svcParent, grpcRequest("helloworld.Greeter", "SayHello"))); got != "web/0/0" {
		t.Errorf("gRPC request without GRPCRoutes matched %s, want web/0/0", got)
	}
	// A GRPCRoute without matches takes every gRPC request.
	catchAll := compile(t, grpcRoute("all", newRule()), web)
	if got := matched(catchAll.Match(svcParent, grpcRequest("a.B", "C"))); got != "all/0/-1" {
		t.Errorf("gRPC catch-all matched %s, want all/0/-1", got)
	}
}

// TestGRPCPrecedence shows each GRPCRoute criterion winning over the next.
func TestGRPCPrecedence(t *testing.T) {
	req := grpcRequest("pkg.Svc", "Method", "x-a", "1", "x-b", "1")
	req.Host = "foo.example.com"
	m := func(service, method string, headers int) *nodeconfig.RouteMatch {
		rm := grpcMatch(exactType, service, method)
		for i := range headers {
			rm.Headers = append(rm.Headers, named("x-"+string(rune('a'+i)), exactType, "1"))
		}
		return rm
	}
	tests := []struct {
		name          string
		winner, loser *nodeconfig.Route
	}{
		{
			name:   "exact hostname over wildcard",
			winner: createdAt(withHosts(grpcRoute("winner", newRule()), "foo.example.com"), 2),
			loser:  createdAt(withHosts(grpcRoute("loser", newRule(m("pkg.Svc", "Method", 2))), "*.example.com"), 1),
		},
		{
			name:   "service characters over method characters",
			winner: createdAt(grpcRoute("winner", newRule(m("pkg.Svc", "", 0))), 2),
			loser:  createdAt(grpcRoute("loser", newRule(m("", "Method", 2))), 1),
		},
		{
			name:   "exact service over regular expression",
			winner: createdAt(grpcRoute("winner", newRule(m("pkg.Svc", "", 0))), 2),
			loser:  createdAt(grpcRoute("loser", newRule(grpcMatch(regexType, "pkg.Svc", "Method"))), 1),
		},
		{
			name:   "method characters over header matches",
			winner: createdAt(grpcRoute("winner", newRule(m("pkg.Svc", "Method", 0))), 2),
			loser:  createdAt(grpcRoute("loser", newRule(m("pkg.Svc", "", 2))), 1),
		},
		{
			name:   "more header matches over older route",
			winner: createdAt(grpcRoute("winner", newRule(m("pkg.Svc", "Method", 2))), 2),
			loser:  createdAt(grpcRoute("loser", newRule(m("pkg.Svc", "Method", 1))), 1),
		},
		{
			name:   "older route over alphabetical",
			winner: createdAt(grpcRoute("winner", newRule(m("pkg.Svc", "Method", 1))), 1),
			loser:  createdAt(grpcRoute("a-loser", newRule(m("pkg.Svc", "Method", 1))), 2),
		},
		{
			name:   "alphabetical on equal creation time",
			winner: createdAt(grpcRoute("a-winner", newRule(m("pkg.Svc", "Method", 1))), 1),
			loser:  createdAt(grpcRoute("b-loser", newRule(m("pkg.Svc", "Method", 1))), 1),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range [][]*nodeconfig.Route{{tt.winner, tt.loser}, {tt.loser, tt.winner}} {
				table := compile(t, order...)
				if got := table.Match(svcParent, req); got == nil || got.Route != tt.winner {
					t.Errorf("matched %s, want %s", matched(got), tt.winner.GetName())
				}
			}
			if got := compile(t, tt.loser).Match(svcParent, req); got == nil {
				t.Errorf("the losing route %s does not match on its own", tt.loser.GetName())
			}
		})
	}
}

// TestPathIndex: candidates indexed by first path segment and those that match any path are
// merged in precedence order.
func TestPathIndex(t *testing.T) {
	table := compile(t,
		createdAt(httpRoute("root-exact", newRule(pathMatch(exactType, "/"))), 1),
		createdAt(httpRoute("catch-all", newRule()), 2),
		createdAt(httpRoute("a-prefix", newRule(pathMatch(prefixType, "/a/"))), 3),
		createdAt(httpRoute("a-deeper", newRule(pathMatch(prefixType, "/a/b/c"))), 4),
		createdAt(httpRoute("any-regex", newRule(pathMatch(regexType, `/[a-z]+/[0-9]+`))), 5),
		createdAt(httpRoute("a-regex", newRule(pathMatch(regexType, `/a/x.*`))), 6),
		createdAt(httpRoute("ab-regex", newRule(pathMatch(regexType, `/ab.*`))), 7),
		createdAt(httpRoute("b-exact", newRule(pathMatch(exactType, "/b"))), 8),
	)
	tests := []struct{ path, want string }{
		{"/", "root-exact/0/0"},
		{"/a", "a-prefix/0/0"},
		{"/a/", "a-prefix/0/0"},
		{"/a/1", "any-regex/0/0"}, // regex over prefix; the older regex first
		{"/a/xyz", "a-regex/0/0"},
		{"/a/x1", "a-regex/0/0"},
		{"/a/b/c/d", "a-deeper/0/0"},
		{"/abc", "ab-regex/0/0"},
		{"/ab/1", "any-regex/0/0"},
		{"/b", "b-exact/0/0"},
		{"/b/c", "catch-all/0/-1"},
		{"/c", "catch-all/0/-1"},
		{"*", "none"},          // OPTIONS *: not under "/"
		{"", "root-exact/0/0"}, // absolute-form without a path is "/"
	}
	for _, tt := range tests {
		r := newRequest("GET", "/")
		r.URL.Path = tt.path
		if got := matched(table.Match(svcParent, r)); got != tt.want {
			t.Errorf("%q matched %s, want %s", tt.path, got, tt.want)
		}
	}
}
