package translate_test

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/controller/translate"
)

// Scale of the benchmark cluster: the 10,000 pods in 500 namespaces over 100 nodes.
const (
	benchNamespaces   = 500
	benchPodsPerNS    = 20
	benchNodes        = 100
	benchServicesPerN = 4 // each backed by benchPodsPerNS/benchServicesPerN pods
)

// largeInput builds a cluster of 10,000 pods in 500 namespaces (every tenth namespace outside
// the mesh, every fifth with a waypoint) on 100 nodes: 2,000 Services with EndpointSlices,
// 1,000 Servers (one per app, one namespace-wide metrics port), 1,500 AuthorizationPolicies
// (Server-, Namespace- and HTTPRoute-targeted) with their authentications.
func largeInput(tb testing.TB) *translate.Input {
	tb.Helper()
	in := &translate.Input{}
	ip := func(i int) string { return fmt.Sprintf("10.%d.%d.%d", 1+i/65536, i/256%256, i%256) }
	podIdx := 0
	for n := range benchNamespaces {
		ns := fmt.Sprintf("ns-%03d", n)
		labels := map[string]string{}
		if n%10 != 9 {
			labels[translate.LabelDataplaneMode] = translate.DataplaneModeAmbient
		}
		if n%5 == 0 {
			labels[translate.LabelUseWaypoint] = "waypoint"
			in.Gateways = append(in.Gateways, gatewayv1.Gateway{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "waypoint"},
				Spec:       gatewayv1.GatewaySpec{GatewayClassName: translate.WaypointClassName},
				Status:     gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{Value: fmt.Sprintf("10.200.%d.%d", n/256, n%256)}}},
			})
		}
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}})

		perSvc := benchPodsPerNS / benchServicesPerN
		for s := range benchServicesPerN {
			app := fmt.Sprintf("app-%d", s)
			svc := corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
				Spec: corev1.ServiceSpec{
					ClusterIP: fmt.Sprintf("10.96.%d.%d", (n*benchServicesPerN+s)/256, (n*benchServicesPerN+s)%256),
					Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
				},
			}
			svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
			in.Services = append(in.Services, svc)
			es := discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: app}},
			}
			for range perSvc {
				name := fmt.Sprintf("%s-%d", app, podIdx)
				p := corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("uid-%06d", podIdx)), Labels: map[string]string{"app": app}},
					Spec: corev1.PodSpec{
						NodeName:           fmt.Sprintf("node-%02d", podIdx%benchNodes),
						ServiceAccountName: app,
						Containers: []corev1.Container{{
							Name:           "app",
							Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("http")}}},
						}},
					},
					Status: corev1.PodStatus{
						Phase:      corev1.PodRunning,
						PodIPs:     []corev1.PodIP{{IP: ip(podIdx)}},
						Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
					},
				}
				in.Pods = append(in.Pods, p)
				es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
					Addresses: []string{ip(podIdx)},
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name, UID: p.UID},
				})
				podIdx++
			}
			in.EndpointSlices = append(in.EndpointSlices, es)
		}

		in.Servers = append(in.Servers,
			server(ns, "app-0", map[string]string{"app": "app-0"}, intstr.FromString("http")),
			server(ns, "metrics", nil, intstr.FromInt32(9090)),
		)
		in.MeshTLSAuthentications = append(in.MeshTLSAuthentications,
			meshTLS(ns, "callers", fmt.Sprintf("spiffe://cluster.local/ns/ns-%03d/*", (n+1)%benchNamespaces)))
		in.NetworkAuthentications = append(in.NetworkAuthentications,
			networkAuthn(ns, "cluster", policyv1alpha1.Network{CIDR: "10.0.0.0/8", Except: []string{"10.250.0.0/16"}}))
		in.HTTPRoutes = append(in.HTTPRoutes, gatewayv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app-0"},
			Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{
				Group: ptr(gatewayv1.Group(policyv1alpha1.GroupName)), Kind: ptr(gatewayv1.Kind("Server")), Name: "app-0",
			}}}},
		})
		in.AuthorizationPolicies = append(in.AuthorizationPolicies,
			policy(ns, "callers", serverTarget("app-0"), meshTLSRef("callers")),
			policy(ns, "scrape", policyv1alpha1.TargetReference{Kind: "Namespace", Name: ns}, networkRef("cluster")),
			policy(ns, "route", policyv1alpha1.TargetReference{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Name: "app-0"}, meshTLSRef("callers")),
		)
	}
	return in
}

func ptr[T any](v T) *T { return &v }

// BenchmarkTranslate10kPods measures one full translation of the scale.
//
//	go test ./controller/translate -run '^$' -bench . -benchmem
func BenchmarkTranslate10kPods(b *testing.B) {
	in := largeInput(b)
	b.ReportAllocs()
	for b.Loop() {
		translate.Translate(in)
	}
}

// TestLargeInputConsumable checks the benchmark's cluster once: a valid, compilable snapshot
// for a sample of nodes, and no warnings.
func TestLargeInputConsumable(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	out := translate.Translate(largeInput(t))
	if got, want := len(out.Mesh.GetWorkloads()), benchNamespaces*benchPodsPerNS; got != want {
		t.Errorf("%d workloads, want %d (non-members back Services, so all are included)", got, want)
	}
	if got, want := len(out.Mesh.GetServers()), 2*benchNamespaces; got != want {
		t.Errorf("%d servers, want %d", got, want)
	}
	if len(out.Warnings) > 0 {
		t.Errorf("warnings: %q", out.Warnings[:min(5, len(out.Warnings))])
	}
	for ref, conds := range out.Status {
		// Route-targeted policies without a waypoint are refused (fail closed) by design.
		if conds[0].Status != metav1.ConditionTrue && conds[0].Reason != translate.ReasonNoWaypoint {
			t.Fatalf("%s: %+v", ref, conds[0])
		}
	}
	checkConsumable(t, out.Mesh)
}
