package nodeconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// DefaultTrustDomain is the trust domain of a Snapshot that names none.
const DefaultTrustDomain = "cluster.local"

// DefaultHBONEPort is the port a meshed workload (or a waypoint) accepts HBONE on.
const DefaultHBONEPort = 15008

// Parse reads a Snapshot from YAML or JSON in protobuf's JSON mapping (field names in
// lowerCamelCase or snake_case, enums by name) and validates it. Unknown fields are errors, so a
// typo in a hand-written file does not silently drop a policy.
func Parse(data []byte) (*Snapshot, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("parse node config: %w", err)
	}
	s := &Snapshot{}
	if err := protojson.Unmarshal(js, s); err != nil {
		return nil, fmt.Errorf("parse node config: %w", err)
	}
	if err := Validate(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Marshal renders a Snapshot as indented JSON in protobuf's JSON mapping; Parse reads it back.
func Marshal(s *Snapshot) ([]byte, error) {
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(s)
}

// Validate checks the structure of a Snapshot: names present and unique, addresses and ports well
// formed, references resolvable. Policy contents (CIDRs, identity patterns) are checked when the
// policy engine compiles them. All problems are reported at once, joined.
func Validate(s *Snapshot) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if td := s.GetTrustDomain(); td != "" && (strings.ContainsAny(td, "/:") || strings.ToLower(td) != td) {
		add("trust domain %q: want a lowercase DNS-like name such as cluster.local", td)
	}
	servers := make(map[string]bool, len(s.GetServers()))
	for i, sv := range s.GetServers() {
		key := sv.GetNamespace() + "/" + sv.GetName()
		switch {
		case sv.GetName() == "" || sv.GetNamespace() == "":
			add("servers[%d]: name and namespace are required", i)
			continue
		case servers[key]:
			add("server %s: defined twice", key)
		}
		servers[key] = true
		switch p := sv.GetPort().(type) {
		case *Server_PortNumber:
			if p.PortNumber == 0 || p.PortNumber > 65535 {
				add("server %s: port %d out of range 1-65535", key, p.PortNumber)
			}
		case *Server_PortName:
			if p.PortName == "" {
				add("server %s: port name is empty", key)
			}
		default:
			add("server %s: a port number or name is required", key)
		}
	}

	workloads := make(map[string]bool, len(s.GetWorkloads()))
	addrOwner := make(map[netip.Addr]string)
	for i, w := range s.GetWorkloads() {
		id := w.GetUid()
		switch {
		case id == "":
			add("workloads[%d] (%s/%s): uid is required", i, w.GetNamespace(), w.GetName())
			continue
		case workloads[id]:
			add("workload %s: uid used twice", id)
		}
		workloads[id] = true
		if w.GetName() == "" || w.GetNamespace() == "" || w.GetServiceAccount() == "" {
			add("workload %s: name, namespace and service account are required", id)
		}
		for _, a := range w.GetAddresses() {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				add("workload %s: address %q is not an IP", id, a)
				continue
			}
			ip = ip.Unmap()
			if other, dup := addrOwner[ip]; dup {
				add("workload %s: address %s is also workload %s's", id, ip, other)
			}
			addrOwner[ip] = id
		}
		for _, p := range w.GetPorts() {
			if p.GetPort() == 0 || p.GetPort() > 65535 {
				add("workload %s: port %q number %d out of range 1-65535", id, p.GetName(), p.GetPort())
			}
		}
		for _, p := range w.GetProbePorts() {
			if p == 0 || p > 65535 {
				add("workload %s: probe port %d out of range 1-65535", id, p)
			}
		}
		for _, key := range w.GetServers() {
			if !servers[key] {
				add("workload %s: server %q is not in the snapshot", id, key)
			}
		}
		if wp := w.GetWaypoint(); wp != nil {
			if err := validateGateway(wp); err != nil {
				add("workload %s: waypoint: %w", id, err)
			}
		}
	}

	vips := make(map[netip.Addr]string)
	svcs := make(map[string]bool)
	for i, sv := range s.GetServices() {
		key := sv.GetNamespace() + "/" + sv.GetName()
		switch {
		case sv.GetName() == "" || sv.GetNamespace() == "":
			add("services[%d]: name and namespace are required", i)
			continue
		case svcs[key]:
			add("service %s: defined twice", key)
		}
		svcs[key] = true
		for _, a := range sv.GetAddresses() {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				add("service %s: address %q is not an IP", key, a)
				continue
			}
			ip = ip.Unmap()
			if other, dup := vips[ip]; dup {
				add("service %s: address %s is also service %s's", key, ip, other)
			} else if w, dup := addrOwner[ip]; dup {
				add("service %s: address %s is also workload %s's", key, ip, w)
			}
			vips[ip] = key
		}
		seen := make(map[uint32]bool)
		for _, p := range sv.GetPorts() {
			if p.GetServicePort() == 0 || p.GetServicePort() > 65535 {
				add("service %s: port %d out of range 1-65535", key, p.GetServicePort())
			}
			if seen[p.GetServicePort()] {
				add("service %s: port %d listed twice", key, p.GetServicePort())
			}
			seen[p.GetServicePort()] = true
			if p.GetTargetPort() > 65535 {
				add("service %s: target port %d out of range 1-65535", key, p.GetTargetPort())
			}
			if p.GetTargetPort() == 0 && p.GetTargetPortName() == "" {
				add("service %s: port %d needs a target port number or name", key, p.GetServicePort())
			}
		}
		for _, ep := range sv.GetEndpoints() {
			if !workloads[ep.GetWorkloadUid()] {
				add("service %s: endpoint workload %q is not in the snapshot", key, ep.GetWorkloadUid())
			}
		}
		if wp := sv.GetWaypoint(); wp != nil {
			if err := validateGateway(wp); err != nil {
				add("service %s: waypoint: %w", key, err)
			}
		}
	}
	errs = append(errs, validateRoutes(s, servers, svcs)...)
	if len(errs) > 0 {
		return fmt.Errorf("invalid node config: %w", errors.Join(errs...))
	}
	return nil
}

func validateGateway(g *GatewayAddress) error {
	if _, err := netip.ParseAddr(g.GetAddress()); err != nil {
		return fmt.Errorf("address %q is not an IP", g.GetAddress())
	}
	if g.GetHbonePort() > 65535 {
		return fmt.Errorf("hbone port %d out of range 1-65535", g.GetHbonePort())
	}
	return nil
}

// validateRoutes checks the routes: names unique per kind, parents and backends naming Servers
// and Services of the snapshot, regular expressions that compile (RE2), and ReplacePrefixMatch
// only in rules whose every match is a PathPrefix match.
func validateRoutes(s *Snapshot, servers, services map[string]bool) []error {
	var errs []error
	seen := make(map[string]bool, len(s.GetRoutes()))
	for i, r := range s.GetRoutes() {
		key := r.GetNamespace() + "/" + r.GetName()
		if r.GetName() == "" || r.GetNamespace() == "" {
			errs = append(errs, fmt.Errorf("routes[%d]: name and namespace are required", i))
			continue
		}
		id := r.GetKind().String() + " " + key
		add := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("route %s: "+format, append([]any{id}, args...)...))
		}
		if r.GetKind() == RouteKind_ROUTE_KIND_UNSPECIFIED {
			add("kind is required")
		}
		if seen[id] {
			add("defined twice")
		}
		seen[id] = true
		if len(r.GetParents()) == 0 {
			add("no parents")
		}
		for _, p := range r.GetParents() {
			switch v := p.GetParent().(type) {
			case *RouteParent_Service:
				if !services[v.Service] {
					add("parent service %q is not in the snapshot", v.Service)
				}
			case *RouteParent_Server:
				if !servers[v.Server] {
					add("parent server %q is not in the snapshot", v.Server)
				}
			default:
				add("a parent names neither a service nor a server")
			}
			if p.GetPort() > 65535 {
				add("parent port %d out of range 1-65535", p.GetPort())
			}
		}
		for j, rule := range r.GetRules() {
			validateRule(rule, services, func(format string, args ...any) {
				add("rules[%d]: "+format, append([]any{j}, args...)...)
			})
		}
	}
	return errs
}

func validateRule(rule *RouteRule, services map[string]bool, add func(string, ...any)) {
	allPrefix := true
	for _, m := range rule.GetMatches() {
		if p := m.GetPath(); p != nil && p.GetType() != StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX {
			allPrefix = false
		}
		checkRegexp(m.GetPath(), "path", add)
		checkRegexp(m.GetGrpcService(), "grpc service", add)
		checkRegexp(m.GetGrpcMethod(), "grpc method", add)
		for _, h := range m.GetHeaders() {
			checkRegexp(&StringMatch{Type: h.GetType(), Value: h.GetValue()}, "header "+h.GetName(), add)
		}
		for _, q := range m.GetQueryParams() {
			checkRegexp(&StringMatch{Type: q.GetType(), Value: q.GetValue()}, "query parameter "+q.GetName(), add)
		}
	}
	checkFilters := func(fs []*RouteFilter, where string) {
		for _, f := range fs {
			var pm *PathModifier
			switch v := f.GetFilter().(type) {
			case *RouteFilter_RequestRedirect:
				pm = v.RequestRedirect.GetPath()
				if c := v.RequestRedirect.GetStatusCode(); c != 0 && c != 301 && c != 302 {
					add("%sredirect status %d: want 301 or 302", where, c)
				}
			case *RouteFilter_UrlRewrite:
				pm = v.UrlRewrite.GetPath()
			case nil:
				add("%san empty filter", where)
			}
			if _, ok := pm.GetModifier().(*PathModifier_ReplacePrefixMatch); ok && !allPrefix {
				add("%sReplacePrefixMatch needs every match of the rule to be a PathPrefix match", where)
			}
		}
	}
	checkFilters(rule.GetFilters(), "")
	for _, b := range rule.GetBackends() {
		if svc := b.GetService(); svc != "" && !services[svc] {
			add("backend service %q is not in the snapshot", svc)
		}
		if b.GetPort() > 65535 {
			add("backend %s port %d out of range 1-65535", b.GetService(), b.GetPort())
		}
		checkFilters(b.GetFilters(), "backend "+b.GetService()+": ")
	}
}

func checkRegexp(m *StringMatch, what string, add func(string, ...any)) {
	if m.GetType() != StringMatchType_STRING_MATCH_TYPE_REGULAR_EXPRESSION {
		return
	}
	if _, err := regexp.Compile(m.GetValue()); err != nil {
		add("%s: regular expression %q: %v", what, m.GetValue(), err)
	}
}
