// Package route is the waypoint's routing engine: it compiles the Gateway API HTTPRoutes and
// GRPCRoutes of a node config ([nodeconfig.Route]) into an immutable [Table], picks the rule a
// request matches with Gateway API v1 precedence, chooses a weighted backend and applies the
// rule's filters (header modifiers, redirects, URL rewrites) to the request and response.
//
// Semantics, following the Gateway API v1 spec text (apis/v1/httproute_types.go and
// grpcroute_types.go):
//
//   - A route applies to a request when one of its parents is the request's [Parent]: a Service
//     parent (optionally limited to one service port) or a policy.warren.dev Server parent. When
//     the request has both, routes attached through either compete under one precedence.
//   - Hostnames: exact or "*.example.com" (a suffix match on one or more labels), compared
//     case-insensitively with the Host's port and a trailing dot removed. A route without
//     hostnames matches any Host, so requests addressed to a Service VIP or DNS name match it.
//   - HTTP path: Exact, PathPrefix (segment-wise; a trailing "/" in the prefix is ignored) or
//     RegularExpression (RE2, anchored to the whole path), on the decoded path without the query.
//     An absent path condition is PathPrefix "/".
//   - Headers: names case-insensitive, Exact or RegularExpression (anchored). A header repeated
//     in the request is matched against its values joined with "," (RFC 9110 section 5.3, as
//     Envoy does); a "Host" condition compares r.Host as sent, port included. Query parameters: names case-sensitive, the first value counts. When a match
//     lists the same header (or query parameter) name twice, only the first entry counts.
//   - gRPC requests (HTTP/2 POST with content-type application/grpc[+suffix]) match GRPCRoutes by
//     service and method from the path "/pkg.Service/Method" (Exact or anchored
//     RegularExpression; absent matches any). When no GRPCRoute is attached to the parent, gRPC
//     requests match HTTPRoutes like any other request; when one is, only GRPCRoutes apply.
//
// Precedence across all rules of all routes attached to the parent, continuing on ties:
//
//   - Both kinds: most characters in a matching non-wildcard hostname, then most characters in a
//     matching hostname.
//   - HTTPRoute: an Exact path, then a RegularExpression path (the spec leaves regular
//     expressions to the implementation; ranking them above prefixes keeps a "/" catch-all from
//     hiding them), then the longest PathPrefix; a method match; most header matches; most query
//     parameter matches.
//   - GRPCRoute: most characters in an Exact service, then in an Exact method (a regular
//     expression counts zero characters); most header matches.
//   - Then the oldest route (creation_time), "namespace/name" alphabetically, rule order and
//     match order within the rule.
//
// The package is pure: no I/O, no logging, no clocks and no globals. Only the waypoint
// (waypoint/ and its tests) imports it; it imports only the nodeconfig contract.
package route

import (
	"net/http"
	"strings"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Parent says what a request was addressed to.
type Parent struct {
	// Service is "namespace/name" of the Service whose VIP (or endpoint) was the destination; ""
	// if none.
	Service string
	// Server is "namespace/name" of the policy.warren.dev Server covering the destination pod
	// port; "" if none.
	Server string
	// Port is the service port (for Service parents) or the pod port. Service parents whose
	// RouteParent.Port is non-zero apply only to that port.
	Port uint32
}

// Table is a compiled set of routes. It is immutable and safe for concurrent use; a nil *Table
// has no routes.
type Table struct {
	services map[string]*attached // by Service "namespace/name"
	servers  map[string]*attached // by Server "namespace/name"
}

// attached holds the candidates of the routes attached to one parent, by route kind.
type attached struct {
	kinds [numKinds]portLists
}

const numKinds = 3 // indexed by nodeconfig.RouteKind

// portLists are the candidates of a parent for every port, and those limited to one port.
type portLists struct {
	all    *candidates
	byPort map[uint32]*candidates
}

// candidates are the (rule, match) pairs attached to one parent, each list sorted by
// precedence (ascending rank). They are indexed by the first path segment their Exact or
// PathPrefix path requires, so a request is only checked against the candidates that can match
// its path: those of its first segment and those that can match any path (regular expressions,
// PathPrefix "/", gRPC routes).
type candidates struct {
	any       []*candidate
	bySegment map[string][]*candidate
	// hostnames is true when a candidate's route has hostnames, so a match's precedence depends
	// on the Host and the first matching candidate is not necessarily the winner.
	hostnames bool
}

func (c *candidates) add(cand *candidate) {
	c.hostnames = c.hostnames || len(cand.route.hosts) > 0
	seg, ok := cand.segment()
	if !ok {
		c.any = append(c.any, cand)
		return
	}
	if c.bySegment == nil {
		c.bySegment = map[string][]*candidate{}
	}
	c.bySegment[seg] = append(c.bySegment[seg], cand)
}

// maxSources is the most candidate lists a request merges: for each of the Service (every
// port), the Service's port and the Server, the lists for any path and for the path's first
// segment.
const maxSources = 6

// sources appends c's lists that can match a request whose path has first segment seg.
func (c *candidates) sources(seg string, hasSeg bool, src *[maxSources][]*candidate, n int, hostnames *bool) int {
	if c == nil {
		return n
	}
	*hostnames = *hostnames || c.hostnames
	if len(c.any) > 0 {
		src[n] = c.any
		n++
	}
	if hasSeg {
		if l := c.bySegment[seg]; len(l) > 0 {
			src[n] = l
			n++
		}
	}
	return n
}

func (c *candidates) empty() bool {
	return c == nil || (len(c.any) == 0 && len(c.bySegment) == 0)
}

// firstSegment returns the first segment of a path: "a" for "/a" and "/a/b", "" for "/"; ok is
// false for a path not starting with "/".
func firstSegment(path string) (seg string, ok bool) {
	if path == "" || path[0] != '/' {
		return "", false
	}
	seg = path[1:]
	if i := strings.IndexByte(seg, '/'); i >= 0 {
		seg = seg[:i]
	}
	return seg, true
}

// Match is the rule a request matched. It is shared by every request that matches the same
// rule and match and must not be modified.
type Match struct {
	// Route is the matched route (name, namespace, kind).
	Route *nodeconfig.Route
	// RuleIndex is the index of Rule in Route.Rules.
	RuleIndex int
	Rule      *nodeconfig.RouteRule
	// MatchIndex is the index of the RouteMatch that matched in Rule.Matches; -1 when the rule
	// has no matches (it matches every request).
	MatchIndex int

	// prefix is the matched PathPrefix without its trailing "/" ("" for "/"), which
	// ReplacePrefixMatch replaces.
	prefix string
	rule   *rule
}

// HasRoutes reports whether any route of the given kind is attached to p;
// ROUTE_KIND_UNSPECIFIED asks about either kind. A Server with routes where no route matches
// answers 404.
func (t *Table) HasRoutes(p Parent, kind nodeconfig.RouteKind) bool {
	if t == nil {
		return false
	}
	if kind == nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED {
		return t.HasRoutes(p, nodeconfig.RouteKind_ROUTE_KIND_HTTP) ||
			t.HasRoutes(p, nodeconfig.RouteKind_ROUTE_KIND_GRPC)
	}
	if kind < 0 || int(kind) >= numKinds {
		return false
	}
	for _, c := range t.lists(p, kind) {
		if !c.empty() {
			return true
		}
	}
	return false
}

// lists returns the candidate lists attached to p for kind (nil entries when none).
func (t *Table) lists(p Parent, kind nodeconfig.RouteKind) [3]*candidates {
	var out [3]*candidates
	if p.Service != "" {
		if a := t.services[p.Service]; a != nil {
			pl := &a.kinds[kind]
			out[0] = pl.all
			out[1] = pl.byPort[p.Port]
		}
	}
	if p.Server != "" {
		if a := t.servers[p.Server]; a != nil {
			out[2] = a.kinds[kind].all
		}
	}
	return out
}

// Match returns the rule r matches among the routes attached to p, or nil when none does. r.Host
// is the authority. gRPC requests match GRPCRoutes when any is attached to p, HTTPRoutes
// otherwise; other requests match HTTPRoutes. An empty path is "/"; a path not starting with "/"
// (OPTIONS *) matches only rules without an Exact or PathPrefix path. Match does not modify r and does not allocate
// unless a matched header is repeated or a query parameter is percent-encoded.
func (t *Table) Match(p Parent, r *http.Request) *Match {
	if t == nil {
		return nil
	}
	req := request{host: hostname(r.Host), path: r.URL.Path}
	if req.path == "" {
		req.path = "/" // absolute-form "http://host" (RFC 9112 section 3.2.2)
	}
	kind := nodeconfig.RouteKind_ROUTE_KIND_HTTP
	if isGRPC(r) && t.HasRoutes(p, nodeconfig.RouteKind_ROUTE_KIND_GRPC) {
		kind = nodeconfig.RouteKind_ROUTE_KIND_GRPC
		req.service, req.method, req.grpc = grpcPath(req.path)
	}
	if c := t.match(p, kind, r, &req); c != nil {
		return &c.m
	}
	return nil
}

// match walks the candidates attached to p that can match the request's path in precedence
// order, merging their sorted lists, and returns the best one that matches.
func (t *Table) match(p Parent, kind nodeconfig.RouteKind, r *http.Request, req *request) *candidate {
	var (
		src       [maxSources][]*candidate
		n         int
		hostnames bool
	)
	seg, hasSeg := firstSegment(req.path)
	for _, c := range t.lists(p, kind) {
		n = c.sources(seg, hasSeg, &src, n, &hostnames)
	}
	var (
		next    [maxSources]int
		best    *candidate
		bestKey hostKey
	)
	for {
		k := -1
		for i := range n {
			if next[i] < len(src[i]) && (k < 0 || src[i][next[i]].rank < src[k][next[k]].rank) {
				k = i
			}
		}
		if k < 0 {
			return best
		}
		c := src[k][next[k]]
		next[k]++
		key, ok := c.route.hostKey(req.host)
		if !ok || (best != nil && !key.better(bestKey)) {
			continue
		}
		if !c.matches(r, req) {
			continue
		}
		best, bestKey = c, key
		if !hostnames || key.exact() {
			// Nothing later in precedence order can have a more specific hostname.
			return best
		}
	}
}

// request is what matching needs from a request, computed once.
type request struct {
	host, path      string
	service, method string
	grpc            bool // service and method were parsed from the path
}

// isGRPC reports whether r is a gRPC request: HTTP/2, POST, content-type application/grpc or
// application/grpc+<codec> (parameters allowed).
func isGRPC(r *http.Request) bool {
	if r.ProtoMajor != 2 || r.Method != http.MethodPost {
		return false
	}
	ct := r.Header["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	const grpc = "application/grpc"
	v := ct[0]
	if len(v) < len(grpc) || !strings.EqualFold(v[:len(grpc)], grpc) {
		return false
	}
	return len(v) == len(grpc) || v[len(grpc)] == '+' || v[len(grpc)] == ';'
}

// grpcPath splits "/pkg.Service/Method" into service and method.
func grpcPath(path string) (service, method string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	i := strings.IndexByte(path[1:], '/')
	if i <= 0 {
		return "", "", false
	}
	service, method = path[1:1+i], path[2+i:]
	if method == "" || strings.IndexByte(method, '/') >= 0 {
		return "", "", false
	}
	return service, method, true
}

// hostname returns the host of an authority without its port and trailing dot.
func hostname(authority string) string {
	h, _ := splitHostPort(authority)
	return strings.TrimSuffix(h, ".")
}

// splitHostPort splits an authority into host and port ("" when absent), accepting bracketed
// IPv6 addresses and bare hosts.
func splitHostPort(authority string) (host, port string) {
	if strings.HasPrefix(authority, "[") {
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return authority, ""
		}
		host = authority[1:end]
		if rest := authority[end+1:]; strings.HasPrefix(rest, ":") {
			port = rest[1:]
		}
		return host, port
	}
	i := strings.LastIndexByte(authority, ':')
	if i < 0 || strings.IndexByte(authority[:i], ':') >= 0 {
		// No port, or a bare IPv6 address.
		return authority, ""
	}
	return authority[:i], authority[i+1:]
}
