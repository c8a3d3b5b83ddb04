package controller

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/translate"
)

// meshReconciler recomputes the node config from the whole cache and pushes it.
type meshReconciler struct {
	c    client.Client
	push *push.Server
	cfg  Config
	log  *slog.Logger
	// isLeader says whether this replica may write status (only the elected leader does).
	isLeader func() bool

	translateSeconds prometheus.Histogram
	statusWrites     prometheus.Counter
	lastVersion      string
	lastWarnings     map[string]bool
}

func newReconciler(c client.Client, ps *push.Server, cfg Config, log *slog.Logger) (*meshReconciler, error) {
	r := &meshReconciler{
		c: c, push: ps, cfg: cfg, log: log,
		translateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "warren_controller_translate_seconds",
			Help:    "Time to list the cache and translate the cluster into node config.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_controller_status_writes_total",
			Help: "Status updates written to policy resources.",
		}),
	}
	for _, c := range []prometheus.Collector{r.translateSeconds, r.statusWrites} {
		if err := cfg.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return r, nil
}

// Reconcile implements reconcile.Reconciler for the single mesh key.
func (r *meshReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	start := time.Now()
	in, err := r.input(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	out := translate.Translate(in)
	r.translateSeconds.Observe(time.Since(start).Seconds())
	if v := out.Mesh.GetVersion(); v != r.lastVersion {
		r.push.Update(out.Mesh)
		r.log.Info("config translated", "version", v, "workloads", len(out.Mesh.GetWorkloads()),
			"services", len(out.Mesh.GetServices()), "servers", len(out.Mesh.GetServers()), "took", time.Since(start))
		r.lastVersion = v
	}
	warnings := make(map[string]bool, len(out.Warnings))
	for _, w := range out.Warnings {
		if !r.lastWarnings[w] {
			r.log.Warn("config problem", "problem", w)
		}
		warnings[w] = true
	}
	r.lastWarnings = warnings
	if r.isLeader != nil && !r.isLeader() {
		return reconcile.Result{}, nil // followers push config; the leader writes status
	}
	if err := r.writeStatus(ctx, out.Status); err != nil {
		return reconcile.Result{}, err
	}
	if err := r.writeRouteStatus(ctx, in, out.RouteStatus); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// input lists every watched kind from the cache.
func (r *meshReconciler) input(ctx context.Context) (*translate.Input, error) {
	in := &translate.Input{TrustDomain: r.cfg.TrustDomain, Defaults: r.cfg.Defaults}
	if r.cfg.CA != nil {
		in.TrustBundle = ca.BundlePEM(r.cfg.CA.Bundle())
	}
	var (
		nss  corev1.NamespaceList
		pods corev1.PodList
		svcs corev1.ServiceList
		eps  discoveryv1.EndpointSliceList
		srvs policyv1alpha1.ServerList
		aps  policyv1alpha1.AuthorizationPolicyList
		mtls policyv1alpha1.MeshTLSAuthenticationList
		nets policyv1alpha1.NetworkAuthenticationList
		hrs  gatewayv1.HTTPRouteList
		grs  gatewayv1.GRPCRouteList
		gws  gatewayv1.GatewayList
		rgs  gatewayv1.ReferenceGrantList
	)
	for _, l := range []client.ObjectList{&nss, &pods, &svcs, &eps, &srvs, &aps, &mtls, &nets, &hrs, &grs, &gws, &rgs} {
		if err := r.c.List(ctx, l); err != nil {
			return nil, fmt.Errorf("list %T: %w", l, err)
		}
	}
	in.Namespaces, in.Pods, in.Services, in.EndpointSlices = nss.Items, pods.Items, svcs.Items, eps.Items
	in.Servers, in.AuthorizationPolicies, in.MeshTLSAuthentications, in.NetworkAuthentications = srvs.Items, aps.Items, mtls.Items, nets.Items
	in.HTTPRoutes, in.GRPCRoutes, in.Gateways, in.ReferenceGrants = hrs.Items, grs.Items, gws.Items, rgs.Items
	return in, nil
}

// writeStatus sets the translated conditions on each policy object whose status differs.
func (r *meshReconciler) writeStatus(ctx context.Context, status map[translate.ObjectRef][]metav1.Condition) error {
	for ref, conds := range status {
		obj, st := statusObject(ref.Kind)
		if obj == nil {
			continue
		}
		err := r.c.Get(ctx, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, obj)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("get %s %s/%s: %w", ref.Kind, ref.Namespace, ref.Name, err)
		}
		cur := st(obj)
		next := append([]metav1.Condition(nil), cur.Conditions...)
		for _, c := range conds {
			meta.SetStatusCondition(&next, c)
		}
		if equality.Semantic.DeepEqual(cur.Conditions, next) {
			continue
		}
		cur.Conditions = next
		if err := r.c.Status().Update(ctx, obj); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				continue // a newer version is coming through the watch
			}
			return fmt.Errorf("update status of %s %s/%s: %w", ref.Kind, ref.Namespace, ref.Name, err)
		}
		r.statusWrites.Inc()
	}
	return nil
}

// statusObject returns an empty object of a policy kind and an accessor for its status.
func statusObject(kind string) (client.Object, func(client.Object) *policyv1alpha1.Status) {
	switch kind {
	case "Server":
		return &policyv1alpha1.Server{}, func(o client.Object) *policyv1alpha1.Status { return &o.(*policyv1alpha1.Server).Status }
	case "AuthorizationPolicy":
		return &policyv1alpha1.AuthorizationPolicy{}, func(o client.Object) *policyv1alpha1.Status { return &o.(*policyv1alpha1.AuthorizationPolicy).Status }
	case "MeshTLSAuthentication":
		return &policyv1alpha1.MeshTLSAuthentication{}, func(o client.Object) *policyv1alpha1.Status { return &o.(*policyv1alpha1.MeshTLSAuthentication).Status }
	case "NetworkAuthentication":
		return &policyv1alpha1.NetworkAuthentication{}, func(o client.Object) *policyv1alpha1.Status { return &o.(*policyv1alpha1.NetworkAuthentication).Status }
	}
	return nil, nil
}

// writeRouteStatus sets status.parents of every route: the entries of Warren's controller name
// are replaced by the translated ones (LastTransitionTime kept while a condition's status stays),
// entries of other controllers are kept, and a route Warren no longer has parents on loses
// Warren's entries.
func (r *meshReconciler) writeRouteStatus(ctx context.Context, in *translate.Input, status map[translate.ObjectRef][]gatewayv1.RouteParentStatus) error {
	now := metav1.Now()
	update := func(obj client.Object, cur *gatewayv1.RouteStatus, want []gatewayv1.RouteParentStatus) error {
		next := make([]gatewayv1.RouteParentStatus, 0, len(cur.Parents)+len(want))
		var old []gatewayv1.RouteParentStatus
		for _, p := range cur.Parents {
			if p.ControllerName == translate.ControllerName {
				old = append(old, p)
			} else {
				next = append(next, p)
			}
		}
		for _, w := range want {
			w.Conditions = slices.Clone(w.Conditions)
			var prev []metav1.Condition
			for _, o := range old {
				if equality.Semantic.DeepEqual(o.ParentRef, w.ParentRef) {
					prev = o.Conditions
				}
			}
			for i := range w.Conditions {
				w.Conditions[i].LastTransitionTime = now
				if p := meta.FindStatusCondition(prev, w.Conditions[i].Type); p != nil && p.Status == w.Conditions[i].Status {
					w.Conditions[i].LastTransitionTime = p.LastTransitionTime
				}
			}
			next = append(next, w)
		}
		if len(next) == 0 && len(cur.Parents) == 0 || equality.Semantic.DeepEqual(cur.Parents, next) {
			return nil
		}
		cur.Parents = next
		if err := r.c.Status().Update(ctx, obj); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				return nil // a newer version is coming through the watch
			}
			return fmt.Errorf("update status of %s %s/%s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		r.statusWrites.Inc()
		return nil
	}
	for i := range in.HTTPRoutes {
		hr := in.HTTPRoutes[i].DeepCopy()
		want := status[translate.ObjectRef{Kind: translate.KindHTTPRoute, Namespace: hr.Namespace, Name: hr.Name}]
		if err := update(hr, &hr.Status.RouteStatus, want); err != nil {
			return err
		}
	}
	for i := range in.GRPCRoutes {
		gr := in.GRPCRoutes[i].DeepCopy()
		want := status[translate.ObjectRef{Kind: translate.KindGRPCRoute, Namespace: gr.Namespace, Name: gr.Name}]
		if err := update(gr, &gr.Status.RouteStatus, want); err != nil {
			return err
		}
	}
	return nil
}
