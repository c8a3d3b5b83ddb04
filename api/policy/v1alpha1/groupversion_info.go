package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of Warren's policy resources.
const GroupName = "policy.warren.dev"

// SchemeGroupVersion is the group and version of the types in this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// Resource returns the group-qualified resource for an unqualified resource
// name such as "servers".
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

// AddToScheme registers the types of this package with s. Nothing registers
// them implicitly: callers build their own scheme and call this.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&Server{}, &ServerList{},
		&AuthorizationPolicy{}, &AuthorizationPolicyList{},
		&MeshTLSAuthentication{}, &MeshTLSAuthenticationList{},
		&NetworkAuthentication{}, &NetworkAuthenticationList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
