package controller_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/translate"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// tokenIn returns a projected token of ns/sa bound to pod ns/pod.
func (cl *cluster) tokenIn(t *testing.T, ns, sa, pod string) string {
	t.Helper()
	ctx := context.Background()
	var p corev1.Pod
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: pod}, &p); err != nil {
		t.Fatal(err)
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{audience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: p.UID},
	}}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}}
	if err := cl.c.SubResource("token").Create(ctx, account, tr); err != nil {
		t.Fatalf("token request for %s/%s: %v", ns, sa, err)
	}
	return tr.Status.Token
}

// subscribeWaypoint runs a config push client of kind waypoint.
func (cl *cluster) subscribeWaypoint(t *testing.T, token string) (*state.Store, *configstream.Client) {
	t.Helper()
	store := state.NewStore(nil)
	cs, err := configstream.New(configstream.Config{
		Target: cl.ctl.PushAddr().String(), Node: "node-1", Kind: push.KindWaypoint, Store: store,
		Token:      func() (string, error) { return token, nil },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cs.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return store, cs
}

func condition(conds []metav1.Condition, typ string) string {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil {
		return "absent"
	}
	return string(c.Status) + "/" + c.Reason
}

// TestWaypointGateway: a Gateway of class warren-waypoint gets its ServiceAccount, root
// ConfigMap, Service and Deployment, owned by it; its status gets the Service's ClusterIP and
// Programmed flips to True once the Deployment (whose status the test writes, as there is no
// deployment controller in envtest) has an available replica. The GatewayClass is accepted, and
// another implementation's class is left alone.
func TestWaypointGateway(t *testing.T) {
	cl := startCluster(t)
	ctx := context.Background()
	ns := cl.env.Namespace(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cl.c.Create(ctx, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: translate.WaypointClassName},
		Spec: gatewayv1.GatewayClassSpec{ControllerName: translate.ControllerName}}))
	must(cl.c.Create(ctx, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "other"},
		Spec: gatewayv1.GatewayClassSpec{ControllerName: "example.com/other"}}))
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: ns},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: translate.WaypointClassName,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}
	must(cl.c.Create(ctx, gw))
	other := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "ingress", Namespace: ns},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "other",
			Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType}}},
	}
	must(cl.c.Create(ctx, other))

	eventually(t, "GatewayClass warren-waypoint accepted", func() string {
		var gc gatewayv1.GatewayClass
		must(cl.c.Get(ctx, client.ObjectKey{Name: translate.WaypointClassName}, &gc))
		if got := condition(gc.Status.Conditions, "Accepted"); got != "True/Accepted" {
			return "Accepted " + got
		}
		return ""
	})

	key := client.ObjectKey{Namespace: ns, Name: "wp"}
	var dep appsv1.Deployment
	var svc corev1.Service
	eventually(t, "the waypoint's objects exist", func() string {
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &svc, &dep} {
			if err := cl.c.Get(ctx, key, o); err != nil {
				return err.Error()
			}
		}
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "wp-ca-root"}, &corev1.ConfigMap{}); err != nil {
			return err.Error()
		}
		return ""
	})
	must(cl.c.Get(ctx, key, gw))
	for _, o := range []client.Object{&svc, &dep} {
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].Kind != "Gateway" || refs[0].Name != "wp" || refs[0].UID != gw.UID || refs[0].Controller == nil || !*refs[0].Controller {
			t.Errorf("%T owner references = %+v, want the Gateway as controller", o, refs)
		}
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 15008 || svc.Spec.Ports[0].Name != "hbone" ||
		svc.Spec.Selector[gatewayv1.GatewayNameLabelKey] != "wp" || svc.Spec.ClusterIP == "" {
		t.Errorf("service = %+v, want ClusterIP hbone 15008 selecting gateway-name wp", svc.Spec)
	}
	pod := dep.Spec.Template
	if pod.Labels[gatewayv1.GatewayNameLabelKey] != "wp" || pod.Spec.ServiceAccountName != "wp" {
		t.Errorf("pod template labels %v, service account %q; want gateway-name wp, account wp", pod.Labels, pod.Spec.ServiceAccountName)
	}
	c := pod.Spec.Containers[0]
	if c.Image != "warren-waypoint:test" {
		t.Errorf("image = %q", c.Image)
	}
	for _, want := range []string{"--controller=warren-controller.warren-system.svc:15012", "--ca-addr=warren-controller.warren-system.svc:15013", "--token-file=/var/run/secrets/tokens/warren-ca"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %q lack %q", c.Args, want)
		}
	}
	var ports []int32
	for _, p := range c.Ports {
		ports = append(ports, p.ContainerPort)
	}
	if diff := cmp.Diff([]int32{15008, 15020, 15021}, ports); diff != "" {
		t.Errorf("container ports (-want +got):\n%s", diff)
	}
	if rp := c.ReadinessProbe; rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Port.IntVal != 15021 {
		t.Errorf("readiness probe = %+v, want HTTP on 15021", rp)
	}
	var aud string
	for _, v := range pod.Spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					aud = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if aud != audience {
		t.Errorf("projected token audience = %q, want %q", aud, audience)
	}

	eventually(t, "the Gateway has its address and waits for a replica", func() string {
		must(cl.c.Get(ctx, key, gw))
		if len(gw.Status.Addresses) != 1 || gw.Status.Addresses[0].Value != svc.Spec.ClusterIP {
			return fmt.Sprintf("addresses %+v, want %s", gw.Status.Addresses, svc.Spec.ClusterIP)
		}
		if got := condition(gw.Status.Conditions, "Accepted"); got != "True/Accepted" {
			return "Accepted " + got
		}
		if got := condition(gw.Status.Conditions, "Programmed"); got != "False/Pending" {
			return "Programmed " + got
		}
		return ""
	})
	// The deployment controller's part: one available replica.
	must(cl.c.Get(ctx, key, &dep))
	dep.Status = appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1, ObservedGeneration: dep.Generation}
	must(cl.c.Status().Update(ctx, &dep))
	eventually(t, "the Gateway is programmed", func() string {
		must(cl.c.Get(ctx, key, gw))
		if got := condition(gw.Status.Conditions, "Programmed"); got != "True/Programmed" {
			return "Programmed " + got
		}
		return ""
	})

	// Another implementation's Gateway and class are not touched.
	time.Sleep(200 * time.Millisecond)
	must(cl.c.Get(ctx, client.ObjectKeyFromObject(other), other))
	if got := condition(other.Status.Conditions, "Programmed"); got == "True/Programmed" || len(other.Status.Addresses) > 0 {
		t.Errorf("other implementation's Gateway got status %+v", other.Status)
	}
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ingress"}, &appsv1.Deployment{}); err == nil {
		t.Error("a Deployment was made for another implementation's Gateway")
	}
	var gc gatewayv1.GatewayClass
	must(cl.c.Get(ctx, client.ObjectKey{Name: "other"}, &gc))
	if got := condition(gc.Status.Conditions, "Accepted"); got == "True/Accepted" {
		t.Errorf("GatewayClass other: Accepted %s", got)
	}
}

// TestWaypointIdentityAndRoutes: the ServiceAccount of a waypoint Gateway may subscribe as a
// waypoint and receives the routes; a non-waypoint account asking as a waypoint is refused. Route
// status names every parent of Warren's, with the waypoint binding.
func TestWaypointIdentityAndRoutes(t *testing.T) {
	cl := startCluster(t)
	ctx := context.Background()
	ns := cl.env.Namespace(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cl.c.Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: ns},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: translate.WaypointClassName,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}))
	eventually(t, "the waypoint's ServiceAccount exists", func() string {
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "wp"}, &corev1.ServiceAccount{}); err != nil {
			return err.Error()
		}
		return ""
	})
	// The Deployment's pod, as the scheduler and kubelet would make it, and an ordinary pod.
	cl.pod(t, ns, "wp-0", "wp", "node-1", "10.0.1.9")
	cl.pod(t, ns, "app-0", "app", "node-1", "10.0.1.10")

	must(cl.c.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: ns, Labels: map[string]string{translate.LabelUseWaypoint: "wp"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}))
	group, kind := gatewayv1.Group(""), gatewayv1.Kind("Service")
	must(cl.c.Create(ctx, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: ns},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
				{Group: &group, Kind: &kind, Name: "reviews"},
				{Group: &group, Kind: &kind, Name: "missing"},
			}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews", Port: new(gatewayv1.PortNumber(80))},
			}}}}},
		},
	}))

	eventually(t, "route status", func() string {
		var hr gatewayv1.HTTPRoute
		must(cl.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "reviews"}, &hr))
		var got []string
		for _, p := range hr.Status.Parents {
			got = append(got, fmt.Sprintf("%s %s: Accepted %s, %s %s, ResolvedRefs %s", p.ControllerName, p.ParentRef.Name,
				condition(p.Conditions, "Accepted"), translate.ConditionWaypointBound, condition(p.Conditions, translate.ConditionWaypointBound),
				condition(p.Conditions, "ResolvedRefs")))
		}
		want := []string{
			"warren.dev/waypoint-controller reviews: Accepted True/Accepted, warren.dev/WaypointBound True/WaypointBound, ResolvedRefs True/ResolvedRefs",
			"warren.dev/waypoint-controller missing: Accepted False/NoMatchingParent, warren.dev/WaypointBound absent, ResolvedRefs True/ResolvedRefs",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			return "(-want +got)\n" + diff
		}
		return ""
	})

	store, _ := cl.subscribeWaypoint(t, cl.tokenIn(t, ns, "wp", "wp-0"))
	eventually(t, "the waypoint receives the route", func() string {
		v := store.Load()
		if v == nil {
			return "no config"
		}
		for _, r := range v.Snapshot().GetRoutes() {
			if r.GetNamespace() == ns && r.GetName() == "reviews" && len(r.GetParents()) == 1 && r.GetParents()[0].GetService() == ns+"/reviews" {
				return ""
			}
		}
		return fmt.Sprintf("routes %v", v.Snapshot().GetRoutes())
	})

	_, cs := cl.subscribeWaypoint(t, cl.tokenIn(t, ns, "app", "app-0"))
	eventually(t, "a non-waypoint account is refused as a waypoint", func() string {
		if st := cs.Status(); !strings.Contains(st.LastError, "Unauthenticated") {
			return fmt.Sprintf("status %+v; want Unauthenticated", st)
		}
		return ""
	})
}
