// Package translate computes Warren's node config from cluster state. It turns Namespaces, Pods,
// Services, EndpointSlices, the policy.warren.dev resources, Gateway API routes (compiled into
// Snapshot.routes for waypoints), ReferenceGrants and waypoint Gateways into one mesh-wide
// [nodeconfig.Snapshot] plus the status of every policy resource and route ([Translate]). controller/push cuts that snapshot down to what each node's ztunnel
// needs (push.Relevant).
//
// The package is pure and deterministic: no client, no I/O, no clock, no logging. Equal inputs
// give equal outputs, Snapshot.Version included, whatever the order of the input slices.
// Translation never fails: an object that cannot be used is dropped, failing closed wherever
// dropping it could open a port, and the reason lands in Output.Status (policy resources) or
// Output.Warnings (everything else) for the caller to write, log or emit as events.
//
// Outputs must be treated as immutable.
//
// The controller imports it to compute what it pushes; the kubectl plugin may import it to
// explain a decision from objects it read itself. The data plane must not: it depends on
// k8s.io/*, and consumes only the nodeconfig contract.
package translate

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
)

// Labels and annotations Warren reads (MISSION.md, "Fixed names").
const (
	// LabelDataplaneMode on a Namespace or Pod: "ambient" joins the mesh, "none" (on a Pod)
	// opts out of an ambient namespace.
	LabelDataplaneMode = "warren.dev/dataplane-mode"
	// LabelUseWaypoint on a Namespace, Service or Pod names the waypoint Gateway (in the same
	// namespace) that serves it; "none" on a Service or Pod opts out of the namespace's.
	LabelUseWaypoint = "warren.dev/use-waypoint"
	// AnnotationDefaultInboundPolicy on a Namespace or Pod overrides the mesh default inbound
	// policy for ports no Server covers.
	AnnotationDefaultInboundPolicy = "warren.dev/default-inbound-policy"

	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"

	// WaypointClassName is the gatewayClassName of waypoint Gateways.
	WaypointClassName = "warren-waypoint"
	// ClusterDomain is the DNS suffix of Service hostnames.
	ClusterDomain = "cluster.local"
)

// Kinds of the policy resources that get status conditions, as used in ObjectRef.Kind.
const (
	KindServer                = "Server"
	KindAuthorizationPolicy   = "AuthorizationPolicy"
	KindMeshTLSAuthentication = "MeshTLSAuthentication"
	KindNetworkAuthentication = "NetworkAuthentication"
)

// Condition reasons this package sets in addition to those of api/policy/v1alpha1.
const (
	// ReasonConflict: a Server covers a pod port an older Server already covers.
	ReasonConflict = "Conflict"
	// ReasonAuthenticationNotFound: a requiredAuthenticationRef names a missing object.
	ReasonAuthenticationNotFound = "AuthenticationNotFound"
	// ReasonAuthenticationInvalid: a requiredAuthenticationRef names an object with nothing
	// usable in it (every identity or network invalid).
	ReasonAuthenticationInvalid = "AuthenticationInvalid"
	// ReasonTargetNotAccepted: an AuthorizationPolicy targets a Server that exists but is not
	// accepted (invalid, or in conflict with an older Server).
	ReasonTargetNotAccepted = "TargetNotAccepted"
)

// Input is the cluster state to translate. Slices may be in any order; nothing is modified.
// Objects are expected to be unique by namespace and name (pods also by uid), as an API server
// guarantees; of duplicates, the first in namespace/name/uid order wins.
type Input struct {
	// TrustDomain of the mesh's SPIFFE IDs; "" means cluster.local.
	TrustDomain string
	// Defaults are the install-time defaults (cluster default policy and cluster networks),
	// copied into the snapshot as they are. Nil means none.
	Defaults *nodeconfig.MeshDefaults
	// TrustBundle is the PEM of the trusted roots, copied into the snapshot.
	TrustBundle string

	Namespaces     []corev1.Namespace
	Pods           []corev1.Pod
	Services       []corev1.Service
	EndpointSlices []discoveryv1.EndpointSlice

	Servers                []policyv1alpha1.Server
	AuthorizationPolicies  []policyv1alpha1.AuthorizationPolicy
	MeshTLSAuthentications []policyv1alpha1.MeshTLSAuthentication
	NetworkAuthentications []policyv1alpha1.NetworkAuthentication

	HTTPRoutes []gatewayv1.HTTPRoute
	GRPCRoutes []gatewayv1.GRPCRoute
	Gateways   []gatewayv1.Gateway
	// ReferenceGrants allow routes to use backend Services in other namespaces.
	ReferenceGrants []gatewayv1.ReferenceGrant
}

// ObjectRef names a policy resource in Output.Status.
type ObjectRef struct {
	Kind      string // KindServer, KindAuthorizationPolicy, ...
	Namespace string
	Name      string
}

func (r ObjectRef) String() string { return r.Kind + " " + r.Namespace + "/" + r.Name }

// Output is the result of Translate.
type Output struct {
	// Mesh is the mesh-wide snapshot: every workload, service and valid Server, sorted (workloads
	// by uid, services and servers by namespace/name), with a content hash as Version.
	Mesh *nodeconfig.Snapshot
	// Status holds the conditions of every policy resource of the input: Accepted and then
	// ResolvedRefs, with ObservedGeneration set and LastTransitionTime zero (the caller sets
	// it, e.g. with meta.SetStatusCondition, which keeps it while the status is unchanged).
	Status map[ObjectRef][]metav1.Condition
	// RouteStatus holds status.parents of every HTTPRoute and GRPCRoute (ObjectRef.Kind
	// KindHTTPRoute or KindGRPCRoute) with at least one parentRef of Warren's (a core Service or
	// a policy.warren.dev Server): one entry per such parentRef, in spec order, with
	// ControllerName, and the conditions Accepted (plus PartiallyInvalid when rules were
	// dropped, and ConditionWaypointBound when accepted) and ResolvedRefs, ObservedGeneration
	// set and LastTransitionTime zero. Parents of other kinds (Gateways) are left to their
	// controllers.
	RouteStatus map[ObjectRef][]gatewayv1.RouteParentStatus
	// Warnings are problems with objects that have no status to report them in (pods,
	// namespaces, services, waypoint bindings), sorted and without duplicates. Each names the
	// object, e.g. `pod default/a: annotation warren.dev/default-inbound-policy: ...`.
	Warnings []string
}

// Translate computes the mesh-wide snapshot and the policy status conditions from in.
func Translate(in *Input) *Output {
	if in == nil {
		in = &Input{}
	}
	t := newTranslator(in)
	t.indexNamespaces()
	t.indexGateways()
	t.translatePods()
	t.translateServices()
	t.translateAuthentications()
	t.translateServers()
	t.translateAuthorizations()
	t.translateRoutes()
	return t.finish()
}

// version hashes the deterministic wire form of s (whose Version must be empty).
func version(s *nodeconfig.Snapshot) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		// Marshalling only fails on invalid UTF-8, which Kubernetes object names and our
		// own strings cannot contain; hash nothing rather than fail.
		b = nil
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// nsName is a namespaced name, used as a map key.
type nsName struct{ ns, name string }

func (n nsName) String() string { return n.ns + "/" + n.name }

func compareObjects(a, b *metav1.ObjectMeta) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
}
