package translate

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// finish resolves address collisions, sorts everything and computes the version.
func (t *translator) finish() *Output {
	mesh := &nodeconfig.Snapshot{TrustDomain: t.td, TrustBundle: t.in.TrustBundle}
	if t.in.Defaults != nil {
		mesh.Defaults = cloneDefaults(t.in.Defaults)
	}

	// A pod IP belongs to one workload. Two pods claim one only transiently (a stale pod
	// object); the live, ready, older one keeps it.
	owners := make(map[string]*podInfo)
	included := make([]*podInfo, 0, len(t.pods))
	for _, p := range t.pods {
		if p.included {
			included = append(included, p)
		}
	}
	byClaim := slices.Clone(included)
	slices.SortStableFunc(byClaim, func(a, b *podInfo) int {
		return cmp.Or(
			cmpBool(a.terminating, b.terminating),
			cmpBool(!a.w.Ready, !b.w.Ready),
			a.pod.CreationTimestamp.Compare(b.pod.CreationTimestamp.Time),
			cmp.Compare(a.w.Uid, b.w.Uid))
	})
	for _, p := range byClaim {
		kept := p.w.Addresses[:0:0]
		for _, a := range p.w.Addresses {
			if o := owners[a]; o != nil {
				t.warnf("pod %s/%s: address %s is also pod %s/%s's; ignored on this pod", p.w.Namespace, p.w.Name, a, o.w.Namespace, o.w.Name)
				continue
			}
			owners[a] = p
			kept = append(kept, a)
		}
		p.w.Addresses = kept
	}
	mesh.Workloads = make([]*nodeconfig.Workload, len(included))
	for i, p := range included {
		slices.Sort(p.w.Servers)
		mesh.Workloads[i] = p.w
	}
	slices.SortFunc(mesh.Workloads, func(a, b *nodeconfig.Workload) int { return cmp.Compare(a.Uid, b.Uid) })

	// Likewise a VIP belongs to one Service; the older one keeps it.
	byAge := slices.Clone(t.services)
	slices.SortStableFunc(byAge, func(a, b serviceInfo) int { return a.created.Compare(b.created.Time) })
	vips := make(map[string]*nodeconfig.Service)
	for _, si := range byAge {
		s := si.msg
		kept := s.Addresses[:0:0]
		for _, a := range s.Addresses {
			switch {
			case vips[a] != nil:
				t.warnf("service %s/%s: cluster IP %s is also service %s/%s's; ignored on this service", s.Namespace, s.Name, a, vips[a].Namespace, vips[a].Name)
			case owners[a] != nil:
				t.warnf("service %s/%s: cluster IP %s is also pod %s/%s's; ignored", s.Namespace, s.Name, a, owners[a].w.Namespace, owners[a].w.Name)
			default:
				vips[a] = s
				kept = append(kept, a)
			}
		}
		s.Addresses = kept
	}
	mesh.Services = make([]*nodeconfig.Service, len(t.services))
	for i, si := range t.services {
		mesh.Services[i] = si.msg
	}

	mesh.Servers = make([]*nodeconfig.Server, 0, len(t.servers))
	for _, cs := range t.servers {
		mesh.Servers = append(mesh.Servers, cs.msg)
	}
	slices.SortFunc(mesh.Servers, func(a, b *nodeconfig.Server) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	mesh.Routes = t.routes
	mesh.Version = version(mesh)

	warnings := make([]string, 0, len(t.warnings))
	for w := range t.warnings {
		warnings = append(warnings, w)
	}
	slices.Sort(warnings)
	return &Output{Mesh: mesh, Status: t.status, RouteStatus: t.routeStatus, Warnings: warnings}
}

// plural formats n with the singular or plural noun.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

func cloneDefaults(d *nodeconfig.MeshDefaults) *nodeconfig.MeshDefaults {
	return &nodeconfig.MeshDefaults{
		DefaultInboundPolicy: d.GetDefaultInboundPolicy(),
		ClusterNetworks:      slices.Clone(d.GetClusterNetworks()),
	}
}
