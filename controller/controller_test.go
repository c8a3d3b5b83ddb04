package controller_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/testing/protocmp"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/test/envtest"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

const (
	systemNS  = "warren-system"
	ztunnelSA = "warren-ztunnel"
	audience  = "warren-ca"
)

// cluster is a real control plane with two nodes, the ztunnel's ServiceAccount and one ztunnel
// pod per node, and a running controller.
type cluster struct {
	env *envtest.Env
	c   client.Client
	ctl *controller.Controller
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	env := envtest.Start(t)
	ctx := context.Background()
	c := env.Client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"node-1", "node-2"} {
		must(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}))
	}
	must(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}))
	for _, sa := range []string{ztunnelSA, "someone-else"} {
		must(c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: systemNS}}))
	}
	for _, n := range []string{"node-1", "node-2"} {
		must(c.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + n, Namespace: systemNS},
			Spec: corev1.PodSpec{
				NodeName: n, ServiceAccountName: ztunnelSA,
				Containers: []corev1.Container{{Name: "ztunnel", Image: "warren-ztunnel"}},
			},
		}))
	}
	must(c.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "other-node-1", Namespace: systemNS},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "someone-else", Containers: []corev1.Container{{Name: "x", Image: "x"}}},
	}))

	reviewer := &controller.TokenReviewer{Client: c, Audience: audience, Ztunnels: []string{systemNS + "/" + ztunnelSA}}
	ctl, err := controller.New(controller.Config{
		Rest:         env.Config,
		PushAddr:     "127.0.0.1:0",
		Authenticate: reviewer.Authenticate,
		Waypoints:    controller.WaypointConfig{Image: "warren-waypoint:test", ControllerAddr: "warren-controller.warren-system.svc:15012", CAAddr: "warren-controller.warren-system.svc:15013"},
		Registry:     prometheus.NewRegistry(),
		Log:          slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	must(err)
	reviewer.IsWaypoint = ctl.IsWaypoint
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctl.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller Run: %v", err)
		}
	})
	return &cluster{env: env, c: c, ctl: ctl}
}

// token returns a projected token of sa bound to pod, as the kubelet would mount it.
func (cl *cluster) token(t *testing.T, sa, pod, aud string) string {
	t.Helper()
	ctx := context.Background()
	var p corev1.Pod
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: pod}, &p); err != nil {
		t.Fatal(err)
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{aud},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: p.UID},
	}}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: systemNS}}
	if err := cl.c.SubResource("token").Create(ctx, account, tr); err != nil {
		t.Fatalf("token request for %s: %v", sa, err)
	}
	return tr.Status.Token
}

// subscribe runs a config push client for node with token and returns its store.
func (cl *cluster) subscribe(t *testing.T, node, token string) (*state.Store, *configstream.Client) {
	t.Helper()
	store := state.NewStore(nil)
	cs, err := configstream.New(configstream.Config{
		Target: cl.ctl.PushAddr().String(), Node: node, Store: store,
		Token:      func() (string, error) { return token, nil },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cs.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return store, cs
}

// pod creates a running, ready pod with an IP, as a kubelet would report it.
func (cl *cluster) pod(t *testing.T, ns, name, sa, node, ip string) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}
	if err := cl.c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}}); err != nil && !isExists(err) {
		t.Fatal(err)
	}
	if err := cl.c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if err := cl.c.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
}

func isExists(err error) bool { return err != nil && client.IgnoreAlreadyExists(err) == nil }

// eventually polls f until it returns "" (or the deadline), then fails with its last answer.
func eventually(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serverOf(store *state.Store, key string) *nodeconfig.Server {
	v := store.Load()
	if v == nil {
		return nil
	}
	for _, s := range v.Snapshot().GetServers() {
		if s.GetNamespace()+"/"+s.GetName() == key {
			return s
		}
	}
	return nil
}

func TestArticlePolicyReachesTheZtunnel(t *testing.T) {
	cl := startCluster(t)
	ctx := context.Background()
	store, _ := cl.subscribe(t, "node-2", cl.token(t, ztunnelSA, "ztunnel-node-2", audience))

	ns := cl.env.Namespace(t)
	var nsObj corev1.Namespace
	if err := cl.c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj); err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{"warren.dev/dataplane-mode": "ambient"}
	if err := cl.c.Update(ctx, &nsObj); err != nil {
		t.Fatal(err)
	}
	cl.pod(t, ns, "service-a", "service-a", "node-1", "10.1.0.2")
	cl.pod(t, ns, "service-b", "service-b", "node-2", "10.2.0.3")

	// The article's three objects, in our group.
	server := &policyv1alpha1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: "service-b", Namespace: ns},
		Spec: policyv1alpha1.ServerSpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "service-b"}},
			Port:        intstr.FromInt32(8080),
		},
	}
	mtls := &policyv1alpha1.MeshTLSAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: ns},
		Spec: policyv1alpha1.MeshTLSAuthenticationSpec{
			IdentityRefs: []policyv1alpha1.IdentityReference{{Kind: "ServiceAccount", Name: "service-a"}},
		},
	}
	ap := &policyv1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "service-a-to-b", Namespace: ns},
		Spec: policyv1alpha1.AuthorizationPolicySpec{
			TargetRef: policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "service-b"},
			RequiredAuthenticationRefs: []policyv1alpha1.AuthenticationReference{
				{Group: policyv1alpha1.GroupName, Kind: "MeshTLSAuthentication", Name: "service-a"},
			},
		},
	}
	for _, o := range []client.Object{server, mtls, ap} {
		if err := cl.c.Create(ctx, o); err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
	idA := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/service-a", ns)
	want := &nodeconfig.Server{
		Name: "service-b", Namespace: ns,
		Port:         &nodeconfig.Server_PortNumber{PortNumber: 8080},
		AccessPolicy: nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY,
		Authorizations: []*nodeconfig.Authorization{{
			Name: "service-a-to-b", Namespace: ns, TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
			MeshTls:            &nodeconfig.MeshTLS{Identities: []string{idA}},
			AuthenticationRefs: []string{"MeshTLSAuthentication/" + ns + "/service-a"},
		}},
	}
	eventually(t, "node-2's ztunnel receives the compiled policy", func() string {
		return cmp.Diff(want, serverOf(store, ns+"/service-b"), protocmp.Transform())
	})
	if w := store.Load().WorkloadByUID(podUID(t, cl, ns, "service-b")); w == nil || !slices.Contains(w.GetServers(), ns+"/service-b") {
		t.Errorf("service-b's workload = %v; want it covered by the Server", w)
	}

	// An update propagates: service-c is allowed too.
	if err := cl.c.Get(ctx, client.ObjectKeyFromObject(mtls), mtls); err != nil {
		t.Fatal(err)
	}
	mtls.Spec.IdentityRefs = append(mtls.Spec.IdentityRefs, policyv1alpha1.IdentityReference{Kind: "ServiceAccount", Name: "service-c"})
	if err := cl.c.Update(ctx, mtls); err != nil {
		t.Fatal(err)
	}
	idC := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/service-c", ns)
	eventually(t, "the update reaches the ztunnel", func() string {
		got := serverOf(store, ns+"/service-b").GetAuthorizations()
		if len(got) != 1 || !slices.Equal(got[0].GetMeshTls().GetIdentities(), []string{idA, idC}) {
			return fmt.Sprintf("authorizations = %v", got)
		}
		return ""
	})

	// A delete propagates: no authorization is left, the Server denies.
	if err := cl.c.Delete(ctx, ap); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the delete reaches the ztunnel", func() string {
		if s := serverOf(store, ns+"/service-b"); s == nil || len(s.GetAuthorizations()) != 0 {
			return fmt.Sprintf("server = %v; want no authorizations", s)
		}
		return ""
	})

	// Pods leave the config when their namespace leaves the mesh.
	nsObj.Labels = nil
	if err := cl.c.Update(ctx, &nsObj); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pods leave the config", func() string {
		if w := store.Load().WorkloadByUID(podUID(t, cl, ns, "service-b")); w != nil {
			return fmt.Sprintf("workload %s still in config version %s", w.GetName(), store.Load().Version())
		}
		return ""
	})
}

func podUID(t *testing.T, cl *cluster, ns, name string) string {
	t.Helper()
	var p corev1.Pod
	if err := cl.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return string(p.UID)
}

func TestStatusNamesAMissingServer(t *testing.T) {
	cl := startCluster(t)
	ctx := context.Background()
	ns := cl.env.Namespace(t)
	ap := &policyv1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "to-nowhere", Namespace: ns},
		Spec: policyv1alpha1.AuthorizationPolicySpec{
			TargetRef: policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "nope"},
		},
	}
	if err := cl.c.Create(ctx, ap); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the status names the missing Server", func() string {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(ap), ap); err != nil {
			return err.Error()
		}
		c := meta.FindStatusCondition(ap.Status.Conditions, policyv1alpha1.ConditionResolvedRefs)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "TargetNotFound" || c.Message == "" {
			return fmt.Sprintf("ResolvedRefs = %+v", c)
		}
		if c.LastTransitionTime.IsZero() {
			return "ResolvedRefs has no transition time"
		}
		return ""
	})
}

func TestPushRefusesUntrustedCallers(t *testing.T) {
	cl := startCluster(t)
	tests := []struct {
		name, node, token string
	}{
		{"wrong audience", "node-1", cl.token(t, ztunnelSA, "ztunnel-node-1", "some-other-audience")},
		{"not a ztunnel account", "node-1", cl.token(t, "someone-else", "other-node-1", audience)},
		{"another node's name", "node-2", cl.token(t, ztunnelSA, "ztunnel-node-1", audience)},
		{"garbage", "node-1", "not-a-token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store, cs := cl.subscribe(t, tc.node, tc.token)
			eventually(t, "the stream is refused", func() string {
				if st := cs.Status(); st.LastError == "" {
					return fmt.Sprintf("status %+v; want an error", st)
				}
				return ""
			})
			if store.Load() != nil {
				t.Errorf("a refused client received config %s", store.Load().Version())
			}
		})
	}
	// The real ztunnel of node-1 is served.
	store, _ := cl.subscribe(t, "node-1", cl.token(t, ztunnelSA, "ztunnel-node-1", audience))
	eventually(t, "node-1's ztunnel is served", func() string {
		if store.Load() == nil {
			return "no config"
		}
		return ""
	})
}
