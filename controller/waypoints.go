package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/controller/translate"
)

// WaypointConfig says how the controller runs the waypoint of each Gateway of class
// warren-waypoint.
type WaypointConfig struct {
	// Image of the warren-waypoint container; empty means "warren-waypoint".
	Image string
	// ControllerAddr and CAAddr are the push and CSR addresses a waypoint pod dials (e.g.
	// "warren-controller.warren-system.svc:15012" and ":15013").
	ControllerAddr, CAAddr string
	// Audience of the projected ServiceAccount token the waypoint presents; empty means
	// "warren-ca".
	Audience string
	// ControllerIdentity is the SPIFFE ID the waypoint verifies the controller as; empty leaves
	// the waypoint's default.
	ControllerIdentity string
	// Plaintext makes waypoints talk to the controller without TLS (development only).
	Plaintext bool
}

// Waypoint resource conventions.
const (
	// waypointHBONEPort, waypointMetricsPort and waypointReadyPort are the waypoint pod's ports.
	waypointHBONEPort   = 15008
	waypointMetricsPort = 15020
	waypointReadyPort   = 15021
	// tokenDir and rootDir are where the waypoint finds its token and the controller's roots
	// (its flags' defaults).
	tokenDir = "/var/run/secrets/tokens"
	rootDir  = "/var/run/secrets/warren"
	// annotationSpecHash on a waypoint Deployment records the pod template the controller last
	// wrote, so an unchanged template is not rewritten (the API server defaults fields in it).
	annotationSpecHash = "warren.dev/waypoint-spec-hash"
	// fieldManager names the controller's writes.
	fieldManager = "warren-controller"
)

// waypointReconciler deploys the waypoint of each warren-waypoint Gateway (ServiceAccount,
// Deployment, ClusterIP Service and root ConfigMap, all owned by the Gateway) and writes the
// Gateway's status: its address (the Service's ClusterIP), Accepted, and Programmed once the
// Deployment has an available replica. It also accepts GatewayClasses whose controllerName is
// Warren's.
type waypointReconciler struct {
	c       client.Client
	scheme  *runtime.Scheme
	cfg     WaypointConfig
	td      string
	bundle  func() string // the CA's roots, PEM; "" without a CA
	classes *gatewayClassReconciler
}

func registerWaypoints(mgr manager.Manager, r *waypointReconciler) error {
	ours := predicate.NewPredicateFuncs(func(o client.Object) bool {
		g, ok := o.(*gatewayv1.Gateway)
		return ok && g.Spec.GatewayClassName == translate.WaypointClassName
	})
	err := builder.ControllerManagedBy(mgr).Named("waypoints").
		For(&gatewayv1.Gateway{}, builder.WithPredicates(ours)).
		// The Deployment and Service feed the status. The ServiceAccount and ConfigMap are
		// repaired on the next Gateway, Deployment or Service event: watching every ConfigMap
		// of the cluster would cost more memory than it is worth.
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Complete(r)
	if err != nil {
		return fmt.Errorf("waypoint controller: %w", err)
	}
	err = builder.ControllerManagedBy(mgr).Named("gatewayclasses").
		For(&gatewayv1.GatewayClass{}).
		Complete(r.classes)
	if err != nil {
		return fmt.Errorf("gatewayclass controller: %w", err)
	}
	return nil
}

// Reconcile implements reconcile.Reconciler for one Gateway.
func (r *waypointReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var gw gatewayv1.Gateway
	if err := r.c.Get(ctx, req.NamespacedName, &gw); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if gw.Spec.GatewayClassName != translate.WaypointClassName || gw.DeletionTimestamp != nil {
		return reconcile.Result{}, nil // owned objects go with the Gateway (garbage collection)
	}
	objs := r.desired(&gw)
	for _, o := range objs {
		if err := r.apply(ctx, &gw, o); err != nil {
			return reconcile.Result{}, err
		}
	}
	return reconcile.Result{}, r.writeStatus(ctx, &gw)
}

// waypointObjects are the objects a waypoint Gateway owns, as the controller wants them.
type waypointObjects struct {
	sa     *corev1.ServiceAccount
	roots  *corev1.ConfigMap
	deploy *appsv1.Deployment
	svc    *corev1.Service
}

func rootsName(gw string) string { return gw + "-ca-root" }

// desired returns the owned objects: pure, from the Gateway and the config.
func (r *waypointReconciler) desired(gw *gatewayv1.Gateway) []client.Object {
	o := buildWaypoint(gw, r.cfg, r.td, r.bundle())
	return []client.Object{o.sa, o.roots, o.svc, o.deploy}
}

func buildWaypoint(gw *gatewayv1.Gateway, cfg WaypointConfig, td, bundle string) waypointObjects {
	ns, name := gw.Namespace, gw.Name
	labels := map[string]string{
		gatewayv1.GatewayNameLabelKey:  name,
		"app.kubernetes.io/name":       "warren-waypoint",
		"app.kubernetes.io/managed-by": "warren-controller",
	}
	om := func(n string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: ns, Name: n, Labels: labels}
	}
	image := cfg.Image
	if image == "" {
		image = "warren-waypoint"
	}
	audience := cfg.Audience
	if audience == "" {
		audience = "warren-ca"
	}
	args := []string{
		"--controller=" + cfg.ControllerAddr,
		"--ca-addr=" + cfg.CAAddr,
		"--trust-domain=" + td,
		"--ca-root-file=" + rootDir + "/ca.crt",
		"--token-file=" + tokenDir + "/" + audience,
	}
	if cfg.ControllerIdentity != "" {
		args = append(args, "--controller-identity="+cfg.ControllerIdentity)
	}
	if cfg.Plaintext {
		args = append(args, "--plaintext")
	}
	fieldEnv := func(n, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: n, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	pod := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName:           name,
			AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{
				Name:  "waypoint",
				Image: image,
				Args:  args,
				Env: []corev1.EnvVar{
					fieldEnv("POD_NAMESPACE", "metadata.namespace"),
					fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
					fieldEnv("NODE_NAME", "spec.nodeName"),
				},
				Ports: []corev1.ContainerPort{
					{Name: "hbone", ContainerPort: waypointHBONEPort, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: waypointMetricsPort, Protocol: corev1.ProtocolTCP},
					{Name: "ready", ContainerPort: waypointReadyPort, Protocol: corev1.ProtocolTCP},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/healthz/ready", Port: intstr.FromInt32(waypointReadyPort),
				}}},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "token", MountPath: tokenDir, ReadOnly: true},
					{Name: "roots", MountPath: rootDir, ReadOnly: true},
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: audience, ExpirationSeconds: ptr.To[int64](3600), Path: audience},
				}}}}},
				{Name: "roots", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: rootsName(name)},
				}}},
			},
		},
	}
	return waypointObjects{
		sa:    &corev1.ServiceAccount{ObjectMeta: om(name)},
		roots: &corev1.ConfigMap{ObjectMeta: om(rootsName(name)), Data: map[string]string{"ca.crt": bundle}},
		svc: &corev1.Service{ObjectMeta: om(name), Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{gatewayv1.GatewayNameLabelKey: name},
			Ports: []corev1.ServicePort{{
				Name: "hbone", Port: waypointHBONEPort, TargetPort: intstr.FromInt32(waypointHBONEPort),
				Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("hbone"),
			}},
		}},
		deploy: &appsv1.Deployment{ObjectMeta: om(name), Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{gatewayv1.GatewayNameLabelKey: name}},
			Template: pod,
		}},
	}
}

// specHash hashes what the controller sets in a pod template.
func specHash(t *corev1.PodTemplateSpec) string {
	b, err := json.Marshal(t)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// apply creates want, or updates the fields the controller owns, owned by gw.
func (r *waypointReconciler) apply(ctx context.Context, gw *gatewayv1.Gateway, want client.Object) error {
	obj := want.DeepCopyObject().(client.Object)
	obj.SetLabels(nil)
	kind := strings.TrimPrefix(fmt.Sprintf("%T", want), "*v1.")
	_, err := controllerutil.CreateOrUpdate(ctx, client.WithFieldOwner(r.c, fieldManager), obj, func() error {
		labels := obj.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		for k, v := range want.GetLabels() {
			labels[k] = v
		}
		obj.SetLabels(labels)
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			o.Data = want.(*corev1.ConfigMap).Data
		case *corev1.Service:
			w := want.(*corev1.Service)
			o.Spec.Type, o.Spec.Selector, o.Spec.Ports = w.Spec.Type, w.Spec.Selector, w.Spec.Ports
		case *appsv1.Deployment:
			w := want.(*appsv1.Deployment)
			if o.CreationTimestamp.IsZero() {
				o.Spec.Replicas = w.Spec.Replicas // later, leave scaling to the user (or an HPA)
				o.Spec.Selector = w.Spec.Selector // immutable
			}
			if h := specHash(&w.Spec.Template); o.Annotations[annotationSpecHash] != h {
				o.Spec.Template = w.Spec.Template
				metav1.SetMetaDataAnnotation(&o.ObjectMeta, annotationSpecHash, h)
			}
		}
		return controllerutil.SetControllerReference(gw, obj, r.scheme)
	})
	if err != nil {
		return fmt.Errorf("waypoint %s/%s: apply %s %s: %w", gw.Namespace, gw.Name, kind, want.GetName(), err)
	}
	return nil
}

// writeStatus sets the Gateway's address and its Accepted and Programmed conditions.
func (r *waypointReconciler) writeStatus(ctx context.Context, gw *gatewayv1.Gateway) error {
	key := client.ObjectKey{Namespace: gw.Namespace, Name: gw.Name}
	var svc corev1.Service
	if err := r.c.Get(ctx, key, &svc); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("waypoint %s: get service: %w", key, err)
	}
	var dep appsv1.Deployment
	if err := r.c.Get(ctx, key, &dep); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("waypoint %s: get deployment: %w", key, err)
	}
	next := gw.Status.DeepCopy()
	next.Addresses = nil
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			next.Addresses = append(next.Addresses, gatewayv1.GatewayStatusAddress{Type: ptr.To(gatewayv1.IPAddressType), Value: ip})
		}
	}
	accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "waypoint deployed as Deployment and Service " + gw.Name}
	if !hasHBONEListener(gw) {
		accepted = metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionFalse,
			Reason:  string(gatewayv1.GatewayReasonListenersNotValid),
			Message: fmt.Sprintf("a waypoint needs a listener on port %d with protocol HBONE; it is deployed, but clients reach it only there", waypointHBONEPort)}
	}
	programmed := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonProgrammed), Message: fmt.Sprintf("%d of %d replicas available", dep.Status.AvailableReplicas, ptr.Deref(dep.Spec.Replicas, 1))}
	switch {
	case len(next.Addresses) == 0:
		programmed = metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
			Reason: string(gatewayv1.GatewayReasonAddressNotAssigned), Message: "waiting for Service " + gw.Name + " to get a cluster IP"}
	case dep.Status.AvailableReplicas < 1:
		programmed = metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
			Reason: string(gatewayv1.GatewayReasonPending), Message: "waiting for Deployment " + gw.Name + " to have an available replica"}
	}
	for _, c := range []metav1.Condition{accepted, programmed} {
		c.ObservedGeneration = gw.Generation
		meta.SetStatusCondition(&next.Conditions, c)
	}
	if equality.Semantic.DeepEqual(&gw.Status, next) {
		return nil
	}
	gw.Status = *next
	if err := r.c.Status().Update(ctx, gw, client.FieldOwner(fieldManager)); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // a newer version is coming through the watch
		}
		return fmt.Errorf("waypoint %s: update gateway status: %w", key, err)
	}
	return nil
}

func hasHBONEListener(gw *gatewayv1.Gateway) bool {
	for _, l := range gw.Spec.Listeners {
		if l.Port == waypointHBONEPort && l.Protocol == "HBONE" {
			return true
		}
	}
	return false
}

// gatewayClassReconciler accepts the GatewayClasses whose controllerName is Warren's.
type gatewayClassReconciler struct {
	c client.Client
}

// Reconcile implements reconcile.Reconciler for one GatewayClass.
func (r *gatewayClassReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var gc gatewayv1.GatewayClass
	if err := r.c.Get(ctx, req.NamespacedName, &gc); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if gc.Spec.ControllerName != translate.ControllerName {
		return reconcile.Result{}, nil
	}
	cond := metav1.Condition{Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayClassReasonAccepted), ObservedGeneration: gc.Generation,
		Message: "handled by warren-controller: Gateways of this class are waypoints"}
	if gc.Name != translate.WaypointClassName {
		cond.Status, cond.Reason = metav1.ConditionFalse, string(gatewayv1.GatewayClassReasonUnsupported)
		cond.Message = fmt.Sprintf("warren-controller serves only the GatewayClass named %q", translate.WaypointClassName)
	}
	next := gc.Status.DeepCopy()
	meta.SetStatusCondition(&next.Conditions, cond)
	if equality.Semantic.DeepEqual(&gc.Status, next) {
		return reconcile.Result{}, nil
	}
	gc.Status = *next
	if err := r.c.Status().Update(ctx, &gc, client.FieldOwner(fieldManager)); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, fmt.Errorf("gatewayclass %s: update status: %w", gc.Name, err)
	}
	return reconcile.Result{}, nil
}

// bundleFunc returns the CA's roots as PEM, or "" without a CA.
func bundleFunc(authority *ca.CA) func() string {
	return func() string {
		if authority == nil {
			return ""
		}
		return ca.BundlePEM(authority.Bundle())
	}
}
