package translate

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// translator holds the indexes of one Translate call.
type translator struct {
	in       *Input
	td       string
	warnings map[string]struct{}
	status   map[ObjectRef][]metav1.Condition

	namespaces map[string]*corev1.Namespace
	// nsPolicy caches each namespace's parsed default-inbound-policy annotation.
	nsPolicy map[string]nodeconfig.DefaultPolicy
	gateways map[nsName]*gatewayv1.Gateway
	// waypoints caches resolved waypoint bindings; a nil address with a problem is a failed one.
	waypoints map[nsName]waypointResult

	pods      []*podInfo // eligible pods, sorted by namespace/name
	podByUID  map[string]*podInfo
	podByName map[nsName]*podInfo
	// members are the meshed pods of each namespace, sorted by namespace/name.
	members map[string][]*podInfo

	services []serviceInfo // sorted by namespace/name

	meshTLS  map[nsName]*compiledAuthn
	networks map[nsName]*compiledAuthn
	servers  map[nsName]*compiledServer
	// serviceByName indexes services (translateRoutes); routes are the compiled routes and
	// routeStatus their status.parents.
	serviceByName map[nsName]*nodeconfig.Service
	routes        []*nodeconfig.Route
	routeStatus   map[ObjectRef][]gatewayv1.RouteParentStatus
	// serversByNS lists the valid Servers of each namespace, sorted by name.
	serversByNS map[string][]*compiledServer
}

// podInfo is a pod that may become a workload.
type podInfo struct {
	pod         *corev1.Pod
	w           *nodeconfig.Workload
	member      bool
	included    bool // member, or an endpoint of a Service in the snapshot
	terminating bool
}

type waypointResult struct {
	gw      *nodeconfig.GatewayAddress
	problem string
}

func newTranslator(in *Input) *translator {
	td := in.TrustDomain
	if td == "" {
		td = nodeconfig.DefaultTrustDomain
	}
	return &translator{
		in:          in,
		td:          td,
		warnings:    make(map[string]struct{}),
		status:      make(map[ObjectRef][]metav1.Condition),
		namespaces:  make(map[string]*corev1.Namespace, len(in.Namespaces)),
		nsPolicy:    make(map[string]nodeconfig.DefaultPolicy),
		waypoints:   make(map[nsName]waypointResult),
		podByUID:    make(map[string]*podInfo, len(in.Pods)),
		podByName:   make(map[nsName]*podInfo, len(in.Pods)),
		members:     make(map[string][]*podInfo),
		meshTLS:     make(map[nsName]*compiledAuthn, len(in.MeshTLSAuthentications)),
		networks:    make(map[nsName]*compiledAuthn, len(in.NetworkAuthentications)),
		servers:     make(map[nsName]*compiledServer, len(in.Servers)),
		serversByNS: make(map[string][]*compiledServer),
	}
}

func (t *translator) warnf(format string, args ...any) {
	t.warnings[fmt.Sprintf(format, args...)] = struct{}{}
}

func (t *translator) spiffeID(ns, sa string) string {
	return "spiffe://" + t.td + "/ns/" + ns + "/sa/" + sa
}

func (t *translator) indexNamespaces() {
	for i := range t.in.Namespaces {
		ns := &t.in.Namespaces[i]
		if old := t.namespaces[ns.Name]; old != nil && old.UID <= ns.UID {
			continue // a duplicate; keep the first in uid order
		}
		t.namespaces[ns.Name] = ns
		v, ok := ns.Annotations[AnnotationDefaultInboundPolicy]
		if !ok {
			continue
		}
		p, err := nodeconfig.ParseDefaultPolicy(v)
		if err != nil {
			t.warnf("namespace %s: annotation %s: %v; its pods deny every connection to ports without a Server until it is fixed", ns.Name, AnnotationDefaultInboundPolicy, err)
			p = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
		}
		t.nsPolicy[ns.Name] = p
	}
}

func (t *translator) indexGateways() {
	t.gateways = index(t.in.Gateways, func(g *gatewayv1.Gateway) *metav1.ObjectMeta { return &g.ObjectMeta })
}

// isMember reports whether pod joins the mesh: its own dataplane-mode label wins, else its
// namespace's.
func (t *translator) isMember(pod *corev1.Pod) bool {
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneModeNone:
		return false
	case DataplaneModeAmbient:
		return true
	}
	ns := t.namespaces[pod.Namespace]
	return ns != nil && ns.Labels[LabelDataplaneMode] == DataplaneModeAmbient
}

func (t *translator) translatePods() {
	pods := make([]*corev1.Pod, 0, len(t.in.Pods))
	for i := range t.in.Pods {
		pods = append(pods, &t.in.Pods[i])
	}
	slices.SortFunc(pods, func(a, b *corev1.Pod) int { return compareObjects(&a.ObjectMeta, &b.ObjectMeta) })
	t.pods = make([]*podInfo, 0, len(pods))
	for _, pod := range pods {
		if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if pod.Namespace == "" || pod.Name == "" {
			t.warnf("pod %q in namespace %q: a namespace and a name are required; ignored", pod.Name, pod.Namespace)
			continue
		}
		if pod.UID == "" {
			t.warnf("pod %s/%s: no uid; ignored", pod.Namespace, pod.Name)
			continue
		}
		if other := t.podByUID[string(pod.UID)]; other != nil {
			t.warnf("pod %s/%s: uid %s is also pod %s/%s's; ignored", pod.Namespace, pod.Name, pod.UID, other.pod.Namespace, other.pod.Name)
			continue
		}
		addrs := t.podAddresses(pod)
		if len(addrs) == 0 {
			continue // not started yet: nothing can reach it
		}
		p := &podInfo{pod: pod, member: t.isMember(pod), terminating: pod.DeletionTimestamp != nil}
		// A Gateway's own pods are never captured. A warren waypoint speaks HBONE itself, in
		// any namespace: its workload is HBONE and marked waypoint_proxy, so no ztunnel enrolls
		// it. Another implementation's gateway stays out of the mesh, as warren-cni leaves every
		// pod with the label alone.
		gwProxy := false
		if gw, ok := pod.Labels[gatewayv1.GatewayNameLabelKey]; ok {
			g := t.gateways[nsName{pod.Namespace, gw}]
			gwProxy = g != nil && g.Spec.GatewayClassName == WaypointClassName
			p.member = gwProxy
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		p.w = &nodeconfig.Workload{
			Uid:            string(pod.UID),
			Name:           pod.Name,
			Namespace:      pod.Namespace,
			ServiceAccount: sa,
			Addresses:      addrs,
			Node:           pod.Spec.NodeName,
			Ports:          podPorts(pod),
			Ready:          !p.terminating && podReady(pod),
		}
		if p.member {
			p.included = true
			p.w.TunnelProtocol = nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE
			p.w.ProbePorts = probePorts(pod)
			p.w.DefaultInboundPolicy = t.podDefaultPolicy(pod)
			p.w.Waypoint = t.podWaypoint(pod)
			p.w.WaypointProxy = gwProxy
			t.members[pod.Namespace] = append(t.members[pod.Namespace], p)
		}
		t.pods = append(t.pods, p)
		t.podByUID[p.w.Uid] = p
		t.podByName[nsName{pod.Namespace, pod.Name}] = p
	}
}

// podAddresses returns the pod's IPs (status.podIPs, else status.podIP), canonical and valid.
func (t *translator) podAddresses(pod *corev1.Pod) []string {
	raw := make([]string, 0, 2)
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = append(raw, pod.Status.PodIP)
	}
	addrs := make([]string, 0, len(raw))
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			t.warnf("pod %s/%s: address %q is not an IP; ignored", pod.Namespace, pod.Name, s)
			continue
		}
		if s := a.Unmap().String(); !slices.Contains(addrs, s) {
			addrs = append(addrs, s)
		}
	}
	return addrs
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// servingContainers are the containers whose ports serve traffic: the app containers and the
// restartable init containers (native sidecars).
func servingContainers(pod *corev1.Pod) []*corev1.Container {
	cs := make([]*corev1.Container, 0, len(pod.Spec.Containers)+len(pod.Spec.InitContainers))
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			cs = append(cs, c)
		}
	}
	for i := range pod.Spec.Containers {
		cs = append(cs, &pod.Spec.Containers[i])
	}
	return cs
}

func tcp(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

// podPorts lists the pod's TCP container ports, sorted by number then name.
func podPorts(pod *corev1.Pod) []*nodeconfig.WorkloadPort {
	var ports []*nodeconfig.WorkloadPort
	for _, c := range servingContainers(pod) {
		for _, cp := range c.Ports {
			if !tcp(cp.Protocol) || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			dup := slices.ContainsFunc(ports, func(p *nodeconfig.WorkloadPort) bool {
				return p.GetName() == cp.Name && p.GetPort() == uint32(cp.ContainerPort)
			})
			if !dup {
				ports = append(ports, &nodeconfig.WorkloadPort{Name: cp.Name, Port: uint32(cp.ContainerPort)})
			}
		}
	}
	slices.SortFunc(ports, func(a, b *nodeconfig.WorkloadPort) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ports
}

// probePorts lists the ports of the pod's httpGet, tcpSocket and grpc probes, named ports
// resolved against the probing container's ports (as kubelet does).
func probePorts(pod *corev1.Pod) []uint32 {
	var ports []uint32
	for _, c := range servingContainers(pod) {
		for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if pr == nil {
				continue
			}
			var port int32
			switch {
			case pr.HTTPGet != nil:
				port = resolveContainerPort(c, pr.HTTPGet.Port)
			case pr.TCPSocket != nil:
				port = resolveContainerPort(c, pr.TCPSocket.Port)
			case pr.GRPC != nil:
				port = pr.GRPC.Port
			}
			if port >= 1 && port <= 65535 && !slices.Contains(ports, uint32(port)) {
				ports = append(ports, uint32(port))
			}
		}
	}
	slices.Sort(ports)
	return ports
}

func resolveContainerPort(c *corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// podDefaultPolicy resolves the pod's default inbound policy: its annotation, else its
// namespace's. An unparsable value denies (fail closed).
func (t *translator) podDefaultPolicy(pod *corev1.Pod) nodeconfig.DefaultPolicy {
	v, ok := pod.Annotations[AnnotationDefaultInboundPolicy]
	if !ok {
		return t.nsPolicy[pod.Namespace]
	}
	p, err := nodeconfig.ParseDefaultPolicy(v)
	if err != nil {
		t.warnf("pod %s/%s: annotation %s: %v; denying every connection to ports without a Server until it is fixed", pod.Namespace, pod.Name, AnnotationDefaultInboundPolicy, err)
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	}
	return p
}

// podWaypoint resolves the pod's waypoint binding: its own use-waypoint label, else its
// namespace's. A waypoint's own pods are never bound to it.
func (t *translator) podWaypoint(pod *corev1.Pod) *nodeconfig.GatewayAddress {
	name, subject := t.waypointBinding(pod.Namespace, pod.Labels, "pod "+pod.Namespace+"/"+pod.Name)
	if name == "" || pod.Labels[gatewayv1.GatewayNameLabelKey] == name {
		return nil
	}
	return t.resolveWaypoint(pod.Namespace, name, subject)
}

// waypointBinding returns the waypoint name an object with labels in namespace ns is bound to,
// and whose label says so (the object's subject, or its namespace).
func (t *translator) waypointBinding(ns string, labels map[string]string, subject string) (name, from string) {
	if v, ok := labels[LabelUseWaypoint]; ok {
		if v == DataplaneModeNone {
			return "", ""
		}
		return v, subject
	}
	if n := t.namespaces[ns]; n != nil {
		if v := n.Labels[LabelUseWaypoint]; v != "" && v != DataplaneModeNone {
			return v, "namespace " + ns
		}
	}
	return "", ""
}

// resolveWaypoint finds the waypoint Gateway name in ns. A binding that cannot be resolved is
// reported once per subject and yields no waypoint: the destination ztunnel then enforces the L4
// rules itself, and route rules, which only a waypoint enforces, allow nothing.
func (t *translator) resolveWaypoint(ns, name, subject string) *nodeconfig.GatewayAddress {
	key := nsName{ns, name}
	r, ok := t.waypoints[key]
	if !ok {
		r = t.lookupWaypoint(key)
		t.waypoints[key] = r
	}
	if r.problem != "" {
		t.warnf("%s: label %s=%s: %s; served without a waypoint", subject, LabelUseWaypoint, name, r.problem)
	}
	return r.gw
}

func (t *translator) lookupWaypoint(key nsName) waypointResult {
	g := t.gateways[key]
	switch {
	case g == nil:
		return waypointResult{problem: fmt.Sprintf("Gateway %s not found", key)}
	case g.Spec.GatewayClassName != WaypointClassName:
		return waypointResult{problem: fmt.Sprintf("Gateway %s has gatewayClassName %q, want %q", key, g.Spec.GatewayClassName, WaypointClassName)}
	case len(g.Status.Addresses) == 0:
		return waypointResult{problem: fmt.Sprintf("Gateway %s has no address yet (status.addresses is empty)", key)}
	}
	a, err := netip.ParseAddr(g.Status.Addresses[0].Value)
	if err != nil || a.Zone() != "" {
		return waypointResult{problem: fmt.Sprintf("Gateway %s address %q is not an IP", key, g.Status.Addresses[0].Value)}
	}
	return waypointResult{gw: &nodeconfig.GatewayAddress{
		Name:      key.name,
		Namespace: key.ns,
		Address:   a.Unmap().String(),
		HbonePort: nodeconfig.DefaultHBONEPort,
		Identity:  t.spiffeID(key.ns, key.name),
	}}
}
