package catest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca/catest"
)

func TestSVIDVerifies(t *testing.T) {
	t.Parallel()
	c := catest.New(t, "example.org")
	id := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	svid := c.SVID(t, id)
	got, _, err := x509svid.Verify(svid.Certificates, c.Bundle())
	if err != nil || got != id {
		t.Fatalf("x509svid.Verify() = %v, %v, want %v, nil", got, err, id)
	}
	if _, err := x509svid.ParseRaw(svid.Certificates[0].Raw, mustMarshalKey(t, svid)); err != nil {
		t.Errorf("SVID key does not match its certificate: %v", err)
	}
	if got := c.Signed(); got != 0 {
		t.Errorf("Signed() after SVID = %d, want 0 (SVID is not a CSR from the code under test)", got)
	}
	if got := c.TrustDomain().Name(); got != "example.org" {
		t.Errorf("TrustDomain() = %q, want example.org", got)
	}
}

func TestSignCountsAndFails(t *testing.T) {
	t.Parallel()
	c := catest.New(t, "cluster.local")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sign(context.Background(), id, csr); err != nil {
		t.Fatalf("Sign() error = %v", err)
	}
	errDown := errors.New("down")
	c.SetError(errDown)
	if _, err := c.Sign(context.Background(), id, csr); !errors.Is(err, errDown) {
		t.Errorf("Sign() after SetError = %v, want %v", err, errDown)
	}
	c.SetError(nil)
	if _, err := c.Sign(context.Background(), id, csr); err != nil {
		t.Errorf("Sign() after SetError(nil) error = %v", err)
	}
	if got := c.Signed(); got != 3 {
		t.Errorf("Signed() = %d, want 3", got)
	}
}

func mustMarshalKey(tb testing.TB, svid *x509svid.SVID) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}
