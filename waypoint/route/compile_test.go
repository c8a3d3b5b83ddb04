package route_test

import (
	"errors"
	"regexp/syntax"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

// TestCompileErrors: each bad route is dropped with one error naming the route, rule and match
// and saying what is wrong; the good routes around it compile and match.
func TestCompileErrors(t *testing.T) {
	withFilters := func(r *nodeconfig.RouteRule, fs ...*nodeconfig.RouteFilter) *nodeconfig.RouteRule {
		r.Filters = fs
		return r
	}
	rewrite := func(pm *nodeconfig.PathModifier) *nodeconfig.RouteFilter {
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: &nodeconfig.URLRewrite{Path: pm}}}
	}
	redirect := func(rd *nodeconfig.RequestRedirect) *nodeconfig.RouteFilter {
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: rd}}
	}
	headers := func(hm *nodeconfig.HeaderModifier) *nodeconfig.RouteFilter {
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: hm}}
	}
	ok := newRule() // a valid rule to put before the bad one

	tests := []struct {
		name  string
		route *nodeconfig.Route
		want  route.CompileError // Err ignored
		msg   string             // the whole error message
	}{
		{
			name:  "invalid path regex",
			route: httpRoute("bad", ok, newRule(pathMatch(prefixType, "/a"), pathMatch(regexType, "/a/(["))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 1, Match: 1},
			msg:   "compile HTTPRoute ns/bad rule 1 match 1: path: invalid regular expression \"/a/([\": error parsing regexp: missing closing ]: `[`",
		},
		{
			name:  "regex that anchoring would make valid",
			route: httpRoute("bad", newRule(pathMatch(regexType, "/a)|(/b"))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:   "compile HTTPRoute ns/bad rule 0 match 0: path: invalid regular expression \"/a)|(/b\": error parsing regexp: unexpected ): `/a)|(/b`",
		},
		{
			name: "invalid header regex",
			route: httpRoute("bad", newRule(&nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{
				named("x-a", exactType, "1"), named("x-b", regexType, "a**"),
			}})),
			want: route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:  "compile HTTPRoute ns/bad rule 0 match 0: header \"x-b\": invalid regular expression \"a**\": error parsing regexp: invalid nested repetition operator: `**`",
		},
		{
			name: "invalid query regex",
			route: httpRoute("bad", newRule(&nodeconfig.RouteMatch{QueryParams: []*nodeconfig.NamedMatch{
				named("q", regexType, `\8`),
			}})),
			want: route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:  "compile HTTPRoute ns/bad rule 0 match 0: query parameter \"q\": invalid regular expression \"\\\\8\": error parsing regexp: invalid escape sequence: `\\8`",
		},
		{
			name:  "invalid gRPC method regex",
			route: grpcRoute("bad", ok, newRule(grpcMatch(regexType, "svc", "(?P<>x)"))),
			want:  route.CompileError{Kind: grpcKind, Namespace: "ns", Name: "bad", Rule: 1, Match: 0},
			msg:   "compile GRPCRoute ns/bad rule 1 match 0: grpc method: invalid regular expression \"(?P<>x)\": error parsing regexp: invalid named capture: `(?P<>`",
		},
		{
			name:  "header match with a path prefix type",
			route: httpRoute("bad", newRule(&nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{named("x", prefixType, "a")}})),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:   "compile HTTPRoute ns/bad rule 0 match 0: header \"x\": match type STRING_MATCH_TYPE_PATH_PREFIX is not Exact or RegularExpression",
		},
		{
			name:  "invalid header name in a match",
			route: httpRoute("bad", newRule(&nodeconfig.RouteMatch{Headers: []*nodeconfig.NamedMatch{named("x y", exactType, "a")}})),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:   "compile HTTPRoute ns/bad rule 0 match 0: header \"x y\" is not a valid header name",
		},
		{
			name:  "path that does not start with /",
			route: httpRoute("bad", newRule(pathMatch(prefixType, "api"))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:   "compile HTTPRoute ns/bad rule 0 match 0: path prefix \"api\" does not start with \"/\"",
		},
		{
			name:  "gRPC condition on an HTTPRoute",
			route: httpRoute("bad", newRule(grpcMatch(exactType, "a.B", ""))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: 0},
			msg:   "compile HTTPRoute ns/bad rule 0 match 0: grpc service or method condition on an HTTPRoute",
		},
		{
			name:  "ReplacePrefixMatch rewrite with an exact match",
			route: httpRoute("bad", ok, withFilters(newRule(pathMatch(prefixType, "/a"), pathMatch(exactType, "/b")), rewrite(prefixRewrite("/c")))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 1, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 1: filter 0: url rewrite: replace prefix match needs every match of the rule to be a PathPrefix",
		},
		{
			name:  "ReplacePrefixMatch redirect with a regex match",
			route: httpRoute("bad", withFilters(newRule(pathMatch(regexType, "/a.*")), redirect(&nodeconfig.RequestRedirect{Path: prefixRewrite("/c")}))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request redirect: replace prefix match needs every match of the rule to be a PathPrefix",
		},
		{
			name: "ReplacePrefixMatch in a backend's filters with an exact match",
			route: func() *nodeconfig.Route {
				r := newRule(pathMatch(exactType, "/a"))
				r.Backends[0].Filters = []*nodeconfig.RouteFilter{rewrite(prefixRewrite("/c"))}
				return httpRoute("bad", r)
			}(),
			want: route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:  "compile HTTPRoute ns/bad rule 0: backend 0 (ns/backend): filter 0: url rewrite: replace prefix match needs every match of the rule to be a PathPrefix",
		},
		{
			name:  "redirect and rewrite together",
			route: httpRoute("bad", withFilters(newRule(), redirect(&nodeconfig.RequestRedirect{}), rewrite(fullRewrite("/x")))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: a request redirect and a url rewrite cannot be used together",
		},
		{
			name:  "redirect status code",
			route: httpRoute("bad", withFilters(newRule(), redirect(&nodeconfig.RequestRedirect{StatusCode: 305}))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request redirect: status code 305 is not 301, 302, 303, 307 or 308",
		},
		{
			name:  "redirect scheme",
			route: httpRoute("bad", withFilters(newRule(), redirect(&nodeconfig.RequestRedirect{Scheme: "ftp"}))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request redirect: scheme \"ftp\" is not http or https",
		},
		{
			name:  "redirect hostname with a port",
			route: httpRoute("bad", withFilters(newRule(), redirect(&nodeconfig.RequestRedirect{Hostname: "a:80"}))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request redirect: hostname \"a:80\" is not a valid host name",
		},
		{
			name:  "full path rewrite without leading /",
			route: httpRoute("bad", withFilters(newRule(), rewrite(fullRewrite("x")))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: url rewrite: replace full path \"x\" does not start with \"/\"",
		},
		{
			name:  "empty path modifier",
			route: httpRoute("bad", withFilters(newRule(), rewrite(&nodeconfig.PathModifier{}))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: url rewrite: path modifier sets neither replace full path nor replace prefix match",
		},
		{
			name:  "invalid header name in a modifier",
			route: httpRoute("bad", withFilters(newRule(), headers(headerFilter([][2]string{{"bad name", "v"}}, nil)))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request header modifier: set: \"bad name\" is not a valid header name",
		},
		{
			name:  "header value with a newline",
			route: httpRoute("bad", withFilters(newRule(), headers(headerFilter(nil, [][2]string{{"x", "a\r\nb: c"}})))),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: request header modifier: add x: \"a\\r\\nb: c\" is not a valid header value",
		},
		{
			name:  "empty filter",
			route: httpRoute("bad", withFilters(newRule(), &nodeconfig.RouteFilter{})),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile HTTPRoute ns/bad rule 0: filter 0: empty or unknown filter: the controller and waypoint disagree on the config version",
		},
		{
			name:  "redirect on a GRPCRoute",
			route: grpcRoute("bad", withFilters(newRule(), redirect(&nodeconfig.RequestRedirect{}))),
			want:  route.CompileError{Kind: grpcKind, Namespace: "ns", Name: "bad", Rule: 0, Match: -1},
			msg:   "compile GRPCRoute ns/bad rule 0: filter 0: request redirect is not a GRPCRoute filter",
		},
		{
			name:  "hostname with a wildcard in the middle",
			route: withHosts(httpRoute("bad", newRule()), "good.example.com", "a.*.example.com"),
			want:  route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: -1, Match: -1},
			msg:   "compile HTTPRoute ns/bad: hostname \"a.*.example.com\": not an RFC 1123 hostname with an optional leading \"*.\" label",
		},
		{
			name:  "unknown kind",
			route: newRoute("bad", nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED, newRule()),
			want:  route.CompileError{Kind: nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED, Namespace: "ns", Name: "bad", Rule: -1, Match: -1},
			msg:   "compile route ns/bad: unknown route kind ROUTE_KIND_UNSPECIFIED: the controller and waypoint disagree on the config version",
		},
		{
			name: "parent without a Service or Server",
			route: func() *nodeconfig.Route {
				r := httpRoute("bad", newRule())
				r.Parents = append(r.Parents, &nodeconfig.RouteParent{Port: 80})
				return r
			}(),
			want: route.CompileError{Kind: httpKind, Namespace: "ns", Name: "bad", Rule: -1, Match: -1},
			msg:  "compile HTTPRoute ns/bad: parent 1 names neither a Service nor a Server",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The bad route is the oldest and would win every request if it compiled; it also
			// attaches to a Service of its own.
			tt.route.Parents = append(tt.route.Parents, &nodeconfig.RouteParent{Parent: &nodeconfig.RouteParent_Service{Service: "ns/bad-only"}})
			tt.route.CreationTime = -1
			table, errs := route.Compile([]*nodeconfig.Route{
				httpRoute("good-1", newRule(pathMatch(prefixType, "/one"))),
				tt.route,
				nil, // ignored
				grpcRoute("good-2", newRule(grpcMatch(exactType, "a.B", ""))),
			})
			if len(errs) != 1 {
				t.Fatalf("Compile errors = %v, want exactly one", errs)
			}
			var ce *route.CompileError
			if !errors.As(errs[0], &ce) {
				t.Fatalf("error %T is not a *CompileError: %v", errs[0], errs[0])
			}
			if diff := cmp.Diff(tt.want, *ce, cmpopts.IgnoreFields(route.CompileError{}, "Err")); diff != "" {
				t.Errorf("CompileError (-want +got):\n%s", diff)
			}
			if got := errs[0].Error(); got != tt.msg {
				t.Errorf("error message:\n got %s\nwant %s", got, tt.msg)
			}
			if strings.Contains(tt.msg, "regular expression") {
				var se *syntax.Error
				if !errors.As(errs[0], &se) {
					t.Errorf("a regex error does not wrap *syntax.Error: %v", errs[0])
				}
			}
			if table.HasRoutes(route.Parent{Service: "ns/bad-only"}, nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED) {
				t.Error("the bad route was compiled")
			}
			if got := matched(table.Match(svcParent, newRequest("GET", "/one/x"))); got != "good-1/0/0" {
				t.Errorf("good HTTPRoute: matched %s, want good-1/0/0", got)
			}
			if got := matched(table.Match(svcParent, grpcRequest("a.B", "C"))); got != "good-2/0/0" {
				t.Errorf("good GRPCRoute: matched %s, want good-2/0/0", got)
			}
		})
	}
}
