package state_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel/state"
)

func snapshot() *nodeconfig.Snapshot {
	w := func(uid, ip string, ready bool, port uint32) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: uid, Name: uid, Namespace: "ns", ServiceAccount: "sa", Addresses: []string{ip, "fd00::" + uid[1:]},
			Node: "node-" + uid[1:], Ready: ready, Ports: []*nodeconfig.WorkloadPort{{Name: "http", Port: port}},
		}
	}
	return &nodeconfig.Snapshot{
		Version: "v7",
		Workloads: []*nodeconfig.Workload{
			w("w1", "10.0.0.1", true, 8080), w("w2", "10.0.0.2", false, 8080), w("w3", "10.0.0.3", true, 9090),
		},
		Services: []*nodeconfig.Service{{
			Name: "svc", Namespace: "ns", Addresses: []string{"10.96.0.1", "fd00::96:1"},
			Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPortName: "http"}, {ServicePort: 81, TargetPort: 7000}},
			Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "w1"}, {WorkloadUid: "w2"}, {WorkloadUid: "w3"}},
		}},
	}
}

func TestLookups(t *testing.T) {
	v, err := state.Build(snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if w := v.WorkloadByAddr(netip.MustParseAddr("::ffff:10.0.0.2")); w == nil || w.GetUid() != "w2" {
		t.Errorf("WorkloadByAddr(mapped 10.0.0.2) = %v; want w2", w)
	}
	if w := v.WorkloadByAddr(netip.MustParseAddr("10.9.9.9")); w != nil {
		t.Errorf("WorkloadByAddr(unknown) = %v; want nil", w)
	}
	if s := v.ServiceByAddr(netip.MustParseAddr("fd00::96:1")); s == nil || s.GetName() != "svc" {
		t.Errorf("ServiceByAddr(v6 VIP) = %v; want svc", s)
	}
	id, err := v.Identity(v.WorkloadByUID("w1"))
	if err != nil || id.String() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Errorf("Identity(w1) = %v, %v", id, err)
	}
	if got := len(v.LocalWorkloads("node-3")); got != 1 || v.Version() != "v7" {
		t.Errorf("LocalWorkloads(node-3) = %d, version %q; want 1, v7", got, v.Version())
	}
}

func TestPickEndpoint(t *testing.T) {
	v, err := state.Build(snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 4 {
		_, ep, err := v.PickEndpoint(netip.MustParseAddrPort("10.96.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ep.Addr.String())
	}
	// w2 is not ready; named port "http" resolves per endpoint (8080 on w1, 9090 on w3).
	want := []string{"10.0.0.1:8080", "10.0.0.3:9090", "10.0.0.1:8080", "10.0.0.3:9090"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round robin (-want +got):\n%s", diff)
	}
	_, ep, err := v.PickEndpoint(netip.MustParseAddrPort("[fd00::96:1]:81"))
	if err != nil || !ep.Addr.Addr().Is6() || ep.Addr.Port() != 7000 {
		t.Errorf("PickEndpoint(v6 VIP:81) = %v, %v; want an IPv6 endpoint on 7000", ep.Addr, err)
	}
	for _, tc := range []struct{ dst, want string }{
		{"10.96.0.1:443", "port 443 is not a service port"},
		{"10.0.0.1:80", "not a service address"},
	} {
		if _, _, err := v.PickEndpoint(netip.MustParseAddrPort(tc.dst)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PickEndpoint(%s) = %v; want %q", tc.dst, err, tc.want)
		}
	}
	s := snapshot()
	s.Workloads[0].Ready, s.Workloads[2].Ready = false, false
	v, err = state.Build(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.PickEndpoint(netip.MustParseAddrPort("10.96.0.1:80")); err == nil || !strings.Contains(err.Error(), "no ready endpoint (3 listed)") {
		t.Errorf("PickEndpoint with none ready = %v; want no ready endpoint", err)
	}
}

func TestBuildRejectsInvalid(t *testing.T) {
	s := snapshot()
	s.Workloads[0].Servers = []string{"ns/missing"}
	if _, err := state.Build(s); err == nil || !strings.Contains(err.Error(), "ns/missing") {
		t.Errorf("Build with a dangling server = %v; want an error naming it", err)
	}
}

func TestStoreSubscribe(t *testing.T) {
	v1, _ := state.Build(snapshot())
	s := state.NewStore(v1)
	var seen []string
	cancel := s.Subscribe(func(old, cur *state.View) { seen = append(seen, old.Version()+"->"+cur.Version()) })
	next := snapshot()
	next.Version = "v8"
	v2, err := state.Build(next)
	if err != nil {
		t.Fatal(err)
	}
	s.Swap(v2)
	cancel()
	s.Swap(v1)
	if diff := cmp.Diff([]string{"v7->v8"}, seen); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
	if s.Load() != v1 {
		t.Error("Load after the last Swap is not the last view")
	}
}

func TestTrustBundle(t *testing.T) {
	c := catest.New(t, "cluster.local")
	s := snapshot()
	s.TrustBundle = pemOf(t, c.Bundle())
	v, err := state.Build(s)
	if err != nil {
		t.Fatal(err)
	}
	fallback := catest.New(t, "cluster.local").Bundle()
	store := state.NewStore(nil)
	src := state.BundleSource(store, fallback)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(fallback) {
		t.Errorf("before any config the source serves %v, %v; want the fallback", b, err)
	}
	store.Swap(v)
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(c.Bundle()) {
		t.Errorf("with a config the source serves %v, %v; want the pushed bundle", b, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.local")); err == nil {
		t.Error("the source served a bundle for another trust domain")
	}
	s.TrustBundle = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
	if _, err := state.Build(s); err == nil || !strings.Contains(err.Error(), "trust bundle") {
		t.Errorf("Build with a broken bundle = %v; want a trust bundle error", err)
	}
}

func pemOf(t testing.TB, b *x509bundle.Bundle) string {
	t.Helper()
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}
