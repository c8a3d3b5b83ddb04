package push

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Resource names.
const (
	workloadPrefix = "workload/"
	servicePrefix  = "service/"
	serverPrefix   = "server/"
	routePrefix    = "route/"
	// MeshName names the one MeshConfig resource.
	MeshName = "mesh/defaults"
)

// WorkloadName returns the resource name of the workload with uid.
func WorkloadName(uid string) string { return workloadPrefix + uid }

// ServiceName returns the resource name of a Service.
func ServiceName(namespace, name string) string { return servicePrefix + namespace + "/" + name }

// ServerName returns the resource name of a Server.
func ServerName(namespace, name string) string { return serverPrefix + namespace + "/" + name }

// RouteName returns the resource name of a compiled route: "route/http/<namespace>/<name>" or
// "route/grpc/<namespace>/<name>" (an HTTPRoute and a GRPCRoute may share a name).
func RouteName(kind nodeconfig.RouteKind, namespace, name string) string {
	return routePrefix + routeKindSegment(kind) + namespace + "/" + name
}

func routeKindSegment(kind nodeconfig.RouteKind) string {
	switch kind {
	case nodeconfig.RouteKind_ROUTE_KIND_HTTP:
		return "http/"
	case nodeconfig.RouteKind_ROUTE_KIND_GRPC:
		return "grpc/"
	}
	return "unspecified/"
}

// serverRef turns a Workload.servers key ("namespace/name") into a resource name.
func serverRef(key string) string { return serverPrefix + key }

// Relevant returns node's view of a mesh-wide snapshot: what a ztunnel on node receives over
// the push stream. It is the rule translate.ForNode implements too, and the two must agree:
//
//   - every workload; a workload on another node is sent without its servers list, since only the
//     destination node's ztunnel enforces Servers (and the snapshot must not name Servers it does
//     not carry);
//   - every service, and the mesh defaults and trust domain;
//   - only the Servers that the workloads on node reference;
//   - no routes: only waypoints apply them.
//
// Waypoints are not filtered: they receive the whole mesh, routes included. The input is not modified; the result
// shares unmodified messages with it.
func Relevant(mesh *nodeconfig.Snapshot, node string) *nodeconfig.Snapshot {
	out := &nodeconfig.Snapshot{
		Version:     mesh.GetVersion(),
		TrustDomain: mesh.GetTrustDomain(),
		Defaults:    mesh.GetDefaults(),
		TrustBundle: mesh.GetTrustBundle(),
		Services:    mesh.GetServices(),
	}
	want := make(map[string]bool)
	for _, w := range mesh.GetWorkloads() {
		if w.GetNode() == node {
			for _, key := range w.GetServers() {
				want[key] = true
			}
			out.Workloads = append(out.Workloads, w)
			continue
		}
		out.Workloads = append(out.Workloads, remoteView(w))
	}
	for _, sv := range mesh.GetServers() {
		if want[sv.GetNamespace()+"/"+sv.GetName()] {
			out.Servers = append(out.Servers, sv)
		}
	}
	return out
}

// remoteView is w as another node's ztunnel sees it: without its servers.
func remoteView(w *nodeconfig.Workload) *nodeconfig.Workload {
	if len(w.GetServers()) == 0 {
		return w
	}
	c := proto.Clone(w).(*nodeconfig.Workload)
	c.Servers = nil
	return c
}

// entry is one Service or Server: the message as handed to Update, its deterministic
// marshalling (to tell a changed message from an equal one without reflection) and its resource.
type entry struct {
	msg proto.Message
	raw []byte
	res *nodeconfig.Resource
}

// workloadEntry is one workload in its two forms.
type workloadEntry struct {
	w    *nodeconfig.Workload
	raw  []byte
	node string
	// servers are the resource names of the Servers the workload references.
	servers []string
	// local is sent to the workload's own node, remote to every other (no servers; the same
	// pointer as local when the workload references none).
	local, remote *nodeconfig.Resource
}

// meshState is one immutable, mesh-wide set of named, versioned resources. Update builds a new
// one from the previous; streams read it without locks.
type meshState struct {
	gen     uint64
	version string
	digest  uint64

	workloads map[string]*workloadEntry
	services  map[string]*entry
	servers   map[string]*entry
	routes    map[string]*entry // sent to waypoints only
	mesh      *nodeconfig.Resource

	// nodeServers counts, per node, the local workloads referencing each Server (by resource
	// name). A Server is relevant to a node while its count is positive.
	nodeServers map[string]map[string]int
}

func emptyState() *meshState {
	return &meshState{
		workloads:   map[string]*workloadEntry{},
		services:    map[string]*entry{},
		servers:     map[string]*entry{},
		routes:      map[string]*entry{},
		nodeServers: map[string]map[string]int{},
	}
}

// desired returns the resource a client of kind on node should hold under name, or nil.
func (st *meshState) desired(name, node, kind string) *nodeconfig.Resource {
	switch {
	case name == MeshName:
		return st.mesh
	case strings.HasPrefix(name, workloadPrefix):
		e := st.workloads[name]
		switch {
		case e == nil:
			return nil
		case kind == KindWaypoint || e.node == node:
			return e.local
		default:
			return e.remote
		}
	case strings.HasPrefix(name, servicePrefix):
		if e := st.services[name]; e != nil {
			return e.res
		}
	case strings.HasPrefix(name, serverPrefix):
		if e := st.servers[name]; e != nil && (kind == KindWaypoint || st.nodeServers[node][name] > 0) {
			return e.res
		}
	case strings.HasPrefix(name, routePrefix):
		if e := st.routes[name]; e != nil && kind == KindWaypoint {
			return e.res
		}
	}
	return nil
}

// each calls fn with every resource a client of kind on node should hold.
func (st *meshState) each(node, kind string, fn func(*nodeconfig.Resource)) {
	if st.mesh != nil {
		fn(st.mesh)
	}
	for _, e := range st.workloads {
		if kind == KindWaypoint || e.node == node {
			fn(e.local)
		} else {
			fn(e.remote)
		}
	}
	for _, e := range st.services {
		fn(e.res)
	}
	if kind == KindWaypoint {
		for _, e := range st.servers {
			fn(e.res)
		}
		for _, e := range st.routes {
			fn(e.res)
		}
		return
	}
	for name, n := range st.nodeServers[node] {
		if e := st.servers[name]; e != nil && n > 0 {
			fn(e.res)
		}
	}
}

// delta is what one Update changed.
type delta struct {
	// changed are the names whose content changed (in any form), were added or were removed.
	changed []string
	// nodeServers are, per node, the Servers that became relevant or irrelevant to it.
	nodeServers map[string][]string
}

// next builds the state for mesh from st. A message handed in again (the same pointer) is
// reused as is; any other is marshalled deterministically and compared with its predecessor's
// bytes, and only a changed one is hashed into a new version.
func (st *meshState) next(mesh *nodeconfig.Snapshot) (*meshState, delta) {
	ns := &meshState{
		gen:         st.gen + 1,
		digest:      st.digest,
		workloads:   make(map[string]*workloadEntry, len(mesh.GetWorkloads())),
		services:    make(map[string]*entry, len(mesh.GetServices())),
		servers:     make(map[string]*entry, len(mesh.GetServers())),
		routes:      make(map[string]*entry, len(mesh.GetRoutes())),
		nodeServers: maps.Clone(st.nodeServers),
	}
	var d delta
	copied := map[string]bool{}
	touched := map[string]map[string]bool{}
	refs := func(node string, servers []string, delta int) {
		if len(servers) == 0 {
			return
		}
		m := ns.nodeServers[node]
		// A node's map is copied once per update; it may have been emptied and deleted by an
		// earlier call of this update (a workload's old servers removed before its new ones
		// are added), so a missing one is made again.
		if !copied[node] || m == nil {
			m = maps.Clone(m)
			if m == nil {
				m = map[string]int{}
			}
			ns.nodeServers[node] = m
			copied[node] = true
		}
		for _, name := range servers {
			before := m[name]
			m[name] += delta
			if (before == 0) != (m[name] == 0) {
				if touched[node] == nil {
					touched[node] = map[string]bool{}
				}
				touched[node][name] = true
			}
			if m[name] == 0 {
				delete(m, name)
			}
		}
		if len(m) == 0 {
			delete(ns.nodeServers, node)
		}
	}

	// buf and key are scratch space: most messages are unchanged, and comparing them should not
	// allocate.
	var buf, key []byte
	for _, w := range mesh.GetWorkloads() {
		key = append(append(key[:0], workloadPrefix...), w.GetUid()...)
		prev := st.workloads[string(key)]
		var name string
		if prev != nil {
			name = prev.local.GetName()
		} else {
			name = string(key)
		}
		if _, dup := ns.workloads[name]; dup {
			continue // the first wins; the translator never emits duplicates
		}
		if prev != nil && prev.w == w {
			ns.workloads[name] = prev
			continue
		}
		buf = marshalAppend(buf[:0], w)
		if prev != nil && bytes.Equal(prev.raw, buf) {
			ns.workloads[name] = &workloadEntry{w: w, raw: prev.raw, node: prev.node, servers: prev.servers, local: prev.local, remote: prev.remote}
			continue
		}
		e := newWorkloadEntry(name, w, bytes.Clone(buf))
		ns.workloads[name] = e
		if prev != nil {
			refs(prev.node, prev.servers, -1)
			ns.digest ^= entryHash(prev.local)
		}
		refs(e.node, e.servers, +1)
		ns.digest ^= entryHash(e.local)
		d.changed = append(d.changed, name)
	}
	for name, prev := range st.workloads {
		if _, ok := ns.workloads[name]; !ok {
			refs(prev.node, prev.servers, -1)
			ns.digest ^= entryHash(prev.local)
			d.changed = append(d.changed, name)
		}
	}

	diff := func(old, cur map[string]*entry, prefix, namespace, n string, msg proto.Message, wrap func(name string) *nodeconfig.Resource) {
		key = append(append(append(append(key[:0], prefix...), namespace...), '/'), n...)
		prev := old[string(key)]
		var name string
		if prev != nil {
			name = prev.res.GetName()
		} else {
			name = string(key)
		}
		if _, dup := cur[name]; dup {
			return
		}
		if prev != nil && prev.msg == msg {
			cur[name] = prev
			return
		}
		buf = marshalAppend(buf[:0], msg)
		if prev != nil && bytes.Equal(prev.raw, buf) {
			cur[name] = &entry{msg: msg, raw: prev.raw, res: prev.res}
			return
		}
		raw := bytes.Clone(buf)
		e := &entry{msg: msg, raw: raw, res: wrap(name)}
		e.res.Version = version(raw)
		cur[name] = e
		if prev != nil {
			ns.digest ^= entryHash(prev.res)
		}
		ns.digest ^= entryHash(e.res)
		d.changed = append(d.changed, name)
	}
	for _, sv := range mesh.GetServices() {
		diff(st.services, ns.services, servicePrefix, sv.GetNamespace(), sv.GetName(), sv, func(name string) *nodeconfig.Resource {
			return &nodeconfig.Resource{Name: name, Kind: &nodeconfig.Resource_Service{Service: sv}}
		})
	}
	for _, sv := range mesh.GetServers() {
		diff(st.servers, ns.servers, serverPrefix, sv.GetNamespace(), sv.GetName(), sv, func(name string) *nodeconfig.Resource {
			return &nodeconfig.Resource{Name: name, Kind: &nodeconfig.Resource_Server{Server: sv}}
		})
	}
	for _, r := range mesh.GetRoutes() {
		diff(st.routes, ns.routes, routePrefix+routeKindSegment(r.GetKind()), r.GetNamespace(), r.GetName(), r, func(name string) *nodeconfig.Resource {
			return &nodeconfig.Resource{Name: name, Kind: &nodeconfig.Resource_Route{Route: r}}
		})
	}
	for _, pair := range [3][2]map[string]*entry{{st.services, ns.services}, {st.servers, ns.servers}, {st.routes, ns.routes}} {
		for name, prev := range pair[0] {
			if _, ok := pair[1][name]; !ok {
				ns.digest ^= entryHash(prev.res)
				d.changed = append(d.changed, name)
			}
		}
	}

	mc := &nodeconfig.MeshConfig{TrustDomain: mesh.GetTrustDomain(), Defaults: mesh.GetDefaults(), TrustBundle: mesh.GetTrustBundle()}
	if st.mesh != nil && proto.Equal(st.mesh.GetMesh(), mc) {
		ns.mesh = st.mesh
	} else {
		ns.mesh = &nodeconfig.Resource{Name: MeshName, Kind: &nodeconfig.Resource_Mesh{Mesh: mc}, Version: version(marshal(mc))}
		if st.mesh != nil {
			ns.digest ^= entryHash(st.mesh)
		}
		ns.digest ^= entryHash(ns.mesh)
		if st.mesh.GetVersion() != ns.mesh.GetVersion() {
			d.changed = append(d.changed, MeshName)
		}
	}

	ns.version = strconv.FormatUint(ns.digest, 16)
	if len(touched) > 0 {
		d.nodeServers = make(map[string][]string, len(touched))
		for node, set := range touched {
			d.nodeServers[node] = slices.Collect(maps.Keys(set))
		}
	}
	return ns, d
}

func newWorkloadEntry(name string, w *nodeconfig.Workload, raw []byte) *workloadEntry {
	e := &workloadEntry{w: w, raw: raw, node: w.GetNode()}
	e.local = &nodeconfig.Resource{Name: name, Version: version(raw), Kind: &nodeconfig.Resource_Workload{Workload: w}}
	e.remote = e.local
	if len(w.GetServers()) > 0 {
		e.servers = make([]string, len(w.GetServers()))
		for i, key := range w.GetServers() {
			e.servers[i] = serverRef(key)
		}
		rw := remoteView(w)
		e.remote = &nodeconfig.Resource{Name: name, Version: version(marshal(rw)), Kind: &nodeconfig.Resource_Workload{Workload: rw}}
	}
	return e
}

// marshal returns msg's deterministic protobuf encoding.
func marshal(msg proto.Message) []byte { return marshalAppend(nil, msg) }

// marshalAppend appends msg's deterministic protobuf encoding to b.
func marshalAppend(b []byte, msg proto.Message) []byte {
	out, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, msg)
	if err != nil {
		// Only invalid UTF-8 in a string field fails. Version by the error; the client's
		// unmarshal reports the problem.
		return append(b, err.Error()...)
	}
	return out
}

// version is a resource version: the first 8 bytes of the SHA-256 of its encoding, in hex.
func version(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:8])
}

// entryHash folds a resource into the system version digest.
func entryHash(r *nodeconfig.Resource) uint64 {
	h := fnv.New64a()
	h.Write([]byte(r.GetName()))
	h.Write([]byte{0})
	h.Write([]byte(r.GetVersion()))
	return h.Sum64()
}
