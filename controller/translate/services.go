package translate

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// serviceInfo is a compiled Service and its age, which decides who keeps a contested VIP.
type serviceInfo struct {
	msg     *nodeconfig.Service
	created metav1.Time
}

// translateServices compiles every Service with a cluster IP, and pulls the pods behind them
// into the snapshot: a meshed client reaching the VIP needs the endpoint even when the pod is
// not meshed (then plain TCP is passed through).
func (t *translator) translateServices() {
	slicesBySvc := make(map[nsName][]*discoveryv1.EndpointSlice)
	for i := range t.in.EndpointSlices {
		es := &t.in.EndpointSlices[i]
		if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
			k := nsName{es.Namespace, svc}
			slicesBySvc[k] = append(slicesBySvc[k], es)
		}
	}
	svcs := make([]*corev1.Service, 0, len(t.in.Services))
	for i := range t.in.Services {
		svcs = append(svcs, &t.in.Services[i])
	}
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return compareObjects(&a.ObjectMeta, &b.ObjectMeta) })

	for i, svc := range svcs {
		if svc.Namespace == "" || svc.Name == "" {
			t.warnf("service %q in namespace %q: a namespace and a name are required; ignored", svc.Name, svc.Namespace)
			continue
		}
		if i > 0 && svcs[i-1].Namespace == svc.Namespace && svcs[i-1].Name == svc.Name {
			continue // the same object twice in the input
		}
		if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		s := &nodeconfig.Service{
			Name:      svc.Name,
			Namespace: svc.Namespace,
			Hostname:  svc.Name + "." + svc.Namespace + ".svc." + ClusterDomain,
			Addresses: t.serviceAddresses(svc),
			Ports:     servicePorts(svc),
		}
		if name, subject := t.waypointBinding(svc.Namespace, svc.Labels, "service "+svc.Namespace+"/"+svc.Name); name != "" {
			s.Waypoint = t.resolveWaypoint(svc.Namespace, name, subject)
		}
		s.Endpoints = t.endpoints(slicesBySvc[nsName{svc.Namespace, svc.Name}])
		t.services = append(t.services, serviceInfo{msg: s, created: svc.CreationTimestamp})
	}
}

func (t *translator) serviceAddresses(svc *corev1.Service) []string {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	addrs := make([]string, 0, len(raw))
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			t.warnf("service %s/%s: cluster IP %q is not an IP; ignored", svc.Namespace, svc.Name, s)
			continue
		}
		if s := a.Unmap().String(); !slices.Contains(addrs, s) {
			addrs = append(addrs, s)
		}
	}
	return addrs
}

// servicePorts lists the Service's TCP ports in spec order.
func servicePorts(svc *corev1.Service) []*nodeconfig.ServicePort {
	ports := make([]*nodeconfig.ServicePort, 0, len(svc.Spec.Ports))
	for _, sp := range svc.Spec.Ports {
		if !tcp(sp.Protocol) || sp.Port < 1 || sp.Port > 65535 {
			continue
		}
		if slices.ContainsFunc(ports, func(p *nodeconfig.ServicePort) bool { return p.ServicePort == uint32(sp.Port) }) {
			continue
		}
		p := &nodeconfig.ServicePort{ServicePort: uint32(sp.Port)}
		switch {
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			p.TargetPortName = sp.TargetPort.StrVal
		case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal >= 1 && sp.TargetPort.IntVal <= 65535:
			p.TargetPort = uint32(sp.TargetPort.IntVal)
		default: // unset (or nonsense): the API server defaults it to port
			p.TargetPort = uint32(sp.Port)
		}
		if sp.AppProtocol != nil {
			p.AppProtocol = serviceAppProtocol(*sp.AppProtocol)
		}
		ports = append(ports, p)
	}
	return ports
}

func serviceAppProtocol(s string) nodeconfig.AppProtocol {
	switch strings.ToLower(s) {
	case "http":
		return nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1
	case "kubernetes.io/h2c":
		return nodeconfig.AppProtocol_APP_PROTOCOL_HTTP2
	case "grpc":
		return nodeconfig.AppProtocol_APP_PROTOCOL_GRPC
	}
	return nodeconfig.AppProtocol_APP_PROTOCOL_UNSPECIFIED
}

// endpoints resolves the pods of a Service's EndpointSlices to workload uids, sorted and
// deduplicated (a dual-stack Service has a slice per family with the same pods), and marks
// those pods as included in the snapshot.
func (t *translator) endpoints(ess []*discoveryv1.EndpointSlice) []*nodeconfig.Endpoint {
	var uids []string
	for _, es := range ess {
		for _, ep := range es.Endpoints {
			ref := ep.TargetRef
			if ref == nil || ref.Kind != "Pod" {
				continue
			}
			var p *podInfo
			if ref.UID != "" {
				p = t.podByUID[string(ref.UID)]
			} else {
				ns := ref.Namespace
				if ns == "" {
					ns = es.Namespace
				}
				p = t.podByName[nsName{ns, ref.Name}]
			}
			if p == nil || p.pod.Namespace != es.Namespace {
				continue // gone, not started, host network, or finished
			}
			p.included = true
			uids = append(uids, p.w.Uid)
		}
	}
	slices.Sort(uids)
	uids = slices.Compact(uids)
	eps := make([]*nodeconfig.Endpoint, len(uids))
	for i, u := range uids {
		eps[i] = &nodeconfig.Endpoint{WorkloadUid: u}
	}
	return eps
}
