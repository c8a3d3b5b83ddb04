package kubeca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/test/envtest"
)

// newCACert issues a CA certificate for key, signed by parent/parentKey, or
// self-signed when parent is nil.
func newCACert(tb testing.TB, name string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	tb.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
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
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func certsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func keyPEM(tb testing.TB, key crypto.Signer, typ string) []byte {
	tb.Helper()
	var der []byte
	var err error
	switch typ {
	case "PRIVATE KEY":
		der, err = x509.MarshalPKCS8PrivateKey(key)
	case "EC PRIVATE KEY":
		der, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	case "RSA PRIVATE KEY":
		der = x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	}
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// issue signs a workload CSR for id with c and returns the chain.
func issue(tb testing.TB, c *ca.CA, id spiffeid.ID) []*x509.Certificate {
	tb.Helper()
	key := p256(tb)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	chain, err := c.Sign(context.Background(), id, csr, 0)
	if err != nil {
		tb.Fatalf("Sign() error = %v", err)
	}
	return chain
}

// TestSecretStorage stores and loads CAs through the real API server.
func TestSecretStorage(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id := ca.WorkloadID(td, "shop", "cart")

	t.Run("restart keeps the root", func(t *testing.T) {
		ns := env.Namespace(t)
		first, err := kubeca.LoadOrCreate(ctx, env.Client, ns, kubeca.DefaultRootSecret, ca.Config{TrustDomain: td})
		if err != nil {
			t.Fatalf("LoadOrCreate() error = %v", err)
		}
		before := issue(t, first, id)
		second, err := kubeca.LoadOrCreate(ctx, env.Client, ns, kubeca.DefaultRootSecret, ca.Config{TrustDomain: td})
		if err != nil {
			t.Fatalf("second LoadOrCreate() error = %v", err)
		}
		if !second.Root().Equal(first.Root()) {
			t.Fatalf("second LoadOrCreate() root %x, want the first's %x", second.Root().SerialNumber, first.Root().SerialNumber)
		}
		// A certificate issued before the "restart" verifies against the new
		// CA's bundle, and vice versa.
		if _, _, err := x509svid.Verify(before, second.Bundle()); err != nil {
			t.Errorf("certificate from before the restart does not verify: %v", err)
		}
		if _, _, err := x509svid.Verify(issue(t, second, id), first.Bundle()); err != nil {
			t.Errorf("certificate from after the restart does not verify against the old bundle: %v", err)
		}
		var s corev1.Secret
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: kubeca.DefaultRootSecret}, &s); err != nil {
			t.Fatal(err)
		}
		if s.Type != corev1.SecretTypeTLS || len(s.Data["tls.crt"]) == 0 || len(s.Data["tls.key"]) == 0 || len(s.Data["ca.crt"]) == 0 {
			t.Errorf("secret type %q keys %v, want kubernetes.io/tls with tls.crt, tls.key, ca.crt", s.Type, keys(s.Data))
		}
	})

	t.Run("concurrent creators agree", func(t *testing.T) {
		ns := env.Namespace(t)
		const n = 4
		cas := make([]*ca.CA, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				cas[i], errs[i] = kubeca.LoadOrCreate(ctx, env.Client, ns, "root", ca.Config{TrustDomain: td})
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("LoadOrCreate() #%d error = %v", i, errs[i])
			}
			if !cas[i].Root().Equal(cas[0].Root()) {
				t.Errorf("LoadOrCreate() #%d root differs from #0's: two roots were created", i)
			}
		}
	})

	t.Run("corrupt secret is an error, not overwritten", func(t *testing.T) {
		ns := env.Namespace(t)
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "root"}, Data: map[string][]byte{"tls.crt": []byte("junk")}}
		create(t, env.Client, s)
		_, err := kubeca.LoadOrCreate(ctx, env.Client, ns, "root", ca.Config{TrustDomain: td})
		if err == nil || !strings.Contains(err.Error(), "load ca from secret "+ns+"/root: tls.crt") {
			t.Errorf("LoadOrCreate() error = %v, want a tls.crt error naming the secret", err)
		}
	})

	t.Run("cert-manager intermediate", func(t *testing.T) {
		ns := env.Namespace(t)
		rootKey, interKey := p256(t), p256(t)
		root := newCACert(t, "corp root", rootKey, nil, nil)
		inter := newCACert(t, "mesh intermediate", interKey, root, rootKey)
		create(t, env.Client, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "warren-ca"},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				"tls.crt": certsPEM(inter),
				"tls.key": keyPEM(t, interKey, "EC PRIVATE KEY"),
				"ca.crt":  certsPEM(root),
			},
		})
		c, err := kubeca.LoadIntermediate(ctx, env.Client, ns, "warren-ca", ca.Config{TrustDomain: td})
		if err != nil {
			t.Fatalf("LoadIntermediate() error = %v", err)
		}
		if !c.Root().Equal(root) {
			t.Errorf("Root() = %q, want the corp root", c.Root().Subject)
		}
		chain := issue(t, c, id)
		if len(chain) != 2 || !chain[1].Equal(inter) {
			t.Fatalf("Sign() chain of %d, want leaf and intermediate", len(chain))
		}
		if _, _, err := x509svid.Verify(chain, c.Bundle()); err != nil {
			t.Errorf("x509svid.Verify() error = %v", err)
		}
		if _, err := kubeca.LoadIntermediate(ctx, env.Client, ns, "missing", ca.Config{TrustDomain: td}); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("LoadIntermediate(missing) error = %v, want not found", err)
		}
	})
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestFromSecretData covers the Secret layouts without an API server.
func TestFromSecretData(t *testing.T) {
	t.Parallel()
	rootKey, interKey, otherKey := p256(t), p256(t), p256(t)
	root := newCACert(t, "root", rootKey, nil, nil)
	inter := newCACert(t, "intermediate", interKey, root, rootKey)
	nextRoot := newCACert(t, "next root", otherKey, nil, nil)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaRoot := newCACert(t, "rsa root", rsaKey, nil, nil)
	id := ca.WorkloadID(spiffeid.RequireTrustDomainFromString("cluster.local"), "a", "b")

	tests := []struct {
		name      string
		data      map[string][]byte
		wantRoot  *x509.Certificate
		wantCount int    // roots in Bundle
		wantErr   string // substring
	}{
		{
			name:     "root, pkcs8",
			data:     map[string][]byte{"tls.crt": certsPEM(root), "tls.key": keyPEM(t, rootKey, "PRIVATE KEY"), "ca.crt": certsPEM(root)},
			wantRoot: root, wantCount: 1,
		},
		{
			name:     "root without ca.crt",
			data:     map[string][]byte{"tls.crt": certsPEM(root), "tls.key": keyPEM(t, rootKey, "EC PRIVATE KEY")},
			wantRoot: root, wantCount: 1,
		},
		{
			name:     "rsa root, pkcs1",
			data:     map[string][]byte{"tls.crt": certsPEM(rsaRoot), "tls.key": keyPEM(t, rsaKey, "RSA PRIVATE KEY")},
			wantRoot: rsaRoot, wantCount: 1,
		},
		{
			name:     "root rotation: next root trusted, old root signs",
			data:     map[string][]byte{"tls.crt": certsPEM(root), "tls.key": keyPEM(t, rootKey, "PRIVATE KEY"), "ca.crt": certsPEM(root, nextRoot)},
			wantRoot: root, wantCount: 2,
		},
		{
			name:     "intermediate, root in ca.crt",
			data:     map[string][]byte{"tls.crt": certsPEM(inter), "tls.key": keyPEM(t, interKey, "PRIVATE KEY"), "ca.crt": certsPEM(root)},
			wantRoot: root, wantCount: 1,
		},
		{
			name:     "intermediate with full chain in tls.crt and two roots",
			data:     map[string][]byte{"tls.crt": certsPEM(inter, root), "tls.key": keyPEM(t, interKey, "PRIVATE KEY"), "ca.crt": certsPEM(nextRoot, root)},
			wantRoot: root, wantCount: 2,
		},
		{
			name:    "intermediate without its root",
			data:    map[string][]byte{"tls.crt": certsPEM(inter), "tls.key": keyPEM(t, interKey, "PRIVATE KEY"), "ca.crt": certsPEM(nextRoot)},
			wantErr: `no root in ca.crt issued "CN=intermediate"`,
		},
		{name: "no tls.crt", data: map[string][]byte{"tls.key": keyPEM(t, rootKey, "PRIVATE KEY")}, wantErr: "tls.crt: no certificate"},
		{name: "tls.crt junk", data: map[string][]byte{"tls.crt": []byte("junk"), "tls.key": keyPEM(t, rootKey, "PRIVATE KEY")}, wantErr: "tls.crt: trailing data that is not PEM"},
		{name: "no tls.key", data: map[string][]byte{"tls.crt": certsPEM(root)}, wantErr: "tls.key: no PEM private key"},
		{name: "key in tls.crt", data: map[string][]byte{"tls.crt": keyPEM(t, rootKey, "PRIVATE KEY")}, wantErr: "tls.crt: PEM block 1 is PRIVATE KEY, want CERTIFICATE"},
		{
			name:    "key of another certificate",
			data:    map[string][]byte{"tls.crt": certsPEM(root), "tls.key": keyPEM(t, otherKey, "PRIVATE KEY")},
			wantErr: "public key does not match the signer's key",
		},
		{
			name:    "leaf in ca.crt",
			data:    map[string][]byte{"tls.crt": certsPEM(root), "tls.key": keyPEM(t, rootKey, "PRIVATE KEY"), "ca.crt": certsPEM(issue(t, mustCA(t, root, rootKey), id)[0])},
			wantErr: "is not a CA certificate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := kubeca.FromSecretData(tt.data, ca.Config{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FromSecretData() error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromSecretData() error = %v", err)
			}
			if !c.Root().Equal(tt.wantRoot) {
				t.Errorf("Root() = %q, want %q", c.Root().Subject, tt.wantRoot.Subject)
			}
			if n := len(c.Bundle().X509Authorities()); n != tt.wantCount {
				t.Errorf("Bundle() has %d roots, want %d", n, tt.wantCount)
			}
			if _, _, err := x509svid.Verify(issue(t, c, id), c.Bundle()); err != nil {
				t.Errorf("issued certificate does not verify: %v", err)
			}
		})
	}
}

func mustCA(tb testing.TB, cert *x509.Certificate, key crypto.Signer) *ca.CA {
	tb.Helper()
	c, err := ca.New(ca.Config{Certificate: cert, Signer: key})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
