// Package state holds a node's view of the mesh: an immutable, indexed form of a
// nodeconfig.Snapshot together with its compiled authorization engine, swapped atomically when a
// new snapshot arrives. Lookups are by IP, which is what the data path has in hand.
//
// It is a data-plane library: it does not log and does no I/O. The ztunnel and the waypoint
// import it.
package state

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/authz"
)

// View is one immutable configuration. Never modify what it returns.
type View struct {
	snap        *nodeconfig.Snapshot
	trustDomain spiffeid.TrustDomain
	engine      *authz.Engine
	bundle      *x509bundle.Bundle // nil when the snapshot carries none

	workloadsByAddr map[netip.Addr]*nodeconfig.Workload
	workloadsByUID  map[string]*nodeconfig.Workload
	servicesByAddr  map[netip.Addr]*service
}

type service struct {
	svc *nodeconfig.Service
	// next is the index where the next round-robin pick starts.
	next atomic.Uint32
}

// Build validates a snapshot and compiles it into a View.
func Build(s *nodeconfig.Snapshot) (*View, error) {
	if err := nodeconfig.Validate(s); err != nil {
		return nil, err
	}
	tdName := s.GetTrustDomain()
	if tdName == "" {
		tdName = nodeconfig.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, fmt.Errorf("build state: trust domain %q: %w", tdName, err)
	}
	engine, err := authz.Compile(s)
	if err != nil {
		return nil, err
	}
	var bundle *x509bundle.Bundle
	if pem := s.GetTrustBundle(); pem != "" {
		if bundle, err = x509bundle.Parse(td, []byte(pem)); err != nil {
			return nil, fmt.Errorf("build state: trust bundle: %w", err)
		}
	}
	v := &View{
		snap:            s,
		trustDomain:     td,
		engine:          engine,
		bundle:          bundle,
		workloadsByAddr: make(map[netip.Addr]*nodeconfig.Workload, len(s.GetWorkloads())),
		workloadsByUID:  make(map[string]*nodeconfig.Workload, len(s.GetWorkloads())),
		servicesByAddr:  make(map[netip.Addr]*service, len(s.GetServices())),
	}
	for _, w := range s.GetWorkloads() {
		v.workloadsByUID[w.GetUid()] = w
		for _, a := range w.GetAddresses() {
			v.workloadsByAddr[netip.MustParseAddr(a).Unmap()] = w // validated above
		}
	}
	for _, sv := range s.GetServices() {
		entry := &service{svc: sv}
		for _, a := range sv.GetAddresses() {
			v.servicesByAddr[netip.MustParseAddr(a).Unmap()] = entry
		}
	}
	return v, nil
}

// Snapshot returns the snapshot the view was built from.
func (v *View) Snapshot() *nodeconfig.Snapshot { return v.snap }

// Version returns the snapshot's version.
func (v *View) Version() string { return v.snap.GetVersion() }

// TrustDomain returns the mesh's trust domain.
func (v *View) TrustDomain() spiffeid.TrustDomain { return v.trustDomain }

// Bundle returns the snapshot's trust bundle, or nil if it carries none.
func (v *View) Bundle() *x509bundle.Bundle { return v.bundle }

// Authz returns the compiled authorization engine.
func (v *View) Authz() *authz.Engine { return v.engine }

// WorkloadByAddr returns the workload that owns ip, or nil.
func (v *View) WorkloadByAddr(ip netip.Addr) *nodeconfig.Workload {
	return v.workloadsByAddr[ip.Unmap()]
}

// WorkloadByUID returns the workload with that uid, or nil.
func (v *View) WorkloadByUID(uid string) *nodeconfig.Workload { return v.workloadsByUID[uid] }

// ServiceByAddr returns the service whose VIP is ip, or nil.
func (v *View) ServiceByAddr(ip netip.Addr) *nodeconfig.Service {
	if s := v.servicesByAddr[ip.Unmap()]; s != nil {
		return s.svc
	}
	return nil
}

// Identity returns the SPIFFE ID of a workload: spiffe://<td>/ns/<namespace>/sa/<serviceaccount>.
func (v *View) Identity(w *nodeconfig.Workload) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(v.trustDomain, "ns", w.GetNamespace(), "sa", w.GetServiceAccount())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity of workload %s/%s: %w", w.GetNamespace(), w.GetName(), err)
	}
	return id, nil
}

// LocalWorkloads returns the workloads scheduled on node.
func (v *View) LocalWorkloads(node string) []*nodeconfig.Workload {
	var out []*nodeconfig.Workload
	for _, w := range v.snap.GetWorkloads() {
		if w.GetNode() == node {
			out = append(out, w)
		}
	}
	return out
}

// Endpoint is one chosen backend of a service.
type Endpoint struct {
	Workload *nodeconfig.Workload
	// Addr is the workload's address and the resolved target port.
	Addr netip.AddrPort
}

// PickEndpoint chooses a ready endpoint of the service with VIP vip for the given service port,
// round-robin. The endpoint's address family follows the VIP's where the workload has one.
func (v *View) PickEndpoint(vip netip.AddrPort) (*nodeconfig.Service, Endpoint, error) {
	entry := v.servicesByAddr[vip.Addr().Unmap()]
	if entry == nil {
		return nil, Endpoint{}, fmt.Errorf("pick endpoint for %s: not a service address", vip)
	}
	svc := entry.svc
	var port *nodeconfig.ServicePort
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(vip.Port()) {
			port = p
			break
		}
	}
	if port == nil {
		return svc, Endpoint{}, fmt.Errorf("pick endpoint for service %s/%s: port %d is not a service port", svc.GetNamespace(), svc.GetName(), vip.Port())
	}
	eps := svc.GetEndpoints()
	n := len(eps)
	start := int(entry.next.Load())
	for i := range n {
		j := (start + i) % n
		w := v.workloadsByUID[eps[j].GetWorkloadUid()]
		if w == nil || !w.GetReady() {
			continue
		}
		target, ok := targetPort(w, port)
		if !ok {
			continue
		}
		addr, ok := addrFor(w, vip.Addr())
		if !ok {
			continue
		}
		// The cursor moves past the chosen endpoint, so skipped (unready) endpoints do not make
		// their successors more likely. Concurrent pickers may race; that only blurs the order.
		entry.next.Store(uint32(j + 1))
		return svc, Endpoint{Workload: w, Addr: netip.AddrPortFrom(addr, target)}, nil
	}
	return svc, Endpoint{}, fmt.Errorf("pick endpoint for service %s/%s port %d: no ready endpoint (%d listed)", svc.GetNamespace(), svc.GetName(), vip.Port(), n)
}

func targetPort(w *nodeconfig.Workload, p *nodeconfig.ServicePort) (uint16, bool) {
	if p.GetTargetPort() != 0 {
		return uint16(p.GetTargetPort()), true
	}
	for _, wp := range w.GetPorts() {
		if wp.GetName() == p.GetTargetPortName() {
			return uint16(wp.GetPort()), true
		}
	}
	return 0, false
}

func addrFor(w *nodeconfig.Workload, like netip.Addr) (netip.Addr, bool) {
	var first netip.Addr
	for _, a := range w.GetAddresses() {
		ip := netip.MustParseAddr(a).Unmap()
		if ip.Is4() == like.Unmap().Is4() {
			return ip, true
		}
		if !first.IsValid() {
			first = ip
		}
	}
	return first, first.IsValid()
}

// BundleSource serves the trust bundle of the store's current view, so TLS handshakes pick up a
// root rotation with the next config; until a view carries a bundle it serves fallback (nil:
// none).
func BundleSource(s *Store, fallback x509bundle.Source) x509bundle.Source {
	return bundleSource{s, fallback}
}

type bundleSource struct {
	s        *Store
	fallback x509bundle.Source
}

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if v := b.s.Load(); v != nil && v.bundle != nil {
		if v.bundle.TrustDomain() == td {
			return v.bundle, nil
		}
		return nil, fmt.Errorf("no trust bundle for trust domain %q (the mesh is %q)", td, v.bundle.TrustDomain())
	}
	if b.fallback != nil {
		return b.fallback.GetX509BundleForTrustDomain(td)
	}
	return nil, fmt.Errorf("no trust bundle for trust domain %q yet (no config from the controller)", td)
}

// Store holds the current View and tells subscribers when it changes.
type Store struct {
	cur atomic.Pointer[View]

	mu   sync.Mutex
	subs map[int]func(old, cur *View)
	next int
}

// NewStore returns a store holding initial (which may be nil until the first config arrives).
func NewStore(initial *View) *Store {
	s := &Store{subs: make(map[int]func(old, cur *View))}
	if initial != nil {
		s.cur.Store(initial)
	}
	return s
}

// Load returns the current view, or nil before the first one.
func (s *Store) Load() *View { return s.cur.Load() }

// Swap makes v current and calls every subscriber with the old and new views, in order, before it
// returns. Subscribers must not call Swap.
func (s *Store) Swap(v *View) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Swap(v)
	for i := 0; i < s.next; i++ {
		if fn, ok := s.subs[i]; ok {
			fn(old, v)
		}
	}
}

// Subscribe registers fn to run after every Swap; the returned func unregisters it.
func (s *Store) Subscribe(fn func(old, cur *View)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.next
	s.next++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}
