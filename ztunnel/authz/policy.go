package authz

import (
	"net/netip"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// DefaultPolicy gives a [nodeconfig.DefaultPolicy] the names users write in the
// warren.dev/default-inbound-policy annotation and in a Server's accessPolicy.
type DefaultPolicy nodeconfig.DefaultPolicy

// String returns the policy's user-facing name; see [nodeconfig.DefaultPolicy.Name].
func (p DefaultPolicy) String() string { return nodeconfig.DefaultPolicy(p).Name() }

// ParseDefaultPolicy parses a user-facing name such as "cluster-authenticated"; see
// [nodeconfig.ParseDefaultPolicy].
func ParseDefaultPolicy(s string) (nodeconfig.DefaultPolicy, error) {
	return nodeconfig.ParseDefaultPolicy(s)
}

// known reports whether p is one of the six policies (not unspecified, not an unknown number).
func known(p nodeconfig.DefaultPolicy) bool {
	return p >= nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED &&
		p <= nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT
}

// applyDefault decides a connection by a default policy p, which must be known.
// why is empty when the policy allows; when it denies, it is the cause (without the policy name).
// why may allocate: it is only built on the deny path.
func (e *Engine) applyDefault(p nodeconfig.DefaultPolicy, src Source, addr netip.Addr) (allow bool, why string) {
	switch p {
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED,
		nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT:
		return true, ""
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED:
		if src.Identity.IsZero() {
			return false, "client has no mesh identity"
		}
		return true, ""
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED:
		if src.Identity.IsZero() {
			return false, "client has no mesh identity"
		}
		if !e.inCluster(addr) {
			return false, outsideCluster(addr)
		}
		return true, ""
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED:
		if !e.inCluster(addr) {
			return false, outsideCluster(addr)
		}
		return true, ""
	default: // DENY; unknown values never get here.
		return false, ""
	}
}

func (e *Engine) inCluster(addr netip.Addr) bool {
	for _, p := range e.clusterNetworks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func outsideCluster(addr netip.Addr) string {
	if !addr.IsValid() {
		return "client address unknown"
	}
	return "address " + addr.String() + " outside cluster networks"
}
