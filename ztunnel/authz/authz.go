// Package authz is Warren's L4 authorization evaluator: given a compiled node config, a
// destination workload and port, and what is known about the client (its mTLS identity and
// address), it decides allow or deny and says which policy decided and why.
//
// The semantics are Linkerd's (see MISSION.md, "Policy semantics"):
//
//   - A Server covering the destination port makes the port default-deny: the connection is
//     allowed if any of the Server's authorizations matches (OR), an authorization matching when
//     all of its present requirements match (AND of meshTLS identity and network). Otherwise the
//     Server's access policy decides (deny unless set).
//   - A port no Server covers is decided by the workload's default inbound policy, else the mesh
//     default (all-unauthenticated unless set).
//   - Authorizations targeting an HTTPRoute or GRPCRoute are enforced by waypoints and never allow
//     anything in [Engine.Evaluate]. A waypoint calls [Engine.EvaluateRoute] with the route a
//     request matched: authorizations targeting that route count too, those targeting other
//     routes still never allow.
//   - A kubelet probe (see [Source.Probe]) to one of the workload's probe ports is always allowed.
//
// The package is pure: no I/O, no logging, no clocks, no globals that change. It is used by the
// ztunnel's inbound path (per connection), by the kubectl plugin to explain decisions, and by the
// waypoint, which adds L7 rules on top. It imports only the nodeconfig contract and go-spiffe.
package authz

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Source is what the destination side knows about a client.
type Source struct {
	// Identity is the SPIFFE ID from the client's verified mTLS certificate; the zero ID when
	// the client did not use mTLS. Identity must never come from an address lookup.
	Identity spiffeid.ID
	// Addr is the client's address. IPv4-mapped IPv6 addresses are unmapped before matching.
	Addr netip.Addr
	// Probe is set by the caller, never derived from the request, when the connection is a
	// kubelet probe: a plaintext connection whose source is the destination's own node (the
	// host network namespace or the node's address), which only kubelet and other host-network
	// processes can originate. A probe to one of the workload's ProbePorts is allowed whatever
	// the policy, with a Policy of kind [KindProbe]; to any other port, Probe is ignored.
	Probe bool
}

// Policy kinds: what decided a connection.
const (
	// KindAuthorizationPolicy: an AuthorizationPolicy matched.
	KindAuthorizationPolicy = "AuthorizationPolicy"
	// KindServer: a Server covers the port, no authorization matched, its access policy decided.
	KindServer = "Server"
	// KindDefault: no Server covers the port; the workload's or the mesh's default policy decided.
	KindDefault = "Default"
	// KindProbe: a kubelet probe to a probe port.
	KindProbe = "Probe"
)

// PolicyRef names what decided a connection.
type PolicyRef struct {
	// Kind is one of KindAuthorizationPolicy, KindServer, KindDefault, KindProbe.
	Kind string
	// Namespace and Name name the AuthorizationPolicy or the Server; empty for the others.
	Namespace, Name string
	// Default is the default policy that decided ("deny", "all-authenticated", ...) for
	// KindServer (the access policy) and KindDefault; empty for the others.
	Default string
}

// String returns a stable, space-free token for logs and metrics:
// "authorizationpolicy/default/service-a-to-b", "server/default/b:deny", "default:deny", "probe".
func (p PolicyRef) String() string {
	switch p.Kind {
	case KindAuthorizationPolicy:
		return "authorizationpolicy/" + p.namespacedName()
	case KindServer:
		return "server/" + p.namespacedName() + ":" + p.Default
	case KindDefault:
		return "default:" + p.Default
	default:
		return strings.ToLower(p.Kind)
	}
}

func (p PolicyRef) namespacedName() string { return p.Namespace + "/" + p.Name }

// ServerRef names the Server that covered the destination port.
type ServerRef struct {
	Namespace, Name string
	// Overlapping lists the "namespace/name" keys of the other Servers that also cover the
	// port, in order. Servers must not overlap; when they do, the first key in lexicographic
	// order decides and the others are listed here.
	Overlapping []string
}

// String returns "namespace/name".
func (s ServerRef) String() string { return s.Namespace + "/" + s.Name }

// Decision is the outcome of an evaluation and its explanation.
type Decision struct {
	Allow bool
	// Audit is set when an audit policy allowed the connection; it must be logged and counted
	// as a security event like a deny.
	Audit bool
	// Policy is what decided.
	Policy PolicyRef
	// Server is the Server covering the port, nil if none. It is shared by every decision of
	// the Engine: read it, do not modify it.
	Server *ServerRef
	// Reason is a short sentence for a security-event log line. On deny and audit it names
	// the cause, including the first failing requirement of the first authorization
	// considered. It does not repeat the destination, port or source: the log line has them.
	Reason string
	// Checks lists every authorization of the Server, in evaluation order, with its outcome.
	// Only [Engine.Explain] fills it.
	Checks []Check
}

// String returns "allow|audit|deny <policy>: <reason>", e.g.
// "deny server/default/b:deny: no authorization on server default/b matched (...); server access policy deny".
func (d Decision) String() string {
	verdict := "deny"
	switch {
	case d.Audit:
		verdict = "audit"
	case d.Allow:
		verdict = "allow"
	}
	return verdict + " " + d.Policy.String() + ": " + d.Reason
}

// CheckResult is the outcome of one authorization.
type CheckResult string

const (
	CheckMatched CheckResult = "matched"
	CheckFailed  CheckResult = "failed"
	// CheckSkipped: the authorization targets a route and is enforced by a waypoint.
	CheckSkipped CheckResult = "skipped"
)

// Requirement is one requirement of an authorization.
type Requirement string

const (
	RequirementMeshTLS Requirement = "meshTLS"
	RequirementNetwork Requirement = "network"
)

// Check is the outcome of one authorization for one connection.
type Check struct {
	// Authorization names the AuthorizationPolicy (Kind is always KindAuthorizationPolicy).
	Authorization PolicyRef
	// Target is what the policy targets: "Server/b", "Namespace/default", "HTTPRoute/r" or
	// "GRPCRoute/r".
	Target string
	Result CheckResult
	// Failed lists every requirement that did not match (all are evaluated when explaining).
	Failed []Requirement
	// Reason says why, e.g. "identity spiffe://cluster.local/ns/default/sa/c not in meshtls of
	// default/service-a-to-b".
	Reason string
}

// String returns "authorizationpolicy/<ns>/<name> <target> <result>: <reason>".
func (c Check) String() string {
	return c.Authorization.String() + " " + c.Target + " " + string(c.Result) + ": " + c.Reason
}

// Version returns the version of the snapshot the Engine was compiled from.
func (e *Engine) Version() string { return e.version }

// Evaluate decides a connection from src to port of dst. It is meant for every connection:
// decisions that allow without audit do not allocate. The returned Decision has no Checks.
//
// dst should be a workload of the snapshot the Engine was compiled from. Anything the Engine
// cannot interpret fails closed: a nil dst, a Server key it does not know (the Server might
// cover the port) or an unknown default policy deny the connection and the Reason says why.
func (e *Engine) Evaluate(dst *nodeconfig.Workload, port uint16, src Source) Decision {
	return e.decide(dst, port, src, Route{}, false)
}

// Route names the HTTPRoute or GRPCRoute a request matched at a waypoint.
type Route struct {
	Kind            nodeconfig.RouteKind
	Namespace, Name string
}

// EvaluateRoute is [Engine.Evaluate] for a request that matched route at a waypoint: the
// Server's authorizations targeting the Server or its Namespace count, and so do those targeting
// route (same kind, name and namespace); authorizations targeting other routes never allow. When
// none allows, the Server's access policy (or, with no Server, the default policy) decides. The
// zero Route makes it Evaluate.
func (e *Engine) EvaluateRoute(dst *nodeconfig.Workload, port uint16, src Source, route Route) Decision {
	return e.decide(dst, port, src, route, false)
}

// Explain is [Engine.Evaluate] plus Checks: every authorization of the covering Server with its
// outcome. Allow, Audit, Policy, Server and Reason are always those Evaluate returns.
func (e *Engine) Explain(dst *nodeconfig.Workload, port uint16, src Source) Decision {
	return e.decide(dst, port, src, Route{}, true)
}

// decide is the single implementation of Evaluate and Explain; explain only adds Checks.
func (e *Engine) decide(dst *nodeconfig.Workload, port uint16, src Source, route Route, explain bool) Decision {
	if dst == nil {
		return Decision{
			Policy: PolicyRef{Kind: KindDefault, Default: nodeconfig.PolicyDeny},
			Reason: "no destination workload; failing closed",
		}
	}
	addr := src.Addr.Unmap().WithZone("")

	srv, ref, unknown := e.cover(dst, port)
	if unknown != "" {
		ns, name, _ := strings.Cut(unknown, "/")
		return Decision{
			Policy: PolicyRef{Kind: KindServer, Namespace: ns, Name: name},
			Reason: "workload references server " + strconv.Quote(unknown) + " missing from the config; failing closed",
		}
	}

	if src.Probe && slices.Contains(dst.GetProbePorts(), uint32(port)) {
		return Decision{Allow: true, Policy: PolicyRef{Kind: KindProbe}, Server: ref, Reason: "kubelet probe to a probe port"}
	}

	var d Decision
	if srv != nil {
		d = e.decideServer(srv, src, addr, route, explain)
	} else {
		d = e.decideDefault(dst, src, addr)
	}
	d.Server = ref
	if ref != nil && len(ref.Overlapping) > 0 {
		d.Reason += "; overlapping servers " + strings.Join(ref.Overlapping, ", ") + " ignored"
	}
	return d
}

// cover finds the Server of dst covering port. ref is srv's shared ServerRef, or a copy listing
// the overlapping Servers. unknown is a Server key of dst the Engine does not know.
func (e *Engine) cover(dst *nodeconfig.Workload, port uint16) (srv *server, ref *ServerRef, unknown string) {
	var best string
	var others []string
	for _, key := range dst.GetServers() {
		s := e.servers[key]
		if s == nil {
			return nil, nil, key
		}
		if !s.covers(dst, port) {
			continue
		}
		switch {
		case srv == nil:
			srv, best = s, key
		case key < best:
			others = append(others, best)
			srv, best = s, key
		case key != best:
			others = append(others, key)
		}
	}
	if srv == nil {
		return nil, nil, ""
	}
	if len(others) == 0 {
		return srv, &srv.ref, ""
	}
	slices.Sort(others)
	others = slices.Compact(others)
	r := srv.ref
	r.Overlapping = others
	return srv, &r, ""
}

// covers reports whether s covers port of dst. A named port resolves only through the ports
// the workload declares.
func (s *server) covers(dst *nodeconfig.Workload, port uint16) bool {
	if s.portName == "" {
		return s.portNumber == port
	}
	for _, p := range dst.GetPorts() {
		if p.GetName() == s.portName && p.GetPort() == uint32(port) {
			return true
		}
	}
	return false
}

func (e *Engine) decideServer(s *server, src Source, addr netip.Addr, route Route, explain bool) Decision {
	var (
		matched    *authorization
		first      *authorization // first authorization that failed
		firstTLS   miss
		firstNet   miss
		failed     int
		checks     []Check
		considered int
	)
	if explain {
		checks = make([]Check, 0, len(s.authzs))
	}
	for _, a := range s.authzs {
		if a.route && !a.targets(route) {
			if explain {
				checks = append(checks, Check{
					Authorization: a.ref,
					Target:        a.target,
					Result:        CheckSkipped,
					Reason:        "targets " + a.target + "; enforced by a waypoint, never at L4",
				})
			}
			continue
		}
		considered++
		// Once one matched, only Explain keeps going, to report the others.
		tls, nw := a.match(src, addr, explain)
		ok := tls == missNone && nw == missNone
		if explain {
			checks = append(checks, a.check(tls, nw, src, addr))
		}
		if ok {
			if matched == nil {
				matched = a
			}
			if !explain {
				break
			}
			continue
		}
		failed++
		if first == nil {
			first, firstTLS, firstNet = a, tls, nw
		}
	}
	if matched != nil {
		return Decision{Allow: true, Policy: matched.ref, Reason: matched.allowReason, Checks: checks}
	}

	allow, why := e.applyDefault(s.access, src, addr)
	audit := s.access == nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT
	d := Decision{Allow: allow, Audit: audit, Policy: s.policy, Reason: s.accessReason, Checks: checks}
	if allow && !audit {
		return d
	}
	// Deny or audit: a security event, worth the detail.
	var b strings.Builder
	b.Grow(256)
	switch {
	case considered == 0 && s.routeAuthzs == 0:
		b.WriteString("server ")
		b.WriteString(s.key)
		b.WriteString(" has no authorizations")
	case considered == 0:
		b.WriteString("server ")
		b.WriteString(s.key)
		b.WriteString(" has only route authorizations (")
		b.WriteString(strconv.Itoa(s.routeAuthzs))
		b.WriteString(", enforced by waypoints)")
	default:
		b.WriteString("no authorization on server ")
		b.WriteString(s.key)
		b.WriteString(" matched (")
		b.WriteString(first.firstFailure(firstTLS, firstNet, src, addr))
		if failed > 1 {
			b.WriteString("; ")
			b.WriteString(strconv.Itoa(failed - 1))
			b.WriteString(" more")
		}
		b.WriteString(")")
	}
	b.WriteString("; server access policy ")
	b.WriteString(s.policy.Default)
	if why != "" {
		b.WriteString(": ")
		b.WriteString(why)
	}
	d.Reason = b.String()
	return d
}

func (e *Engine) decideDefault(dst *nodeconfig.Workload, src Source, addr netip.Addr) Decision {
	p, from := dst.GetDefaultInboundPolicy(), 0
	if p == nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
		p, from = e.meshDefault, 1
	}
	if !known(p) {
		return Decision{
			Policy: PolicyRef{Kind: KindDefault, Default: DefaultPolicy(p).String()},
			Reason: "no server covers the port; unknown workload default policy " + DefaultPolicy(p).String() + "; failing closed",
		}
	}
	allow, why := e.applyDefault(p, src, addr)
	d := Decision{
		Allow:  allow,
		Audit:  p == nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT,
		Policy: PolicyRef{Kind: KindDefault, Default: DefaultPolicy(p).String()},
		Reason: e.defaultReasons[from][p],
	}
	if why != "" {
		d.Reason += ": " + why
	}
	return d
}

// targets reports whether a, a route authorization, targets route.
func (a *authorization) targets(route Route) bool {
	return route.Name != "" && a.routeName == route.Name && a.routeKind == route.Kind && a.ref.Namespace == route.Namespace
}

// miss says why a requirement did not match.
type miss uint8

const (
	missNone       miss = iota
	missNoIdentity      // meshTLS required, client has no identity
	missIdentity        // identity not in the list
	missNoAddr          // networks required, client address unknown
	missNetwork         // address in no cidr
	missExcept          // address in a cidr but also in one of its excepts
)

// match evaluates a's requirements, meshTLS first. Unless all is set, it stops at the first
// failing requirement and reports the later ones as missNone.
func (a *authorization) match(src Source, addr netip.Addr, all bool) (tls, nw miss) {
	if a.meshTLS {
		switch {
		case src.Identity.IsZero():
			tls = missNoIdentity
		case !a.matchIdentity(src.Identity.String()):
			tls = missIdentity
		}
		if tls != missNone && !all {
			return tls, missNone
		}
	}
	if len(a.networks) > 0 {
		nw = a.matchNetwork(addr)
	}
	return tls, nw
}

func (a *authorization) matchIdentity(id string) bool {
	if a.anyIdentity {
		return true
	}
	for _, x := range a.exact {
		if id == x {
			return true
		}
	}
	for _, p := range a.prefixes {
		if strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

func (a *authorization) matchNetwork(addr netip.Addr) miss {
	if !addr.IsValid() {
		return missNoAddr
	}
	m := missNetwork
	for _, n := range a.networks {
		if !n.cidr.Contains(addr) {
			continue
		}
		if n.excepted(addr) {
			m = missExcept
			continue
		}
		return missNone
	}
	return m
}

func (n network) excepted(addr netip.Addr) bool {
	for _, x := range n.except {
		if x.Contains(addr) {
			return true
		}
	}
	return false
}

// firstFailure describes the first failing requirement, in evaluation order, so that Evaluate
// (which stops there) and Explain (which does not) give the same Reason.
func (a *authorization) firstFailure(tls, nw miss, src Source, addr netip.Addr) string {
	if tls != missNone {
		return a.describe(tls, src, addr)
	}
	return a.describe(nw, src, addr)
}

func (a *authorization) describe(m miss, src Source, addr netip.Addr) string {
	of := a.ref.namespacedName()
	switch m {
	case missNoIdentity:
		return "no client identity; meshtls of " + of + " requires one"
	case missIdentity:
		return "identity " + src.Identity.String() + " not in meshtls of " + of
	case missNoAddr:
		return "client address unknown; networks of " + of + " require one"
	case missNetwork:
		return "address " + addr.String() + " not in networks of " + of
	case missExcept:
		return "address " + addr.String() + " excluded by an except in networks of " + of
	}
	return ""
}

func (a *authorization) check(tls, nw miss, src Source, addr netip.Addr) Check {
	c := Check{Authorization: a.ref, Target: a.target}
	var why []string
	if tls != missNone {
		c.Failed = append(c.Failed, RequirementMeshTLS)
		why = append(why, a.describe(tls, src, addr))
	}
	if nw != missNone {
		c.Failed = append(c.Failed, RequirementNetwork)
		why = append(why, a.describe(nw, src, addr))
	}
	if len(c.Failed) > 0 {
		c.Result = CheckFailed
		c.Reason = strings.Join(why, "; ")
		return c
	}
	c.Result = CheckMatched
	switch {
	case a.meshTLS && len(a.networks) > 0:
		c.Reason = "identity and address matched"
	case a.meshTLS:
		c.Reason = "identity matched"
	case len(a.networks) > 0:
		c.Reason = "address matched"
	default:
		c.Reason = "no requirements"
	}
	return c
}
