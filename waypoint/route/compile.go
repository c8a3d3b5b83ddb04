package route

import (
	"cmp"
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// CompileError says why a route was dropped from a [Table].
type CompileError struct {
	Kind      nodeconfig.RouteKind
	Namespace string
	Name      string
	// Rule is the index of the offending rule, -1 for the route itself.
	Rule int
	// Match is the index of the offending match within the rule, -1 when the problem is not in
	// a match.
	Match int
	Err   error
}

func (e *CompileError) Error() string {
	var b strings.Builder
	b.WriteString("compile ")
	b.WriteString(kindName(e.Kind))
	b.WriteString(" ")
	b.WriteString(e.Namespace)
	b.WriteString("/")
	b.WriteString(e.Name)
	if e.Rule >= 0 {
		b.WriteString(" rule ")
		b.WriteString(strconv.Itoa(e.Rule))
	}
	if e.Match >= 0 {
		b.WriteString(" match ")
		b.WriteString(strconv.Itoa(e.Match))
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *CompileError) Unwrap() error { return e.Err }

func kindName(k nodeconfig.RouteKind) string {
	switch k {
	case nodeconfig.RouteKind_ROUTE_KIND_HTTP:
		return "HTTPRoute"
	case nodeconfig.RouteKind_ROUTE_KIND_GRPC:
		return "GRPCRoute"
	}
	return "route"
}

// Compile builds a Table from routes. A route with an invalid part (a bad regular expression, a
// ReplacePrefixMatch on a rule whose matches are not all PathPrefix, an unknown kind ...) is
// dropped and reported as a *CompileError naming the route, rule and match; the other routes
// compile. Compile never fails as a whole: the returned Table is always usable.
func Compile(routes []*nodeconfig.Route) (*Table, []error) {
	var (
		errs  []error
		cands []*candidate
	)
	for _, rt := range routes {
		if rt == nil {
			continue
		}
		cs, err := compileRoute(rt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cands = append(cands, cs...)
	}
	slices.SortStableFunc(cands, comparePrecedence)
	for i, c := range cands {
		c.rank = i
	}
	t := &Table{services: map[string]*attached{}, servers: map[string]*attached{}}
	for _, c := range cands {
		for _, pk := range c.route.parents {
			t.add(pk, c)
		}
	}
	return t, errs
}

// parentKey is one distinct parent of a compiled route.
type parentKey struct {
	server bool
	name   string
	port   uint32 // Service parents only; 0 for every port
}

func (t *Table) add(pk parentKey, c *candidate) {
	m := t.services
	if pk.server {
		m = t.servers
	}
	a := m[pk.name]
	if a == nil {
		a = &attached{}
		m[pk.name] = a
	}
	pl := &a.kinds[c.m.Route.GetKind()]
	if pk.port == 0 {
		if pl.all == nil {
			pl.all = &candidates{}
		}
		pl.all.add(c)
		return
	}
	if pl.byPort == nil {
		pl.byPort = map[uint32]*candidates{}
	}
	l := pl.byPort[pk.port]
	if l == nil {
		l = &candidates{}
		pl.byPort[pk.port] = l
	}
	l.add(c)
}

// segment returns the first path segment every request c matches has, if c's path condition
// fixes one (Exact, a PathPrefix other than "/", a regular expression starting with a literal
// "/segment/").
func (c *candidate) segment() (string, bool) {
	if c.path.absent {
		return "", false
	}
	if c.path.re != nil {
		// A literal prefix "/a/..." fixes the first segment.
		if seg, ok := firstSegment(c.path.lit); ok && len(c.path.lit) > len(seg)+1 {
			return seg, true
		}
		return "", false
	}
	if c.path.kind == nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX && c.path.value == "" {
		return "", false
	}
	return firstSegment(c.path.value)
}

// compiledRoute is what matching needs of a route as a whole.
type compiledRoute struct {
	id      string // "namespace/name"
	hosts   []hostMatcher
	parents []parentKey
}

// hostMatcher is one route hostname: exact, or a wildcard whose suffix (".example.com") must
// end the Host after at least one more character.
type hostMatcher struct {
	value    string // lower case; for wildcards the suffix starting with "."
	wildcard bool
	chars    int // characters of the hostname as written (for precedence)
}

// hostKey is a route's hostname precedence for one Host: more characters in a matching
// non-wildcard hostname, then more characters in a matching hostname.
type hostKey struct {
	exactChars, chars int
}

func (k hostKey) exact() bool { return k.exactChars > 0 }

func (k hostKey) better(o hostKey) bool {
	if k.exactChars != o.exactChars {
		return k.exactChars > o.exactChars
	}
	return k.chars > o.chars
}

// hostKey reports whether the route applies to host and with which precedence.
func (cr *compiledRoute) hostKey(host string) (hostKey, bool) {
	if len(cr.hosts) == 0 {
		return hostKey{}, true
	}
	var (
		best hostKey
		ok   bool
	)
	for i := range cr.hosts {
		h := &cr.hosts[i]
		var k hostKey
		if h.wildcard {
			if len(host) <= len(h.value) || !strings.EqualFold(host[len(host)-len(h.value):], h.value) {
				continue
			}
			k = hostKey{chars: h.chars}
		} else {
			if !strings.EqualFold(host, h.value) {
				continue
			}
			k = hostKey{exactChars: h.chars, chars: h.chars}
		}
		if !ok || k.better(best) {
			best, ok = k, true
		}
	}
	return best, ok
}

// candidate is one (rule, match) of a route, the unit of precedence.
type candidate struct {
	m     Match
	route *compiledRoute
	rank  int
	prec  precedence

	method    string
	path      pathMatcher
	headers   []namedMatcher
	query     []namedMatcher
	service   stringMatcher
	grpcMeth  stringMatcher
	isGRPCish bool // route kind is GRPC: service/method conditions apply
}

// precedence is the static part of a candidate's order (hostnames are per request).
type precedence struct {
	kind      nodeconfig.RouteKind
	pathRank  int // HTTP: 3 Exact, 2 RegularExpression, 1 PathPrefix
	prefixLen int
	method    bool
	headers   int
	query     int
	service   int // GRPC: characters in an Exact service
	grpcMeth  int // GRPC: characters in an Exact method
	created   int64
	id        string
	rule      int
	match     int
}

// comparePrecedence orders candidates best first.
func comparePrecedence(a, b *candidate) int {
	x, y := &a.prec, &b.prec
	if c := cmp.Compare(x.kind, y.kind); c != 0 {
		return c
	}
	desc := func(p, q int) int { return cmp.Compare(q, p) }
	boolInt := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	for _, c := range []int{
		desc(x.pathRank, y.pathRank),
		desc(x.prefixLen, y.prefixLen),
		desc(boolInt(x.method), boolInt(y.method)),
		desc(x.service, y.service),
		desc(x.grpcMeth, y.grpcMeth),
		desc(x.headers, y.headers),
		desc(x.query, y.query),
		cmp.Compare(x.created, y.created),
		strings.Compare(x.id, y.id),
		cmp.Compare(x.rule, y.rule),
		cmp.Compare(x.match, y.match),
	} {
		if c != 0 {
			return c
		}
	}
	return 0
}

// stringMatcher matches Exact or an anchored regular expression; the zero value matches any.
type stringMatcher struct {
	any   bool
	value string
	re    *regexp.Regexp
}

func (m *stringMatcher) match(s string) bool {
	switch {
	case m.any:
		return true
	case m.re != nil:
		return m.re.MatchString(s)
	}
	return s == m.value
}

// pathMatcher matches a request path.
type pathMatcher struct {
	kind   nodeconfig.StringMatchType
	value  string // Exact: the path; PathPrefix: the prefix without trailing "/"
	re     *regexp.Regexp
	lit    string // RegularExpression: a literal prefix every match starts with
	absent bool   // gRPC route without a path condition
}

func (m *pathMatcher) match(path string) bool {
	switch {
	case m.absent:
		return true
	case m.re != nil:
		return strings.HasPrefix(path, m.lit) && m.re.MatchString(path)
	case m.kind == nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT:
		return path == m.value
	}
	p := m.value
	return strings.HasPrefix(path, p) && (len(path) == len(p) || path[len(p)] == '/')
}

// namedMatcher is a header (canonical name) or query parameter condition.
type namedMatcher struct {
	name string
	stringMatcher
}

func compileRoute(rt *nodeconfig.Route) ([]*candidate, error) {
	kind := rt.GetKind()
	fail := func(rule, match int, format string, args ...any) error {
		return &CompileError{Kind: kind, Namespace: rt.GetNamespace(), Name: rt.GetName(), Rule: rule, Match: match,
			Err: fmt.Errorf(format, args...)}
	}
	if kind != nodeconfig.RouteKind_ROUTE_KIND_HTTP && kind != nodeconfig.RouteKind_ROUTE_KIND_GRPC {
		return nil, fail(-1, -1, "unknown route kind %v: the controller and waypoint disagree on the config version", kind)
	}
	cr := &compiledRoute{id: rt.GetNamespace() + "/" + rt.GetName()}
	for _, h := range rt.GetHostnames() {
		hm, err := compileHostname(h)
		if err != nil {
			return nil, fail(-1, -1, "hostname %q: %w", h, err)
		}
		cr.hosts = append(cr.hosts, hm)
	}
	seen := map[parentKey]bool{}
	for i, p := range rt.GetParents() {
		var pk parentKey
		switch v := p.GetParent().(type) {
		case *nodeconfig.RouteParent_Service:
			pk = parentKey{name: v.Service, port: p.GetPort()}
		case *nodeconfig.RouteParent_Server:
			pk = parentKey{server: true, name: v.Server}
		default:
			return nil, fail(-1, -1, "parent %d names neither a Service nor a Server", i)
		}
		if pk.name == "" {
			return nil, fail(-1, -1, "parent %d has an empty name", i)
		}
		if !seen[pk] {
			seen[pk] = true
			cr.parents = append(cr.parents, pk)
		}
	}
	var cands []*candidate
	for ri, r := range rt.GetRules() {
		cru, err := compileRule(kind, r)
		if err != nil {
			return nil, fail(ri, -1, "%w", err)
		}
		matches := r.GetMatches()
		if len(matches) == 0 {
			c := &candidate{route: cr}
			c.m = Match{Route: rt, RuleIndex: ri, Rule: r, MatchIndex: -1, rule: cru}
			if kind == nodeconfig.RouteKind_ROUTE_KIND_HTTP {
				c.path = pathMatcher{kind: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX}
				c.prec.pathRank = 1
			} else {
				c.path.absent = true
				c.service.any, c.grpcMeth.any = true, true
			}
			c.prec.kind, c.prec.created, c.prec.id, c.prec.rule, c.prec.match = kind, rt.GetCreationTime(), cr.id, ri, -1
			cands = append(cands, c)
			continue
		}
		for mi, m := range matches {
			c, err := compileMatch(kind, m)
			if err != nil {
				return nil, fail(ri, mi, "%w", err)
			}
			c.route = cr
			c.m = Match{Route: rt, RuleIndex: ri, Rule: r, MatchIndex: mi, rule: cru}
			if c.path.kind == nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX && c.path.re == nil && !c.path.absent {
				c.m.prefix = c.path.value
			}
			c.prec.kind, c.prec.created, c.prec.id, c.prec.rule, c.prec.match = kind, rt.GetCreationTime(), cr.id, ri, mi
			cands = append(cands, c)
		}
	}
	return cands, nil
}

// hostnameRE is a Gateway API hostname: RFC 1123 labels, optionally a leading "*." label.
var hostnameRE = regexp.MustCompile(`^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func compileHostname(h string) (hostMatcher, error) {
	lh := strings.ToLower(strings.TrimSuffix(h, "."))
	if !hostnameRE.MatchString(lh) {
		return hostMatcher{}, errors.New("not an RFC 1123 hostname with an optional leading \"*.\" label")
	}
	if rest, ok := strings.CutPrefix(lh, "*"); ok {
		return hostMatcher{value: rest, wildcard: true, chars: len(lh)}, nil
	}
	return hostMatcher{value: lh, chars: len(lh)}, nil
}

func compileMatch(kind nodeconfig.RouteKind, m *nodeconfig.RouteMatch) (*candidate, error) {
	c := &candidate{method: m.GetMethod(), isGRPCish: kind == nodeconfig.RouteKind_ROUTE_KIND_GRPC}
	c.prec.method = c.method != ""
	if p := m.GetPath(); p != nil {
		switch p.GetType() {
		case nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT:
			if !strings.HasPrefix(p.GetValue(), "/") {
				return nil, fmt.Errorf("exact path %q does not start with \"/\"", p.GetValue())
			}
			c.path = pathMatcher{kind: p.GetType(), value: p.GetValue()}
			c.prec.pathRank = 3
		case nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX:
			if !strings.HasPrefix(p.GetValue(), "/") {
				return nil, fmt.Errorf("path prefix %q does not start with \"/\"", p.GetValue())
			}
			prefix := strings.TrimRight(p.GetValue(), "/")
			c.path = pathMatcher{kind: p.GetType(), value: prefix}
			c.prec.pathRank, c.prec.prefixLen = 1, len(prefix)
		case nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION:
			re, err := compileRegexp(p.GetValue())
			if err != nil {
				return nil, fmt.Errorf("path: %w", err)
			}
			lit, _ := regexp.MustCompile(p.GetValue()).LiteralPrefix() // valid: compileRegexp checked it
			c.path = pathMatcher{kind: p.GetType(), re: re, lit: lit}
			c.prec.pathRank = 2
		default:
			return nil, fmt.Errorf("path: unknown match type %v", p.GetType())
		}
	} else if kind == nodeconfig.RouteKind_ROUTE_KIND_HTTP {
		c.path = pathMatcher{kind: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX}
		c.prec.pathRank = 1
	} else {
		c.path.absent = true
	}

	var err error
	if c.headers, err = compileNamed("header", m.GetHeaders(), true); err != nil {
		return nil, err
	}
	if c.query, err = compileNamed("query parameter", m.GetQueryParams(), false); err != nil {
		return nil, err
	}
	c.prec.headers, c.prec.query = len(c.headers), len(c.query)
	if kind == nodeconfig.RouteKind_ROUTE_KIND_GRPC {
		// GRPCRoute precedence looks at hostnames, service, method and headers only.
		c.prec.pathRank, c.prec.prefixLen, c.prec.method, c.prec.query = 0, 0, false, 0
	}

	if c.service, c.prec.service, err = compileGRPCPart("grpc service", m.GetGrpcService()); err != nil {
		return nil, err
	}
	if c.grpcMeth, c.prec.grpcMeth, err = compileGRPCPart("grpc method", m.GetGrpcMethod()); err != nil {
		return nil, err
	}
	if kind == nodeconfig.RouteKind_ROUTE_KIND_HTTP && (!c.service.any || !c.grpcMeth.any) {
		return nil, errors.New("grpc service or method condition on an HTTPRoute")
	}
	return c, nil
}

// compileGRPCPart compiles a gRPC service or method condition and returns its precedence
// characters (Exact only).
func compileGRPCPart(what string, s *nodeconfig.StringMatch) (stringMatcher, int, error) {
	if s == nil || s.GetValue() == "" {
		return stringMatcher{any: true}, 0, nil
	}
	switch s.GetType() {
	case nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT:
		return stringMatcher{value: s.GetValue()}, len(s.GetValue()), nil
	case nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION:
		re, err := compileRegexp(s.GetValue())
		if err != nil {
			return stringMatcher{}, 0, fmt.Errorf("%s: %w", what, err)
		}
		return stringMatcher{re: re}, 0, nil
	}
	return stringMatcher{}, 0, fmt.Errorf("%s: match type %v is not Exact or RegularExpression", what, s.GetType())
}

// compileNamed compiles header (canonical, case-insensitive names) or query parameter
// (case-sensitive names) conditions; a repeated name keeps only its first entry.
func compileNamed(what string, ms []*nodeconfig.NamedMatch, header bool) ([]namedMatcher, error) {
	var out []namedMatcher
	for i, m := range ms {
		name := m.GetName()
		if name == "" {
			return nil, fmt.Errorf("%s %d has an empty name", what, i)
		}
		if header {
			if !httpguts.ValidHeaderFieldName(name) {
				return nil, fmt.Errorf("%s %q is not a valid header name", what, name)
			}
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		if slices.ContainsFunc(out, func(o namedMatcher) bool { return o.name == name }) {
			continue // Gateway API: only the first entry with an equivalent name counts.
		}
		nm := namedMatcher{name: name}
		switch m.GetType() {
		case nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT:
			nm.value = m.GetValue()
		case nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION:
			re, err := compileRegexp(m.GetValue())
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", what, m.GetName(), err)
			}
			nm.re = re
		default:
			return nil, fmt.Errorf("%s %q: match type %v is not Exact or RegularExpression", what, m.GetName(), m.GetType())
		}
		out = append(out, nm)
	}
	return out, nil
}

// compileRegexp compiles an RE2 expression anchored to the whole value.
func compileRegexp(expr string) (*regexp.Regexp, error) {
	// Compile the expression alone first: anchoring an invalid one such as "a)|(b" could make
	// it valid with another meaning.
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("invalid regular expression %q: %w", expr, err)
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}
