//go:build linux

package svcproxy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

func svcObj(ns, name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports},
	}
	if clusterIP != "" {
		s.Spec.ClusterIPs = []string{clusterIP}
	}
	return s
}

func sliceObj(ns, name, svc string, typ discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: typ,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func ep(ready, terminating *bool, addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready, Terminating: terminating}}
}

func epPort(name string, port int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

func aps(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, x := range s {
		out = append(out, netip.MustParseAddrPort(x))
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

// view is a comparable rendering of a service.
type view struct {
	ClusterIPs []netip.Addr
	Headless   bool
	External   bool
	Ports      map[string]uint16
	Endpoints  map[string][]netip.AddrPort
	ReadyIPs   []netip.Addr
}

func render(s *service) view {
	v := view{ClusterIPs: s.clusterIPs, Headless: s.headless, External: s.externalName, Endpoints: s.endpoints, ReadyIPs: s.readyIPs, Ports: map[string]uint16{}}
	for _, p := range s.ports {
		v.Ports[p.name] = p.port
	}
	return v
}

func TestBuildSnapshot(t *testing.T) {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	web := svcObj("ns", "web", "10.0.0.5",
		corev1.ServicePort{Name: "http", Port: 80, Protocol: tcp},
		corev1.ServicePort{Name: "admin", Port: 81},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: udp})
	tests := []struct {
		name         string
		svcs         []*corev1.Service
		slices       []*discoveryv1.EndpointSlice
		want         map[string]view
		wantProblems int
	}{{
		name: "named ports resolve per slice; unready and terminating endpoints skipped; sorted and deduplicated",
		svcs: []*corev1.Service{web},
		slices: []*discoveryv1.EndpointSlice{
			sliceObj("ns", "web-a", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{epPort("http", 8080, tcp), epPort("admin", 9090, tcp), epPort("dns", 5353, udp)},
				ep(ptr.To(true), nil, "10.1.0.3"),
				ep(nil, nil, "10.1.0.2"), // unset Ready counts as ready
				ep(ptr.To(false), nil, "10.1.0.9"),
				ep(ptr.To(true), ptr.To(true), "10.1.0.8")),
			// Another slice of the same Service whose pods name the port differently.
			sliceObj("ns", "web-b", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{epPort("http", 8000, tcp)},
				ep(ptr.To(true), ptr.To(false), "10.1.0.4"),
				ep(ptr.To(true), nil, "10.1.0.4")),
			// Not this Service's, or not IP slices.
			sliceObj("other", "web-c", "web", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{epPort("http", 1, tcp)}, ep(nil, nil, "10.9.9.9")),
			sliceObj("ns", "web-d", "web", discoveryv1.AddressTypeFQDN, []discoveryv1.EndpointPort{epPort("http", 1, tcp)}, ep(nil, nil, "example.com")),
		},
		want: map[string]view{"ns/web": {
			ClusterIPs: addrs("10.0.0.5"),
			Ports:      map[string]uint16{"http": 80, "admin": 81},
			Endpoints: map[string][]netip.AddrPort{
				"http":  aps("10.1.0.2:8080", "10.1.0.3:8080", "10.1.0.4:8000"),
				"admin": aps("10.1.0.2:9090", "10.1.0.3:9090"),
			},
			ReadyIPs: addrs("10.1.0.2", "10.1.0.3", "10.1.0.4"),
		}},
		wantProblems: 1, // the UDP port
	}, {
		name: "headless and ExternalName services, and an unnamed port",
		svcs: []*corev1.Service{
			svcObj("ns", "db", corev1.ClusterIPNone, corev1.ServicePort{Port: 5432}),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
		},
		slices: []*discoveryv1.EndpointSlice{
			sliceObj("ns", "db-1", "db", discoveryv1.AddressTypeIPv6, []discoveryv1.EndpointPort{{Port: ptr.To[int32](5432)}}, ep(nil, nil, "fd00::2")),
			sliceObj("ns", "db-2", "db", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr.To[int32](5432)}}, ep(nil, nil, "10.1.0.7")),
			sliceObj("ns", "ext-1", "ext", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr.To[int32](1)}}, ep(nil, nil, "10.1.0.1")),
		},
		want: map[string]view{
			"ns/db": {
				Headless:  true,
				Ports:     map[string]uint16{"": 5432},
				Endpoints: map[string][]netip.AddrPort{"": aps("10.1.0.7:5432", "[fd00::2]:5432")},
				ReadyIPs:  addrs("10.1.0.7", "fd00::2"),
			},
			"ns/ext": {External: true, Ports: map[string]uint16{}, Endpoints: map[string][]netip.AddrPort{}},
		},
	}, {
		name: "bad addresses are reported and skipped",
		svcs: []*corev1.Service{svcObj("ns", "bad", "10.0.0.300", corev1.ServicePort{Name: "p", Port: 80})},
		slices: []*discoveryv1.EndpointSlice{
			sliceObj("ns", "bad-1", "bad", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{epPort("p", 80, tcp)}, ep(nil, nil, "10.1.0.1", "not-an-ip")),
		},
		want: map[string]view{"ns/bad": {
			Ports:     map[string]uint16{"p": 80},
			Endpoints: map[string][]netip.AddrPort{"p": aps("10.1.0.1:80")},
			ReadyIPs:  addrs("10.1.0.1"),
		}},
		wantProblems: 2,
	}, {
		name: "dual-stack ClusterIPs",
		svcs: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ds"},
			Spec:       corev1.ServiceSpec{ClusterIP: "10.0.0.7", ClusterIPs: []string{"10.0.0.7", "fd00:10::7"}, Ports: []corev1.ServicePort{{Port: 80}}},
		}},
		want: map[string]view{"ns/ds": {
			ClusterIPs: addrs("10.0.0.7", "fd00:10::7"),
			Ports:      map[string]uint16{"": 80},
			Endpoints:  map[string][]netip.AddrPort{},
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, problems := buildSnapshot(tt.svcs, tt.slices)
			got := map[string]view{}
			for k, s := range snap.services {
				got[k.String()] = render(s)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("services (-want +got):\n%s", diff)
			}
			if len(problems) != tt.wantProblems {
				t.Errorf("problems = %q, want %d of them", problems, tt.wantProblems)
			}
		})
	}
}

func TestSnapshotEndpointsFor(t *testing.T) {
	snap, _ := buildSnapshot(
		[]*corev1.Service{svcObj("ns", "web", "10.0.0.5", corev1.ServicePort{Name: "http", Port: 80})},
		[]*discoveryv1.EndpointSlice{sliceObj("ns", "web-a", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{epPort("http", 8080, corev1.ProtocolTCP)}, ep(nil, nil, "10.1.0.2"))})
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	for _, tt := range []struct {
		t    target
		want []netip.AddrPort
	}{
		{target{web, "http"}, aps("10.1.0.2:8080")},
		{target{web, "other"}, nil},
		{target{types.NamespacedName{Namespace: "ns", Name: "gone"}, "http"}, nil},
	} {
		if got := snap.endpointsFor(tt.t); !cmp.Equal(got, tt.want, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })) {
			t.Errorf("endpointsFor(%v) = %v, want %v", tt.t, got, tt.want)
		}
	}
}
