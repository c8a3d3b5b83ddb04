package ca

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// WorkloadID returns the identity of Kubernetes service account sa in
// namespace ns: spiffe://<td>/ns/<ns>/sa/<sa>. It returns the zero ID when
// td is zero or ns or sa is not a valid SPIFFE path segment (empty, "." or
// "..", or characters outside [a-zA-Z0-9._-]); Kubernetes names always are.
func WorkloadID(td spiffeid.TrustDomain, ns, sa string) spiffeid.ID {
	if td.IsZero() {
		return spiffeid.ID{}
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// ParseWorkloadID returns the namespace and service account of a workload
// identity of the form spiffe://<td>/ns/<ns>/sa/<sa>. It does not check the
// trust domain.
func ParseWorkloadID(id spiffeid.ID) (ns, sa string, err error) {
	if id.IsZero() {
		return "", "", fmt.Errorf("parse workload id: empty id")
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return "", "", fmt.Errorf("parse workload id %s: path %q is not /ns/<namespace>/sa/<serviceaccount>", id, id.Path())
	}
	return seg[1], seg[3], nil
}
