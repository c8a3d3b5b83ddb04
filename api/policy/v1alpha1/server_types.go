package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ProxyProtocol is how the mesh treats the traffic on a Server's port.
// +kubebuilder:validation:Enum=unknown;HTTP/1;HTTP/2;gRPC;opaque;TLS
type ProxyProtocol string

// ProxyProtocol values.
const (
	// ProxyProtocolUnknown detects the protocol from the first bytes (the default).
	ProxyProtocolUnknown ProxyProtocol = "unknown"
	ProxyProtocolHTTP1   ProxyProtocol = "HTTP/1"
	ProxyProtocolHTTP2   ProxyProtocol = "HTTP/2"
	ProxyProtocolGRPC    ProxyProtocol = "gRPC"
	// ProxyProtocolOpaque is TCP that is proxied without looking inside.
	ProxyProtocolOpaque ProxyProtocol = "opaque"
	// ProxyProtocolTLS is TLS the application terminates itself.
	ProxyProtocolTLS ProxyProtocol = "TLS"
)

// AccessPolicy is what happens to traffic that no AuthorizationPolicy allows.
// The same values name the default inbound policy of ports without a Server
// (annotation warren.dev/default-inbound-policy).
// +kubebuilder:validation:Enum=all-unauthenticated;all-authenticated;cluster-authenticated;cluster-unauthenticated;deny;audit
type AccessPolicy string

// AccessPolicy values.
const (
	// AccessAllUnauthenticated allows every client from any network.
	AccessAllUnauthenticated AccessPolicy = "all-unauthenticated"
	// AccessAllAuthenticated allows any client with a mesh identity.
	AccessAllAuthenticated AccessPolicy = "all-authenticated"
	// AccessClusterAuthenticated allows clients with a mesh identity whose
	// address is in the cluster networks.
	AccessClusterAuthenticated AccessPolicy = "cluster-authenticated"
	// AccessClusterUnauthenticated allows any client in the cluster networks.
	AccessClusterUnauthenticated AccessPolicy = "cluster-unauthenticated"
	// AccessDeny allows nothing (the default of a Server).
	AccessDeny AccessPolicy = "deny"
	// AccessAudit allows everything and logs what deny would have refused.
	AccessAudit AccessPolicy = "audit"
)

// ServerSpec selects a port on a set of pods.
type ServerSpec struct {
	// podSelector selects the pods in the Server's namespace; matchLabels and
	// matchExpressions are ANDed. An empty selector selects every pod.
	// +required
	PodSelector metav1.LabelSelector `json:"podSelector"`

	// port is a port number (1-65535) or the name of a container port in the
	// pod spec; a name may match a different number in each pod.
	// +required
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) != int || (self >= 1 && self <= 65535)",message="port number must be between 1 and 65535"
	// +kubebuilder:validation:XValidation:rule="type(self) == int || (size(self) >= 1 && size(self) <= 15 && self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$') && self.matches('[a-z]') && !self.contains('--'))",message="port name must be an IANA service name: 1-15 lowercase letters, digits and '-', with at least one letter, no '--', not starting or ending with '-'"
	Port intstr.IntOrString `json:"port"`

	// proxyProtocol says how to treat the port's traffic; unknown (the default)
	// detects it.
	// +optional
	// +kubebuilder:default=unknown
	ProxyProtocol ProxyProtocol `json:"proxyProtocol,omitempty"`

	// accessPolicy applies to traffic that no AuthorizationPolicy allows;
	// deny by default. audit allows it and logs it as a security event.
	// +optional
	// +kubebuilder:default=deny
	AccessPolicy AccessPolicy `json:"accessPolicy,omitempty"`
}

// Server is a port on a set of pods that AuthorizationPolicies and
// HTTPRoutes attach to. Once a Server exists, traffic to its port is refused
// unless a policy allows it or its accessPolicy does.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=warren
// +kubebuilder:printcolumn:name="Port",type=string,JSONPath=`.spec.port`
// +kubebuilder:printcolumn:name="Protocol",type=string,JSONPath=`.spec.proxyProtocol`
// +kubebuilder:printcolumn:name="Access",type=string,JSONPath=`.spec.accessPolicy`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Server struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ServerSpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitempty"`
}

// ServerList is a list of Servers.
// +kubebuilder:object:root=true
type ServerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Server `json:"items"`
}
