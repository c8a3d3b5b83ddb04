package authz

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// defaultClusterNetworks are the cluster networks used when MeshDefaults.ClusterNetworks is
// empty (Linkerd's clusterNetworks default).
var defaultClusterNetworks = []string{"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"}

// Engine is a compiled snapshot. It is immutable and safe for concurrent use; build a new one
// with [Compile] for every snapshot and swap it together with the snapshot it came from.
type Engine struct {
	version         string
	servers         map[string]*server // by "namespace/name"
	meshDefault     nodeconfig.DefaultPolicy
	clusterNetworks []netip.Prefix
	// defaultReasons are the reasons of no-server decisions without a dynamic cause, by
	// [source][policy], where source 0 is the workload's default and 1 the mesh default.
	defaultReasons [2][nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT + 1]string
}

type server struct {
	key        string // "namespace/name"
	ref        ServerRef
	portNumber uint16 // zero for a named port
	portName   string
	access     nodeconfig.DefaultPolicy // never unspecified
	policy     PolicyRef
	// accessReason is the reason of an access-policy decision that needs no detail: allowed
	// without audit, e.g. "no authorization on server default/b matched; server access policy
	// all-unauthenticated".
	accessReason string
	authzs       []*authorization // sorted by namespace, name, route
	routeAuthzs  int              // how many of authzs target routes
}

type authorization struct {
	ref    PolicyRef
	target string // "Server/b", "Namespace/default", "HTTPRoute/r", "GRPCRoute/r"
	route  bool   // enforced by waypoints, never at L4
	// routeKind and routeName name the targeted route (namespace: ref.Namespace) when route.
	routeKind nodeconfig.RouteKind
	routeName string

	meshTLS     bool     // the requirement is present
	anyIdentity bool     // "*"
	exact       []string // SPIFFE IDs
	prefixes    []string // "spiffe://td/ns/a/" for "spiffe://td/ns/a/*"
	networks    []network

	allowReason string
}

type network struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

// Compile validates and indexes a snapshot. Every error names the object it comes from, e.g.
//
//	compile authz: server default/b: authorization service-a-to-b: network "10.0.0.0/33": ...
//
// A snapshot whose workload references a Server key the snapshot does not contain is an error:
// the controller computes both from the same state, so a dangling key means a broken producer,
// and guessing which ports that Server covered could open them.
func Compile(s *nodeconfig.Snapshot) (*Engine, error) {
	e, err := compile(s)
	if err != nil {
		return nil, fmt.Errorf("compile authz: %w", err)
	}
	return e, nil
}

func compile(s *nodeconfig.Snapshot) (*Engine, error) {
	if s == nil {
		return nil, errors.New("nil snapshot")
	}
	e := &Engine{
		version:     s.GetVersion(),
		servers:     make(map[string]*server, len(s.GetServers())),
		meshDefault: s.GetDefaults().GetDefaultInboundPolicy(),
	}
	if e.meshDefault == nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
		e.meshDefault = nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED
	}
	if !known(e.meshDefault) {
		return nil, fmt.Errorf("mesh defaults: unknown default inbound policy %s", DefaultPolicy(e.meshDefault))
	}
	nets := s.GetDefaults().GetClusterNetworks()
	if len(nets) == 0 {
		nets = defaultClusterNetworks
	}
	for _, n := range nets {
		p, err := nodeconfig.ParseNetwork(n)
		if err != nil {
			return nil, fmt.Errorf("mesh defaults: cluster network %q: %w", n, err)
		}
		e.clusterNetworks = append(e.clusterNetworks, p)
	}
	for i, src := range [2]string{"workload", "mesh"} {
		for p := nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED; p <= nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT; p++ {
			e.defaultReasons[i][p] = "no server covers the port; " + src + " default policy " + DefaultPolicy(p).String()
		}
	}

	for _, srv := range s.GetServers() {
		key := srv.GetNamespace() + "/" + srv.GetName()
		if srv.GetNamespace() == "" || srv.GetName() == "" {
			return nil, fmt.Errorf("server %q: namespace and name are required", key)
		}
		if _, dup := e.servers[key]; dup {
			return nil, fmt.Errorf("server %s: duplicate", key)
		}
		cs, err := compileServer(srv)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", key, err)
		}
		e.servers[key] = cs
	}

	for _, w := range s.GetWorkloads() {
		if p := w.GetDefaultInboundPolicy(); p != nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED && !known(p) {
			return nil, fmt.Errorf("workload %s/%s: unknown default inbound policy %s", w.GetNamespace(), w.GetName(), DefaultPolicy(p))
		}
		for _, key := range w.GetServers() {
			if e.servers[key] == nil {
				return nil, fmt.Errorf("workload %s/%s: server %q is not in the snapshot", w.GetNamespace(), w.GetName(), key)
			}
		}
	}
	return e, nil
}

func compileServer(srv *nodeconfig.Server) (*server, error) {
	cs := &server{
		key:    srv.GetNamespace() + "/" + srv.GetName(),
		ref:    ServerRef{Namespace: srv.GetNamespace(), Name: srv.GetName()},
		access: srv.GetAccessPolicy(),
	}
	switch p := srv.GetPort().(type) {
	case *nodeconfig.Server_PortNumber:
		if p.PortNumber == 0 || p.PortNumber > 65535 {
			return nil, fmt.Errorf("port %d out of range 1-65535", p.PortNumber)
		}
		cs.portNumber = uint16(p.PortNumber)
	case *nodeconfig.Server_PortName:
		if p.PortName == "" {
			return nil, errors.New("empty port name")
		}
		cs.portName = p.PortName
	default:
		return nil, errors.New("no port")
	}
	if cs.access == nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
		cs.access = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	}
	if !known(cs.access) {
		return nil, fmt.Errorf("unknown access policy %s", DefaultPolicy(cs.access))
	}
	cs.policy = PolicyRef{Kind: KindServer, Namespace: cs.ref.Namespace, Name: cs.ref.Name, Default: DefaultPolicy(cs.access).String()}
	cs.accessReason = "no authorization on server " + cs.key + " matched; server access policy " + cs.policy.Default

	for _, a := range srv.GetAuthorizations() {
		name := a.GetName()
		if a.GetNamespace() != srv.GetNamespace() {
			name = a.GetNamespace() + "/" + name
		}
		ca, err := compileAuthorization(cs, a)
		if err != nil {
			return nil, fmt.Errorf("authorization %s: %w", name, err)
		}
		if ca.route {
			cs.routeAuthzs++
		}
		cs.authzs = append(cs.authzs, ca)
	}
	// The first matching authorization decides; sort so that "first" does not depend on the
	// producer's order.
	slices.SortStableFunc(cs.authzs, func(a, b *authorization) int {
		return cmp.Or(
			cmp.Compare(a.ref.Namespace, b.ref.Namespace),
			cmp.Compare(a.ref.Name, b.ref.Name),
			cmp.Compare(a.target, b.target))
	})
	return cs, nil
}

func compileAuthorization(srv *server, a *nodeconfig.Authorization) (*authorization, error) {
	if a.GetName() == "" || a.GetNamespace() == "" {
		return nil, errors.New("namespace and name are required")
	}
	ca := &authorization{ref: PolicyRef{Kind: KindAuthorizationPolicy, Namespace: a.GetNamespace(), Name: a.GetName()}}
	switch k := a.GetTargetKind(); k {
	case nodeconfig.TargetKind_TARGET_KIND_SERVER:
		ca.target = "Server/" + srv.ref.Name
	case nodeconfig.TargetKind_TARGET_KIND_NAMESPACE:
		ca.target = "Namespace/" + a.GetNamespace()
	case nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE, nodeconfig.TargetKind_TARGET_KIND_GRPC_ROUTE:
		if a.GetRoute() == "" {
			return nil, errors.New("route target without a route name")
		}
		kind := "HTTPRoute/"
		ca.routeKind = nodeconfig.RouteKind_ROUTE_KIND_HTTP
		if k == nodeconfig.TargetKind_TARGET_KIND_GRPC_ROUTE {
			kind = "GRPCRoute/"
			ca.routeKind = nodeconfig.RouteKind_ROUTE_KIND_GRPC
		}
		ca.target = kind + a.GetRoute()
		ca.route = true
		ca.routeName = a.GetRoute()
	default:
		return nil, fmt.Errorf("unsupported target kind %s", k)
	}
	if m := a.GetMeshTls(); m != nil {
		ca.meshTLS = true
		if len(m.GetIdentities()) == 0 {
			return nil, errors.New("meshtls has no identities")
		}
		for _, id := range m.GetIdentities() {
			if err := ca.addIdentity(id); err != nil {
				return nil, fmt.Errorf("meshtls identity %q: %w", id, err)
			}
		}
	}
	for _, n := range a.GetNetworks() {
		cn, err := compileNetwork(n)
		if err != nil {
			return nil, fmt.Errorf("network %q: %w", n.GetCidr(), err)
		}
		ca.networks = append(ca.networks, cn)
	}
	ca.allowReason = "authorization " + ca.ref.namespacedName() + " on server " + srv.key + " matched"
	return ca, nil
}

// addIdentity parses one identity pattern: "*", an exact SPIFFE ID, or a SPIFFE ID followed by
// "/*", which matches every ID whose path continues below it.
func (a *authorization) addIdentity(id string) error {
	if id == "*" {
		a.anyIdentity = true
		return nil
	}
	base, prefix := strings.CutSuffix(id, "/*")
	// spiffeid built with the charset_backcompat tag accepts '*' in paths; never let a
	// wildcard anywhere else through as a literal.
	if strings.Contains(base, "*") {
		return errors.New(`wildcards are only allowed as "*" or a trailing "/*"`)
	}
	parsed, err := spiffeid.FromString(base)
	if err != nil {
		return fmt.Errorf(`want a SPIFFE ID, "*" or a SPIFFE ID followed by "/*": %w`, err)
	}
	if prefix {
		a.prefixes = append(a.prefixes, parsed.String()+"/")
	} else {
		a.exact = append(a.exact, parsed.String())
	}
	return nil
}

func compileNetwork(n *nodeconfig.Network) (network, error) {
	cidr, err := nodeconfig.ParseNetwork(n.GetCidr())
	if err != nil {
		return network{}, err
	}
	cn := network{cidr: cidr}
	for _, x := range n.GetExcept() {
		p, err := nodeconfig.ParseNetwork(x)
		if err != nil {
			return network{}, fmt.Errorf("except %q: %w", x, err)
		}
		if p.Bits() < cidr.Bits() || !cidr.Contains(p.Addr()) {
			return network{}, fmt.Errorf("except %q is not inside the cidr", x)
		}
		if p == cidr {
			return network{}, fmt.Errorf("except %q negates the whole cidr", x)
		}
		cn.except = append(cn.except, p)
	}
	return cn, nil
}
