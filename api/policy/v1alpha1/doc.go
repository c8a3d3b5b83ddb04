// Package v1alpha1 holds the Go types of Warren's policy API,
// policy.warren.dev/v1alpha1: Server, AuthorizationPolicy,
// MeshTLSAuthentication and NetworkAuthentication. They are shaped like
// Linkerd's policy.linkerd.io resources so its users' habits carry over.
//
// A Server names a port on a set of pods and says what happens to traffic to it
// that no AuthorizationPolicy allows (its accessPolicy, deny by default). An
// AuthorizationPolicy allows traffic to a target (a Server, an HTTPRoute or
// GRPCRoute, or a whole Namespace) from clients that satisfy every one of its
// requiredAuthenticationRefs: at most one identity (a MeshTLSAuthentication or
// a ServiceAccount) and at most one NetworkAuthentication. Policies are
// additive allows; there is no deny rule.
//
// The package is the API contract: it holds types, constants and the kubebuilder
// markers from which controller-gen generates the CRDs in manifests/crds and
// zz_generated.deepcopy.go (run `make generate`). The CEL rules in the markers
// reject malformed objects at admission; checks that need other objects (does
// the target exist?) are the controller's, reported as status conditions.
// It has no behaviour and depends only on k8s.io/apimachinery, so any package
// may import it: the controller, the kubectl plugin and tests.
//
// +kubebuilder:object:generate=true
// +groupName=policy.warren.dev
package v1alpha1
