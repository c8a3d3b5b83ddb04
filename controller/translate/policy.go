package translate

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
)

const (
	groupPolicy        = policyv1alpha1.GroupName
	groupGateway       = gatewayv1.GroupName
	kindHTTPRoute      = "HTTPRoute"
	kindGRPCRoute      = "GRPCRoute"
	kindNamespace      = "Namespace"
	kindServiceAccount = "ServiceAccount"
)

// compiledAuthn is a MeshTLSAuthentication (identities) or NetworkAuthentication (networks)
// with its invalid entries removed.
type compiledAuthn struct {
	ref        string // "Kind/namespace/name", as recorded in Authorization.authentication_refs
	identities []string
	networks   []*nodeconfig.Network
}

func (a *compiledAuthn) usable() bool { return len(a.identities) > 0 || len(a.networks) > 0 }

// compiledServer is a valid Server and the meshed pods it selects.
type compiledServer struct {
	key      nsName
	msg      *nodeconfig.Server
	selected []*podInfo
}

func (t *translator) setStatus(kind string, m *metav1.ObjectMeta, accepted, resolved metav1.Condition) {
	accepted.Type = policyv1alpha1.ConditionAccepted
	resolved.Type = policyv1alpha1.ConditionResolvedRefs
	for _, c := range []*metav1.Condition{&accepted, &resolved} {
		c.ObservedGeneration = m.Generation
		c.Message = truncate(c.Message)
	}
	t.status[ObjectRef{Kind: kind, Namespace: m.Namespace, Name: m.Name}] = []metav1.Condition{accepted, resolved}
}

func condTrue(reason, msg string) metav1.Condition {
	return metav1.Condition{Status: metav1.ConditionTrue, Reason: reason, Message: msg}
}

func condFalse(reason, msg string) metav1.Condition {
	return metav1.Condition{Status: metav1.ConditionFalse, Reason: reason, Message: msg}
}

// truncate keeps a condition message within the API's 32768-byte limit.
func truncate(s string) string {
	const max = 32768
	if len(s) <= max {
		return s
	}
	s = s[:max-3]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// index maps items by namespace/name; of duplicates, the one with the smallest uid wins.
func index[T any](items []T, meta func(*T) *metav1.ObjectMeta) map[nsName]*T {
	m := make(map[nsName]*T, len(items))
	for i := range items {
		om := meta(&items[i])
		k := nsName{om.Namespace, om.Name}
		if old := m[k]; old != nil && meta(old).UID <= om.UID {
			continue
		}
		m[k] = &items[i]
	}
	return m
}

// sortedMeta returns pointers to items sorted by namespace/name, without duplicate keys (the
// first of equal keys wins) and without objects lacking a namespace or name, which no API
// server returns and which could not carry a status.
func sortedMeta[T any](t *translator, kind string, items []T, meta func(*T) *metav1.ObjectMeta) []*T {
	out := make([]*T, 0, len(items))
	for i := range items {
		if m := meta(&items[i]); m.Namespace == "" || m.Name == "" {
			t.warnf("%s %q in namespace %q: a namespace and a name are required; ignored", kind, m.Name, m.Namespace)
			continue
		}
		out = append(out, &items[i])
	}
	slices.SortStableFunc(out, func(a, b *T) int { return compareObjects(meta(a), meta(b)) })
	return slices.CompactFunc(out, func(a, b *T) bool {
		ma, mb := meta(a), meta(b)
		return ma.Namespace == mb.Namespace && ma.Name == mb.Name
	})
}

func (t *translator) translateAuthentications() {
	for _, m := range sortedMeta(t, KindMeshTLSAuthentication, t.in.MeshTLSAuthentications, func(m *policyv1alpha1.MeshTLSAuthentication) *metav1.ObjectMeta { return &m.ObjectMeta }) {
		a := &compiledAuthn{ref: KindMeshTLSAuthentication + "/" + m.Namespace + "/" + m.Name}
		var bad []string
		for i, id := range m.Spec.Identities {
			if err := validateIdentity(id); err != nil {
				bad = append(bad, fmt.Sprintf("identities[%d] %q: %v", i, id, err))
				continue
			}
			a.identities = append(a.identities, id)
		}
		for i, r := range m.Spec.IdentityRefs {
			id, err := t.identityRef(m.Namespace, r)
			if err != nil {
				bad = append(bad, fmt.Sprintf("identityRefs[%d]: %v", i, err))
				continue
			}
			a.identities = append(a.identities, id)
		}
		slices.Sort(a.identities)
		a.identities = slices.Compact(a.identities)
		t.meshTLS[nsName{m.Namespace, m.Name}] = a
		accepted := condTrue(policyv1alpha1.ReasonAccepted, plural(len(a.identities), "identity", "identities"))
		if len(bad) > 0 || !a.usable() {
			accepted = condFalse(policyv1alpha1.ReasonInvalid, invalidAuthnMessage(bad, a.usable(), "identities"))
		}
		t.setStatus(KindMeshTLSAuthentication, &m.ObjectMeta, accepted,
			condTrue(policyv1alpha1.ReasonResolvedRefs, "all references resolved"))
	}

	for _, n := range sortedMeta(t, KindNetworkAuthentication, t.in.NetworkAuthentications, func(n *policyv1alpha1.NetworkAuthentication) *metav1.ObjectMeta { return &n.ObjectMeta }) {
		a := &compiledAuthn{ref: KindNetworkAuthentication + "/" + n.Namespace + "/" + n.Name}
		var bad []string
		for i, nw := range n.Spec.Networks {
			if err := validateNetwork(nw); err != nil {
				bad = append(bad, fmt.Sprintf("networks[%d] (cidr %q): %v", i, nw.CIDR, err))
				continue
			}
			a.networks = append(a.networks, &nodeconfig.Network{Cidr: nw.CIDR, Except: slices.Clone(nw.Except)})
		}
		t.networks[nsName{n.Namespace, n.Name}] = a
		accepted := condTrue(policyv1alpha1.ReasonAccepted, plural(len(a.networks), "network", "networks"))
		if len(bad) > 0 || !a.usable() {
			accepted = condFalse(policyv1alpha1.ReasonInvalid, invalidAuthnMessage(bad, a.usable(), "networks"))
		}
		t.setStatus(KindNetworkAuthentication, &n.ObjectMeta, accepted,
			condTrue(policyv1alpha1.ReasonResolvedRefs, "all references resolved"))
	}
}

func invalidAuthnMessage(bad []string, usable bool, what string) string {
	msg := "ignored invalid entries: " + strings.Join(bad, "; ")
	if len(bad) == 0 {
		msg = "no " + what + " configured"
	}
	if !usable {
		msg += "; with no valid " + what + " left, AuthorizationPolicies requiring it allow nothing"
	}
	return msg
}

// identityRef turns a MeshTLSAuthentication identityRef into an identity pattern.
func (t *translator) identityRef(ns string, r policyv1alpha1.IdentityReference) (string, error) {
	if r.Group != "" {
		return "", fmt.Errorf("group %q: want the core group (empty)", r.Group)
	}
	if !validName(r.Name) {
		return "", fmt.Errorf("name %q is not a valid Kubernetes name", r.Name)
	}
	switch r.Kind {
	case kindServiceAccount:
		if r.Namespace != "" {
			if !validName(r.Namespace) {
				return "", fmt.Errorf("namespace %q is not a valid Kubernetes name", r.Namespace)
			}
			ns = r.Namespace
		}
		return t.spiffeID(ns, r.Name), nil
	case kindNamespace:
		if r.Namespace != "" {
			return "", errors.New("a Namespace identityRef must not set namespace")
		}
		return "spiffe://" + t.td + "/ns/" + r.Name + "/*", nil
	}
	return "", fmt.Errorf("kind %q: want ServiceAccount or Namespace", r.Kind)
}

// validName accepts what can be a namespace, ServiceAccount name or other DNS-subdomain-like
// Kubernetes name; it keeps odd characters out of SPIFFE IDs.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// validateIdentity accepts what the ztunnel's authorization engine accepts: "*", a SPIFFE ID, or
// a SPIFFE ID followed by "/*".
func validateIdentity(id string) error {
	if id == "*" {
		return nil
	}
	base, _ := strings.CutSuffix(id, "/*")
	if strings.Contains(base, "*") {
		return errors.New(`wildcards are only allowed as "*" or a trailing "/*"`)
	}
	if _, err := spiffeid.FromString(base); err != nil {
		return fmt.Errorf(`want a SPIFFE ID, "*" or a SPIFFE ID followed by "/*": %w`, err)
	}
	return nil
}

// validateNetwork accepts what the ztunnel's authorization engine accepts: a CIDR or IP, and
// excepts strictly inside it. An entry with a bad except is dropped whole, since dropping only
// the except would widen it.
func validateNetwork(n policyv1alpha1.Network) error {
	cidr, err := nodeconfig.ParseNetwork(n.CIDR)
	if err != nil {
		return err
	}
	for _, x := range n.Except {
		p, err := nodeconfig.ParseNetwork(x)
		if err != nil {
			return fmt.Errorf("except %q: %w", x, err)
		}
		if p.Addr().Is4() != cidr.Addr().Is4() || p.Bits() < cidr.Bits() || !cidr.Contains(p.Addr()) {
			return fmt.Errorf("except %q is not inside the cidr", x)
		}
		if p == cidr {
			return fmt.Errorf("except %q negates the whole cidr", x)
		}
	}
	return nil
}

var serverProtocols = map[policyv1alpha1.ProxyProtocol]nodeconfig.AppProtocol{
	"":                                  nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED,
	policyv1alpha1.ProxyProtocolUnknown: nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED,
	policyv1alpha1.ProxyProtocolHTTP1:   nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1,
	policyv1alpha1.ProxyProtocolHTTP2:   nodeconfig.AppProtocol_APP_PROTOCOL_HTTP2,
	policyv1alpha1.ProxyProtocolGRPC:    nodeconfig.AppProtocol_APP_PROTOCOL_GRPC,
	policyv1alpha1.ProxyProtocolOpaque:  nodeconfig.AppProtocol_APP_PROTOCOL_TCP,
	policyv1alpha1.ProxyProtocolTLS:     nodeconfig.AppProtocol_APP_PROTOCOL_TLS,
}

// translateServers compiles the Servers namespace by namespace, oldest first, so that of two
// Servers covering the same pod port the older one wins.
func (t *translator) translateServers() {
	srvs := sortedMeta(t, KindServer, t.in.Servers, func(s *policyv1alpha1.Server) *metav1.ObjectMeta { return &s.ObjectMeta })
	slices.SortStableFunc(srvs, func(a, b *policyv1alpha1.Server) int {
		return cmp.Or(
			cmp.Compare(a.Namespace, b.Namespace),
			a.CreationTimestamp.Compare(b.CreationTimestamp.Time),
			cmp.Compare(a.Name, b.Name))
	})
	// claims maps a pod port (by number, or by name) to the Server covering it.
	claims := make(map[claim]nsName)
	var buf []claim
	for _, s := range srvs {
		key := nsName{s.Namespace, s.Name}
		cs, problem := t.compileServer(s)
		if cs == nil {
			t.setStatus(KindServer, &s.ObjectMeta, condFalse(policyv1alpha1.ReasonInvalid, problem),
				condTrue(policyv1alpha1.ReasonResolvedRefs, "all references resolved"))
			continue
		}
		if winner, c, ok := conflict(claims, cs, &buf); ok {
			port := c.name
			if port == "" {
				port = strconv.Itoa(int(c.num))
			}
			t.setStatus(KindServer, &s.ObjectMeta,
				condFalse(ReasonConflict, fmt.Sprintf("port %s of pod %s is already covered by Server %s, which is older; this Server is ignored until the overlap is removed", port, c.pod, winner)),
				condTrue(policyv1alpha1.ReasonResolvedRefs, "all references resolved"))
			continue
		}
		keyStr := key.String()
		for _, p := range cs.selected {
			buf = claims4(cs.msg, p, buf[:0])
			for _, c := range buf {
				claims[c] = key
			}
			p.w.Servers = append(p.w.Servers, keyStr)
		}
		t.servers[key] = cs
		t.serversByNS[key.ns] = append(t.serversByNS[key.ns], cs)
		accepted := condTrue(policyv1alpha1.ReasonAccepted, "accepted")
		if problem != "" {
			accepted = condFalse(policyv1alpha1.ReasonInvalid, problem)
		}
		t.setStatus(KindServer, &s.ObjectMeta, accepted,
			condTrue(policyv1alpha1.ReasonResolvedRefs, "selects "+plural(len(cs.selected), "meshed pod", "meshed pods")))
	}
	for _, l := range t.serversByNS {
		slices.SortFunc(l, func(a, b *compiledServer) int { return cmp.Compare(a.key.name, b.key.name) })
	}
}

// compileServer compiles s. A nil result is an unusable Server, with the reason. A non-nil
// result with a problem is a Server enforced with a safe substitute for a bad field.
func (t *translator) compileServer(s *policyv1alpha1.Server) (*compiledServer, string) {
	msg := &nodeconfig.Server{Name: s.Name, Namespace: s.Namespace}
	switch p := s.Spec.Port; {
	case p.Type == intstr.Int && p.IntVal >= 1 && p.IntVal <= 65535:
		msg.Port = &nodeconfig.Server_PortNumber{PortNumber: uint32(p.IntVal)}
	case p.Type == intstr.String && p.StrVal != "":
		if n, err := strconv.Atoi(p.StrVal); err == nil && n >= 1 && n <= 65535 {
			msg.Port = &nodeconfig.Server_PortNumber{PortNumber: uint32(n)}
		} else {
			msg.Port = &nodeconfig.Server_PortName{PortName: p.StrVal}
		}
	default:
		return nil, fmt.Sprintf("port %q: want a number from 1 to 65535 or a container port name", p.String())
	}
	sel, err := metav1.LabelSelectorAsSelector(&s.Spec.PodSelector)
	if err != nil {
		return nil, fmt.Sprintf("podSelector: %v", err)
	}
	var problems []string
	proto, ok := serverProtocols[s.Spec.ProxyProtocol]
	if !ok {
		problems = append(problems, fmt.Sprintf("proxyProtocol %q is unknown (want unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS); detecting the protocol instead", s.Spec.ProxyProtocol))
	}
	msg.ProxyProtocol = proto
	msg.AccessPolicy = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	if s.Spec.AccessPolicy != "" {
		p, err := nodeconfig.ParseDefaultPolicy(string(s.Spec.AccessPolicy))
		if err != nil {
			problems = append(problems, fmt.Sprintf("accessPolicy: %v; enforcing deny instead", err))
		} else {
			msg.AccessPolicy = p
		}
	}
	cs := &compiledServer{key: nsName{s.Namespace, s.Name}, msg: msg}
	for _, p := range t.members[s.Namespace] {
		if sel.Matches(labels.Set(p.pod.Labels)) {
			cs.selected = append(cs.selected, p)
		}
	}
	return cs, strings.Join(problems, "; ")
}

// claim is a pod port a Server covers: by number (name empty) or by name.
type claim struct {
	pod  nsName
	name string
	num  uint32
}

// claims4 appends to buf the claims a Server makes on a pod: its port number, or its port name
// and every number that name resolves to on the pod.
func claims4(s *nodeconfig.Server, p *podInfo, buf []claim) []claim {
	pod := nsName{p.w.Namespace, p.w.Name}
	if n, ok := s.Port.(*nodeconfig.Server_PortNumber); ok {
		return append(buf, claim{pod: pod, num: n.PortNumber})
	}
	name := s.GetPortName()
	buf = append(buf, claim{pod: pod, name: name})
	for _, wp := range p.w.GetPorts() {
		if wp.GetName() == name {
			buf = append(buf, claim{pod: pod, num: wp.GetPort()})
		}
	}
	return buf
}

// conflict finds a pod port cs would cover that an older Server already covers.
func conflict(claims map[claim]nsName, cs *compiledServer, buf *[]claim) (winner nsName, c claim, ok bool) {
	for _, p := range cs.selected {
		*buf = claims4(cs.msg, p, (*buf)[:0])
		for _, c := range *buf {
			if w, ok := claims[c]; ok {
				return w, c, true
			}
		}
	}
	return nsName{}, claim{}, false
}

// policyTarget is what an AuthorizationPolicy resolved to.
type policyTarget struct {
	kind    nodeconfig.TargetKind
	route   string
	servers []*compiledServer
	desc    string // for the Accepted message
	// unenforced: a route target none of whose pods has a waypoint, so the policy allows
	// nothing anywhere (route rules are enforced only by waypoints).
	unenforced bool
}

func (t *translator) translateAuthorizations() {
	httpRoutes := index(t.in.HTTPRoutes, func(r *gatewayv1.HTTPRoute) *metav1.ObjectMeta { return &r.ObjectMeta })
	grpcRoutes := index(t.in.GRPCRoutes, func(r *gatewayv1.GRPCRoute) *metav1.ObjectMeta { return &r.ObjectMeta })
	allServers := make(map[nsName]bool, len(t.in.Servers))
	for i := range t.in.Servers {
		allServers[nsName{t.in.Servers[i].Namespace, t.in.Servers[i].Name}] = true
	}

	for _, ap := range sortedMeta(t, KindAuthorizationPolicy, t.in.AuthorizationPolicies, func(a *policyv1alpha1.AuthorizationPolicy) *metav1.ObjectMeta { return &a.ObjectMeta }) {
		var invalid, unresolved []string
		unresolvedReason := ""
		fail := func(reason, msg string) {
			if unresolvedReason == "" {
				unresolvedReason = reason
			}
			unresolved = append(unresolved, msg)
		}

		// The target.
		tr := ap.Spec.TargetRef
		tgt := &policyTarget{}
		switch {
		case tr.Namespace != "" && tr.Namespace != ap.Namespace:
			invalid = append(invalid, fmt.Sprintf("targetRef namespace %q: a policy can only target objects in its own namespace %q", tr.Namespace, ap.Namespace))
		case tr.Kind == KindServer && tr.Group == groupPolicy:
			key := nsName{ap.Namespace, tr.Name}
			tgt.kind = nodeconfig.TargetKind_TARGET_KIND_SERVER
			tgt.desc = "Server " + key.String()
			switch cs := t.servers[key]; {
			case cs != nil:
				tgt.servers = []*compiledServer{cs}
			case allServers[key]:
				fail(ReasonTargetNotAccepted, fmt.Sprintf("Server %s is not accepted (see its status)", key))
			default:
				fail(policyv1alpha1.ReasonTargetNotFound, fmt.Sprintf("Server %s not found", key))
			}
		case tr.Kind == kindNamespace && tr.Group == "":
			if tr.Name != ap.Namespace {
				invalid = append(invalid, fmt.Sprintf("targetRef Namespace %q: a policy can only target its own namespace %q", tr.Name, ap.Namespace))
				break
			}
			tgt.kind = nodeconfig.TargetKind_TARGET_KIND_NAMESPACE
			tgt.servers = t.serversByNS[ap.Namespace]
			tgt.desc = fmt.Sprintf("every Server in namespace %s (%d)", ap.Namespace, len(tgt.servers))
		case (tr.Kind == kindHTTPRoute || tr.Kind == kindGRPCRoute) && tr.Group == groupGateway:
			key := nsName{ap.Namespace, tr.Name}
			var parents []gatewayv1.ParentReference
			found := false
			if tr.Kind == kindHTTPRoute {
				tgt.kind = nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE
				if r := httpRoutes[key]; r != nil {
					found, parents = true, r.Spec.ParentRefs
				}
			} else {
				tgt.kind = nodeconfig.TargetKind_TARGET_KIND_GRPC_ROUTE
				if r := grpcRoutes[key]; r != nil {
					found, parents = true, r.Spec.ParentRefs
				}
			}
			tgt.route = tr.Name
			if !found {
				fail(policyv1alpha1.ReasonTargetNotFound, fmt.Sprintf("%s %s not found", tr.Kind, key))
				break
			}
			tgt.servers = t.routeServers(ap.Namespace, parents)
			tgt.desc, tgt.unenforced = t.routeDesc(tr.Kind, key, tgt.servers)
		default:
			invalid = append(invalid, fmt.Sprintf("targetRef %s %q in group %q is not supported: want Server (policy.warren.dev), HTTPRoute or GRPCRoute (gateway.networking.k8s.io), or Namespace (core group)", tr.Kind, tr.Name, tr.Group))
		}

		// The required authentications.
		a := &nodeconfig.Authorization{Name: ap.Name, Namespace: ap.Namespace, TargetKind: tgt.kind, Route: tgt.route}
		identityRefs, networkRefs := 0, 0
		for i, r := range ap.Spec.RequiredAuthenticationRefs {
			ns := ap.Namespace
			if r.Namespace != "" {
				ns = r.Namespace
			}
			key := nsName{ns, r.Name}
			switch {
			case r.Kind == KindMeshTLSAuthentication && r.Group == groupPolicy:
				identityRefs++
				m := t.meshTLS[key]
				switch {
				case m == nil:
					fail(ReasonAuthenticationNotFound, fmt.Sprintf("MeshTLSAuthentication %s not found", key))
				case !m.usable():
					fail(ReasonAuthenticationInvalid, fmt.Sprintf("MeshTLSAuthentication %s has no valid identities", key))
				default:
					a.MeshTls = &nodeconfig.MeshTLS{Identities: m.identities}
					a.AuthenticationRefs = append(a.AuthenticationRefs, m.ref)
				}
			case r.Kind == KindNetworkAuthentication && r.Group == groupPolicy:
				networkRefs++
				n := t.networks[key]
				switch {
				case n == nil:
					fail(ReasonAuthenticationNotFound, fmt.Sprintf("NetworkAuthentication %s not found", key))
				case !n.usable():
					fail(ReasonAuthenticationInvalid, fmt.Sprintf("NetworkAuthentication %s has no valid networks", key))
				default:
					a.Networks = n.networks
					a.AuthenticationRefs = append(a.AuthenticationRefs, n.ref)
				}
			case r.Kind == kindServiceAccount && r.Group == "":
				identityRefs++
				if !validName(r.Name) || !validName(ns) {
					invalid = append(invalid, fmt.Sprintf("requiredAuthenticationRefs[%d]: ServiceAccount %s is not a valid name", i, key))
					break
				}
				a.MeshTls = &nodeconfig.MeshTLS{Identities: []string{t.spiffeID(ns, r.Name)}}
				a.AuthenticationRefs = append(a.AuthenticationRefs, kindServiceAccount+"/"+key.String())
			default:
				invalid = append(invalid, fmt.Sprintf("requiredAuthenticationRefs[%d]: %s in group %q is not supported: want MeshTLSAuthentication or NetworkAuthentication (policy.warren.dev), or ServiceAccount (core group)", i, r.Kind, r.Group))
			}
		}
		if identityRefs > 1 {
			invalid = append(invalid, "at most one identity authentication (a MeshTLSAuthentication or a ServiceAccount) may be required; list the identities in one MeshTLSAuthentication")
		}
		if networkRefs > 1 {
			invalid = append(invalid, "at most one NetworkAuthentication may be required; list the networks in one NetworkAuthentication")
		}
		slices.Sort(a.AuthenticationRefs)

		// Compile, or fail closed: an authorization missing a requirement could only widen
		// what it allows, so it is dropped whole.
		var accepted, resolved metav1.Condition
		switch {
		case len(invalid) > 0:
			accepted = condFalse(policyv1alpha1.ReasonInvalid, strings.Join(invalid, "; ")+"; the policy allows nothing until it is fixed")
		case len(unresolved) > 0:
			accepted = condTrue(policyv1alpha1.ReasonAccepted, "valid, but it allows nothing until its references resolve")
		default:
			for _, cs := range tgt.servers {
				cs.msg.Authorizations = append(cs.msg.Authorizations, a)
			}
			accepted = condTrue(policyv1alpha1.ReasonAccepted, "applies to "+tgt.desc)
			if tgt.unenforced {
				// Fail closed, and say so: no ztunnel applies a route rule.
				accepted = condFalse(ReasonNoWaypoint, "targets "+tgt.desc)
			}
		}
		if len(unresolved) > 0 {
			resolved = condFalse(unresolvedReason, strings.Join(unresolved, "; "))
		} else {
			resolved = condTrue(policyv1alpha1.ReasonResolvedRefs, "all references resolved")
		}
		t.setStatus(KindAuthorizationPolicy, &ap.ObjectMeta, accepted, resolved)
	}

	for _, cs := range t.servers {
		slices.SortFunc(cs.msg.Authorizations, func(a, b *nodeconfig.Authorization) int {
			return cmp.Or(
				cmp.Compare(a.Namespace, b.Namespace),
				cmp.Compare(a.Name, b.Name),
				cmp.Compare(a.TargetKind, b.TargetKind),
				cmp.Compare(a.Route, b.Route))
		})
	}
}

// routeServers returns the accepted Servers among a route's parentRefs (group policy.warren.dev,
// kind Server, in the route's namespace), sorted and without duplicates.
func (t *translator) routeServers(ns string, parents []gatewayv1.ParentReference) []*compiledServer {
	var out []*compiledServer
	for _, p := range parents {
		if p.Group == nil || string(*p.Group) != groupPolicy || p.Kind == nil || string(*p.Kind) != KindServer {
			continue
		}
		if p.Namespace != nil && string(*p.Namespace) != ns || p.Port != nil || p.SectionName != nil {
			continue // not an accepted parent (see judgeParent)
		}
		if cs := t.servers[nsName{ns, string(p.Name)}]; cs != nil && !slices.Contains(out, cs) {
			out = append(out, cs)
		}
	}
	slices.SortFunc(out, func(a, b *compiledServer) int { return cmp.Compare(a.key.name, b.key.name) })
	return out
}

// routeDesc describes a route target for the Accepted message, saying where it cannot take
// effect: route rules are enforced only by waypoints. unenforced is set when the Servers select
// pods and none of them has a waypoint.
func (t *translator) routeDesc(kind string, key nsName, servers []*compiledServer) (desc string, unenforced bool) {
	if len(servers) == 0 {
		return fmt.Sprintf("%s %s, which has no accepted Server among its parentRefs (route-level policies apply through Server parents), so nothing", kind, key), false
	}
	names := make([]string, len(servers))
	pods, noWaypoint := 0, 0
	for i, cs := range servers {
		names[i] = cs.key.name
		for _, p := range cs.selected {
			pods++
			if p.w.Waypoint == nil {
				noWaypoint++
			}
		}
	}
	desc = fmt.Sprintf("%s %s through Servers %s; enforced by waypoints", kind, key, strings.Join(names, ", "))
	switch {
	case pods > 0 && noWaypoint == pods:
		return fmt.Sprintf("%s %s through Servers %s, but none of their %s has a waypoint: route rules are enforced only by waypoints, so this policy allows nothing (fails closed) until one is bound with label %s",
			kind, key, strings.Join(names, ", "), plural(pods, "pod", "pods"), LabelUseWaypoint), true
	case noWaypoint > 0:
		desc += fmt.Sprintf("; %d of their %d pods have no waypoint, and there it allows nothing (bind one with label %s)", noWaypoint, pods, LabelUseWaypoint)
	}
	return desc, false
}
