package nodeconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Names of the default policies, as users write them in the warren.dev/default-inbound-policy
// annotation and in a Server's accessPolicy.
const (
	PolicyAllUnauthenticated     = "all-unauthenticated"
	PolicyAllAuthenticated       = "all-authenticated"
	PolicyClusterAuthenticated   = "cluster-authenticated"
	PolicyClusterUnauthenticated = "cluster-unauthenticated"
	PolicyDeny                   = "deny"
	PolicyAudit                  = "audit"
)

// Name returns the policy's user-facing name ("all-unauthenticated", "deny", ...), "unspecified"
// for DEFAULT_POLICY_UNSPECIFIED and "DefaultPolicy(N)" for unknown values. The names are stable:
// they appear in logs, metrics and golden files.
func (p DefaultPolicy) Name() string {
	switch p {
	case DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED:
		return "unspecified"
	case DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED:
		return PolicyAllUnauthenticated
	case DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED:
		return PolicyAllAuthenticated
	case DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED:
		return PolicyClusterAuthenticated
	case DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED:
		return PolicyClusterUnauthenticated
	case DefaultPolicy_DEFAULT_POLICY_DENY:
		return PolicyDeny
	case DefaultPolicy_DEFAULT_POLICY_AUDIT:
		return PolicyAudit
	}
	return fmt.Sprintf("DefaultPolicy(%d)", int32(p))
}

// ParseDefaultPolicy parses a user-facing name such as "cluster-authenticated". Names are
// case-sensitive; there is no way to spell "unspecified".
func ParseDefaultPolicy(s string) (DefaultPolicy, error) {
	for _, p := range []DefaultPolicy{
		DefaultPolicy_DEFAULT_POLICY_ALL_UNAUTHENTICATED, DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED,
		DefaultPolicy_DEFAULT_POLICY_CLUSTER_AUTHENTICATED, DefaultPolicy_DEFAULT_POLICY_CLUSTER_UNAUTHENTICATED,
		DefaultPolicy_DEFAULT_POLICY_DENY, DefaultPolicy_DEFAULT_POLICY_AUDIT,
	} {
		if p.Name() == s {
			return p, nil
		}
	}
	return DefaultPolicy_DEFAULT_POLICY_UNSPECIFIED,
		fmt.Errorf("unknown default policy %q (want all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit)", s)
}

// ParseNetwork parses a Network's cidr or except entry: a CIDR or a bare IP (as a /32 or
// /128). Host bits are masked, and IPv4-mapped IPv6 prefixes become IPv4 prefixes, since client
// addresses are unmapped before they are matched.
func ParseNetwork(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("empty")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, err
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("zones are not allowed")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, errors.New("IPv4-mapped prefix shorter than /96")
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}
