package pool_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca/catest"
)

// testCA adapts the in-memory test CA to the short forms these tests use.
type testCA struct {
	*catest.CA
	td spiffeid.TrustDomain
}

func newTestCA(tb testing.TB, td string) *testCA {
	c := catest.New(tb, td)
	return &testCA{CA: c, td: c.TrustDomain()}
}

func (ca *testCA) bundle() *x509bundle.Bundle { return ca.Bundle() }

// svid issues a certificate for spiffe://<td>/ns/<ns>/sa/<sa>.
func (ca *testCA) svid(tb testing.TB, ns, sa string) *x509svid.SVID {
	tb.Helper()
	id, err := spiffeid.FromSegments(ca.td, "ns", ns, "sa", sa)
	if err != nil {
		tb.Fatal(err)
	}
	return ca.SVID(tb, id)
}
