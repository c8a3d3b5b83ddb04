package authz

import (
	"fmt"
	"net/netip"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// DefaultPolicy gives a [nodeconfig.DefaultPolicy] the names users write in the
// warren.dev/default-inbound-policy annotation and in a Server's accessPolicy.
type DefaultPolicy nodeconfig.DefaultPolicy

// Annotation values of the default policies, as accepted by [ParseDefaultPolicy].
const (
	allUnauthenticated     = "all-unauthenticated"
	allAuthenticated       = "all-authenticated"
	clusterAuthenticated   = "cluster-authenticated"
	clusterUnauthenticated = "cluster-unauthenticated"
	deny                   = "deny"
	audit                  = "audit"
)

// String returns the annotation value ("all-unauthenticated", "deny", ...), "unspecified" for
// DEFAULT_POLICY_UNSPECIFIED and "DefaultPolicy(N)" for values this package does not know. The
// strings are stable: they appear in logs, metrics and golden files.
func (p DefaultPolicy) String() string {
	switch nodeconfig.DefaultPolicy(p) {
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED:
		return "unspecified"
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED:
		return allUnauthenticated
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED:
		return allAuthenticated
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED:
		return clusterAuthenticated
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED:
		return clusterUnauthenticated
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY:
		return deny
	case nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT:
		return audit
	default:
		return fmt.Sprintf("DefaultPolicy(%d)", int32(p))
	}
}

// ParseDefaultPolicy parses an annotation value such as "cluster-authenticated". Values are
// case-sensitive and must be one of the six names; there is no way to spell "unspecified".
func ParseDefaultPolicy(s string) (nodeconfig.DefaultPolicy, error) {
	switch s {
	case allUnauthenticated:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED, nil
	case allAuthenticated:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED, nil
	case clusterAuthenticated:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED, nil
	case clusterUnauthenticated:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED, nil
	case deny:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY, nil
	case audit:
		return nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT, nil
	}
	return nodeconfig.DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED,
		fmt.Errorf("unknown default policy %q (want all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit)", s)
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
