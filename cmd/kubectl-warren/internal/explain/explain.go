// Package explain answers the plugin's policy questions from a node's config, with the evaluator
// the ztunnel runs: the snapshot a ztunnel serves at /config_dump is built into a state.View
// (which compiles ztunnel/authz's Engine exactly as the ztunnel does), and Engine.Explain decides
// a connection and lists every authorization it considered. It is pure: no I/O, no clock.
// Only cmd/kubectl-warren imports it.
package explain

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/authz"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// Config is one node's config as its ztunnel holds it.
type Config struct {
	Node string
	View *state.View
}

// Decode builds a Config from the protojson snapshot of a /config_dump.
func Decode(node string, raw []byte) (*Config, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("ztunnel on node %s has no config yet (is warren-controller running? kubectl -n warren-system get pods)", node)
	}
	var snap nodeconfig.Snapshot
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &snap); err != nil {
		return nil, fmt.Errorf("config of node %s: %w", node, err)
	}
	v, err := state.Build(&snap)
	if err != nil {
		return nil, fmt.Errorf("config of node %s: %w", node, err)
	}
	return &Config{Node: node, View: v}, nil
}

// Workload returns the workload of a pod by UID, else by its namespace and name.
func (c *Config) Workload(uid, namespace, name string) *nodeconfig.Workload {
	if w := c.View.WorkloadByUID(uid); w != nil {
		return w
	}
	for _, w := range c.View.Snapshot().GetWorkloads() {
		if w.GetNamespace() == namespace && w.GetName() == name {
			return w
		}
	}
	return nil
}

// Meshed reports whether w's traffic is carried by the mesh (HBONE).
func Meshed(w *nodeconfig.Workload) bool {
	return w != nil && w.GetTunnelProtocol() == nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE
}

// Source is the client of the connection being explained.
type Source struct {
	// Name is how the user named it: "default/service-a" or an address.
	Name string
	// Identity is its SPIFFE ID when it is meshed (the destination sees it from its
	// certificate); zero for an unmeshed client.
	Identity spiffeid.ID
	Addr     netip.Addr
}

// SourceFor makes the Source of a pod's workload in c (identity only when meshed), or of a bare
// address when w is nil.
func (c *Config) SourceFor(name string, w *nodeconfig.Workload, addr netip.Addr) (Source, error) {
	s := Source{Name: name, Addr: addr}
	if w == nil {
		return s, nil
	}
	if len(w.GetAddresses()) > 0 {
		a, err := netip.ParseAddr(w.GetAddresses()[0])
		if err != nil {
			return s, fmt.Errorf("source %s: address %q: %w", name, w.GetAddresses()[0], err)
		}
		s.Addr = a
	}
	if Meshed(w) {
		id, err := c.View.Identity(w)
		if err != nil {
			return s, fmt.Errorf("source %s: %w", name, err)
		}
		s.Identity = id
	}
	return s, nil
}

// Decision is the answer to "why": what the destination's ztunnel decides and why.
type Decision struct {
	Source         string `json:"source"`
	SourceIdentity string `json:"sourceIdentity,omitempty"`
	SourceAddress  string `json:"sourceAddress,omitempty"`
	Destination    string `json:"destination"`
	// Service is set when the user named a service: "default/b:80 -> 8080".
	Service string `json:"service,omitempty"`
	Port    uint16 `json:"port"`
	Node    string `json:"node"`
	// ConfigVersion is the version of the config the decision was made on.
	ConfigVersion string `json:"configVersion"`
	// Verdict is allow, deny or audit.
	Verdict string `json:"verdict"`
	// PolicyKind and Policy name what decided: AuthorizationPolicy default/a-to-b, Server
	// default/b (its access policy), Default deny, Probe.
	PolicyKind string `json:"policyKind"`
	Policy     string `json:"policy"`
	// Server is the Server covering the port ("" when the default policy decided).
	Server string `json:"server,omitempty"`
	Reason string `json:"reason"`
	// Checks are the authorizations considered, in evaluation order.
	Checks []Check `json:"checks,omitempty"`
	// Waypoint is the waypoint the destination uses, which enforces these rules for it.
	Waypoint string `json:"waypoint,omitempty"`
	// Request and Route are set for an L7 explanation: the request and the route it matched.
	Request string `json:"request,omitempty"`
	Route   string `json:"route,omitempty"`
}

// Check is one authorization considered.
type Check struct {
	Policy string `json:"policy"`
	Target string `json:"target"`
	Result string `json:"result"`
	// Authentications are the policy's requiredAuthenticationRefs (Kind/namespace/name).
	Authentications []string `json:"authentications,omitempty"`
	Failed          []string `json:"failed,omitempty"`
	Reason          string   `json:"reason"`
}

// Why explains a connection from src to port of the pod workload dst in c.
func (c *Config) Why(src Source, dst *nodeconfig.Workload, port uint16) (Decision, error) {
	if dst == nil {
		return Decision{}, errors.New("why: no destination workload")
	}
	name := dst.GetNamespace() + "/" + dst.GetName()
	if !Meshed(dst) {
		return Decision{}, fmt.Errorf("destination %s is not in the mesh: no ztunnel policy applies to it (run: kubectl warren namespace enable %s)", name, dst.GetNamespace())
	}
	d := c.View.Authz().Explain(dst, port, authz.Source{Identity: src.Identity, Addr: src.Addr})
	out := Decision{
		Source: src.Name, Destination: name, Port: port, Node: c.Node, ConfigVersion: c.View.Version(),
		Verdict: verdict(d), PolicyKind: d.Policy.Kind, Policy: policyName(d.Policy), Reason: d.Reason,
	}
	if !src.Identity.IsZero() {
		out.SourceIdentity = src.Identity.String()
	}
	if src.Addr.IsValid() {
		out.SourceAddress = src.Addr.String()
	}
	if d.Server != nil {
		out.Server = d.Server.String()
	}
	refs := c.authnRefs()
	for _, ch := range d.Checks {
		key := ch.Authorization.Namespace + "/" + ch.Authorization.Name
		cc := Check{Policy: key, Target: ch.Target, Result: string(ch.Result), Authentications: refs[key], Reason: ch.Reason}
		for _, f := range ch.Failed {
			cc.Failed = append(cc.Failed, string(f))
		}
		out.Checks = append(out.Checks, cc)
	}
	if wp := dst.GetWaypoint(); wp != nil {
		out.Waypoint = wp.GetNamespace() + "/" + wp.GetName()
	}
	return out, nil
}

func verdict(d authz.Decision) string {
	switch {
	case d.Audit:
		return "audit"
	case d.Allow:
		return "allow"
	}
	return "deny"
}

// policyName is the name of what decided: "default/a-to-b", "default/b" (a Server's access
// policy, with the policy after a colon), "deny" (a default policy), "probe".
func policyName(p authz.PolicyRef) string {
	switch p.Kind {
	case authz.KindAuthorizationPolicy:
		return p.Namespace + "/" + p.Name
	case authz.KindServer:
		return p.Namespace + "/" + p.Name + " (accessPolicy " + p.Default + ")"
	case authz.KindDefault:
		return p.Default
	}
	return strings.ToLower(p.Kind)
}

// authnRefs maps "namespace/name" of every authorization to its authentication refs.
func (c *Config) authnRefs() map[string][]string {
	out := map[string][]string{}
	for _, s := range c.View.Snapshot().GetServers() {
		for _, a := range s.GetAuthorizations() {
			out[a.GetNamespace()+"/"+a.GetName()] = a.GetAuthenticationRefs()
		}
	}
	return out
}

// Target is one backend of a service port.
type Target struct {
	Workload *nodeconfig.Workload
	Port     uint16
}

// ServiceTargets resolves port of service namespace/name to its endpoints' workloads and target
// ports, as the source's ztunnel would pick among them.
func (c *Config) ServiceTargets(namespace, name string, port uint16) (svc string, targets []Target, err error) {
	var s *nodeconfig.Service
	for _, x := range c.View.Snapshot().GetServices() {
		if x.GetNamespace() == namespace && x.GetName() == name {
			s = x
		}
	}
	if s == nil {
		return "", nil, fmt.Errorf("service %s/%s is not in the mesh config of node %s (is its namespace enabled? kubectl warren namespace enable %s)", namespace, name, c.Node, namespace)
	}
	var sp *nodeconfig.ServicePort
	var ports []string
	for _, p := range s.GetPorts() {
		ports = append(ports, fmt.Sprint(p.GetServicePort()))
		if uint32(port) == p.GetServicePort() {
			sp = p
		}
	}
	if sp == nil {
		return "", nil, fmt.Errorf("service %s/%s has no port %d (ports: %s)", namespace, name, port, strings.Join(ports, ", "))
	}
	for _, ep := range s.GetEndpoints() {
		w := c.View.WorkloadByUID(ep.GetWorkloadUid())
		if w == nil {
			continue
		}
		tp := uint16(sp.GetTargetPort())
		if n := sp.GetTargetPortName(); n != "" {
			tp = 0
			for _, wp := range w.GetPorts() {
				if wp.GetName() == n {
					tp = uint16(wp.GetPort())
				}
			}
			if tp == 0 {
				continue
			}
		}
		targets = append(targets, Target{Workload: w, Port: tp})
	}
	slices.SortFunc(targets, func(a, b Target) int { return strings.Compare(a.Workload.GetName(), b.Workload.GetName()) })
	if len(targets) == 0 {
		return "", nil, fmt.Errorf("service %s/%s port %d has no ready endpoints", namespace, name, port)
	}
	return fmt.Sprintf("%s/%s:%d", namespace, name, port), targets, nil
}

// Policy is the effective inbound policy of a pod port.
type Policy struct {
	Pod           string `json:"pod"`
	Port          uint16 `json:"port"`
	Node          string `json:"node"`
	ConfigVersion string `json:"configVersion"`
	// Server covers the port; empty when the default policy applies.
	Server        string `json:"server,omitempty"`
	ServerPort    string `json:"serverPort,omitempty"`
	ProxyProtocol string `json:"proxyProtocol,omitempty"`
	// Access is the Server's accessPolicy, or the default policy when no Server covers the port.
	Access string `json:"access"`
	// DefaultFrom says where the default came from: "workload" or "mesh" (no Server only).
	DefaultFrom    string          `json:"defaultFrom,omitempty"`
	Authorizations []Authorization `json:"authorizations,omitempty"`
	Overlapping    []string        `json:"overlapping,omitempty"`
	Waypoint       string          `json:"waypoint,omitempty"`
}

// Authorization is one AuthorizationPolicy that applies to the Server.
type Authorization struct {
	Policy          string   `json:"policy"`
	Target          string   `json:"target"`
	Authentications []string `json:"authentications,omitempty"`
	Identities      []string `json:"identities,omitempty"`
	Networks        []string `json:"networks,omitempty"`
	EnforcedBy      string   `json:"enforcedBy"` // ztunnel or waypoint
}

// PolicyOf returns the effective inbound policy of port of the pod workload w.
func (c *Config) PolicyOf(w *nodeconfig.Workload, port uint16) (Policy, error) {
	if w == nil {
		return Policy{}, errors.New("policy: no workload")
	}
	name := w.GetNamespace() + "/" + w.GetName()
	if !Meshed(w) {
		return Policy{}, fmt.Errorf("pod %s is not in the mesh: no ztunnel policy applies (run: kubectl warren namespace enable %s)", name, w.GetNamespace())
	}
	// The evaluator says which Server covers the port (and which default applies): an anonymous
	// client, so nothing matches by identity, and Checks list every authorization.
	d := c.View.Authz().Explain(w, port, authz.Source{})
	p := Policy{Pod: name, Port: port, Node: c.Node, ConfigVersion: c.View.Version()}
	if wp := w.GetWaypoint(); wp != nil {
		p.Waypoint = wp.GetNamespace() + "/" + wp.GetName()
	}
	if d.Server == nil {
		p.Access = d.Policy.Default
		p.DefaultFrom = "mesh"
		if w.GetDefaultInboundPolicy() != nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
			p.DefaultFrom = "workload"
		}
		return p, nil
	}
	p.Server = d.Server.String()
	p.Overlapping = d.Server.Overlapping
	var srv *nodeconfig.Server
	for _, s := range c.View.Snapshot().GetServers() {
		if s.GetNamespace() == d.Server.Namespace && s.GetName() == d.Server.Name {
			srv = s
		}
	}
	if srv == nil {
		return p, fmt.Errorf("policy: server %s missing from the config of node %s", p.Server, c.Node)
	}
	if n := srv.GetPortName(); n != "" {
		p.ServerPort = n
	} else {
		p.ServerPort = fmt.Sprint(srv.GetPortNumber())
	}
	if pp := srv.GetProxyProtocol(); pp != nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED {
		p.ProxyProtocol = pp.String()
	}
	access := srv.GetAccessPolicy()
	if access == nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
		access = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	}
	p.Access = access.Name()
	byKey := map[string]*nodeconfig.Authorization{}
	for _, a := range srv.GetAuthorizations() {
		byKey[a.GetNamespace()+"/"+a.GetName()] = a
	}
	for _, ch := range d.Checks {
		key := ch.Authorization.Namespace + "/" + ch.Authorization.Name
		a := Authorization{Policy: key, Target: ch.Target, EnforcedBy: "ztunnel"}
		if ch.Result == authz.CheckSkipped {
			a.EnforcedBy = "waypoint"
		}
		if x := byKey[key]; x != nil {
			a.Authentications = x.GetAuthenticationRefs()
			if m := x.GetMeshTls(); m != nil {
				a.Identities = m.GetIdentities()
				if len(a.Identities) == 0 {
					a.Identities = []string{"(none: no identity can match)"}
				}
			}
			for _, n := range x.GetNetworks() {
				s := n.GetCidr()
				if len(n.GetExcept()) > 0 {
					s += " except " + strings.Join(n.GetExcept(), ",")
				}
				a.Networks = append(a.Networks, s)
			}
		}
		p.Authorizations = append(p.Authorizations, a)
	}
	return p, nil
}
