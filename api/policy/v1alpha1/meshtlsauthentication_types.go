package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// IdentityReference names the workloads whose mesh identities authenticate:
// one ServiceAccount, or every ServiceAccount of a Namespace.
//
// +kubebuilder:validation:XValidation:rule="self.kind in ['ServiceAccount', 'Namespace'] && (!has(self.group) || size(self.group) == 0)",message="unsupported identityRef: want kind ServiceAccount or Namespace in the core group (group empty)"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Namespace' || !has(self.namespace)",message="a Namespace identityRef must not set namespace: Namespaces are cluster-scoped"
type IdentityReference struct {
	// group must be empty (the core group).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Group string `json:"group,omitempty"`
	// kind is ServiceAccount or Namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Kind string `json:"kind"`
	// name of the ServiceAccount or Namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// namespace of a ServiceAccount; empty means this resource's namespace.
	// Must be empty for a Namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// MeshTLSAuthenticationSpec lists the mesh identities that authenticate. A
// client matches when its mTLS identity matches any entry (OR).
//
// +kubebuilder:validation:XValidation:rule="(has(self.identities) && size(self.identities) > 0) || (has(self.identityRefs) && size(self.identityRefs) > 0)",message="no identities configured: set identities or identityRefs (at least one entry)"
type MeshTLSAuthenticationSpec struct {
	// identities are SPIFFE IDs (spiffe://cluster.local/ns/NS/sa/SA), or "*"
	// for any authenticated client.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Identities []string `json:"identities,omitempty"`

	// identityRefs name ServiceAccounts, or Namespaces (all their
	// ServiceAccounts), whose identities authenticate.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	IdentityRefs []IdentityReference `json:"identityRefs,omitempty"`
}

// MeshTLSAuthentication is a set of mesh (mTLS) identities an
// AuthorizationPolicy can require.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=warren
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshTLSAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec MeshTLSAuthenticationSpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitempty"`
}

// MeshTLSAuthenticationList is a list of MeshTLSAuthentications.
// +kubebuilder:object:root=true
type MeshTLSAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshTLSAuthentication `json:"items"`
}
