package explain

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
	"github.com/warren-mesh/warren/ztunnel/authz"
)

// Request is the L7 part of a why: what the waypoint would see.
type Request struct {
	Method, Path string
	Header       http.Header
	// Service is "namespace/name" when the request was addressed to a service; ServicePort its
	// port.
	Service     string
	ServicePort uint16
}

// WhyRequest explains an HTTP request from src to port of dst as the destination's waypoint
// decides it: the route that matches (package waypoint/route, as the waypoint compiles it from
// the same config), then the authorization with that route's policies counted
// (authz.Engine.EvaluateRoute). The L4 checks of Why are kept, with route-targeted policies of
// the matched route marked as considered.
func (c *Config) WhyRequest(src Source, dst *nodeconfig.Workload, port uint16, req Request) (Decision, error) {
	d, err := c.Why(src, dst, port)
	if err != nil {
		return d, err
	}
	table, errs := route.Compile(c.View.Snapshot().GetRoutes())
	if len(errs) > 0 {
		d.Reason += fmt.Sprintf(" (note: %d routes of the config do not compile; the waypoint ignores them too: %v)", len(errs), errs[0])
	}
	parent := route.Parent{Server: d.Server, Port: uint32(port)}
	if req.Service != "" {
		parent = route.Parent{Service: req.Service, Port: uint32(req.ServicePort)}
	}
	host := dst.GetAddresses()[0]
	r, err := http.NewRequest(req.Method, "http://"+host+req.Path, nil)
	if err != nil {
		return d, fmt.Errorf("request %s %s: %w", req.Method, req.Path, err)
	}
	for k, vs := range req.Header {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	d.Request = strings.TrimSpace(req.Method + " " + req.Path)
	m := table.Match(parent, r)
	if m == nil {
		if table.HasRoutes(parent, nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED) {
			d.Verdict, d.PolicyKind, d.Policy = "deny", "Route", "none"
			d.Reason = "no route of the parent matches the request: the waypoint answers 404"
			return d, nil
		}
		d.Route = "none (no routes attached: the L4 decision applies)"
		return d, nil
	}
	ar := authz.Route{Kind: m.Route.GetKind(), Namespace: m.Route.GetNamespace(), Name: m.Route.GetName()}
	d.Route = fmt.Sprintf("%s %s/%s rule %d", strings.TrimPrefix(m.Route.GetKind().String(), "ROUTE_KIND_"), ar.Namespace, ar.Name, m.RuleIndex)
	if n := m.Rule.GetName(); n != "" {
		d.Route += " (" + n + ")"
	}
	ev := c.View.Authz().EvaluateRoute(dst, port, authz.Source{Identity: src.Identity, Addr: src.Addr}, ar)
	d.Verdict, d.PolicyKind, d.Policy, d.Reason = verdict(ev), ev.Policy.Kind, policyName(ev.Policy), ev.Reason
	for i, ch := range d.Checks {
		if ch.Result == string(authz.CheckSkipped) && strings.HasSuffix(ch.Target, "/"+ar.Name) {
			d.Checks[i].Result = "route"
			d.Checks[i].Reason = "targets the matched route; counted in the decision above"
		}
	}
	return d, nil
}
