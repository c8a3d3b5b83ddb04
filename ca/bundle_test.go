package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
)

// TestRootRotation: during a root rotation both roots are trusted, so
// certificates from the old and the new CA verify against either bundle.
func TestRootRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := p256(t), p256(t)
	notAfter := epoch.Add(365 * 24 * time.Hour)
	oldRoot := newCACert(t, "old root", oldKey, nil, nil, notAfter)
	newRoot := newCACert(t, "new root", newKey, nil, nil, notAfter)

	// Step 1: the old root signs and the next one is already trusted.
	before := newCA(t, ca.Config{Certificate: oldRoot, Signer: oldKey, ExtraRoots: []*x509.Certificate{newRoot, oldRoot}})
	// Step 2: the new root signs and the old one stays trusted.
	after := newCA(t, ca.Config{Certificate: newRoot, Signer: newKey, ExtraRoots: []*x509.Certificate{oldRoot}})

	subjects := func(b *x509bundle.Bundle) []string {
		var out []string
		for _, c := range b.X509Authorities() {
			out = append(out, c.Subject.CommonName)
		}
		return out
	}
	if diff := cmp.Diff([]string{"old root", "new root"}, subjects(before.Bundle())); diff != "" {
		t.Errorf("before.Bundle() mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"new root", "old root"}, subjects(after.Bundle())); diff != "" {
		t.Errorf("after.Bundle() mismatch (-want +got):\n%s", diff)
	}
	if !before.Root().Equal(oldRoot) || !after.Root().Equal(newRoot) {
		t.Errorf("Root() is not the signing root")
	}

	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	for _, signer := range []*ca.CA{before, after} {
		chain, err := signer.Sign(context.Background(), id, newCSR(t, p256(t)), 0)
		if err != nil {
			t.Fatalf("Sign() error = %v", err)
		}
		if err := chain[0].CheckSignatureFrom(signer.Root()); err != nil {
			t.Errorf("leaf is not signed by the signing root %q: %v", signer.Root().Subject.CommonName, err)
		}
		for _, verifier := range []*ca.CA{before, after} {
			if _, _, err := x509svid.Verify(chain, verifier.Bundle(), x509svid.WithTime(epoch)); err != nil {
				t.Errorf("certificate from %q does not verify against a bundle with %v: %v", signer.Root().Subject.CommonName, subjects(verifier.Bundle()), err)
			}
		}
	}
}

func TestExtraRootsRejected(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	leaf, err := c.Sign(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), newCSR(t, p256(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		roots []*x509.Certificate
		want  string
	}{
		"leaf": {[]*x509.Certificate{leaf[0]}, "is not a CA certificate"},
		"nil":  {[]*x509.Certificate{nil}, "extra root 0 is nil"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ca.New(ca.Config{Now: fixedClock(epoch), ExtraRoots: tt.roots})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New() error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestBundlePEMRoundTrip(t *testing.T) {
	t.Parallel()
	extra := newCACert(t, "next root", p256(t), nil, nil, epoch.Add(time.Hour*24))
	c := newCA(t, ca.Config{ExtraRoots: []*x509.Certificate{extra}})
	pemText := ca.BundlePEM(c.Bundle())
	if n := strings.Count(pemText, "-----BEGIN CERTIFICATE-----"); n != 2 {
		t.Fatalf("BundlePEM() has %d certificates, want 2", n)
	}
	got, err := x509bundle.Parse(c.TrustDomain(), []byte(pemText))
	if err != nil {
		t.Fatalf("x509bundle.Parse(BundlePEM()) error = %v", err)
	}
	if !got.Equal(c.Bundle()) {
		t.Errorf("x509bundle.Parse(BundlePEM()) differs from Bundle()")
	}
	if got := ca.BundlePEM(x509bundle.New(c.TrustDomain())); got != "" {
		t.Errorf("BundlePEM(empty) = %q, want empty", got)
	}
}

func TestErrInvalidCSR(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	_, err := c.Sign(context.Background(), id, []byte("junk"), 0)
	if !errors.Is(err, ca.ErrInvalidCSR) {
		t.Errorf("Sign(junk) error = %v, want errors.Is ErrInvalidCSR", err)
	}
	_, err = c.Sign(context.Background(), spiffeid.RequireFromString("spiffe://other.org/ns/a/sa/b"), newCSR(t, p256(t)), 0)
	if err == nil || errors.Is(err, ca.ErrInvalidCSR) {
		t.Errorf("Sign(other trust domain) error = %v, want an error that is not ErrInvalidCSR", err)
	}
}

func TestNewRoot(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	key, root, err := ca.NewRoot(td, epoch)
	if err != nil {
		t.Fatalf("NewRoot() error = %v", err)
	}
	c := newCA(t, ca.Config{TrustDomain: td, Certificate: root, Signer: key})
	if !c.Root().Equal(root) || !root.IsCA || !root.NotAfter.Equal(epoch.Add(ca.RootTTL).Truncate(time.Second)) {
		t.Errorf("NewRoot() = %q IsCA %v NotAfter %v, want a CA root valid for RootTTL", root.Subject, root.IsCA, root.NotAfter)
	}
	if _, _, err := ca.NewRoot(spiffeid.TrustDomain{}, epoch); err == nil {
		t.Error("NewRoot(zero trust domain) error = nil, want an error")
	}
}
