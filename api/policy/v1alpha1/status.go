package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Condition types the controller sets on every policy resource.
const (
	// ConditionAccepted is True when the controller compiled the resource into
	// node config; False with a reason and message when it could not.
	ConditionAccepted = "Accepted"
	// ConditionResolvedRefs is True when every object the resource refers to
	// (target, authentications, identities) exists; False names the missing one.
	ConditionResolvedRefs = "ResolvedRefs"
)

// Condition reasons. A False condition's message says what to fix.
const (
	ReasonAccepted       = "Accepted"
	ReasonInvalid        = "Invalid"
	ReasonResolvedRefs   = "ResolvedRefs"
	ReasonTargetNotFound = "TargetNotFound"
	ReasonRefNotFound    = "RefNotFound"
)

// Status is the observed state of a policy resource, written by the controller.
type Status struct {
	// conditions are the Accepted and ResolvedRefs conditions.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}
