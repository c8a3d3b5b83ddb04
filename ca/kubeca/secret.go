package kubeca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/ca"
)

// Where the CA's key lives by default.
const (
	DefaultNamespace  = "warren-system"
	DefaultRootSecret = "warren-ca-root"
)

// Keys of a CA Secret: the layout of a kubernetes.io/tls Secret as
// cert-manager writes it.
const (
	// SecretCertKey holds the signing certificate, then its issuers
	// (nearest first), as PEM.
	SecretCertKey = corev1.TLSCertKey
	// SecretKeyKey holds the signing certificate's private key as PEM
	// (PKCS #8, SEC 1 EC or PKCS #1 RSA).
	SecretKeyKey = corev1.TLSPrivateKeyKey
	// SecretCAKey holds the trust anchors as PEM: the root the signing
	// certificate chains to and any extra roots trusted during a root
	// rotation (see ca.Config.ExtraRoots).
	SecretCAKey = "ca.crt"
)

// LoadOrCreate returns the CA whose root is stored in Secret namespace/name,
// generating a root and creating the Secret on first start, so a controller
// restart keeps the root. When two replicas create it at once, the loser
// loads the winner's root. cfg supplies the trust domain, TTLs and clock; its
// Signer, Certificate and Chain must be nil (the Secret provides them). A
// Secret that exists but cannot be loaded is an error, never overwritten.
//
// c must be a direct client (a cache would watch every Secret) with RBAC to
// get and create Secrets in namespace.
func LoadOrCreate(ctx context.Context, c client.Client, namespace, name string, cfg ca.Config) (*ca.CA, error) {
	if cfg.Signer != nil || cfg.Certificate != nil || len(cfg.Chain) > 0 {
		return nil, fmt.Errorf("load ca from secret %s/%s: config already has a signing certificate", namespace, name)
	}
	var s corev1.Secret
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &s)
	if err == nil {
		return loadSecret(&s, cfg)
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("load ca from secret %s/%s: %w", namespace, name, err)
	}
	created, err := newRootSecret(namespace, name, cfg)
	if err != nil {
		return nil, fmt.Errorf("create ca secret %s/%s: %w", namespace, name, err)
	}
	if err := c.Create(ctx, created); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create ca secret %s/%s: %w", namespace, name, err)
		}
		// Another replica won the race: use its root.
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &s); err != nil {
			return nil, fmt.Errorf("load ca from secret %s/%s after a concurrent create: %w", namespace, name, err)
		}
		return loadSecret(&s, cfg)
	}
	return loadSecret(created, cfg)
}

// LoadIntermediate returns the CA of a user-supplied intermediate stored in
// the kubernetes.io/tls Secret namespace/name, as cert-manager writes it:
// tls.crt the intermediate (optionally followed by its issuers), tls.key its
// key, ca.crt the root (plus any extra roots to trust). cfg supplies the
// trust domain, TTLs and clock; its Signer, Certificate and Chain must be
// nil. A missing Secret is an error: Warren never generates a user's
// intermediate.
func LoadIntermediate(ctx context.Context, c client.Reader, namespace, name string, cfg ca.Config) (*ca.CA, error) {
	if cfg.Signer != nil || cfg.Certificate != nil || len(cfg.Chain) > 0 {
		return nil, fmt.Errorf("load ca from secret %s/%s: config already has a signing certificate", namespace, name)
	}
	var s corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &s); err != nil {
		return nil, fmt.Errorf("load ca from secret %s/%s: %w", namespace, name, err)
	}
	return loadSecret(&s, cfg)
}

func loadSecret(s *corev1.Secret, cfg ca.Config) (*ca.CA, error) {
	c, err := FromSecretData(s.Data, cfg)
	if err != nil {
		return nil, fmt.Errorf("load ca from secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return c, nil
}

// FromSecretData builds a CA from the data of a CA Secret (see
// SecretCertKey, SecretKeyKey, SecretCAKey): cfg with Signer, Certificate,
// Chain and ExtraRoots filled in. The first certificate of tls.crt signs.
// When it is an intermediate, its chain is the rest of tls.crt completed by
// the root in ca.crt that issued it; every other certificate of ca.crt
// becomes an extra root.
func FromSecretData(data map[string][]byte, cfg ca.Config) (*ca.CA, error) {
	certs, err := parseCerts(data[SecretCertKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", SecretCertKey, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate", SecretCertKey)
	}
	key, err := parseKey(data[SecretKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", SecretKeyKey, err)
	}
	roots, err := parseCerts(data[SecretCAKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", SecretCAKey, err)
	}
	cfg.Signer, cfg.Certificate, cfg.Chain = key, certs[0], certs[1:]
	if last := certs[len(certs)-1]; !selfSigned(last) {
		// An intermediate whose root is in ca.crt.
		i := slices.IndexFunc(roots, func(r *x509.Certificate) bool {
			return selfSigned(r) && last.CheckSignatureFrom(r) == nil
		})
		if i < 0 {
			return nil, fmt.Errorf("no root in %s issued %q (%s must hold the self-signed root of the chain in %s)", SecretCAKey, last.Subject, SecretCAKey, SecretCertKey)
		}
		cfg.Chain = append(slices.Clone(cfg.Chain), roots[i])
	}
	cfg.ExtraRoots = append(slices.Clone(cfg.ExtraRoots), roots...) // ca.New drops the root itself
	c, err := ca.New(cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// newRootSecret generates a root for cfg and returns the Secret holding it.
func newRootSecret(namespace, name string, cfg ca.Config) (*corev1.Secret, error) {
	td := cfg.TrustDomain
	if td.IsZero() {
		td = spiffeid.RequireTrustDomainFromString(ca.DefaultTrustDomain) // ca.New's default
	}
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	key, root, err := ca.NewRoot(td, now())
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode root key: %w", err)
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      name,
			Labels: map[string]string{
				"app.kubernetes.io/name":       "warren",
				"app.kubernetes.io/component":  "ca",
				"app.kubernetes.io/managed-by": "warren-controller",
			},
			Annotations: map[string]string{"warren.dev/trust-domain": td.Name()},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			SecretCertKey: rootPEM,
			SecretKeyKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
			SecretCAKey:   rootPEM,
		},
	}, nil
}

// parseCerts parses every CERTIFICATE block of PEM data; other blocks are
// an error.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("trailing data that is not PEM")
			}
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %s, want CERTIFICATE", len(certs)+1, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
}

// parseKey parses a PEM private key in PKCS #8, SEC 1 (EC) or PKCS #1 (RSA)
// form.
func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %s, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T is not a signing key", key)
	}
	return signer, nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
