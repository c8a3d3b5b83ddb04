package route_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

// benchTable is 50 routes of 5 rules on one Service, the worst case for one parent: every
// request is checked against all 250 rules in precedence order. Rule j of route i matches
// PathPrefix /r<i>/<j> with a method (odd rules) and a header (rules 3 and 4); with regex,
// rule 4 is a RegularExpression path instead; with hosts, every route has two hostnames.
func benchTable(tb testing.TB, regex, hosts bool) *route.Table {
	tb.Helper()
	var routes []*nodeconfig.Route
	for i := range 50 {
		var rules []*nodeconfig.RouteRule
		for j := range 5 {
			m := &nodeconfig.RouteMatch{Path: &nodeconfig.StringMatch{Type: prefixType, Value: fmt.Sprintf("/r%d/%d", i, j)}}
			if j%2 == 1 {
				m.Method = "GET"
			}
			if j >= 3 {
				m.Headers = []*nodeconfig.NamedMatch{named("x-tenant", exactType, "blue")}
			}
			if regex && j == 4 {
				m.Path = &nodeconfig.StringMatch{Type: regexType, Value: fmt.Sprintf("/r%d/[0-9]+/items", i)}
			}
			rules = append(rules, newRule(m))
		}
		r := createdAt(httpRoute(fmt.Sprintf("route-%02d", i), rules...), int64(i))
		if hosts {
			r.Hostnames = []string{fmt.Sprintf("r%d.example.com", i), "*.example.com"}
		}
		routes = append(routes, r)
	}
	return compile(tb, routes...)
}

func BenchmarkMatch(b *testing.B) {
	cases := []struct {
		name         string
		regex, hosts bool
		target       string
		want         string
	}{
		{"first", false, false, "http://svc/r0/0/x", "route-00/0/0"},
		{"last", false, false, "http://svc/r49/4/x", "route-49/4/0"},
		{"none", false, false, "http://svc/nothing", "none"},
		{"regex", true, false, "http://svc/r49/42/items", "route-49/4/0"},
		{"hostnames", false, true, "http://r49.example.com/r49/4/x", "route-49/4/0"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			table := benchTable(b, c.regex, c.hosts)
			r := newRequest(http.MethodGet, c.target, "x-tenant", "blue")
			if got := matched(table.Match(svcParent, r)); got != c.want {
				b.Fatalf("matched %s, want %s", got, c.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				table.Match(svcParent, r)
			}
		})
	}
}

// TestMatchAllocs: matching without regular expressions, repeated headers or encoded query
// parameters does not allocate, whichever rule wins.
func TestMatchAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	table := benchTable(t, false, false)
	hosts := benchTable(t, false, true)
	q := compile(t, httpRoute("q", newRule(&nodeconfig.RouteMatch{QueryParams: []*nodeconfig.NamedMatch{named("a", exactType, "1")}})))
	g := compile(t, grpcRoute("g", newRule(grpcMatch(exactType, "pkg.Svc", "M"))))
	tests := []struct {
		name  string
		table *route.Table
		req   *http.Request
	}{
		{"first rule", table, newRequest("GET", "http://svc/r0/0", "x-tenant", "blue")},
		{"last rule", table, newRequest("GET", "http://svc/r49/4", "x-tenant", "blue")},
		{"no match", table, newRequest("GET", "http://svc/x")},
		{"hostnames", hosts, newRequest("GET", "http://a.example.com/r49/4", "x-tenant", "blue")},
		{"query", q, newRequest("GET", "http://svc/?b=2&a=1")},
		{"grpc", g, grpcRequest("pkg.Svc", "M")},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(100, func() { tt.table.Match(svcParent, tt.req) }); n != 0 {
			t.Errorf("%s: Match allocates %v times per call, want 0", tt.name, n)
		}
	}
}
