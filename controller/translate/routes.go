package translate

import (
	"cmp"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Route status (Gateway API route status.parents[]): the controller name, and the condition
// Warren adds next to the standard Accepted and ResolvedRefs.
const (
	// ControllerName is the controllerName of every RouteParentStatus Warren writes.
	ControllerName gatewayv1.GatewayController = "warren.dev/waypoint-controller"

	// ConditionWaypointBound is True when the parent's traffic passes through a waypoint, so
	// the route is enforced. A parent with status False has an accepted route that takes no
	// effect until a waypoint is bound (label warren.dev/use-waypoint): the route is valid and
	// attached (Accepted=True, as Gateway API asks of a valid route), and this condition says
	// why no request sees it. Gateway API reserves unprefixed condition types, hence the
	// domain.
	ConditionWaypointBound = "warren.dev/WaypointBound"
	// ReasonWaypointBound and ReasonNoWaypoint are ConditionWaypointBound's reasons.
	ReasonWaypointBound = "WaypointBound"
	ReasonNoWaypoint    = "NoWaypoint"
)

// Kinds of the Gateway API routes, as used in ObjectRef.Kind of Output.RouteStatus.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
)

const kindService = "Service"

// routeSpec is what HTTPRoutes and GRPCRoutes have in common after conversion: rules are
// compiled by the kind-specific functions, each returning a problem for a rule it drops.
type routeSpec struct {
	kind    string
	meta    *metav1.ObjectMeta
	parents []gatewayv1.ParentReference
	hosts   []gatewayv1.Hostname
	// rules compiles every rule: a nil rule is dropped with its problem; unresolved lists the
	// backendRefs that did not resolve, with the reason of the first.
	rules func(r *routeCompiler) []*nodeconfig.RouteRule
}

// routeCompiler collects one route's problems while its rules compile.
type routeCompiler struct {
	t       *translator
	kind    string
	ns      string
	dropped []string // "Dropped Rule i (name): why"
	all     int
	// unresolved backendRefs, and the reason of the first (BackendNotFound, RefNotPermitted,
	// InvalidKind).
	unresolved       []string
	unresolvedReason gatewayv1.RouteConditionReason
	incompatible     bool // a rule was dropped for its filters
}

func (t *translator) translateRoutes() {
	t.routeStatus = make(map[ObjectRef][]gatewayv1.RouteParentStatus)
	t.serviceByName = make(map[nsName]*nodeconfig.Service, len(t.services))
	for _, si := range t.services {
		t.serviceByName[nsName{si.msg.Namespace, si.msg.Name}] = si.msg
	}
	for _, r := range sortedMeta(t, KindHTTPRoute, t.in.HTTPRoutes, func(r *gatewayv1.HTTPRoute) *metav1.ObjectMeta { return &r.ObjectMeta }) {
		t.translateRoute(routeSpec{kind: KindHTTPRoute, meta: &r.ObjectMeta, parents: r.Spec.ParentRefs, hosts: r.Spec.Hostnames,
			rules: func(c *routeCompiler) []*nodeconfig.RouteRule {
				out := make([]*nodeconfig.RouteRule, 0, len(r.Spec.Rules))
				for i := range r.Spec.Rules {
					if rule := c.httpRule(i, &r.Spec.Rules[i]); rule != nil {
						out = append(out, rule)
					}
				}
				return out
			}})
	}
	for _, r := range sortedMeta(t, KindGRPCRoute, t.in.GRPCRoutes, func(r *gatewayv1.GRPCRoute) *metav1.ObjectMeta { return &r.ObjectMeta }) {
		t.translateRoute(routeSpec{kind: KindGRPCRoute, meta: &r.ObjectMeta, parents: r.Spec.ParentRefs, hosts: r.Spec.Hostnames,
			rules: func(c *routeCompiler) []*nodeconfig.RouteRule {
				out := make([]*nodeconfig.RouteRule, 0, len(r.Spec.Rules))
				for i := range r.Spec.Rules {
					if rule := c.grpcRule(i, &r.Spec.Rules[i]); rule != nil {
						out = append(out, rule)
					}
				}
				return out
			}})
	}
	slices.SortFunc(t.routes, func(a, b *nodeconfig.Route) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})
}

// parentResult is one of our parentRefs, judged.
type parentResult struct {
	ref      gatewayv1.ParentReference
	parent   *nodeconfig.RouteParent // nil: not accepted
	reason   gatewayv1.RouteConditionReason
	message  string
	waypoint bool   // traffic to the parent passes a waypoint
	enforce  string // ConditionWaypointBound message
}

func (t *translator) translateRoute(rs routeSpec) {
	ns := rs.meta.Namespace
	var results []parentResult
	for _, ref := range rs.parents {
		if !ourParent(ref) {
			continue // a Gateway's, handled by its own controller
		}
		if slices.ContainsFunc(results, func(p parentResult) bool { return sameParent(p.ref, ref) }) {
			continue
		}
		results = append(results, t.judgeParent(ns, ref))
	}
	if len(results) == 0 {
		return // no parent of ours: nothing to compile, no status to write
	}

	c := &routeCompiler{t: t, kind: rs.kind, ns: ns}
	rules := rs.rules(c)
	route := &nodeconfig.Route{
		Name:         rs.meta.Name,
		Namespace:    ns,
		Kind:         nodeconfig.RouteKind_ROUTE_KIND_HTTP,
		Rules:        rules,
		CreationTime: rs.meta.CreationTimestamp.Unix(),
	}
	if rs.meta.CreationTimestamp.IsZero() {
		route.CreationTime = 0
	}
	if rs.kind == KindGRPCRoute {
		route.Kind = nodeconfig.RouteKind_ROUTE_KIND_GRPC
	}
	for _, h := range rs.hosts {
		route.Hostnames = append(route.Hostnames, string(h))
	}
	// Every rule invalid means the route as a whole is not accepted.
	allDropped := c.all > 0 && len(rules) == 0
	for _, p := range results {
		if p.parent != nil && !allDropped {
			route.Parents = append(route.Parents, p.parent)
		}
	}
	slices.SortFunc(route.Parents, func(a, b *nodeconfig.RouteParent) int {
		return cmp.Or(cmp.Compare(a.GetService(), b.GetService()), cmp.Compare(a.GetServer(), b.GetServer()), cmp.Compare(a.GetPort(), b.GetPort()))
	})
	if len(route.Parents) > 0 {
		t.routes = append(t.routes, route)
	}

	// Status, one entry per parentRef of ours.
	resolved := condition(gatewayv1.RouteConditionResolvedRefs, metav1.ConditionTrue, gatewayv1.RouteReasonResolvedRefs, "all references resolved")
	if len(c.unresolved) > 0 {
		resolved = condition(gatewayv1.RouteConditionResolvedRefs, metav1.ConditionFalse, c.unresolvedReason,
			strings.Join(c.unresolved, "; ")+"; requests that pick an unresolved backend get 500")
	}
	statuses := make([]gatewayv1.RouteParentStatus, 0, len(results))
	for _, p := range results {
		var conds []metav1.Condition
		switch {
		case p.parent == nil:
			conds = append(conds, condition(gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, p.reason, p.message))
		case allDropped:
			reason := gatewayv1.RouteReasonUnsupportedValue
			if c.incompatible {
				reason = gatewayv1.RouteReasonIncompatibleFilters
			}
			conds = append(conds, condition(gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, reason,
				"no valid rule: "+strings.Join(c.dropped, "; ")))
		default:
			conds = append(conds, condition(gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted, p.message))
			if len(c.dropped) > 0 {
				conds = append(conds, condition(gatewayv1.RouteConditionPartiallyInvalid, metav1.ConditionTrue, gatewayv1.RouteReasonUnsupportedValue,
					strings.Join(c.dropped, "; ")))
			}
			wb := condition(ConditionWaypointBound, metav1.ConditionTrue, ReasonWaypointBound, p.enforce)
			if !p.waypoint {
				wb = condition(ConditionWaypointBound, metav1.ConditionFalse, ReasonNoWaypoint, p.enforce)
			}
			conds = append(conds, wb)
		}
		conds = append(conds, resolved)
		for i := range conds {
			conds[i].ObservedGeneration = rs.meta.Generation
			conds[i].Message = truncate(conds[i].Message)
		}
		statuses = append(statuses, gatewayv1.RouteParentStatus{ParentRef: p.ref, ControllerName: ControllerName, Conditions: conds})
	}
	t.routeStatus[ObjectRef{Kind: rs.kind, Namespace: ns, Name: rs.meta.Name}] = statuses
}

func condition[T ~string, R ~string](typ T, status metav1.ConditionStatus, reason R, msg string) metav1.Condition {
	return metav1.Condition{Type: string(typ), Status: status, Reason: string(reason), Message: msg}
}

// ourParent reports whether ref names a core Service (GAMMA) or a policy.warren.dev Server.
// A parentRef's group defaults to gateway.networking.k8s.io and its kind to Gateway.
func ourParent(ref gatewayv1.ParentReference) bool {
	g, k := parentGroupKind(ref)
	return (g == "" && k == kindService) || (g == groupPolicy && k == KindServer)
}

func parentGroupKind(ref gatewayv1.ParentReference) (group, kind string) {
	group, kind = groupGateway, "Gateway"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	return group, kind
}

func sameParent(a, b gatewayv1.ParentReference) bool {
	ga, ka := parentGroupKind(a)
	gb, kb := parentGroupKind(b)
	return ga == gb && ka == kb && a.Name == b.Name && deref(a.Namespace) == deref(b.Namespace) &&
		deref(a.SectionName) == deref(b.SectionName) && deref(a.Port) == deref(b.Port)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// judgeParent decides whether a route in ns attaches to ref, a Service or Server parent.
func (t *translator) judgeParent(ns string, ref gatewayv1.ParentReference) parentResult {
	res := parentResult{ref: ref}
	_, kind := parentGroupKind(ref)
	if pns := string(deref(ref.Namespace)); pns != "" && pns != ns {
		res.reason = gatewayv1.RouteReasonUnsupportedValue
		res.message = fmt.Sprintf("parent %s %s/%s is in another namespace: Warren attaches routes only to parents in the route's own namespace %s", kind, pns, ref.Name, ns)
		return res
	}
	key := nsName{ns, string(ref.Name)}
	if kind == KindServer {
		if ref.Port != nil || ref.SectionName != nil {
			res.reason = gatewayv1.RouteReasonUnsupportedValue
			res.message = fmt.Sprintf("parent Server %s: port and sectionName must be unset (a Server covers one port)", key)
			return res
		}
		cs := t.servers[key]
		if cs == nil {
			res.reason = gatewayv1.RouteReasonNoMatchingParent
			res.message = fmt.Sprintf("Server %s not found or not accepted (see its status)", key)
			return res
		}
		res.parent = &nodeconfig.RouteParent{Parent: &nodeconfig.RouteParent_Server{Server: key.String()}}
		pods, noWaypoint := 0, 0
		for _, p := range cs.selected {
			pods++
			if p.w.Waypoint == nil {
				noWaypoint++
			}
		}
		res.message = "attached to Server " + key.String()
		res.waypoint = noWaypoint == 0
		switch {
		case pods == 0:
			res.enforce = "the Server selects no meshed pods yet"
		case noWaypoint == 0:
			res.enforce = fmt.Sprintf("all %s of the Server have a waypoint", plural(pods, "pod", "pods"))
		default:
			res.enforce = fmt.Sprintf("pods of the Server without a waypoint: %d of %d; only waypoints apply routes, so there the route takes no effect until a waypoint is bound (label %s)", noWaypoint, pods, LabelUseWaypoint)
		}
		return res
	}

	svc := t.serviceByName[key]
	if svc == nil {
		res.reason = gatewayv1.RouteReasonNoMatchingParent
		res.message = fmt.Sprintf("Service %s not found, or it has no cluster IP (headless and ExternalName Services cannot be parents)", key)
		return res
	}
	var port uint32
	switch {
	case ref.SectionName != nil:
		res.reason = gatewayv1.RouteReasonUnsupportedValue
		res.message = fmt.Sprintf("parent Service %s: sectionName is not supported; use port", key)
		return res
	case ref.Port != nil:
		port = uint32(*ref.Port)
		if !slices.ContainsFunc(svc.Ports, func(p *nodeconfig.ServicePort) bool { return p.ServicePort == port }) {
			res.reason = gatewayv1.RouteReasonNoMatchingParent
			res.message = fmt.Sprintf("Service %s has no TCP port %d", key, port)
			return res
		}
	}
	res.parent = &nodeconfig.RouteParent{Parent: &nodeconfig.RouteParent_Service{Service: key.String()}, Port: port}
	res.message = "attached to Service " + key.String()
	if port != 0 {
		res.message += " port " + strconv.Itoa(int(port))
	}
	if wp := svc.Waypoint; wp != nil {
		res.waypoint = true
		res.enforce = fmt.Sprintf("enforced by waypoint %s/%s", wp.Namespace, wp.Name)
	} else {
		res.enforce = fmt.Sprintf("Service %s has no waypoint, and only waypoints apply routes: the route takes no effect until one is bound (label %s)", key, LabelUseWaypoint)
	}
	return res
}

// drop records a dropped rule.
func (c *routeCompiler) drop(i int, name *gatewayv1.SectionName, problems []string) {
	label := "Dropped Rule " + strconv.Itoa(i)
	if name != nil {
		label += " (" + string(*name) + ")"
	}
	c.dropped = append(c.dropped, label+": "+strings.Join(problems, ", "))
}

func (c *routeCompiler) httpRule(i int, r *gatewayv1.HTTPRouteRule) *nodeconfig.RouteRule {
	c.all++
	var problems []string
	rule := &nodeconfig.RouteRule{Name: string(deref(r.Name))}
	allPrefix := true
	for j, m := range r.Matches {
		rm, p := httpMatch(m)
		for _, s := range p {
			problems = append(problems, fmt.Sprintf("matches[%d]: %s", j, s))
		}
		if rm.GetPath() != nil && rm.GetPath().GetType() != nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX {
			allPrefix = false
		}
		rule.Matches = append(rule.Matches, rm)
	}
	filterProblems := 0
	for j, f := range r.Filters {
		rf, p := httpFilter(f, allPrefix)
		if p != "" {
			problems = append(problems, fmt.Sprintf("filters[%d]: %s", j, p))
			filterProblems++
			continue
		}
		rule.Filters = append(rule.Filters, rf)
	}
	if p := incompatible(rule.Filters); p != "" {
		problems = append(problems, p)
		filterProblems++
	}
	for j, b := range r.BackendRefs {
		rb := c.backend(b.BackendRef)
		for k, f := range b.Filters {
			rf, p := httpFilter(f, allPrefix)
			if p != "" {
				problems = append(problems, fmt.Sprintf("backendRefs[%d].filters[%d]: %s", j, k, p))
				filterProblems++
				continue
			}
			rb.Filters = append(rb.Filters, rf)
		}
		rule.Backends = append(rule.Backends, rb)
	}
	if to := r.Timeouts; to != nil {
		var err error
		if rule.TimeoutMs, err = durationMs(to.Request); err != nil {
			problems = append(problems, "timeouts.request: "+err.Error())
		}
		if rule.BackendTimeoutMs, err = durationMs(to.BackendRequest); err != nil {
			problems = append(problems, "timeouts.backendRequest: "+err.Error())
		}
		if rule.TimeoutMs != 0 && rule.BackendTimeoutMs > rule.TimeoutMs {
			problems = append(problems, "timeouts.backendRequest must not be longer than timeouts.request")
		}
	}
	if rt := r.Retry; rt != nil {
		rule.Retry = &nodeconfig.RouteRetry{Attempts: 1}
		if rt.Attempts != nil {
			if *rt.Attempts < 0 {
				problems = append(problems, fmt.Sprintf("retry.attempts %d is negative", *rt.Attempts))
			} else {
				rule.Retry.Attempts = uint32(min(*rt.Attempts, math.MaxInt32))
			}
		}
		for _, code := range rt.Codes {
			if code < 400 || code > 599 {
				problems = append(problems, fmt.Sprintf("retry.codes: %d is not a 4xx or 5xx status", code))
				continue
			}
			rule.Retry.Codes = append(rule.Retry.Codes, uint32(code))
		}
		if len(rt.Codes) == 0 {
			rule.Retry.Codes = []uint32{500, 502, 503, 504}
		}
		var err error
		if rule.Retry.BackoffMs, err = durationMs(rt.Backoff); err != nil {
			problems = append(problems, "retry.backoff: "+err.Error())
		}
	}
	if len(problems) > 0 {
		c.incompatible = c.incompatible || filterProblems == len(problems)
		c.drop(i, r.Name, problems)
		return nil
	}
	return rule
}

func (c *routeCompiler) grpcRule(i int, r *gatewayv1.GRPCRouteRule) *nodeconfig.RouteRule {
	c.all++
	var problems []string
	rule := &nodeconfig.RouteRule{Name: string(deref(r.Name))}
	for j, m := range r.Matches {
		rm := &nodeconfig.RouteMatch{}
		if mm := m.Method; mm != nil {
			typ := nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT
			switch t := deref(mm.Type); t {
			case "", gatewayv1.GRPCMethodMatchExact:
			case gatewayv1.GRPCMethodMatchRegularExpression:
				typ = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
			default:
				problems = append(problems, fmt.Sprintf("matches[%d].method: type %q is not supported", j, t))
			}
			if mm.Service != nil {
				rm.GrpcService = &nodeconfig.StringMatch{Type: typ, Value: *mm.Service}
			}
			if mm.Method != nil {
				rm.GrpcMethod = &nodeconfig.StringMatch{Type: typ, Value: *mm.Method}
			}
			if rm.GrpcService == nil && rm.GrpcMethod == nil {
				problems = append(problems, fmt.Sprintf("matches[%d].method: service or method is required", j))
			}
			for _, sm := range []*nodeconfig.StringMatch{rm.GrpcService, rm.GrpcMethod} {
				if p := checkString(sm); p != "" {
					problems = append(problems, fmt.Sprintf("matches[%d].method: %s", j, p))
				}
			}
		}
		for _, h := range m.Headers {
			nm := &nodeconfig.NamedMatch{Name: string(h.Name), Value: h.Value}
			switch t := deref(h.Type); t {
			case "", gatewayv1.GRPCHeaderMatchExact:
			case gatewayv1.GRPCHeaderMatchRegularExpression:
				nm.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
			default:
				problems = append(problems, fmt.Sprintf("matches[%d].headers %q: type %q is not supported", j, h.Name, t))
			}
			if p := checkNamed(nm); p != "" {
				problems = append(problems, fmt.Sprintf("matches[%d].headers %q: %s", j, h.Name, p))
			}
			rm.Headers = append(rm.Headers, nm)
		}
		rule.Matches = append(rule.Matches, rm)
	}
	filterProblems := 0
	grpcFilter := func(f gatewayv1.GRPCRouteFilter) (*nodeconfig.RouteFilter, string) {
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			return headerFilter(f.RequestHeaderModifier, false)
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			return headerFilter(f.ResponseHeaderModifier, true)
		}
		return nil, fmt.Sprintf("filter type %s is not supported (want RequestHeaderModifier or ResponseHeaderModifier)", f.Type)
	}
	for j, f := range r.Filters {
		rf, p := grpcFilter(f)
		if p != "" {
			problems = append(problems, fmt.Sprintf("filters[%d]: %s", j, p))
			filterProblems++
			continue
		}
		rule.Filters = append(rule.Filters, rf)
	}
	for j, b := range r.BackendRefs {
		rb := c.backend(b.BackendRef)
		for k, f := range b.Filters {
			rf, p := grpcFilter(f)
			if p != "" {
				problems = append(problems, fmt.Sprintf("backendRefs[%d].filters[%d]: %s", j, k, p))
				filterProblems++
				continue
			}
			rb.Filters = append(rb.Filters, rf)
		}
		rule.Backends = append(rule.Backends, rb)
	}
	if len(problems) > 0 {
		c.incompatible = c.incompatible || filterProblems == len(problems)
		c.drop(i, r.Name, problems)
		return nil
	}
	return rule
}

// httpMatch converts one HTTPRouteMatch, with the problems that make its rule unusable.
func httpMatch(m gatewayv1.HTTPRouteMatch) (*nodeconfig.RouteMatch, []string) {
	var problems []string
	rm := &nodeconfig.RouteMatch{}
	if p := m.Path; p != nil {
		sm := &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX, Value: "/"}
		if p.Value != nil {
			sm.Value = *p.Value
		}
		switch t := deref(p.Type); t {
		case "", gatewayv1.PathMatchPathPrefix:
		case gatewayv1.PathMatchExact:
			sm.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_EXACT
		case gatewayv1.PathMatchRegularExpression:
			sm.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
		default:
			problems = append(problems, fmt.Sprintf("path type %q is not supported", t))
		}
		if sm.Type != nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION && !strings.HasPrefix(sm.Value, "/") {
			problems = append(problems, fmt.Sprintf("path %q must start with /", sm.Value))
		}
		if s := checkString(sm); s != "" {
			problems = append(problems, "path: "+s)
		}
		rm.Path = sm
	}
	for _, h := range m.Headers {
		nm := &nodeconfig.NamedMatch{Name: string(h.Name), Value: h.Value}
		switch t := deref(h.Type); t {
		case "", gatewayv1.HeaderMatchExact:
		case gatewayv1.HeaderMatchRegularExpression:
			nm.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
		default:
			problems = append(problems, fmt.Sprintf("headers %q: type %q is not supported", h.Name, t))
		}
		if s := checkNamed(nm); s != "" {
			problems = append(problems, fmt.Sprintf("headers %q: %s", h.Name, s))
		}
		rm.Headers = append(rm.Headers, nm)
	}
	for _, q := range m.QueryParams {
		nm := &nodeconfig.NamedMatch{Name: string(q.Name), Value: q.Value}
		switch t := deref(q.Type); t {
		case "", gatewayv1.QueryParamMatchExact:
		case gatewayv1.QueryParamMatchRegularExpression:
			nm.Type = nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION
		default:
			problems = append(problems, fmt.Sprintf("queryParams %q: type %q is not supported", q.Name, t))
		}
		if s := checkNamed(nm); s != "" {
			problems = append(problems, fmt.Sprintf("queryParams %q: %s", q.Name, s))
		}
		rm.QueryParams = append(rm.QueryParams, nm)
	}
	if m.Method != nil {
		rm.Method = string(*m.Method)
	}
	return rm, problems
}

func checkString(sm *nodeconfig.StringMatch) string {
	if sm == nil || sm.Type != nodeconfig.StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION {
		return ""
	}
	if _, err := regexp.Compile(sm.Value); err != nil {
		return fmt.Sprintf("regular expression %q: %v", sm.Value, err)
	}
	return ""
}

func checkNamed(nm *nodeconfig.NamedMatch) string {
	if nm.Name == "" {
		return "a name is required"
	}
	return checkString(&nodeconfig.StringMatch{Type: nm.Type, Value: nm.Value})
}

// httpFilter converts one HTTPRouteFilter; allPrefix says whether every match of the rule is a
// PathPrefix match, which ReplacePrefixMatch requires.
func httpFilter(f gatewayv1.HTTPRouteFilter, allPrefix bool) (*nodeconfig.RouteFilter, string) {
	switch f.Type {
	case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
		return headerFilter(f.RequestHeaderModifier, false)
	case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
		return headerFilter(f.ResponseHeaderModifier, true)
	case gatewayv1.HTTPRouteFilterRequestRedirect:
		rr := f.RequestRedirect
		if rr == nil {
			return nil, "requestRedirect is required for type RequestRedirect"
		}
		out := &nodeconfig.RequestRedirect{Scheme: deref(rr.Scheme), Hostname: string(deref(rr.Hostname)), Port: uint32(deref(rr.Port)), StatusCode: 302}
		if rr.StatusCode != nil {
			if *rr.StatusCode != 301 && *rr.StatusCode != 302 {
				return nil, fmt.Sprintf("requestRedirect.statusCode %d: want 301 or 302", *rr.StatusCode)
			}
			out.StatusCode = uint32(*rr.StatusCode)
		}
		if s := out.Scheme; s != "" && s != "http" && s != "https" {
			return nil, fmt.Sprintf("requestRedirect.scheme %q: want http or https", s)
		}
		pm, p := pathModifier(rr.Path, allPrefix)
		if p != "" {
			return nil, "requestRedirect.path: " + p
		}
		out.Path = pm
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: out}}, ""
	case gatewayv1.HTTPRouteFilterURLRewrite:
		ur := f.URLRewrite
		if ur == nil {
			return nil, "urlRewrite is required for type URLRewrite"
		}
		pm, p := pathModifier(ur.Path, allPrefix)
		if p != "" {
			return nil, "urlRewrite.path: " + p
		}
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: &nodeconfig.URLRewrite{Hostname: string(deref(ur.Hostname)), Path: pm}}}, ""
	}
	return nil, fmt.Sprintf("filter type %s is not supported (want RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect or URLRewrite)", f.Type)
}

func headerFilter(h *gatewayv1.HTTPHeaderFilter, response bool) (*nodeconfig.RouteFilter, string) {
	if h == nil {
		return nil, "the header modifier is required for its type"
	}
	hm := &nodeconfig.HeaderModifier{Remove: slices.Clone(h.Remove)}
	for _, s := range h.Set {
		hm.Set = append(hm.Set, &nodeconfig.Header{Name: string(s.Name), Value: s.Value})
	}
	for _, a := range h.Add {
		hm.Add = append(hm.Add, &nodeconfig.Header{Name: string(a.Name), Value: a.Value})
	}
	if response {
		return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: hm}}, ""
	}
	return &nodeconfig.RouteFilter{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: hm}}, ""
}

func pathModifier(p *gatewayv1.HTTPPathModifier, allPrefix bool) (*nodeconfig.PathModifier, string) {
	if p == nil {
		return nil, ""
	}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil {
			return nil, "replaceFullPath is required for type ReplaceFullPath"
		}
		return &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplaceFullPath{ReplaceFullPath: *p.ReplaceFullPath}}, ""
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			return nil, "replacePrefixMatch is required for type ReplacePrefixMatch"
		}
		if !allPrefix {
			return nil, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
		}
		return &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: *p.ReplacePrefixMatch}}, ""
	}
	return nil, fmt.Sprintf("type %q is not supported", p.Type)
}

// incompatible returns why a rule's filters cannot be combined, or "".
func incompatible(fs []*nodeconfig.RouteFilter) string {
	redirect, rewrite := false, false
	for _, f := range fs {
		redirect = redirect || f.GetRequestRedirect() != nil
		rewrite = rewrite || f.GetUrlRewrite() != nil
	}
	if redirect && rewrite {
		return "filters: RequestRedirect and URLRewrite cannot be combined in one rule"
	}
	return ""
}

// backend resolves a backendRef to a Service of the snapshot. An unresolved one keeps its
// weight with an empty service (requests that pick it get 500) and is recorded.
func (c *routeCompiler) backend(b gatewayv1.BackendRef) *nodeconfig.RouteBackend {
	rb := &nodeconfig.RouteBackend{Port: uint32(deref(b.Port)), Weight: 1}
	if b.Weight != nil {
		rb.Weight = uint32(max(*b.Weight, 0))
	}
	group, kind := string(deref(b.Group)), kindService
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	ns := c.ns
	if b.Namespace != nil && *b.Namespace != "" {
		ns = string(*b.Namespace)
	}
	key := nsName{ns, string(b.Name)}
	fail := func(reason gatewayv1.RouteConditionReason, msg string) *nodeconfig.RouteBackend {
		if c.unresolvedReason == "" {
			c.unresolvedReason = reason
		}
		c.unresolved = append(c.unresolved, msg)
		return rb
	}
	switch {
	case group != "" || kind != kindService:
		return fail(gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s %s in group %q: only core Services are supported", kind, key, group))
	case ns != c.ns && !c.t.granted(c.kind, c.ns, key):
		return fail(gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef Service %s is in another namespace and no ReferenceGrant there allows %ss from namespace %s", key, c.kind, c.ns))
	}
	svc := c.t.serviceByName[key]
	switch {
	case svc == nil:
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s not found (or it has no cluster IP)", key))
	case b.Port == nil:
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s: a port is required", key))
	case !slices.ContainsFunc(svc.Ports, func(p *nodeconfig.ServicePort) bool { return p.ServicePort == rb.Port }):
		return fail(gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s has no TCP port %d", key, rb.Port))
	}
	rb.Service = key.String()
	return rb
}

// granted reports whether a ReferenceGrant in target's namespace lets routes of kind in
// namespace from refer to the Service target.
func (t *translator) granted(kind, from string, target nsName) bool {
	for i := range t.in.ReferenceGrants {
		g := &t.in.ReferenceGrants[i]
		if g.Namespace != target.ns {
			continue
		}
		fromOK := slices.ContainsFunc(g.Spec.From, func(f gatewayv1.ReferenceGrantFrom) bool {
			return string(f.Group) == groupGateway && string(f.Kind) == kind && string(f.Namespace) == from
		})
		toOK := slices.ContainsFunc(g.Spec.To, func(to gatewayv1.ReferenceGrantTo) bool {
			return to.Group == "" && to.Kind == kindService && (to.Name == nil || string(*to.Name) == target.name)
		})
		if fromOK && toOK {
			return true
		}
	}
	return false
}

// gatewayDuration matches Gateway API durations (GEP-2257): 1-4 groups of up to 5 digits and
// a unit of h, m, s or ms.
var gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// durationMs converts a Gateway API duration to milliseconds; nil and "0s" are zero (none).
func durationMs(d *gatewayv1.Duration) (uint32, error) {
	if d == nil {
		return 0, nil
	}
	s := string(*d)
	if !gatewayDuration.MatchString(s) {
		return 0, fmt.Errorf("%q is not a Gateway API duration such as 10s, 1m30s or 500ms", s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	ms := v.Milliseconds()
	if ms > math.MaxUint32 {
		return 0, fmt.Errorf("%q is too long", s)
	}
	if v > 0 && ms == 0 {
		ms = 1
	}
	return uint32(ms), nil
}
