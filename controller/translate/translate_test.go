package translate_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/translate"
)

// Builders for compact table tests. Each returns a value the caller may modify.

func namespace(name string, labels, annotations map[string]string) corev1.Namespace {
	return corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations}}
}

func ambientNamespace(name string) corev1.Namespace {
	return namespace(name, map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient}, nil)
}

func pod(ns, name, node, ip string, labels map[string]string, ports ...corev1.ContainerPort) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Ports: ports}}},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIPs:     []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func cport(name string, n int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: n}
}

func server(ns, name string, sel map[string]string, port intstr.IntOrString) policyv1alpha1.Server {
	return policyv1alpha1.Server{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:       policyv1alpha1.ServerSpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, Port: port},
	}
}

func policy(ns, name string, target policyv1alpha1.TargetReference, refs ...policyv1alpha1.AuthenticationReference) policyv1alpha1.AuthorizationPolicy {
	return policyv1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:       policyv1alpha1.AuthorizationPolicySpec{TargetRef: target, RequiredAuthenticationRefs: refs},
	}
}

func serverTarget(name string) policyv1alpha1.TargetReference {
	return policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: name}
}

func meshTLSRef(name string) policyv1alpha1.AuthenticationReference {
	return policyv1alpha1.AuthenticationReference{Group: policyv1alpha1.GroupName, Kind: "MeshTLSAuthentication", Name: name}
}

func networkRef(name string) policyv1alpha1.AuthenticationReference {
	return policyv1alpha1.AuthenticationReference{Group: policyv1alpha1.GroupName, Kind: "NetworkAuthentication", Name: name}
}

func meshTLS(ns, name string, ids ...string) policyv1alpha1.MeshTLSAuthentication {
	return policyv1alpha1.MeshTLSAuthentication{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       policyv1alpha1.MeshTLSAuthenticationSpec{Identities: ids},
	}
}

func networkAuthn(ns, name string, nets ...policyv1alpha1.Network) policyv1alpha1.NetworkAuthentication {
	return policyv1alpha1.NetworkAuthentication{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       policyv1alpha1.NetworkAuthenticationSpec{Networks: nets},
	}
}

func service(ns, name, vip string, ports ...corev1.ServicePort) corev1.Service {
	return corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip}, Ports: ports},
	}
}

func endpointSlice(svc *corev1.Service, pods ...*corev1.Pod) discoveryv1.EndpointSlice {
	es := discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.Status.PodIPs[0].IP},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	return es
}

// workload finds a workload by namespace/name, or nil.
func workload(s *nodeconfig.Snapshot, ns, name string) *nodeconfig.Workload {
	for _, w := range s.GetWorkloads() {
		if w.GetNamespace() == ns && w.GetName() == name {
			return w
		}
	}
	return nil
}

func snapshotServer(s *nodeconfig.Snapshot, ns, name string) *nodeconfig.Server {
	for _, sv := range s.GetServers() {
		if sv.GetNamespace() == ns && sv.GetName() == name {
			return sv
		}
	}
	return nil
}

// condition returns "Status Reason: Message" of the condition typ of ref, or "" if absent.
func condition(out *translate.Output, ref translate.ObjectRef, typ string) string {
	for _, c := range out.Status[ref] {
		if c.Type == typ {
			return fmt.Sprintf("%s %s: %s", c.Status, c.Reason, c.Message)
		}
	}
	return ""
}

func mustTranslate(tb testing.TB, in *translate.Input) *translate.Output {
	tb.Helper()
	out := translate.Translate(in)
	checkConsumable(tb, out.Mesh)
	return out
}

func TestMembership(t *testing.T) {
	t.Parallel()
	none := map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeNone}
	ambient := map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient}
	tests := []struct {
		name        string
		ns          corev1.Namespace
		podLabels   map[string]string
		behindSvc   bool
		wantPresent bool
		wantTunnel  nodeconfig.TunnelProtocol
	}{
		{"ambient namespace", ambientNamespace("ns"), nil, false, true, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE},
		{"pod opts out", ambientNamespace("ns"), none, false, false, 0},
		{"pod opts out behind a service", ambientNamespace("ns"), none, true, true, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_NONE},
		{"pod opts in", namespace("ns", nil, nil), ambient, false, true, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE},
		{"plain namespace", namespace("ns", nil, nil), nil, false, false, 0},
		{"plain namespace behind a service", namespace("ns", nil, nil), nil, true, true, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_NONE},
		{"namespace label other value", namespace("ns", map[string]string{translate.LabelDataplaneMode: "sidecar"}, nil), nil, false, false, 0},
		{"unknown namespace", namespace("other", nil, nil), nil, false, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := pod("ns", "p", "node-1", "10.0.0.1", tt.podLabels)
			in := &translate.Input{Namespaces: []corev1.Namespace{tt.ns}, Pods: []corev1.Pod{p}}
			if tt.behindSvc {
				svc := service("ns", "svc", "10.96.0.1", corev1.ServicePort{Port: 80})
				in.Services = []corev1.Service{svc}
				in.EndpointSlices = []discoveryv1.EndpointSlice{endpointSlice(&svc, &p)}
			}
			w := workload(mustTranslate(t, in).Mesh, "ns", "p")
			if got := w != nil; got != tt.wantPresent {
				t.Fatalf("workload present = %v, want %v", got, tt.wantPresent)
			}
			if w != nil && w.GetTunnelProtocol() != tt.wantTunnel {
				t.Errorf("tunnel protocol = %v, want %v", w.GetTunnelProtocol(), tt.wantTunnel)
			}
		})
	}
}

// TestPodLeavingMesh translates the same cluster before and after a pod leaves the mesh: the
// pod, and the Server reference to it, disappear; nothing else changes.
func TestPodLeavingMesh(t *testing.T) {
	t.Parallel()
	for _, leave := range []struct {
		name  string
		apply func(in *translate.Input)
	}{
		{"namespace label removed", func(in *translate.Input) { in.Namespaces[0].Labels = nil }},
		{"pod labelled none", func(in *translate.Input) {
			in.Pods[0].Labels[translate.LabelDataplaneMode] = translate.DataplaneModeNone
		}},
	} {
		t.Run(leave.name, func(t *testing.T) {
			t.Parallel()
			in := &translate.Input{
				Namespaces: []corev1.Namespace{ambientNamespace("ns")},
				Pods:       []corev1.Pod{pod("ns", "b", "node-1", "10.0.0.2", map[string]string{"app": "b"}, cport("http", 8080))},
				Servers:    []policyv1alpha1.Server{server("ns", "b", map[string]string{"app": "b"}, intstr.FromInt32(8080))},
			}
			before := mustTranslate(t, in)
			if w := workload(before.Mesh, "ns", "b"); w == nil || !slices.Equal(w.GetServers(), []string{"ns/b"}) {
				t.Fatalf("before: workload = %v, want one with servers [ns/b]", w)
			}
			leave.apply(in)
			after := mustTranslate(t, in)
			if w := workload(after.Mesh, "ns", "b"); w != nil {
				t.Errorf("after: workload %v still in the snapshot", w)
			}
			if got := push.Relevant(after.Mesh, "node-1").GetServers(); len(got) != 0 {
				t.Errorf("after: Relevant(node-1).Servers = %v, want none", got)
			}
			ref := translate.ObjectRef{Kind: translate.KindServer, Namespace: "ns", Name: "b"}
			if got, want := condition(after, ref, "ResolvedRefs"), "True ResolvedRefs: selects 0 meshed pods"; got != want {
				t.Errorf("Server ResolvedRefs = %q, want %q", got, want)
			}
			if before.Mesh.GetVersion() == after.Mesh.GetVersion() {
				t.Errorf("version unchanged (%s) although the content changed", after.Mesh.GetVersion())
			}
		})
	}
}

func TestDefaultInboundPolicy(t *testing.T) {
	t.Parallel()
	const key = translate.AnnotationDefaultInboundPolicy
	tests := []struct {
		name        string
		nsAnn       map[string]string
		podAnn      map[string]string
		want        nodeconfig.DefaultPolicy
		wantWarning string
	}{
		{"none", nil, nil, nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED, ""},
		{"namespace", map[string]string{key: "deny"}, nil, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, ""},
		{"pod over namespace", map[string]string{key: "deny"}, map[string]string{key: "audit"}, nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT, ""},
		{"bad pod value fails closed", map[string]string{key: "all-unauthenticated"}, map[string]string{key: "allow"}, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, `pod ns/p: annotation warren.dev/default-inbound-policy: unknown default policy "allow"`},
		{"bad namespace value fails closed", map[string]string{key: ""}, nil, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, `namespace ns: annotation warren.dev/default-inbound-policy: unknown default policy ""`},
		{"good pod value over bad namespace", map[string]string{key: "x"}, map[string]string{key: "cluster-unauthenticated"}, nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED, "namespace ns:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns := ambientNamespace("ns")
			ns.Annotations = tt.nsAnn
			p := pod("ns", "p", "node-1", "10.0.0.1", nil)
			p.Annotations = tt.podAnn
			out := mustTranslate(t, &translate.Input{Namespaces: []corev1.Namespace{ns}, Pods: []corev1.Pod{p}})
			if got := workload(out.Mesh, "ns", "p").GetDefaultInboundPolicy(); got != tt.want {
				t.Errorf("default inbound policy = %v, want %v", got, tt.want)
			}
			switch {
			case tt.wantWarning == "" && len(out.Warnings) > 0:
				t.Errorf("warnings = %q, want none", out.Warnings)
			case tt.wantWarning != "" && !slices.ContainsFunc(out.Warnings, func(w string) bool { return strings.HasPrefix(w, tt.wantWarning) }):
				t.Errorf("warnings = %q, want one starting with %q", out.Warnings, tt.wantWarning)
			}
		})
	}
}

func TestWorkloadPortsAndProbes(t *testing.T) {
	t.Parallel()
	always := corev1.ContainerRestartPolicyAlways
	p := pod("ns", "p", "node-1", "10.0.0.1", nil)
	p.Spec.Containers = []corev1.Container{{
		Name:  "app",
		Ports: []corev1.ContainerPort{cport("http", 8080), cport("http", 8080), {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, cport("admin", 9901)},
		LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("admin")},
		}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
			TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("not-a-port")},
		}},
		StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
	}}
	p.Spec.InitContainers = []corev1.Container{
		{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{cport("sidecar", 15000)},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 15001}}}},
		{Name: "init", Ports: []corev1.ContainerPort{cport("init", 7000)}},
	}
	p.Spec.ServiceAccountName = "app"
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "::ffff:10.0.0.1"}, {IP: "fd00::1"}, {IP: "bogus"}}
	out := mustTranslate(t, &translate.Input{Namespaces: []corev1.Namespace{ambientNamespace("ns")}, Pods: []corev1.Pod{p}})

	want := &nodeconfig.Workload{
		Uid: "uid-ns-p", Name: "p", Namespace: "ns", ServiceAccount: "app", Node: "node-1",
		Addresses: []string{"10.0.0.1", "fd00::1"},
		Ports: []*nodeconfig.WorkloadPort{
			{Name: "http", Port: 8080}, {Name: "admin", Port: 9901}, {Name: "sidecar", Port: 15000},
		},
		TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
		Ready:          true,
		ProbePorts:     []uint32{9901, 15001},
	}
	if diff := cmp.Diff(want, workload(out.Mesh, "ns", "p"), protocmp.Transform()); diff != "" {
		t.Errorf("workload (-want +got):\n%s", diff)
	}
	if want := []string{`pod ns/p: address "bogus" is not an IP; ignored`}; !slices.Equal(out.Warnings, want) {
		t.Errorf("warnings = %q, want %q", out.Warnings, want)
	}
}

func TestPodLifecycle(t *testing.T) {
	t.Parallel()
	now := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	tests := []struct {
		name        string
		mutate      func(*corev1.Pod)
		wantPresent bool
		wantReady   bool
	}{
		{"running and ready", func(*corev1.Pod) {}, true, true},
		{"not ready", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }, true, false},
		{"terminating", func(p *corev1.Pod) { p.DeletionTimestamp = &now }, true, false},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, false, false},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }, false, false},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, false, false},
		{"no IP yet", func(p *corev1.Pod) { p.Status.PodIPs = nil }, false, false},
		{"only the legacy podIP", func(p *corev1.Pod) { p.Status.PodIPs, p.Status.PodIP = nil, "10.0.0.1" }, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := pod("ns", "p", "node-1", "10.0.0.1", nil)
			tt.mutate(&p)
			out := mustTranslate(t, &translate.Input{Namespaces: []corev1.Namespace{ambientNamespace("ns")}, Pods: []corev1.Pod{p}})
			w := workload(out.Mesh, "ns", "p")
			if got := w != nil; got != tt.wantPresent {
				t.Fatalf("workload present = %v, want %v", got, tt.wantPresent)
			}
			if w.GetReady() != tt.wantReady {
				t.Errorf("ready = %v, want %v", w.GetReady(), tt.wantReady)
			}
		})
	}
}

func TestServicePorts(t *testing.T) {
	t.Parallel()
	str := func(s string) *string { return &s }
	svc := service("ns", "s", "10.96.0.1",
		corev1.ServicePort{Port: 80},
		corev1.ServicePort{Port: 81, TargetPort: intstr.FromInt32(8081), AppProtocol: str("http")},
		corev1.ServicePort{Port: 82, TargetPort: intstr.FromString("web"), AppProtocol: str("kubernetes.io/h2c")},
		corev1.ServicePort{Port: 83, AppProtocol: str("grpc")},
		corev1.ServicePort{Port: 84, AppProtocol: str("kubernetes.io/ws")},
		corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP},
		corev1.ServicePort{Port: 85, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("")},
	)
	svc.Labels = map[string]string{"warren.dev/use-waypoint": "none"}
	out := mustTranslate(t, &translate.Input{Services: []corev1.Service{
		svc,
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example"}},
	}})
	want := []*nodeconfig.Service{{
		Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", Addresses: []string{"10.96.0.1"},
		Ports: []*nodeconfig.ServicePort{
			{ServicePort: 80, TargetPort: 80},
			{ServicePort: 81, TargetPort: 8081, AppProtocol: nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1},
			{ServicePort: 82, TargetPortName: "web", AppProtocol: nodeconfig.AppProtocol_APP_PROTOCOL_HTTP2},
			{ServicePort: 83, TargetPort: 83, AppProtocol: nodeconfig.AppProtocol_APP_PROTOCOL_GRPC},
			{ServicePort: 84, TargetPort: 84},
			{ServicePort: 85, TargetPort: 85},
		},
		Endpoints: []*nodeconfig.Endpoint{},
	}}
	if diff := cmp.Diff(want, out.Mesh.GetServices(), protocmp.Transform()); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
}

func TestServerConflicts(t *testing.T) {
	t.Parallel()
	at := func(s policyv1alpha1.Server, day int) policyv1alpha1.Server {
		s.CreationTimestamp = metav1.NewTime(time.Date(2025, 1, day, 0, 0, 0, 0, time.UTC))
		return s
	}
	app := map[string]string{"app": "a"}
	tests := []struct {
		name         string
		servers      []policyv1alpha1.Server
		wantAccepted []string // names of the accepted Servers
		wantConflict string   // the condition of the rejected one, if any
	}{
		{
			name:         "same number, older wins",
			servers:      []policyv1alpha1.Server{at(server("ns", "new", app, intstr.FromInt32(8080)), 2), at(server("ns", "old", app, intstr.FromInt32(8080)), 1)},
			wantAccepted: []string{"old"},
			wantConflict: "new: False Conflict: port 8080 of pod ns/p is already covered by Server ns/old, which is older; this Server is ignored until the overlap is removed",
		},
		{
			name:         "same age, name decides",
			servers:      []policyv1alpha1.Server{server("ns", "b", app, intstr.FromInt32(8080)), server("ns", "a", app, intstr.FromInt32(8080))},
			wantAccepted: []string{"a"},
			wantConflict: "b: False Conflict: port 8080 of pod ns/p is already covered by Server ns/a, which is older; this Server is ignored until the overlap is removed",
		},
		{
			name:         "name resolving to a covered number",
			servers:      []policyv1alpha1.Server{at(server("ns", "by-number", app, intstr.FromInt32(8080)), 1), at(server("ns", "by-name", app, intstr.FromString("http")), 2)},
			wantAccepted: []string{"by-number"},
			wantConflict: "by-name: False Conflict: port 8080 of pod ns/p is already covered by Server ns/by-number, which is older; this Server is ignored until the overlap is removed",
		},
		{
			name:         "same name",
			servers:      []policyv1alpha1.Server{at(server("ns", "one", app, intstr.FromString("http")), 1), at(server("ns", "two", nil, intstr.FromString("http")), 2)},
			wantAccepted: []string{"one"},
			wantConflict: "two: False Conflict: port http of pod ns/p is already covered by Server ns/one, which is older; this Server is ignored until the overlap is removed",
		},
		{
			name:         "different ports",
			servers:      []policyv1alpha1.Server{server("ns", "http", app, intstr.FromString("http")), server("ns", "admin", app, intstr.FromInt32(9901))},
			wantAccepted: []string{"admin", "http"},
		},
		{
			name:         "different pods",
			servers:      []policyv1alpha1.Server{server("ns", "a", app, intstr.FromInt32(8080)), server("ns", "b", map[string]string{"app": "b"}, intstr.FromInt32(8080))},
			wantAccepted: []string{"a", "b"},
		},
		{
			name:         "same port in another namespace",
			servers:      []policyv1alpha1.Server{server("ns", "a", app, intstr.FromInt32(8080)), server("other", "a", app, intstr.FromInt32(8080))},
			wantAccepted: []string{"a", "a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := &translate.Input{
				Namespaces: []corev1.Namespace{ambientNamespace("ns"), ambientNamespace("other")},
				Pods: []corev1.Pod{
					pod("ns", "p", "node-1", "10.0.0.1", app, cport("http", 8080), cport("admin", 9901)),
					pod("ns", "q", "node-1", "10.0.0.2", map[string]string{"app": "b"}, cport("http", 8080)),
					pod("other", "p", "node-1", "10.0.0.3", app, cport("http", 8080)),
				},
				Servers: tt.servers,
			}
			out := mustTranslate(t, in)
			var accepted []string
			for _, s := range out.Mesh.GetServers() {
				accepted = append(accepted, s.GetName())
			}
			if diff := cmp.Diff(tt.wantAccepted, accepted); diff != "" {
				t.Errorf("accepted servers (-want +got):\n%s", diff)
			}
			var conflicts []string
			for ref, conds := range out.Status {
				if conds[0].Reason == translate.ReasonConflict {
					conflicts = append(conflicts, ref.Name+": "+condition(out, ref, "Accepted"))
				}
			}
			if got := strings.Join(conflicts, "\n"); got != tt.wantConflict {
				t.Errorf("conflicts = %q, want %q", got, tt.wantConflict)
			}
		})
	}
}

func TestServerFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		mutate       func(*policyv1alpha1.Server)
		wantPort     any // uint32 number, string name, or nil when dropped
		wantProto    nodeconfig.AppProtocol
		wantAccess   nodeconfig.DefaultPolicy
		wantAccepted string
	}{
		{"defaults", func(*policyv1alpha1.Server) {}, uint32(8080), 0, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, "True Accepted: accepted"},
		{"named port", func(s *policyv1alpha1.Server) { s.Spec.Port = intstr.FromString("http") }, "http", 0, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, "True Accepted: accepted"},
		{"opaque, audit", func(s *policyv1alpha1.Server) {
			s.Spec.ProxyProtocol, s.Spec.AccessPolicy = policyv1alpha1.ProxyProtocolOpaque, policyv1alpha1.AccessAudit
		}, uint32(8080), nodeconfig.AppProtocol_APP_PROTOCOL_TCP, nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT, "True Accepted: accepted"},
		{"TLS", func(s *policyv1alpha1.Server) { s.Spec.ProxyProtocol = policyv1alpha1.ProxyProtocolTLS }, uint32(8080), nodeconfig.AppProtocol_APP_PROTOCOL_TLS, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, "True Accepted: accepted"},
		{"unknown access policy denies", func(s *policyv1alpha1.Server) { s.Spec.AccessPolicy = "allow" }, uint32(8080), 0, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY,
			`False Invalid: accessPolicy: unknown default policy "allow" (want all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit); enforcing deny instead`},
		{"unknown proxy protocol detects", func(s *policyv1alpha1.Server) { s.Spec.ProxyProtocol = "HTTP/3" }, uint32(8080), 0, nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY,
			`False Invalid: proxyProtocol "HTTP/3" is unknown (want unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS); detecting the protocol instead`},
		{"port zero", func(s *policyv1alpha1.Server) { s.Spec.Port = intstr.FromInt32(0) }, nil, 0, 0,
			`False Invalid: port "0": want a number from 1 to 65535 or a container port name`},
		{"bad selector", func(s *policyv1alpha1.Server) {
			s.Spec.PodSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}
		}, nil, 0, 0, `False Invalid: podSelector: values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := server("ns", "s", nil, intstr.FromInt32(8080))
			tt.mutate(&s)
			out := mustTranslate(t, &translate.Input{Servers: []policyv1alpha1.Server{s}})
			ref := translate.ObjectRef{Kind: translate.KindServer, Namespace: "ns", Name: "s"}
			if got := condition(out, ref, "Accepted"); got != tt.wantAccepted {
				t.Errorf("Accepted = %q, want %q", got, tt.wantAccepted)
			}
			got := snapshotServer(out.Mesh, "ns", "s")
			if tt.wantPort == nil {
				if got != nil {
					t.Errorf("server = %v, want it dropped", got)
				}
				return
			}
			want := &nodeconfig.Server{Name: "s", Namespace: "ns", ProxyProtocol: tt.wantProto, AccessPolicy: tt.wantAccess}
			switch p := tt.wantPort.(type) {
			case uint32:
				want.Port = &nodeconfig.Server_PortNumber{PortNumber: p}
			case string:
				want.Port = &nodeconfig.Server_PortName{PortName: p}
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("server (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAuthorizationPolicyStatus(t *testing.T) {
	t.Parallel()
	base := func() *translate.Input {
		return &translate.Input{
			Namespaces: []corev1.Namespace{ambientNamespace("ns")},
			Pods:       []corev1.Pod{pod("ns", "b", "node-1", "10.0.0.2", map[string]string{"app": "b"}, cport("http", 8080))},
			Servers:    []policyv1alpha1.Server{server("ns", "b", map[string]string{"app": "b"}, intstr.FromInt32(8080))},
			MeshTLSAuthentications: []policyv1alpha1.MeshTLSAuthentication{
				meshTLS("ns", "a", "spiffe://cluster.local/ns/ns/sa/a"),
				meshTLS("other", "remote", "spiffe://cluster.local/ns/other/sa/x"),
			},
			NetworkAuthentications: []policyv1alpha1.NetworkAuthentication{
				networkAuthn("ns", "net", policyv1alpha1.Network{CIDR: "10.0.0.0/8"}),
			},
		}
	}
	crossNS := meshTLSRef("remote")
	crossNS.Namespace = "other"
	sa := policyv1alpha1.AuthenticationReference{Kind: "ServiceAccount", Name: "a"}
	tests := []struct {
		name         string
		policy       policyv1alpha1.AuthorizationPolicy
		wantAccepted string
		wantResolved string
		wantCompiled *nodeconfig.Authorization // nil: dropped
	}{
		{
			name:         "mesh tls and network",
			policy:       policy("ns", "p", serverTarget("b"), meshTLSRef("a"), networkRef("net")),
			wantAccepted: "True Accepted: applies to Server ns/b",
			wantResolved: "True ResolvedRefs: all references resolved",
			wantCompiled: &nodeconfig.Authorization{
				Name: "p", Namespace: "ns", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/ns/sa/a"}},
				Networks:           []*nodeconfig.Network{{Cidr: "10.0.0.0/8"}},
				AuthenticationRefs: []string{"MeshTLSAuthentication/ns/a", "NetworkAuthentication/ns/net"},
			},
		},
		{
			name:         "no authentications allows everyone",
			policy:       policy("ns", "p", serverTarget("b")),
			wantAccepted: "True Accepted: applies to Server ns/b",
			wantResolved: "True ResolvedRefs: all references resolved",
			wantCompiled: &nodeconfig.Authorization{Name: "p", Namespace: "ns", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER},
		},
		{
			name:         "service account",
			policy:       policy("ns", "p", serverTarget("b"), sa),
			wantAccepted: "True Accepted: applies to Server ns/b",
			wantResolved: "True ResolvedRefs: all references resolved",
			wantCompiled: &nodeconfig.Authorization{
				Name: "p", Namespace: "ns", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/ns/sa/a"}},
				AuthenticationRefs: []string{"ServiceAccount/ns/a"},
			},
		},
		{
			name:         "authentication in another namespace",
			policy:       policy("ns", "p", serverTarget("b"), crossNS),
			wantAccepted: "True Accepted: applies to Server ns/b",
			wantResolved: "True ResolvedRefs: all references resolved",
			wantCompiled: &nodeconfig.Authorization{
				Name: "p", Namespace: "ns", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/other/sa/x"}},
				AuthenticationRefs: []string{"MeshTLSAuthentication/other/remote"},
			},
		},
		{
			name:         "missing mesh tls",
			policy:       policy("ns", "p", serverTarget("b"), meshTLSRef("service-a")),
			wantAccepted: "True Accepted: valid, but it allows nothing until its references resolve",
			wantResolved: "False AuthenticationNotFound: MeshTLSAuthentication ns/service-a not found",
		},
		{
			name:         "missing network",
			policy:       policy("ns", "p", serverTarget("b"), meshTLSRef("a"), networkRef("nope")),
			wantAccepted: "True Accepted: valid, but it allows nothing until its references resolve",
			wantResolved: "False AuthenticationNotFound: NetworkAuthentication ns/nope not found",
		},
		{
			name:         "missing server",
			policy:       policy("ns", "p", serverTarget("nope")),
			wantAccepted: "True Accepted: valid, but it allows nothing until its references resolve",
			wantResolved: "False TargetNotFound: Server ns/nope not found",
		},
		{
			name:         "missing http route",
			policy:       policy("ns", "p", policyv1alpha1.TargetReference{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Name: "r"}),
			wantAccepted: "True Accepted: valid, but it allows nothing until its references resolve",
			wantResolved: "False TargetNotFound: HTTPRoute ns/r not found",
		},
		{
			name:         "target in another namespace",
			policy:       policy("ns", "p", policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "b", Namespace: "other"}),
			wantAccepted: `False Invalid: targetRef namespace "other": a policy can only target objects in its own namespace "ns"; the policy allows nothing until it is fixed`,
			wantResolved: "True ResolvedRefs: all references resolved",
		},
		{
			name:         "two network authentications",
			policy:       policy("ns", "p", serverTarget("b"), networkRef("net"), networkRef("net")),
			wantAccepted: "False Invalid: at most one NetworkAuthentication may be required; list the networks in one NetworkAuthentication; the policy allows nothing until it is fixed",
			wantResolved: "True ResolvedRefs: all references resolved",
		},
		{
			name:         "unsupported authentication kind",
			policy:       policy("ns", "p", serverTarget("b"), policyv1alpha1.AuthenticationReference{Kind: "Secret", Name: "x"}),
			wantAccepted: `False Invalid: requiredAuthenticationRefs[0]: Secret in group "" is not supported: want MeshTLSAuthentication or NetworkAuthentication (policy.warren.dev), or ServiceAccount (core group); the policy allows nothing until it is fixed`,
			wantResolved: "True ResolvedRefs: all references resolved",
		},
		{
			name:         "server kind in the wrong group",
			policy:       policy("ns", "p", policyv1alpha1.TargetReference{Group: "policy.linkerd.io", Kind: "Server", Name: "b"}),
			wantAccepted: `False Invalid: targetRef Server "b" in group "policy.linkerd.io" is not supported: want Server (policy.warren.dev), HTTPRoute or GRPCRoute (gateway.networking.k8s.io), or Namespace (core group); the policy allows nothing until it is fixed`,
			wantResolved: "True ResolvedRefs: all references resolved",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := base()
			in.AuthorizationPolicies = []policyv1alpha1.AuthorizationPolicy{tt.policy}
			out := mustTranslate(t, in)
			ref := translate.ObjectRef{Kind: translate.KindAuthorizationPolicy, Namespace: "ns", Name: "p"}
			if got := condition(out, ref, "Accepted"); got != tt.wantAccepted {
				t.Errorf("Accepted = %q, want %q", got, tt.wantAccepted)
			}
			if got := condition(out, ref, "ResolvedRefs"); got != tt.wantResolved {
				t.Errorf("ResolvedRefs = %q, want %q", got, tt.wantResolved)
			}
			for _, c := range out.Status[ref] {
				if c.ObservedGeneration != 1 {
					t.Errorf("%s.ObservedGeneration = %d, want 1", c.Type, c.ObservedGeneration)
				}
			}
			var want []*nodeconfig.Authorization
			if tt.wantCompiled != nil {
				want = []*nodeconfig.Authorization{tt.wantCompiled}
			}
			if diff := cmp.Diff(want, snapshotServer(out.Mesh, "ns", "b").GetAuthorizations(), protocmp.Transform()); diff != "" {
				t.Errorf("authorizations of Server ns/b (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAuthenticationValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ids     []string
		refs    []policyv1alpha1.IdentityReference
		want    []string
		wantBad bool
	}{
		{"any", []string{"*"}, nil, []string{"*"}, false},
		{"exact and prefix", []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/*"}, nil,
			[]string{"spiffe://cluster.local/ns/a/*", "spiffe://cluster.local/ns/a/sa/b"}, false},
		{"other trust domain", []string{"spiffe://partner.example/ns/a/sa/b"}, nil, []string{"spiffe://partner.example/ns/a/sa/b"}, false},
		{"refs", nil, []policyv1alpha1.IdentityReference{{Kind: "ServiceAccount", Name: "sa"}, {Kind: "ServiceAccount", Name: "sa", Namespace: "x"}, {Kind: "Namespace", Name: "team"}},
			[]string{"spiffe://cluster.local/ns/ns/sa/sa", "spiffe://cluster.local/ns/team/*", "spiffe://cluster.local/ns/x/sa/sa"}, false},
		{"linkerd dotted wildcard", []string{"*.ns.serviceaccount.identity.linkerd.cluster.local", "*"}, nil, []string{"*"}, true},
		{"middle wildcard", []string{"spiffe://cluster.local/ns/*/sa/a"}, nil, nil, true},
		{"not spiffe", []string{"https://cluster.local/ns/a/sa/b"}, nil, nil, true},
		{"uppercase trust domain", []string{"spiffe://Cluster.Local/ns/a/sa/b"}, nil, nil, true},
		{"namespace ref with namespace", nil, []policyv1alpha1.IdentityReference{{Kind: "Namespace", Name: "a", Namespace: "b"}}, nil, true},
		{"ref with a bad name", nil, []policyv1alpha1.IdentityReference{{Kind: "ServiceAccount", Name: "A/../b"}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := meshTLS("ns", "m", tt.ids...)
			m.Spec.IdentityRefs = tt.refs
			in := &translate.Input{
				Servers:                []policyv1alpha1.Server{server("ns", "s", nil, intstr.FromInt32(80))},
				MeshTLSAuthentications: []policyv1alpha1.MeshTLSAuthentication{m},
				AuthorizationPolicies:  []policyv1alpha1.AuthorizationPolicy{policy("ns", "p", serverTarget("s"), meshTLSRef("m"))},
			}
			out := mustTranslate(t, in)
			var got []string
			if a := snapshotServer(out.Mesh, "ns", "s").GetAuthorizations(); len(a) == 1 {
				got = a[0].GetMeshTls().GetIdentities()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("identities (-want +got):\n%s", diff)
			}
			ref := translate.ObjectRef{Kind: translate.KindMeshTLSAuthentication, Namespace: "ns", Name: "m"}
			if bad := strings.HasPrefix(condition(out, ref, "Accepted"), "False Invalid"); bad != tt.wantBad {
				t.Errorf("Accepted = %q, want Invalid: %v", condition(out, ref, "Accepted"), tt.wantBad)
			}
		})
	}
}

func TestNetworkValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		nets []policyv1alpha1.Network
		want []string // the cidrs kept; nil: the authorization is dropped
	}{
		{"cidr and ip", []policyv1alpha1.Network{{CIDR: "10.0.0.0/8"}, {CIDR: "192.168.1.1"}, {CIDR: "fd00::/8"}}, []string{"10.0.0.0/8", "192.168.1.1", "fd00::/8"}},
		{"except inside", []policyv1alpha1.Network{{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16", "10.2.3.4"}}}, []string{"10.0.0.0/8"}},
		{"bad except drops its network, not only the except", []policyv1alpha1.Network{{CIDR: "10.0.0.0/8", Except: []string{"11.0.0.0/16"}}, {CIDR: "192.168.0.0/16"}}, []string{"192.168.0.0/16"}},
		{"except equal to cidr", []policyv1alpha1.Network{{CIDR: "10.0.0.0/8", Except: []string{"10.0.0.0/8"}}}, nil},
		{"except of the other family", []policyv1alpha1.Network{{CIDR: "::/0", Except: []string{"10.0.0.0/8"}}}, nil},
		{"garbage", []policyv1alpha1.Network{{CIDR: "ten"}, {CIDR: "fe80::1%eth0"}, {CIDR: ""}}, nil},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := &translate.Input{
				Servers:                []policyv1alpha1.Server{server("ns", "s", nil, intstr.FromInt32(80))},
				NetworkAuthentications: []policyv1alpha1.NetworkAuthentication{networkAuthn("ns", "n", tt.nets...)},
				AuthorizationPolicies:  []policyv1alpha1.AuthorizationPolicy{policy("ns", "p", serverTarget("s"), networkRef("n"))},
			}
			out := mustTranslate(t, in)
			authzs := snapshotServer(out.Mesh, "ns", "s").GetAuthorizations()
			if tt.want == nil {
				if len(authzs) != 0 {
					t.Errorf("authorizations = %v, want none (fail closed)", authzs)
				}
				ref := translate.ObjectRef{Kind: translate.KindAuthorizationPolicy, Namespace: "ns", Name: "p"}
				if got, want := condition(out, ref, "ResolvedRefs"), "False AuthenticationInvalid: NetworkAuthentication ns/n has no valid networks"; got != want {
					t.Errorf("ResolvedRefs = %q, want %q", got, want)
				}
				return
			}
			if len(authzs) != 1 {
				t.Fatalf("authorizations = %v, want one", authzs)
			}
			var got []string
			for _, n := range authzs[0].GetNetworks() {
				got = append(got, n.GetCidr())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("networks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWaypointBinding(t *testing.T) {
	t.Parallel()
	gw := gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "wp"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: translate.WaypointClassName},
		Status:     gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{Value: "10.96.0.99"}}},
	}
	wantWP := &nodeconfig.GatewayAddress{Name: "wp", Namespace: "ns", Address: "10.96.0.99", HbonePort: 15008, Identity: "spiffe://td.example/ns/ns/sa/wp"}
	label := func(v string) map[string]string { return map[string]string{translate.LabelUseWaypoint: v} }
	tests := []struct {
		name        string
		nsLabel     map[string]string
		podLabels   map[string]string
		gateways    []gatewayv1.Gateway
		want        *nodeconfig.GatewayAddress
		wantWarning string
	}{
		{"namespace", label("wp"), nil, []gatewayv1.Gateway{gw}, wantWP, ""},
		{"pod", nil, label("wp"), []gatewayv1.Gateway{gw}, wantWP, ""},
		{"pod opts out", label("wp"), label("none"), []gatewayv1.Gateway{gw}, nil, ""},
		{"missing gateway", nil, label("wp"), nil, nil, "pod ns/p: label warren.dev/use-waypoint=wp: Gateway ns/wp not found; served without a waypoint"},
		{"hostname address", nil, label("wp"), []gatewayv1.Gateway{func() gatewayv1.Gateway {
			g := *gw.DeepCopy()
			g.Status.Addresses[0].Value = "wp.ns.svc"
			return g
		}()}, nil, `pod ns/p: label warren.dev/use-waypoint=wp: Gateway ns/wp address "wp.ns.svc" is not an IP; served without a waypoint`},
		{"gateway in another namespace does not count", nil, label("wp"), []gatewayv1.Gateway{func() gatewayv1.Gateway {
			g := *gw.DeepCopy()
			g.Namespace = "other"
			return g
		}()}, nil, "pod ns/p: label warren.dev/use-waypoint=wp: Gateway ns/wp not found; served without a waypoint"},
		{"the waypoint's own pod", label("wp"), map[string]string{gatewayv1.GatewayNameLabelKey: "wp"}, []gatewayv1.Gateway{gw}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns := ambientNamespace("ns")
			for k, v := range tt.nsLabel {
				ns.Labels[k] = v
			}
			in := &translate.Input{
				TrustDomain: "td.example",
				Namespaces:  []corev1.Namespace{ns},
				Pods:        []corev1.Pod{pod("ns", "p", "node-1", "10.0.0.1", tt.podLabels)},
				Gateways:    tt.gateways,
			}
			out := mustTranslate(t, in)
			if diff := cmp.Diff(tt.want, workload(out.Mesh, "ns", "p").GetWaypoint(), protocmp.Transform()); diff != "" {
				t.Errorf("waypoint (-want +got):\n%s", diff)
			}
			var want []string
			if tt.wantWarning != "" {
				want = []string{tt.wantWarning}
			}
			if diff := cmp.Diff(want, out.Warnings, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNodeView checks the per-node cut of the translated mesh that the push server sends.
func TestNodeView(t *testing.T) {
	t.Parallel()
	app := map[string]string{"app": "b"}
	in := &translate.Input{
		Namespaces: []corev1.Namespace{ambientNamespace("ns")},
		Pods: []corev1.Pod{
			pod("ns", "b-1", "node-1", "10.0.1.1", app, cport("http", 8080)),
			pod("ns", "b-2", "node-2", "10.0.2.1", app, cport("http", 8080)),
			pod("ns", "c-2", "node-2", "10.0.2.2", map[string]string{"app": "c"}, cport("http", 8080)),
		},
		Servers: []policyv1alpha1.Server{
			server("ns", "b", app, intstr.FromInt32(8080)),
			server("ns", "c", map[string]string{"app": "c"}, intstr.FromInt32(8080)),
			server("ns", "unused", map[string]string{"app": "none"}, intstr.FromInt32(8080)),
		},
	}
	out := mustTranslate(t, in)
	meshBefore := proto.Clone(out.Mesh)

	serverNames := func(s *nodeconfig.Snapshot) []string {
		var names []string
		for _, sv := range s.GetServers() {
			names = append(names, sv.GetName())
		}
		return names
	}
	if diff := cmp.Diff([]string{"b", "c", "unused"}, serverNames(out.Mesh)); diff != "" {
		t.Errorf("mesh servers (-want +got):\n%s", diff)
	}
	for node, want := range map[string][]string{"node-1": {"b"}, "node-2": {"b", "c"}, "node-3": nil} {
		s := push.Relevant(out.Mesh, node)
		if diff := cmp.Diff(want, serverNames(s)); diff != "" {
			t.Errorf("Relevant(%s) servers (-want +got):\n%s", node, diff)
		}
		if got := len(s.GetWorkloads()); got != 3 {
			t.Errorf("Relevant(%s) has %d workloads, want all 3", node, got)
		}
		for _, w := range s.GetWorkloads() {
			if w.GetNode() != node && len(w.GetServers()) > 0 {
				t.Errorf("Relevant(%s): workload %s on %s keeps servers %v", node, w.GetName(), w.GetNode(), w.GetServers())
			}
		}
	}
	if diff := cmp.Diff(meshBefore, out.Mesh, protocmp.Transform()); diff != "" {
		t.Errorf("ForNode modified the mesh snapshot (-before +after):\n%s", diff)
	}
}

// TestDeterministic translates the same objects in shuffled orders and expects identical
// snapshots and versions.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	data, err := readTestdata("http-route.yaml", "namespace-policy.yaml", "non-ambient-service.yaml", "waypoint.yaml", "default-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in := decodeInput(t, data)
	want := translate.Translate(in)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		shuffled := *in
		shuffle(rng, &shuffled)
		got := translate.Translate(&shuffled)
		if got.Mesh.GetVersion() != want.Mesh.GetVersion() {
			t.Errorf("shuffle %d: version %s, want %s", i, got.Mesh.GetVersion(), want.Mesh.GetVersion())
		}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("shuffle %d: output differs (-want +got):\n%s", i, diff)
		}
	}
}

// TestRoutesDeterministic: routes, their status and the waypoint pods come out the same whatever
// the order of the input.
func TestRoutesDeterministic(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"routes.yaml", "route-rejections.yaml", "gateway-pods.yaml"} {
		data, err := readTestdata(file)
		if err != nil {
			t.Fatal(err)
		}
		in := decodeInput(t, data)
		want := translate.Translate(in)
		if file != "gateway-pods.yaml" && (len(want.Mesh.GetRoutes()) == 0 || len(want.RouteStatus) == 0) {
			t.Fatalf("%s: no routes or route status; the test would prove nothing", file)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		for i := range 20 {
			shuffled := *in
			shuffle(rng, &shuffled)
			got := translate.Translate(&shuffled)
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Fatalf("%s, shuffle %d: output differs (-want +got):\n%s", file, i, diff)
			}
		}
	}
}

func shuffle(rng *rand.Rand, in *translate.Input) {
	in.ReferenceGrants = shuffled(rng, in.ReferenceGrants)
	in.Namespaces = shuffled(rng, in.Namespaces)
	in.Pods = shuffled(rng, in.Pods)
	in.Services = shuffled(rng, in.Services)
	in.EndpointSlices = shuffled(rng, in.EndpointSlices)
	in.Servers = shuffled(rng, in.Servers)
	in.AuthorizationPolicies = shuffled(rng, in.AuthorizationPolicies)
	in.MeshTLSAuthentications = shuffled(rng, in.MeshTLSAuthentications)
	in.NetworkAuthentications = shuffled(rng, in.NetworkAuthentications)
	in.HTTPRoutes = shuffled(rng, in.HTTPRoutes)
	in.GRPCRoutes = shuffled(rng, in.GRPCRoutes)
	in.Gateways = shuffled(rng, in.Gateways)
}

func shuffled[T any](rng *rand.Rand, s []T) []T {
	s = slices.Clone(s)
	rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

// TestBadObjectsDoNotStopTranslation mixes every kind of broken object into a cluster and
// expects the good objects to be translated as if the broken ones were not there.
func TestBadObjectsDoNotStopTranslation(t *testing.T) {
	t.Parallel()
	good := func() *translate.Input {
		data, err := readTestdata("article.yaml")
		if err != nil {
			t.Fatal(err)
		}
		return decodeInput(t, data)
	}
	clean := translate.Translate(good())

	in := good()
	dup := in.Pods[0]
	dup.Name = "zz-same-uid" // sorts after service-a-0, which keeps the uid
	noUID := pod("default", "no-uid", "node-1", "10.0.1.99", nil)
	noUID.UID = ""
	sameIP := pod("default", "same-ip", "node-1", "10.0.1.2", nil)
	sameIP.CreationTimestamp = metav1.NewTime(time.Now()) // younger than the article's pods
	badIP := pod("default", "bad-ip", "node-1", "not-an-ip", nil)
	in.Pods = append(in.Pods, dup, noUID, sameIP, badIP, corev1.Pod{})
	badSvc := service("default", "bad-vip", "10.96.0.10") // the VIP of service-b
	badSvc.CreationTimestamp = metav1.NewTime(time.Now())
	in.Services = append(in.Services, badSvc, service("default", "garbage", "x.y.z"), corev1.Service{})
	in.EndpointSlices = append(in.EndpointSlices,
		discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "no-label"}},
		discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "other-ns-pod", Labels: map[string]string{discoveryv1.LabelServiceName: "bad-vip"}},
			Endpoints: []discoveryv1.Endpoint{
				{TargetRef: nil},
				{TargetRef: &corev1.ObjectReference{Kind: "Node", Name: "node-1"}},
				{TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "kube-system", Name: "x"}},
			},
		})
	in.Servers = append(in.Servers,
		server("default", "zero-port", nil, intstr.FromInt32(0)),
		server("default", "huge-port", nil, intstr.FromInt32(70000)),
		server("default", "empty-name", nil, intstr.FromString("")),
		policyv1alpha1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bad-selector"}, Spec: policyv1alpha1.ServerSpec{
			PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "", Operator: "Bogus"}}},
			Port:        intstr.FromInt32(8080),
		}},
		policyv1alpha1.Server{},
	)
	in.MeshTLSAuthentications = append(in.MeshTLSAuthentications, meshTLS("default", "junk", "%%%", "spiffe://"), policyv1alpha1.MeshTLSAuthentication{})
	in.NetworkAuthentications = append(in.NetworkAuthentications, networkAuthn("default", "junk", policyv1alpha1.Network{CIDR: "999.0.0.0/8"}), policyv1alpha1.NetworkAuthentication{})
	in.AuthorizationPolicies = append(in.AuthorizationPolicies,
		policy("default", "junk", serverTarget("service-b"), meshTLSRef("junk"), networkRef("junk")),
		policy("default", "nowhere", policyv1alpha1.TargetReference{}),
		policyv1alpha1.AuthorizationPolicy{},
	)
	in.HTTPRoutes = append(in.HTTPRoutes, gatewayv1.HTTPRoute{})
	in.GRPCRoutes = append(in.GRPCRoutes, gatewayv1.GRPCRoute{})
	in.Gateways = append(in.Gateways, gatewayv1.Gateway{}, gatewayv1.Gateway{Status: gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{}}}})
	in.Namespaces = append(in.Namespaces, corev1.Namespace{})

	out := mustTranslate(t, in)

	// The article's objects come out exactly as without the junk.
	for _, name := range []string{"service-a-0", "service-b-0", "service-b-1"} {
		if diff := cmp.Diff(workload(clean.Mesh, "default", name), workload(out.Mesh, "default", name), protocmp.Transform()); diff != "" {
			t.Errorf("workload %s (-clean +with junk):\n%s", name, diff)
		}
	}
	if diff := cmp.Diff(clean.Mesh.GetServices(), slices.DeleteFunc(slices.Clone(out.Mesh.GetServices()), func(s *nodeconfig.Service) bool { return s.GetName() != "service-b" }), protocmp.Transform()); diff != "" {
		t.Errorf("services (-clean +with junk):\n%s", diff)
	}
	if diff := cmp.Diff(snapshotServer(clean.Mesh, "default", "service-b"), snapshotServer(out.Mesh, "default", "service-b"), protocmp.Transform()); diff != "" {
		t.Errorf("Server service-b (-clean +with junk):\n%s", diff)
	}
	for ref, conds := range clean.Status {
		if diff := cmp.Diff(conds, out.Status[ref]); diff != "" {
			t.Errorf("status of %s (-clean +with junk):\n%s", ref, diff)
		}
	}
	// Every policy object got a status, broken or not, except the nameless ones, which cannot
	// carry one and are warned about instead.
	for _, kindCount := range []struct {
		kind string
		n    int
	}{
		{translate.KindServer, 5},
		{translate.KindMeshTLSAuthentication, 2},
		{translate.KindNetworkAuthentication, 1},
		{translate.KindAuthorizationPolicy, 3},
	} {
		n := 0
		for ref := range out.Status {
			if ref.Kind == kindCount.kind {
				n++
			}
		}
		if n != kindCount.n {
			t.Errorf("%d %s statuses, want %d", n, kindCount.kind, kindCount.n)
		}
	}
	for _, want := range []string{
		`Server "" in namespace "": a namespace and a name are required; ignored`,
		`pod default/zz-same-uid: uid uid-a-0 is also pod default/service-a-0's; ignored`,
		`pod default/same-ip: address 10.0.1.2 is also pod default/service-a-0's; ignored on this pod`,
		`service default/bad-vip: cluster IP 10.96.0.10 is also service default/service-b's; ignored on this service`,
	} {
		if !slices.Contains(out.Warnings, want) {
			t.Errorf("warnings lack %q", want)
		}
	}
	t.Logf("warnings:\n%s", strings.Join(out.Warnings, "\n"))
}

func TestAddressCollision(t *testing.T) {
	t.Parallel()
	old := pod("ns", "old", "node-1", "10.0.0.1", nil)
	old.CreationTimestamp = metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	young := pod("ns", "young", "node-1", "10.0.0.1", nil)
	young.CreationTimestamp = metav1.NewTime(time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC))
	now := metav1.NewTime(time.Date(2025, 1, 3, 0, 0, 0, 0, time.UTC))
	gone := pod("ns", "gone", "node-1", "10.0.0.2", nil)
	gone.DeletionTimestamp = &now
	replacement := pod("ns", "replacement", "node-1", "10.0.0.2", nil)
	replacement.CreationTimestamp = now

	out := mustTranslate(t, &translate.Input{
		Namespaces: []corev1.Namespace{ambientNamespace("ns")},
		Pods:       []corev1.Pod{young, old, gone, replacement},
		Services:   []corev1.Service{service("ns", "clash", "10.0.0.1")},
	})
	got := map[string][]string{}
	for _, w := range out.Mesh.GetWorkloads() {
		got[w.GetName()] = w.GetAddresses()
	}
	want := map[string][]string{"old": {"10.0.0.1"}, "young": {}, "gone": {}, "replacement": {"10.0.0.2"}}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	wantWarnings := []string{
		"pod ns/gone: address 10.0.0.2 is also pod ns/replacement's; ignored on this pod",
		"pod ns/young: address 10.0.0.1 is also pod ns/old's; ignored on this pod",
		"service ns/clash: cluster IP 10.0.0.1 is also pod ns/old's; ignored",
	}
	if diff := cmp.Diff(wantWarnings, out.Warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

func readTestdata(names ...string) ([]byte, error) {
	var all []byte
	for _, n := range names {
		b, err := os.ReadFile("testdata/" + n)
		if err != nil {
			return nil, err
		}
		all = append(all, "\n---\n"...)
		all = append(all, b...)
	}
	return all, nil
}
