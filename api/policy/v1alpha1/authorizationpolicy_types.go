package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// TargetReference names what an AuthorizationPolicy applies to.
//
// +kubebuilder:validation:XValidation:rule="(self.kind == 'Server' && (has(self.group) && self.group == 'policy.warren.dev')) || (self.kind in ['HTTPRoute', 'GRPCRoute'] && (has(self.group) && self.group == 'gateway.networking.k8s.io')) || (self.kind == 'Namespace' && (!has(self.group) || size(self.group) == 0))",message="unsupported targetRef: want kind Server in group policy.warren.dev, HTTPRoute or GRPCRoute in group gateway.networking.k8s.io, or Namespace in the core group (group empty)"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Namespace' || !has(self.namespace)",message="a Namespace targetRef must not set namespace: Namespaces are cluster-scoped"
type TargetReference struct {
	// group is the target's API group; empty (the default) is the core group.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Group string `json:"group,omitempty"`
	// kind is Server, HTTPRoute, GRPCRoute or Namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Kind string `json:"kind"`
	// name is the target's name. A Namespace target must be the policy's own
	// namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// namespace of the target; empty means the policy's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// AuthenticationReference names an authentication a client must satisfy.
//
// +kubebuilder:validation:XValidation:rule="(self.kind in ['MeshTLSAuthentication', 'NetworkAuthentication'] && (has(self.group) && self.group == 'policy.warren.dev')) || (self.kind == 'ServiceAccount' && (!has(self.group) || size(self.group) == 0))",message="unsupported authentication kind: want MeshTLSAuthentication or NetworkAuthentication in group policy.warren.dev, or ServiceAccount in the core group (group empty)"
type AuthenticationReference struct {
	// group is the API group; empty (the default) is the core group.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Group string `json:"group,omitempty"`
	// kind is MeshTLSAuthentication, NetworkAuthentication or ServiceAccount.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Kind string `json:"kind"`
	// name of the referenced object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// namespace of the referenced object; empty means the policy's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// AuthorizationPolicySpec allows traffic to a target from the clients that
// satisfy all of its required authentications.
type AuthorizationPolicySpec struct {
	// targetRef is the Server, HTTPRoute, GRPCRoute or Namespace (every Server
	// and route in it) the policy applies to.
	// +required
	TargetRef TargetReference `json:"targetRef"`

	// requiredAuthenticationRefs must all be satisfied (AND): at most one
	// identity (a MeshTLSAuthentication or a ServiceAccount) and at most one
	// NetworkAuthentication. Without an identity, unauthenticated clients
	// match; without a NetworkAuthentication, every network matches.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.filter(r, r.kind in ['MeshTLSAuthentication', 'ServiceAccount']).size() <= 1",message="at most one identity authentication (a MeshTLSAuthentication or a ServiceAccount) may be required; list the identities in one MeshTLSAuthentication"
	// +kubebuilder:validation:XValidation:rule="self.filter(r, r.kind == 'NetworkAuthentication').size() <= 1",message="at most one NetworkAuthentication may be required; list the networks in one NetworkAuthentication"
	RequiredAuthenticationRefs []AuthenticationReference `json:"requiredAuthenticationRefs,omitempty"`
}

// AuthorizationPolicy allows traffic to a Server, route or namespace from
// clients that satisfy its required authentications. Policies on the same
// target are ORed; there is no deny rule.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=warren
// +kubebuilder:printcolumn:name="Target Kind",type=string,JSONPath=`.spec.targetRef.kind`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.targetRef.name`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec AuthorizationPolicySpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicies.
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}
