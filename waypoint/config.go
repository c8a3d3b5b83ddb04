package waypoint

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// compiled is one config view with what the waypoint derives from it: the route table and
// indexes by name. It is immutable.
type compiled struct {
	view      *state.View
	routes    *route.Table
	routeErrs []error
	servers   map[string]*nodeconfig.Server  // by "namespace/name"
	services  map[string]*nodeconfig.Service // by "namespace/name"
}

// recompile derives the waypoint's tables from a new view. Routes that do not compile are left
// out and reported in /config_dump and the log; the rest keep working.
func (w *Waypoint) recompile(v *state.View) {
	if v == nil {
		return
	}
	s := v.Snapshot()
	c := &compiled{
		view:     v,
		servers:  make(map[string]*nodeconfig.Server, len(s.GetServers())),
		services: make(map[string]*nodeconfig.Service, len(s.GetServices())),
	}
	c.routes, c.routeErrs = route.Compile(s.GetRoutes())
	for _, e := range c.routeErrs {
		w.log.Error("route rejected", "version", v.Version(), "error", e)
	}
	for _, srv := range s.GetServers() {
		c.servers[srv.GetNamespace()+"/"+srv.GetName()] = srv
	}
	for _, svc := range s.GetServices() {
		c.services[svc.GetNamespace()+"/"+svc.GetName()] = svc
	}
	w.cur.Store(c)
}

// current returns the compiled form of the store's current view, or nil before the first one.
func (w *Waypoint) current() *compiled {
	return w.cur.Load()
}

// destination is what an HBONE authority names.
type destination struct {
	authority netip.AddrPort
	// Exactly one of service and workload is set.
	service  *nodeconfig.Service
	svcPort  *nodeconfig.ServicePort
	workload *nodeconfig.Workload
	// server covers the workload's port, if any.
	server *nodeconfig.Server
	parent route.Parent
	// proto is the configured protocol; unspecified means detect.
	proto nodeconfig.AppProtocol
	// name is "namespace/name" of the service or workload, for logs.
	name string
}

// Errors of destination resolution, which HBONE answers with 400 (not ours) or 401 (not
// bound to this waypoint).
var (
	errUnknownDestination = errors.New("not a service or workload address of the mesh")
	errNotBound           = errors.New("destination is not bound to this waypoint")
)

// resolve finds the destination of an authority and checks that it is bound to this waypoint.
func (c *compiled) resolve(authority netip.AddrPort, self string) (destination, error) {
	d := destination{authority: authority}
	if svc := c.view.ServiceByAddr(authority.Addr()); svc != nil {
		d.service = svc
		d.name = svc.GetNamespace() + "/" + svc.GetName()
		for _, p := range svc.GetPorts() {
			if p.GetServicePort() == uint32(authority.Port()) {
				d.svcPort = p
				break
			}
		}
		if d.svcPort == nil {
			return d, fmt.Errorf("service %s: port %d is not a service port", d.name, authority.Port())
		}
		if !boundTo(svc.GetWaypoint(), self) {
			return d, fmt.Errorf("service %s: %w", d.name, errNotBound)
		}
		d.parent = route.Parent{Service: d.name, Port: uint32(authority.Port())}
		d.proto = d.svcPort.GetAppProtocol()
		return d, nil
	}
	wl := c.view.WorkloadByAddr(authority.Addr())
	if wl == nil {
		return d, fmt.Errorf("%s: %w", authority.Addr(), errUnknownDestination)
	}
	d.workload = wl
	d.name = wl.GetNamespace() + "/" + wl.GetName()
	if !boundTo(wl.GetWaypoint(), self) {
		return d, fmt.Errorf("workload %s: %w", d.name, errNotBound)
	}
	d.server = c.coveringServer(wl, authority.Port())
	if d.server != nil {
		d.parent = route.Parent{Server: d.server.GetNamespace() + "/" + d.server.GetName(), Port: uint32(authority.Port())}
		d.proto = d.server.GetProxyProtocol()
	}
	if d.proto == nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED {
		for _, p := range wl.GetPorts() {
			if p.GetPort() == uint32(authority.Port()) {
				d.proto = p.GetAppProtocol()
				break
			}
		}
	}
	return d, nil
}

// boundTo reports whether a destination's waypoint is this one (by identity).
func boundTo(wp *nodeconfig.GatewayAddress, self string) bool {
	return wp != nil && wp.GetIdentity() == self
}

// coveringServer returns the Server of wl covering port; with overlapping Servers the first key
// in lexicographic order wins, as in ztunnel/authz.
func (c *compiled) coveringServer(wl *nodeconfig.Workload, port uint16) *nodeconfig.Server {
	var best *nodeconfig.Server
	bestKey := ""
	keys := wl.GetServers()
	for _, key := range keys {
		srv := c.servers[key]
		if srv == nil || !covers(srv, wl, port) {
			continue
		}
		if best == nil || key < bestKey {
			best, bestKey = srv, key
		}
	}
	return best
}

func covers(srv *nodeconfig.Server, wl *nodeconfig.Workload, port uint16) bool {
	switch p := srv.GetPort().(type) {
	case *nodeconfig.Server_PortNumber:
		return p.PortNumber == uint32(port)
	case *nodeconfig.Server_PortName:
		return slices.ContainsFunc(wl.GetPorts(), func(wp *nodeconfig.WorkloadPort) bool {
			return wp.GetName() == p.PortName && wp.GetPort() == uint32(port)
		})
	}
	return false
}

// errNoEndpoint: the service has no ready endpoint (503).
var errNoEndpoint = errors.New("no ready endpoint")

// endpoint picks where a request or connection goes: a ready endpoint of backend's Service
// (round-robin), or, with no backend, of the destination service, or the destination pod.
func (c *compiled) endpoint(d destination, backend *nodeconfig.RouteBackend) (state.Endpoint, error) {
	if backend != nil {
		svc := c.services[backend.GetService()]
		if svc == nil || len(svc.GetAddresses()) == 0 {
			return state.Endpoint{}, fmt.Errorf("backend service %q: not in the config or has no address: %w", backend.GetService(), errNoEndpoint)
		}
		vip, err := netip.ParseAddr(svc.GetAddresses()[0])
		if err != nil {
			return state.Endpoint{}, fmt.Errorf("backend service %q: %w", backend.GetService(), err)
		}
		_, ep, err := c.view.PickEndpoint(netip.AddrPortFrom(vip, uint16(backend.GetPort())))
		if err != nil {
			return ep, fmt.Errorf("%w: %w", errNoEndpoint, err)
		}
		return ep, nil
	}
	if d.service != nil {
		_, ep, err := c.view.PickEndpoint(d.authority)
		if err != nil {
			return ep, fmt.Errorf("%w: %w", errNoEndpoint, err)
		}
		return ep, nil
	}
	return state.Endpoint{Workload: d.workload, Addr: d.authority}, nil
}
