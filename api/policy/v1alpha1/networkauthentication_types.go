package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Network is a range of client addresses: cidr minus every except.
//
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !(isCIDR(self.cidr) || isIP(self.cidr)) || self.except.all(e, !(isCIDR(e) || isIP(e)) || (isCIDR(self.cidr) && (isCIDR(e) ? (cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()) : (cidr(self.cidr).containsIP(e) && cidr(self.cidr).prefixLength() < (ip(e).family() == 4 ? 32 : 128)))))",message="each except must be a strictly smaller range inside cidr: an except outside cidr has no effect and one covering all of cidr negates it"
type Network struct {
	// cidr is a CIDR (10.0.0.0/8, fd00::/8) or a single IP address.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) || isIP(self)",message="cidr must be an IP address or a CIDR such as 10.0.0.0/8 or fd00::/8"
	CIDR string `json:"cidr"`

	// except are addresses or CIDRs inside cidr that do not match.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.all(e, isCIDR(e) || isIP(e))",message="each except must be an IP address or a CIDR such as 10.1.0.0/16"
	Except []string `json:"except,omitempty"`
}

// NetworkAuthenticationSpec lists the networks that authenticate. A client
// matches when its address is in any network (OR).
//
// +kubebuilder:validation:XValidation:rule="has(self.networks) && size(self.networks) > 0",message="no networks configured: networks must list at least one network"
type NetworkAuthenticationSpec struct {
	// networks the client address must be in; at least one.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Networks []Network `json:"networks,omitempty"`
}

// NetworkAuthentication is a set of client networks an AuthorizationPolicy
// can require.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=warren
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NetworkAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec NetworkAuthenticationSpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitempty"`
}

// NetworkAuthenticationList is a list of NetworkAuthentications.
// +kubebuilder:object:root=true
type NetworkAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NetworkAuthentication `json:"items"`
}
