package report

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/explain"
)

// PodIdentity is one pod's identity and the certificate its node's ztunnel holds for it.
type PodIdentity struct {
	Pod      string `json:"pod"`
	Node     string `json:"node"`
	SPIFFEID string `json:"spiffeID"`
	// Certificate is nil when the ztunnel holds none for the identity.
	Certificate *admin.Certificate `json:"certificate,omitempty"`
}

// IdentityTable prints identities, each with its certificate chain.
func IdentityTable(w io.Writer, ids []PodIdentity, now time.Time) {
	for i, id := range ids {
		if i > 0 {
			fmt.Fprintln(w)
		}
		row(w, "POD:", id.Pod)
		row(w, "NODE:", id.Node)
		row(w, "SPIFFE ID:", id.SPIFFEID)
		c := id.Certificate
		if c == nil {
			row(w, "CERTIFICATE:", "none held by the node's ztunnel")
			continue
		}
		row(w, "STATE:", c.State)
		row(w, "SERIAL:", c.Serial)
		row(w, "NOT BEFORE:", Stamp(c.NotBefore))
		row(w, "NOT AFTER:", Stamp(c.NotAfter)+" (in "+Until(c.NotAfter, now)+")")
		row(w, "ROTATION:", Stamp(c.RotateAt)+" (in "+Until(c.RotateAt, now)+")")
		if c.Failures > 0 {
			row(w, "FAILED CSRS:", fmt.Sprint(c.Failures))
		}
		for j, cc := range c.Decoded {
			label := "ISSUER CHAIN:"
			if j > 0 {
				label = ""
			}
			fmt.Fprintf(w, "%s\t[%d] subject=%q issuer=%q serial=%s not-after=%s\n", label, j, cc.Subject, cc.Issuer, cc.Serial, Stamp(cc.NotAfter))
		}
	}
}

// WhyTable prints decisions, one block each.
func WhyTable(w io.Writer, ds []explain.Decision) {
	for i, d := range ds {
		if i > 0 {
			fmt.Fprintln(w)
		}
		src := d.Source
		if d.SourceIdentity != "" {
			src += " (" + d.SourceIdentity + ")"
		} else {
			src += " (no mesh identity: plaintext from " + d.SourceAddress + ")"
		}
		row(w, "SOURCE:", src)
		dst := fmt.Sprintf("%s port %d on %s (config %s)", d.Destination, d.Port, d.Node, d.ConfigVersion)
		if d.Service != "" {
			dst += " via service " + d.Service
		}
		row(w, "DESTINATION:", dst)
		if d.Request != "" {
			row(w, "REQUEST:", d.Request)
			row(w, "ROUTE:", d.Route)
		}
		row(w, "DECISION:", strings.ToUpper(d.Verdict))
		row(w, "DECIDED BY:", d.PolicyKind+" "+d.Policy)
		server := d.Server
		if server == "" {
			server = "none covers the port (default policy applies)"
		}
		row(w, "SERVER:", server)
		row(w, "REASON:", d.Reason)
		if d.Waypoint != "" {
			row(w, "WAYPOINT:", d.Waypoint+" enforces these rules for the destination; its ztunnel admits only the waypoint")
		}
		if len(d.Checks) > 0 {
			fmt.Fprintln(w, "AUTHORIZATIONS CONSIDERED:")
			row(w, "  POLICY", "TARGET", "AUTHENTICATION", "RESULT", "WHY")
			for _, c := range d.Checks {
				row(w, "  "+c.Policy, c.Target, strings.Join(c.Authentications, ","), c.Result, c.Reason)
			}
		}
	}
}

// PolicyTable prints a pod port's effective inbound policy.
func PolicyTable(w io.Writer, p explain.Policy) {
	row(w, "POD:", fmt.Sprintf("%s port %d on %s (config %s)", p.Pod, p.Port, p.Node, p.ConfigVersion))
	if p.Server == "" {
		row(w, "SERVER:", "none covers the port")
		row(w, "DEFAULT POLICY:", p.Access+" (from the "+p.DefaultFrom+" default)")
	} else {
		srv := p.Server + " (port " + p.ServerPort
		if p.ProxyProtocol != "" {
			srv += ", proxyProtocol " + p.ProxyProtocol
		}
		row(w, "SERVER:", srv+")")
		row(w, "ACCESS POLICY:", p.Access+" (for traffic no authorization allows)")
		if len(p.Overlapping) > 0 {
			row(w, "IGNORED OVERLAPPING:", strings.Join(p.Overlapping, ", "))
		}
	}
	if p.Waypoint != "" {
		row(w, "WAYPOINT:", p.Waypoint)
	}
	if p.Server == "" {
		return
	}
	if len(p.Authorizations) == 0 {
		row(w, "AUTHORIZATIONS:", "none")
		return
	}
	fmt.Fprintln(w, "AUTHORIZATIONS:")
	row(w, "  POLICY", "TARGET", "AUTHENTICATION", "IDENTITIES", "NETWORKS", "ENFORCED BY")
	for _, a := range p.Authorizations {
		row(w, "  "+a.Policy, a.Target, strings.Join(a.Authentications, ","), strings.Join(a.Identities, ","), strings.Join(a.Networks, ","), a.EnforcedBy)
	}
}

// Status is the mesh at a glance.
type Status struct {
	Namespaces []NamespaceStatus `json:"namespaces"`
	Ztunnels   []ZtunnelStatus   `json:"ztunnels"`
	Waypoints  []WaypointStatus  `json:"waypoints"`
}

// NamespaceStatus is one namespace's membership.
type NamespaceStatus struct {
	Name     string `json:"name"`
	Mode     string `json:"mode"` // ambient or ""
	Pods     int    `json:"pods"`
	Meshed   int    `json:"meshed"`
	Waypoint string `json:"waypoint,omitempty"`
}

// ZtunnelStatus is one node's ztunnel.
type ZtunnelStatus struct {
	Node          string `json:"node"`
	Pod           string `json:"pod"`
	Ready         bool   `json:"ready"`
	Error         string `json:"error,omitempty"`
	BuildVersion  string `json:"buildVersion,omitempty"`
	ConfigVersion string `json:"configVersion,omitempty"`
	Workloads     int    `json:"workloads"`
	Certificates  int    `json:"certificates"`
	// Expiring are identities whose certificate expires within the warning window, is not
	// valid, or failed to renew.
	Expiring []string `json:"expiring,omitempty"`
}

// WaypointStatus is one waypoint Gateway.
type WaypointStatus struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	Programmed string   `json:"programmed"`
	Serves     []string `json:"serves,omitempty"`
}

// StatusTable prints the status.
func StatusTable(w io.Writer, s Status) {
	fmt.Fprintln(w, "NAMESPACES")
	row(w, "NAME", "DATAPLANE", "PODS", "MESHED", "WAYPOINT")
	for _, n := range s.Namespaces {
		row(w, n.Name, n.Mode, fmt.Sprint(n.Pods), fmt.Sprint(n.Meshed), n.Waypoint)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "ZTUNNELS")
	row(w, "NODE", "POD", "READY", "VERSION", "CONFIG", "WORKLOADS", "CERTS", "EXPIRING/FAILING")
	for _, z := range s.Ztunnels {
		ready := fmt.Sprint(z.Ready)
		if z.Error != "" {
			ready = "unreachable: " + z.Error
		}
		row(w, z.Node, z.Pod, ready, z.BuildVersion, z.ConfigVersion, fmt.Sprint(z.Workloads), fmt.Sprint(z.Certificates), strings.Join(z.Expiring, ","))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "WAYPOINTS")
	row(w, "NAMESPACE", "NAME", "PROGRAMMED", "SERVES")
	for _, g := range s.Waypoints {
		row(w, g.Namespace, g.Name, g.Programmed, strings.Join(g.Serves, ","))
	}
}

// WorkloadsTable prints the workloads of a node's config.
func WorkloadsTable(w io.Writer, node string, ws []*nodeconfig.Workload) {
	row(w, "NODE", "NAMESPACE", "NAME", "ADDRESS", "WORKLOAD NODE", "PROTOCOL", "IDENTITY", "WAYPOINT")
	for _, x := range ws {
		proto := "TCP"
		id := ""
		if explain.Meshed(x) {
			proto = "HBONE"
			id = "sa/" + x.GetServiceAccount()
		}
		wp := ""
		if g := x.GetWaypoint(); g != nil {
			wp = g.GetNamespace() + "/" + g.GetName()
		}
		row(w, node, x.GetNamespace(), x.GetName(), strings.Join(x.GetAddresses(), ","), x.GetNode(), proto, id, wp)
	}
}

// ServicesTable prints the services of a node's config.
func ServicesTable(w io.Writer, node string, ss []*nodeconfig.Service) {
	row(w, "NODE", "NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS", "WAYPOINT")
	for _, s := range ss {
		var ports []string
		for _, p := range s.GetPorts() {
			tp := fmt.Sprint(p.GetTargetPort())
			if p.GetTargetPortName() != "" {
				tp = p.GetTargetPortName()
			}
			ports = append(ports, fmt.Sprintf("%d->%s", p.GetServicePort(), tp))
		}
		wp := ""
		if g := s.GetWaypoint(); g != nil {
			wp = g.GetNamespace() + "/" + g.GetName()
		}
		row(w, node, s.GetNamespace(), s.GetName(), strings.Join(s.GetAddresses(), ","), strings.Join(ports, ","), fmt.Sprint(len(s.GetEndpoints())), wp)
	}
}

// PoliciesTable prints the Servers of a node's config with their authorizations.
func PoliciesTable(w io.Writer, node string, ss []*nodeconfig.Server) {
	row(w, "NODE", "SERVER", "PORT", "ACCESS", "AUTHORIZATION", "TARGET", "AUTHENTICATION")
	for _, s := range ss {
		port := fmt.Sprint(s.GetPortNumber())
		if s.GetPortName() != "" {
			port = s.GetPortName()
		}
		access := s.GetAccessPolicy()
		if access == nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED {
			access = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
		}
		key := s.GetNamespace() + "/" + s.GetName()
		if len(s.GetAuthorizations()) == 0 {
			row(w, node, key, port, access.Name(), "", "", "")
		}
		for _, a := range s.GetAuthorizations() {
			target := strings.TrimPrefix(a.GetTargetKind().String(), "TARGET_KIND_")
			if a.GetRoute() != "" {
				target += "/" + a.GetRoute()
			}
			row(w, node, key, port, access.Name(), a.GetNamespace()+"/"+a.GetName(), target, strings.Join(a.GetAuthenticationRefs(), ","))
		}
	}
}

// NodeCertificates is one node's certificates.
type NodeCertificates struct {
	Node         string              `json:"node"`
	Certificates []admin.Certificate `json:"certificates"`
}

// CertificatesTable prints the certificates nodes hold.
func CertificatesTable(w io.Writer, ns []NodeCertificates, now time.Time) {
	row(w, "NODE", "IDENTITY", "STATE", "SERIAL", "NOT AFTER", "EXPIRES IN", "ROTATES IN", "ISSUER")
	for _, n := range ns {
		for _, c := range n.Certificates {
			issuer := ""
			if len(c.Decoded) > 0 {
				issuer = c.Decoded[0].Issuer
			}
			row(w, n.Node, c.ID, c.State, c.Serial, Stamp(c.NotAfter), Until(c.NotAfter, now), Until(c.RotateAt, now), issuer)
		}
	}
}

// ConnectionsTable prints the nodes' workloads' open connections and recent closed ones.
func ConnectionsTable(w io.Writer, cs []admin.Connections) {
	row(w, "NODE", "WORKLOAD", "IDENTITY", "OPEN INBOUND", "POOLED CONNS", "POOLED STREAMS")
	for _, c := range cs {
		for _, x := range c.Workloads {
			row(w, c.Node, x.Name, x.Identity, fmt.Sprint(x.OpenInbound), fmt.Sprint(x.Pool.Conns), fmt.Sprint(x.Pool.Streams))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "RECENTLY CLOSED")
	row(w, "NODE", "START", "DIRECTION", "MODE", "SOURCE", "DESTINATION", "SOURCE IDENTITY", "DESTINATION IDENTITY", "BYTES UP", "BYTES DOWN", "DURATION", "ERROR")
	for _, c := range cs {
		for _, r := range c.Recent {
			dst := r.Dst
			if r.DstWorkload != "" {
				dst += " (" + r.DstWorkload + ")"
			}
			row(w, c.Node, Stamp(r.Start), r.Direction, r.Mode, r.Src, dst, r.SrcIdentity, r.DstIdentity,
				fmt.Sprint(r.Upstream), fmt.Sprint(r.Downstream), r.Duration.Round(time.Millisecond).String(), r.Error)
		}
	}
}

// EventsTable prints security events.
func EventsTable(w io.Writer, es []admin.SecurityEvent) {
	row(w, "TIME", "NODE", "EVENT", "SOURCE", "SOURCE IDENTITY", "DESTINATION", "DECIDED BY", "REASON")
	for _, e := range es {
		dst := e.DstWorkload + " " + e.Dst
		row(w, Stamp(e.Time), e.Node, e.Type, e.Src, e.SrcIdentity, dst, e.PolicyKind+" "+e.Policy, e.Reason)
	}
}

// Waypoint is one waypoint Gateway as waypoint list prints it.
type Waypoint struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	Programmed string   `json:"programmed"`
	BoundBy    []string `json:"boundBy,omitempty"`
}

// WaypointsTable prints waypoints.
func WaypointsTable(w io.Writer, ws []Waypoint) {
	row(w, "NAMESPACE", "NAME", "PROGRAMMED", "BOUND BY (warren.dev/use-waypoint)")
	for _, x := range ws {
		row(w, x.Namespace, x.Name, x.Programmed, strings.Join(x.BoundBy, ","))
	}
}
