package route_test

import (
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

// TestMatchConditions checks every condition type on its own: one route with one match, and
// whether each request matches it.
func TestMatchConditions(t *testing.T) {
	tests := []struct {
		name  string
		match *nodeconfig.RouteMatch // nil: a rule without matches
		reqs  map[string]*http.Request
		want  map[string]bool
	}{
		{
			name:  "exact path",
			match: pathMatch(exactType, "/foo"),
			reqs: map[string]*http.Request{
				"same":           newRequest("GET", "/foo"),
				"with query":     newRequest("GET", "/foo?a=b"),
				"trailing slash": newRequest("GET", "/foo/"),
				"longer":         newRequest("GET", "/foo/bar"),
				"case":           newRequest("GET", "/FOO"),
			},
			want: map[string]bool{"same": true, "with query": true},
		},
		{
			name:  "path prefix is segment-wise",
			match: pathMatch(prefixType, "/foo"),
			reqs: map[string]*http.Request{
				"equal":          newRequest("GET", "/foo"),
				"trailing slash": newRequest("GET", "/foo/"),
				"child":          newRequest("GET", "/foo/bar"),
				"query":          newRequest("GET", "/foo?x=/y"),
				"not a segment":  newRequest("GET", "/foobar"),
				"parent":         newRequest("GET", "/"),
				"case":           newRequest("GET", "/Foo/bar"),
			},
			want: map[string]bool{"equal": true, "trailing slash": true, "child": true, "query": true},
		},
		{
			name:  "path prefix trailing slash is ignored",
			match: pathMatch(prefixType, "/foo/"),
			reqs: map[string]*http.Request{
				"equal":         newRequest("GET", "/foo"),
				"slash":         newRequest("GET", "/foo/"),
				"child":         newRequest("GET", "/foo/bar"),
				"not a segment": newRequest("GET", "/foobar"),
			},
			want: map[string]bool{"equal": true, "slash": true, "child": true},
		},
		{
			name:  "path prefix / matches every path",
			match: pathMatch(prefixType, "/"),
			reqs: map[string]*http.Request{
				"root": newRequest("GET", "/"),
				"deep": newRequest("GET", "/a/b/c"),
			},
			want: map[string]bool{"root": true, "deep": true},
		},
		{
			name:  "no matches is prefix /",
			match: nil,
			reqs: map[string]*http.Request{
				"root": newRequest("GET", "/"),
				"deep": newRequest("POST", "/a/b/c?d=e"),
			},
			want: map[string]bool{"root": true, "deep": true},
		},
		{
			name:  "regular expression is anchored to the whole path",
			match: pathMatch(regexType, `/foo/[0-9]+`),
			reqs: map[string]*http.Request{
				"match":        newRequest("GET", "/foo/42"),
				"query":        newRequest("GET", "/foo/42?q=1"),
				"longer":       newRequest("GET", "/foo/42/x"),
				"later in":     newRequest("GET", "/x/foo/42"),
				"no digits":    newRequest("GET", "/foo/abc"),
				"decoded path": newRequest("GET", "/foo/%34%32"),
			},
			want: map[string]bool{"match": true, "query": true, "decoded path": true},
		},
		{
			name:  "method",
			match: &nodeconfig.RouteMatch{Method: "POST"},
			reqs: map[string]*http.Request{
				"post": newRequest("POST", "/x"),
				"get":  newRequest("GET", "/x"),
			},
			want: map[string]bool{"post": true},
		},
		{
			name: "exact header, name case-insensitive, value case-sensitive",
			match: &nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("x-Version", exactType, "v2"),
			}},
			reqs: map[string]*http.Request{
				"match":         newRequest("GET", "/", "X-VERSION", "v2"),
				"value case":    newRequest("GET", "/", "x-version", "V2"),
				"missing":       newRequest("GET", "/"),
				"other":         newRequest("GET", "/", "x-version", "v1"),
				"repeated":      newRequest("GET", "/", "x-version", "v2", "x-version", "v3"),
				"empty present": newRequest("GET", "/", "x-version", ""),
			},
			want: map[string]bool{"match": true},
		},
		{
			name: "repeated headers are matched joined with a comma",
			match: &nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("x-tag", exactType, "a,b"),
			}},
			reqs: map[string]*http.Request{
				"two values":  newRequest("GET", "/", "x-tag", "a", "x-tag", "b"),
				"one value":   newRequest("GET", "/", "x-tag", "a,b"),
				"first only":  newRequest("GET", "/", "x-tag", "a"),
				"other order": newRequest("GET", "/", "x-tag", "b", "x-tag", "a"),
			},
			want: map[string]bool{"two values": true, "one value": true},
		},
		{
			name: "header regular expression is anchored",
			match: &nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("user-agent", regexType, `curl/.*`),
			}},
			reqs: map[string]*http.Request{
				"match":     newRequest("GET", "/", "User-Agent", "curl/8.5"),
				"not start": newRequest("GET", "/", "User-Agent", "x curl/8.5"),
			},
			want: map[string]bool{"match": true},
		},
		{
			name: "all headers must match; a repeated name keeps its first entry",
			match: &nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("a", exactType, "1"),
				named("b", exactType, "2"),
				named("A", exactType, "other"),
			}},
			reqs: map[string]*http.Request{
				"both":   newRequest("GET", "/", "a", "1", "b", "2"),
				"only a": newRequest("GET", "/", "a", "1"),
				"second": newRequest("GET", "/", "a", "other", "b", "2"),
			},
			want: map[string]bool{"both": true},
		},
		{
			name: "host header",
			match: &nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("host", exactType, "svc:8080"),
			}},
			reqs: map[string]*http.Request{
				"match": newRequest("GET", "http://svc:8080/"),
				"other": newRequest("GET", "http://svc/"),
			},
			want: map[string]bool{"match": true},
		},
		{
			name: "query parameters: names case-sensitive, first value, decoded",
			match: &nodeconfig.RouteMatch{QueryParams: []*nodeconfig.NamedMatch{
				named("q", exactType, "a b"),
				named("n", regexType, `[0-9]+`),
			}},
			reqs: map[string]*http.Request{
				"plus":        newRequest("GET", "/?q=a+b&n=12"),
				"percent":     newRequest("GET", "/?n=7&q=a%20b"),
				"encoded key": newRequest("GET", "/?%71=a+b&n=1"),
				"first value": newRequest("GET", "/?q=a+b&q=c&n=1&n=x"),
				"second":      newRequest("GET", "/?q=c&q=a+b&n=1"),
				"name case":   newRequest("GET", "/?Q=a+b&n=1"),
				"missing":     newRequest("GET", "/?q=a+b"),
				"not anchor":  newRequest("GET", "/?q=a+b&n=1x"),
				"semicolon":   newRequest("GET", "/?q=a+b;n=1"),
			},
			want: map[string]bool{"plus": true, "percent": true, "encoded key": true, "first value": true},
		},
		{
			name: "every condition is ANDed",
			match: &nodeconfig.RouteMatch{
				Path:        &nodeconfig.StringMatch{Type: prefixType, Value: "/api"},
				Method:      "PUT",
				Headers:     []*nodeconfig.NamedMatch{named("x", exactType, "1")},
				QueryParams: []*nodeconfig.NamedMatch{named("y", exactType, "2")},
			},
			reqs: map[string]*http.Request{
				"all":          newRequest("PUT", "/api/v?y=2", "x", "1"),
				"wrong path":   newRequest("PUT", "/apis?y=2", "x", "1"),
				"wrong method": newRequest("GET", "/api?y=2", "x", "1"),
				"no header":    newRequest("PUT", "/api?y=2"),
				"no query":     newRequest("PUT", "/api", "x", "1"),
			},
			want: map[string]bool{"all": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rule *nodeconfig.RouteRule
			if tt.match == nil {
				rule = newRule()
			} else {
				rule = newRule(tt.match)
			}
			table := compile(t, httpRoute("r", rule))
			got := map[string]bool{}
			for name, req := range tt.reqs {
				if table.Match(svcParent, req) != nil {
					got[name] = true
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("matching requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHostnames(t *testing.T) {
	table := compile(t,
		withHosts(httpRoute("exact", newRule()), "Foo.Example.com"),
		withHosts(httpRoute("wildcard", newRule()), "*.example.com"),
		withHosts(httpRoute("deeper-wildcard", newRule()), "*.b.example.com"),
		withHosts(httpRoute("other", newRule()), "other.test", "*.other.test"),
	)
	tests := []struct{ host, want string }{
		{"foo.example.com", "exact/0/-1"},
		{"FOO.EXAMPLE.COM", "exact/0/-1"},
		{"foo.example.com:8080", "exact/0/-1"},
		{"foo.example.com.", "exact/0/-1"},
		{"bar.example.com", "wildcard/0/-1"},
		{"a.b.c.example.com", "wildcard/0/-1"},
		{"a.b.example.com", "deeper-wildcard/0/-1"},
		{"example.com", "none"},
		{"b.example.com", "wildcard/0/-1"},
		{"other.test", "other/0/-1"},
		{"x.other.test:80", "other/0/-1"},
		{"10.0.0.1:80", "none"},
		{"[fd00::1]:80", "none"},
		{"svc.ns.svc.cluster.local", "none"},
	}
	for _, tt := range tests {
		r := newRequest("GET", "/")
		r.Host = tt.host
		if got := matched(table.Match(svcParent, r)); got != tt.want {
			t.Errorf("Host %q matched %s, want %s", tt.host, got, tt.want)
		}
	}

	// A route without hostnames matches whatever the client put in Host: the VIP, the
	// Service's DNS name, an IPv6 address.
	any := compile(t, httpRoute("any", newRule()))
	for _, host := range []string{"10.96.0.10:8080", "svc", "svc.ns.svc.cluster.local:80", "[fd00::1]:80", ""} {
		r := newRequest("GET", "/")
		r.Host = host
		if got := matched(any.Match(svcParent, r)); got != "any/0/-1" {
			t.Errorf("Host %q matched %s, want any/0/-1", host, got)
		}
	}
}

func TestParents(t *testing.T) {
	port8080 := httpRoute("port-8080", newRule())
	port8080.Parents = []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: "ns/multi"}, Port: 8080}}
	allPorts := createdAt(httpRoute("all-ports", newRule()), 10)
	allPorts.Parents = []*nodeconfig.RouteParent{
		{Parent: &nodeconfig.RouteParent_Service{Service: "ns/multi"}},
		{Parent: &nodeconfig.RouteParent_Service{Service: "ns/multi"}}, // duplicate parent
	}
	server := createdAt(httpRoute("server", newRule(pathMatch(prefixType, "/server"))), 5)
	server.Parents = []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Server{Server: "ns/srv"}, Port: 9999}}
	grpc := grpcRoute("grpc", newRule())
	grpc.Parents = []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Server{Server: "ns/grpc-srv"}}}
	// port8080 is the oldest: it wins over all-ports where both apply.
	table := compile(t, allPorts, port8080, server, grpc)

	tests := []struct {
		name   string
		parent route.Parent
		path   string
		want   string
		has    bool
	}{
		{"port-limited route on its port", route.Parent{Service: "ns/multi", Port: 8080}, "/", "port-8080/0/-1", true},
		{"other port", route.Parent{Service: "ns/multi", Port: 80}, "/", "all-ports/0/-1", true},
		{"server parent, port ignored", route.Parent{Server: "ns/srv", Port: 8080}, "/server/x", "server/0/0", true},
		{"server parent, no route matches", route.Parent{Server: "ns/srv", Port: 8080}, "/other", "none", true},
		{"service and server routes compete", route.Parent{Service: "ns/multi", Server: "ns/srv", Port: 80}, "/server", "server/0/0", true},
		{"service and server, server route does not match", route.Parent{Service: "ns/multi", Server: "ns/srv", Port: 8080}, "/x", "port-8080/0/-1", true},
		{"unknown service", route.Parent{Service: "ns/other", Port: 8080}, "/", "none", false},
		{"empty parent", route.Parent{}, "/", "none", false},
		{"name in the wrong map", route.Parent{Service: "ns/srv"}, "/server", "none", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matched(table.Match(tt.parent, newRequest("GET", tt.path))); got != tt.want {
				t.Errorf("Match = %s, want %s", got, tt.want)
			}
			if got := table.HasRoutes(tt.parent, httpKind); got != tt.has {
				t.Errorf("HasRoutes(HTTP) = %v, want %v", got, tt.has)
			}
		})
	}

	grpcSrv := route.Parent{Server: "ns/grpc-srv"}
	for _, c := range []struct {
		kind nodeconfig.RouteKind
		want bool
	}{
		{httpKind, false},
		{grpcKind, true},
		{nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED, true},
		{nodeconfig.RouteKind(7), false},
	} {
		if got := table.HasRoutes(grpcSrv, c.kind); got != c.want {
			t.Errorf("HasRoutes(grpc server, %v) = %v, want %v", c.kind, got, c.want)
		}
	}

	var nilTable *route.Table
	if nilTable.HasRoutes(svcParent, httpKind) || nilTable.Match(svcParent, newRequest("GET", "/")) != nil {
		t.Error("a nil Table has routes")
	}
	empty := compile(t)
	if empty.HasRoutes(svcParent, nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED) || empty.Match(svcParent, newRequest("GET", "/")) != nil {
		t.Error("an empty Table has routes")
	}
}

// TestConcurrentUse: one Table serves many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	rule := newRule(pathMatch(prefixType, "/a"))
	rule.Filters = []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{
		RequestHeaderModifier: headerFilter([][2]string{{"x", "1"}}, nil)}}}
	table := compile(t, httpRoute("r", rule))
	done := make(chan string)
	for g := range 8 {
		go func() {
			for i := range 200 {
				r := newRequest("GET", "/a/b", "y", "2")
				m := table.Match(svcParent, r)
				if m == nil {
					done <- "no match"
					return
				}
				m.ApplyRequest(r, m.PickBackend(uint64(g*i)))
				if r.Header.Get("x") != "1" {
					done <- "filter not applied"
					return
				}
			}
			done <- ""
		}()
	}
	for range 8 {
		if msg := <-done; msg != "" {
			t.Error(msg)
		}
	}
}
