// Package catest provides an in-memory certificate authority for tests, in
// the spirit of net/http/httptest: it issues real X.509-SVIDs from a real
// [ca.CA], so tests exercise real TLS with real certificates.
//
// Only tests may import it.
package catest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
)

// CA is a test certificate authority. Its Sign method has the shape of
// ztunnel/identity.Signer, so a *CA can be passed where a signer is wanted.
// It is safe for concurrent use.
type CA struct {
	ca *ca.CA

	mu     sync.Mutex
	signed int
	err    error
}

// New returns a test CA with a fresh root for trust domain td, using the
// ca package's defaults. It fails the test on error.
func New(tb testing.TB, td string) *CA {
	tb.Helper()
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		tb.Fatalf("catest.New(%q): %v", td, err)
	}
	return NewFromConfig(tb, ca.Config{TrustDomain: trustDomain})
}

// NewFromConfig returns a test CA built from cfg, for tests that need an
// injected clock, a short TTL or an intermediate. It fails the test on
// error.
func NewFromConfig(tb testing.TB, cfg ca.Config) *CA {
	tb.Helper()
	c, err := ca.New(cfg)
	if err != nil {
		tb.Fatalf("catest: %v", err)
	}
	return &CA{ca: c}
}

// Sign counts the call, then returns the error set with SetError, if any,
// or signs csrDER with the CA's default TTL.
func (c *CA) Sign(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	c.mu.Lock()
	c.signed++
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return c.ca.Sign(ctx, id, csrDER, 0)
}

// Signed returns how many times Sign has been called.
func (c *CA) Signed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.signed
}

// SetError makes every following Sign call fail with err, simulating a CA
// outage; nil restores normal signing.
func (c *CA) SetError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// Authority returns the underlying CA, for tests of code that takes a
// *ca.CA. Signing through it directly is not counted.
func (c *CA) Authority() *ca.CA { return c.ca }

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.ca.TrustDomain() }

// Bundle returns the trust bundle of the CA's trust domain.
func (c *CA) Bundle() *x509bundle.Bundle { return c.ca.Bundle() }

// SVID issues an X.509-SVID for id with a locally generated ECDSA P-256
// key, through a real CSR. It does not go through Sign, so it is not
// counted. It fails the test on error.
func (c *CA) SVID(tb testing.TB, id spiffeid.ID) *x509svid.SVID {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("catest: generate key: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		tb.Fatalf("catest: create csr: %v", err)
	}
	chain, err := c.ca.Sign(context.Background(), id, csr, 0)
	if err != nil {
		tb.Fatalf("catest: %v", err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}
