package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
)

var epoch = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func p256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// newCSR returns a DER CSR signed by key carrying the given URI SANs.
func newCSR(tb testing.TB, key crypto.Signer, uris ...string) []byte {
	tb.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// newCACert issues a CA certificate for key, signed by parent/parentKey, or
// self-signed when parent is nil.
func newCACert(tb testing.TB, name string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer, notAfter time.Time) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             epoch.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func newCA(tb testing.TB, cfg ca.Config) *ca.CA {
	tb.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedClock(epoch)
	}
	c, err := ca.New(cfg)
	if err != nil {
		tb.Fatalf("ca.New: %v", err)
	}
	return c
}

func TestSignRejectsBadInput(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	key := p256(t)

	badSig := newCSR(t, key)
	badSig[len(badSig)-5] ^= 0xff // inside the signature

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		id   spiffeid.ID
		csr  []byte
		ttl  time.Duration
		want string // substring of the error after the "sign csr for <id>: " prefix
	}{
		{name: "garbage der", id: id, csr: []byte("not a csr"), want: "parse csr (not a DER-encoded PKCS #10 request?)"},
		{name: "empty der", id: id, csr: nil, want: "parse csr"},
		{name: "bad signature", id: id, csr: badSig, want: "csr signature does not verify"},
		{name: "rsa key", id: id, csr: newCSR(t, rsaKey), want: "csr key is RSA, want ECDSA P-256"},
		{name: "p384 key", id: id, csr: newCSR(t, p384), want: "csr key is ECDSA P-384, want ECDSA P-256"},
		{name: "other uri san", id: id, csr: newCSR(t, key, "spiffe://x"), want: "csr carries uri san spiffe://x (want none or the requested id)"},
		{name: "two uri sans", id: id, csr: newCSR(t, key, id.String(), "spiffe://cluster.local/ns/a/sa/c"), want: "csr carries 2 uri sans"},
		{name: "other trust domain", id: spiffeid.RequireFromString("spiffe://other.org/ns/a/sa/b"), csr: newCSR(t, key), want: `id is not in trust domain "cluster.local"`},
		{name: "not a workload path", id: spiffeid.RequireFromString("spiffe://cluster.local/ns/a"), csr: newCSR(t, key), want: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{name: "swapped segments", id: spiffeid.RequireFromString("spiffe://cluster.local/sa/b/ns/a"), csr: newCSR(t, key), want: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{name: "extra segment", id: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b/c"), csr: newCSR(t, key), want: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{name: "trust domain only", id: spiffeid.RequireFromString("spiffe://cluster.local"), csr: newCSR(t, key), want: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{name: "negative ttl", id: id, csr: newCSR(t, key), ttl: -time.Second, want: "negative ttl"},
		{name: "canceled context", ctx: canceled, id: id, csr: newCSR(t, key), want: "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			chain, err := c.Sign(ctx, tt.id, tt.csr, tt.ttl)
			if err == nil {
				t.Fatalf("Sign() = %d certificates, want error containing %q", len(chain), tt.want)
			}
			prefix := "sign csr for " + tt.id.String() + ": "
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Sign() error = %q, want %q...%q", err, prefix, tt.want)
			}
		})
	}
}

func TestSignIssuesWorkloadCertificate(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	id := ca.WorkloadID(c.TrustDomain(), "shop", "cart")
	key := p256(t)

	for _, csr := range [][]byte{newCSR(t, key), newCSR(t, key, id.String())} {
		chain, err := c.Sign(context.Background(), id, csr, 0)
		if err != nil {
			t.Fatalf("Sign() error = %v", err)
		}
		if len(chain) != 1 {
			t.Fatalf("Sign() = %d certificates, want 1 (leaf only; root is in Bundle)", len(chain))
		}
		gotID, _, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(epoch))
		if err != nil {
			t.Fatalf("x509svid.Verify() error = %v", err)
		}
		if gotID != id {
			t.Errorf("x509svid.Verify() id = %v, want %v", gotID, id)
		}
		leaf := chain[0]
		type shape struct {
			KeyUsage       x509.KeyUsage
			ExtKeyUsage    []x509.ExtKeyUsage
			IsCA           bool
			URIs           []string
			NotBefore      time.Time
			NotAfter       time.Time
			AuthorityKeyId []byte
			PublicKeyEqual bool
			DNSNames       []string
		}
		got := shape{
			KeyUsage:       leaf.KeyUsage,
			ExtKeyUsage:    leaf.ExtKeyUsage,
			IsCA:           leaf.IsCA,
			NotBefore:      leaf.NotBefore,
			NotAfter:       leaf.NotAfter,
			AuthorityKeyId: leaf.AuthorityKeyId,
			PublicKeyEqual: key.PublicKey.Equal(leaf.PublicKey),
			DNSNames:       leaf.DNSNames,
		}
		for _, u := range leaf.URIs {
			got.URIs = append(got.URIs, u.String())
		}
		want := shape{
			KeyUsage:       x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:           []string{"spiffe://cluster.local/ns/shop/sa/cart"},
			NotBefore:      epoch.Add(-ca.ClockSkew),
			NotAfter:       epoch.Add(ca.DefaultTTL),
			AuthorityKeyId: c.Root().SubjectKeyId,
			PublicKeyEqual: true,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("leaf mismatch (-want +got):\n%s", diff)
		}
		if !leaf.BasicConstraintsValid {
			t.Errorf("leaf BasicConstraintsValid = false, want true (CA=false must be explicit)")
		}
		if n := leaf.SerialNumber.BitLen(); n > 128 || leaf.SerialNumber.Sign() <= 0 {
			t.Errorf("leaf serial %x has %d bits, want positive and <= 128", leaf.SerialNumber, n)
		}
	}
}

func TestSignSerialsDiffer(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	id := ca.WorkloadID(c.TrustDomain(), "a", "b")
	csr := newCSR(t, p256(t))
	seen := map[string]bool{}
	for range 20 {
		chain, err := c.Sign(context.Background(), id, csr, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := chain[0].SerialNumber.Text(16)
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestSignTTL(t *testing.T) {
	t.Parallel()
	rootKey := p256(t)
	shortRoot := newCACert(t, "short root", rootKey, nil, nil, epoch.Add(3*time.Hour))

	tests := []struct {
		name string
		cfg  ca.Config
		ttl  time.Duration
		want time.Duration // NotAfter - now
	}{
		{name: "zero means default", ttl: 0, want: 24 * time.Hour},
		{name: "configured default", cfg: ca.Config{DefaultTTL: time.Hour}, ttl: 0, want: time.Hour},
		{name: "explicit", ttl: 2 * time.Hour, want: 2 * time.Hour},
		{name: "above max is capped", ttl: 90 * 24 * time.Hour, want: ca.DefaultMaxTTL},
		{name: "configured max", cfg: ca.Config{MaxTTL: 48 * time.Hour}, ttl: 72 * time.Hour, want: 48 * time.Hour},
		{name: "capped at signer expiry", cfg: ca.Config{Signer: rootKey, Certificate: shortRoot}, ttl: 24 * time.Hour, want: 3 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCA(t, tt.cfg)
			id := ca.WorkloadID(c.TrustDomain(), "a", "b")
			chain, err := c.Sign(context.Background(), id, newCSR(t, p256(t)), tt.ttl)
			if err != nil {
				t.Fatalf("Sign() error = %v", err)
			}
			if got := chain[0].NotAfter.Sub(epoch); got != tt.want {
				t.Errorf("Sign(ttl=%v) lifetime = %v, want %v", tt.ttl, got, tt.want)
			}
		})
	}
}

func TestSignAfterSignerExpiry(t *testing.T) {
	t.Parallel()
	now := epoch
	c := newCA(t, ca.Config{Now: func() time.Time { return now }})
	now = c.Root().NotAfter.Add(time.Second)
	_, err := c.Sign(context.Background(), ca.WorkloadID(c.TrustDomain(), "a", "b"), newCSR(t, p256(t)), 0)
	if err == nil || !strings.Contains(err.Error(), "signing certificate expired") {
		t.Errorf("Sign() after root expiry error = %v, want signing certificate expired", err)
	}
}

func TestIntermediate(t *testing.T) {
	t.Parallel()
	rootKey, i1Key, i2Key := p256(t), p256(t), p256(t)
	root := newCACert(t, "root", rootKey, nil, nil, epoch.Add(365*24*time.Hour))
	i1 := newCACert(t, "intermediate 1", i1Key, root, rootKey, epoch.Add(100*24*time.Hour))
	i2 := newCACert(t, "intermediate 2", i2Key, i1, i1Key, epoch.Add(100*24*time.Hour))

	tests := []struct {
		name   string
		signer crypto.Signer
		cert   *x509.Certificate
		chain  []*x509.Certificate
		want   []*x509.Certificate // after the leaf
	}{
		{name: "one intermediate", signer: i1Key, cert: i1, chain: []*x509.Certificate{root}, want: []*x509.Certificate{i1}},
		{name: "two intermediates", signer: i2Key, cert: i2, chain: []*x509.Certificate{i1, root}, want: []*x509.Certificate{i2, i1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCA(t, ca.Config{Signer: tt.signer, Certificate: tt.cert, Chain: tt.chain})
			if c.Root() != root {
				t.Errorf("Root() = %q, want %q", c.Root().Subject, root.Subject)
			}
			id := ca.WorkloadID(c.TrustDomain(), "a", "b")
			chain, err := c.Sign(context.Background(), id, newCSR(t, p256(t)), 0)
			if err != nil {
				t.Fatalf("Sign() error = %v", err)
			}
			if diff := cmp.Diff(subjects(tt.want), subjects(chain[1:])); diff != "" {
				t.Errorf("Sign() intermediates (-want +got):\n%s", diff)
			}
			if _, verified, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(epoch)); err != nil {
				t.Errorf("x509svid.Verify() error = %v", err)
			} else if got := len(verified[0]); got != len(chain)+1 {
				t.Errorf("verified chain length = %d, want %d (leaf, intermediates, root)", got, len(chain)+1)
			}
			if got, want := chain[0].AuthorityKeyId, tt.cert.SubjectKeyId; string(got) != string(want) {
				t.Errorf("leaf AuthorityKeyId = %x, want %x", got, want)
			}
		})
	}
}

func subjects(certs []*x509.Certificate) []string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.CommonName)
	}
	return s
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	rootKey, interKey, otherKey := p256(t), p256(t), p256(t)
	root := newCACert(t, "root", rootKey, nil, nil, epoch.Add(24*time.Hour))
	inter := newCACert(t, "inter", interKey, root, rootKey, epoch.Add(24*time.Hour))
	otherRoot := newCACert(t, "other root", otherKey, nil, nil, epoch.Add(24*time.Hour))
	expired := newCACert(t, "expired", rootKey, nil, nil, epoch.Add(-time.Minute))

	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(9), NotBefore: epoch.Add(-time.Hour), NotAfter: epoch.Add(time.Hour), BasicConstraintsValid: true}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, otherKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		t.Fatal(err)
	}
	noCertSignTmpl := &x509.Certificate{SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "no certsign"}, NotBefore: epoch.Add(-time.Hour), NotAfter: epoch.Add(time.Hour), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageDigitalSignature}
	noCertSignDER, err := x509.CreateCertificate(rand.Reader, noCertSignTmpl, noCertSignTmpl, otherKey.Public(), otherKey)
	if err != nil {
		t.Fatal(err)
	}
	noCertSign, err := x509.ParseCertificate(noCertSignDER)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		cfg  ca.Config
		want string
	}{
		{name: "signer without certificate", cfg: ca.Config{Signer: rootKey}, want: "must be set together"},
		{name: "certificate without signer", cfg: ca.Config{Certificate: root}, want: "must be set together"},
		{name: "chain without certificate", cfg: ca.Config{Chain: []*x509.Certificate{root}}, want: "chain set without a signing certificate"},
		{name: "not a ca", cfg: ca.Config{Signer: otherKey, Certificate: leaf}, want: "not a CA certificate"},
		{name: "no certsign usage", cfg: ca.Config{Signer: otherKey, Certificate: noCertSign}, want: "key usage lacks certSign"},
		{name: "key mismatch", cfg: ca.Config{Signer: otherKey, Certificate: root}, want: "public key does not match"},
		{name: "expired", cfg: ca.Config{Signer: rootKey, Certificate: expired}, want: "expired at"},
		{name: "root with chain", cfg: ca.Config{Signer: rootKey, Certificate: root, Chain: []*x509.Certificate{otherRoot}}, want: "is self-signed but a chain"},
		{name: "intermediate without chain", cfg: ca.Config{Signer: interKey, Certificate: inter}, want: "no chain was given"},
		{name: "chain not ending in root", cfg: ca.Config{Signer: interKey, Certificate: inter, Chain: []*x509.Certificate{inter}}, want: "is not a self-signed root"},
		{name: "chain from another root", cfg: ca.Config{Signer: interKey, Certificate: inter, Chain: []*x509.Certificate{otherRoot}}, want: "does not chain to root"},
		{name: "default above max", cfg: ca.Config{DefaultTTL: 2 * time.Hour, MaxTTL: time.Hour}, want: "exceeds max ttl"},
		{name: "negative ttl", cfg: ca.Config{MaxTTL: -time.Hour}, want: "negative ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Now = fixedClock(epoch)
			_, err := ca.New(tt.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), "new ca: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New() error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	root := c.Root()
	if got, want := c.TrustDomain().Name(), "cluster.local"; got != want {
		t.Errorf("TrustDomain() = %q, want %q", got, want)
	}
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("generated root IsCA=%v KeyUsage=%v, want a signing CA", root.IsCA, root.KeyUsage)
	}
	if _, ok := root.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("generated root key is %T, want *ecdsa.PublicKey", root.PublicKey)
	}
	if got := root.NotAfter.Sub(epoch); got != ca.RootTTL {
		t.Errorf("generated root lifetime = %v, want %v", got, ca.RootTTL)
	}
	b := c.Bundle()
	if b.TrustDomain() != c.TrustDomain() || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root) {
		t.Errorf("Bundle() = %v with %d authorities, want the root only", b.TrustDomain(), len(b.X509Authorities()))
	}
}

func TestWorkloadID(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tests := []struct {
		name    string
		id      string
		wantNS  string
		wantSA  string
		wantErr bool
	}{
		{name: "workload", id: "spiffe://cluster.local/ns/default/sa/web", wantNS: "default", wantSA: "web"},
		{name: "dots and dashes", id: "spiffe://cluster.local/ns/team-a/sa/svc.v2", wantNS: "team-a", wantSA: "svc.v2"},
		{name: "no path", id: "spiffe://cluster.local", wantErr: true},
		{name: "ns only", id: "spiffe://cluster.local/ns/default", wantErr: true},
		{name: "wrong keyword", id: "spiffe://cluster.local/namespace/default/sa/web", wantErr: true},
		{name: "trailing segment", id: "spiffe://cluster.local/ns/default/sa/web/x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(tt.id)
			ns, sa, err := ca.ParseWorkloadID(id)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseWorkloadID(%s) error = %v, want error %v", id, err, tt.wantErr)
			}
			if ns != tt.wantNS || sa != tt.wantSA {
				t.Errorf("ParseWorkloadID(%s) = %q, %q, want %q, %q", id, ns, sa, tt.wantNS, tt.wantSA)
			}
			if !tt.wantErr {
				if got := ca.WorkloadID(td, ns, sa); got != id {
					t.Errorf("WorkloadID(%v, %q, %q) = %v, want %v", td, ns, sa, got, id)
				}
			}
		})
	}
	for _, bad := range [][2]string{{"", "web"}, {"default", ""}, {"a/b", "web"}, {"..", "web"}} {
		if got := ca.WorkloadID(td, bad[0], bad[1]); !got.IsZero() {
			t.Errorf("WorkloadID(%v, %q, %q) = %v, want zero ID", td, bad[0], bad[1], got)
		}
	}
}

func TestTTLSigner(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Config{})
	id := ca.WorkloadID(c.TrustDomain(), "a", "b")
	chain, err := c.Signer(time.Hour).Sign(context.Background(), id, newCSR(t, p256(t)))
	if err != nil {
		t.Fatalf("Signer(1h).Sign() error = %v", err)
	}
	if got := chain[0].NotAfter.Sub(epoch); got != time.Hour {
		t.Errorf("Signer(1h).Sign() lifetime = %v, want 1h", got)
	}
}
