//go:build linux

package svcproxy

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// snapshot is what the proxy and the DNS server know of the cluster's Services at one moment.
// It is immutable once built.
type snapshot struct {
	services map[types.NamespacedName]*service
	// namespaces holds every namespace with a Service (for NODATA on <ns>.svc.<domain>).
	namespaces map[string]bool
}

// service is one Service as the proxy sees it.
type service struct {
	name types.NamespacedName
	// clusterIPs are the Service's ClusterIPs; empty for headless and ExternalName Services.
	clusterIPs []netip.Addr
	headless   bool
	// externalName marks an ExternalName Service (not served).
	externalName bool
	// ports are the Service's TCP ports (other protocols are not proxied).
	ports []servicePort
	// endpoints maps a Service port name to its ready endpoints, sorted.
	endpoints map[string][]netip.AddrPort
	// readyIPs are the addresses of the ready endpoints, sorted, for headless DNS answers.
	readyIPs []netip.Addr
}

// servicePort is one TCP port of a Service.
type servicePort struct {
	name string
	port uint16
}

// target is what a listener forwards to: one port of one Service.
type target struct {
	svc  types.NamespacedName
	port string
}

// endpointsFor returns t's ready endpoints, or nil.
func (s *snapshot) endpointsFor(t target) []netip.AddrPort {
	svc := s.services[t.svc]
	if svc == nil {
		return nil
	}
	return svc.endpoints[t.port]
}

// buildSnapshot indexes svcs and their EndpointSlices. problems lists what was skipped (an
// unparsable address, a UDP port), one line each.
func buildSnapshot(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) (snap *snapshot, problems []string) {
	snap = &snapshot{services: map[types.NamespacedName]*service{}, namespaces: map[string]bool{}}
	for _, s := range svcs {
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		svc := &service{name: key, endpoints: map[string][]netip.AddrPort{}}
		snap.services[key] = svc
		snap.namespaces[s.Namespace] = true
		switch {
		case s.Spec.Type == corev1.ServiceTypeExternalName:
			svc.externalName = true
			continue
		case s.Spec.ClusterIP == corev1.ClusterIPNone:
			svc.headless = true
		default:
			ips := s.Spec.ClusterIPs
			if len(ips) == 0 && s.Spec.ClusterIP != "" {
				ips = []string{s.Spec.ClusterIP}
			}
			for _, raw := range ips {
				ip, err := netip.ParseAddr(raw)
				if err != nil || ip.Zone() != "" {
					problems = append(problems, fmt.Sprintf("service %s: clusterIP %q is not an IP address", key, raw))
					continue
				}
				svc.clusterIPs = append(svc.clusterIPs, ip.Unmap())
			}
		}
		for _, p := range s.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				problems = append(problems, fmt.Sprintf("service %s: port %d/%s is not proxied (TCP only)", key, p.Port, p.Protocol))
				continue
			}
			if p.Port <= 0 || p.Port > 65535 {
				problems = append(problems, fmt.Sprintf("service %s: port %d is out of range", key, p.Port))
				continue
			}
			svc.ports = append(svc.ports, servicePort{name: p.Name, port: uint16(p.Port)})
		}
	}

	for _, es := range eps {
		name := es.Labels[discoveryv1.LabelServiceName]
		svc := snap.services[types.NamespacedName{Namespace: es.Namespace, Name: name}]
		if name == "" || svc == nil || svc.externalName {
			continue
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue // FQDN slices are not served
		}
		var ready []netip.Addr
		for _, ep := range es.Endpoints {
			if !endpointReady(ep) {
				continue
			}
			for _, raw := range ep.Addresses {
				ip, err := netip.ParseAddr(raw)
				if err != nil || ip.Zone() != "" {
					problems = append(problems, fmt.Sprintf("endpointslice %s/%s: address %q is not an IP address", es.Namespace, es.Name, raw))
					continue
				}
				ready = append(ready, ip.Unmap())
			}
		}
		svc.readyIPs = append(svc.readyIPs, ready...)
		for _, p := range es.Ports {
			if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
				continue
			}
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			portName := ""
			if p.Name != nil {
				portName = *p.Name
			}
			for _, ip := range ready {
				svc.endpoints[portName] = append(svc.endpoints[portName], netip.AddrPortFrom(ip, uint16(*p.Port)))
			}
		}
	}

	for _, svc := range snap.services {
		svc.readyIPs = sortedUnique(svc.readyIPs, netip.Addr.Compare)
		for name, eps := range svc.endpoints {
			svc.endpoints[name] = sortedUnique(eps, netip.AddrPort.Compare)
		}
	}
	return snap, problems
}

// endpointReady reports whether traffic may go to ep: ready (unset counts as ready, as the API
// says) and not terminating.
func endpointReady(ep discoveryv1.Endpoint) bool {
	c := ep.Conditions
	if c.Ready != nil && !*c.Ready {
		return false
	}
	return c.Terminating == nil || !*c.Terminating
}

func sortedUnique[T comparable](s []T, compare func(a, b T) int) []T {
	slices.SortFunc(s, compare)
	return slices.Compact(s)
}
