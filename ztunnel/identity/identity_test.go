package identity_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel/identity"
)

// Both local CAs plug into the Signer seam.
var (
	_ identity.Signer = ca.TTLSigner{}
	_ identity.Signer = (*catest.CA)(nil)
)

var (
	idA = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")
	idB = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/checkout")
)

// signerFunc adapts a function to identity.Signer, for tests that put a
// gate or a fault in front of a real CA.
type signerFunc func(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error)

func (f signerFunc) Sign(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	return f(ctx, id, csrDER)
}

func newManager(tb testing.TB, cfg identity.Config) *identity.Manager {
	tb.Helper()
	if cfg.Jitter == nil {
		cfg.Jitter = func(time.Duration) time.Duration { return 0 }
	}
	m, err := identity.New(cfg)
	if err != nil {
		tb.Fatalf("identity.New: %v", err)
	}
	return m
}

// run starts m.Run in the background. Call the returned stop before the
// synctest bubble ends: it cancels Run and checks its result.
func run(tb testing.TB, m *identity.Manager) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	return func() {
		tb.Helper()
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run() = %v, want nil", err)
		}
	}
}

func mustSVID(tb testing.TB, m *identity.Manager, id spiffeid.ID) *x509svid.SVID {
	tb.Helper()
	svid, err := m.SVID(context.Background(), id)
	if err != nil {
		tb.Fatalf("SVID(%v) error = %v", id, err)
	}
	return svid
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

func TestSVIDSignsOnceAndCaches(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c, TrustDomain: c.TrustDomain(), Bundle: c.Bundle()})

		first := mustSVID(t, m, idA)
		second := mustSVID(t, m, idA)
		if got := c.Signed(); got != 1 {
			t.Errorf("CSRs after two SVID calls = %d, want 1", got)
		}
		if first != second {
			t.Errorf("second SVID call returned a different certificate (%s, want %s)", serial(second), serial(first))
		}
		gotID, _, err := x509svid.Verify(first.Certificates, c.Bundle())
		if err != nil || gotID != idA {
			t.Errorf("x509svid.Verify() = %v, %v, want %v, nil", gotID, err, idA)
		}
		key, ok := first.PrivateKey.(*ecdsa.PrivateKey)
		if !ok || key.Curve != elliptic.P256() {
			t.Errorf("private key is %T, want ECDSA P-256", first.PrivateKey)
		}
		mustSVID(t, m, idB)
		if got := c.Signed(); got != 2 {
			t.Errorf("CSRs after a second identity = %d, want 2", got)
		}
	})
}

func TestSVIDConcurrentCallersShareOneCSR(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		release := make(chan struct{})
		gated := signerFunc(func(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
			<-release
			return c.Sign(ctx, id, csr)
		})
		m := newManager(t, identity.Config{Signer: gated})

		const callers = 50
		serials := make([]string, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				svid, err := m.SVID(context.Background(), idA)
				if err != nil {
					t.Errorf("SVID() error = %v", err)
					return
				}
				serials[i] = serial(svid)
			})
		}
		synctest.Wait() // every caller is now waiting on the one CSR
		if got := m.Certificates()[0].State; got != "pending" {
			t.Errorf("state while the CSR is in flight = %q, want pending", got)
		}
		close(release)
		wg.Wait()
		if got := c.Signed(); got != 1 {
			t.Errorf("CSRs for %d concurrent callers = %d, want 1", callers, got)
		}
		for i, s := range serials {
			if s != serials[0] {
				t.Errorf("caller %d got serial %s, want %s", i, s, serials[0])
			}
		}
	})
}

func TestRotationAtHalfLife(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c})
		stop := run(t, m)
		defer stop()

		old := mustSVID(t, m, idA)
		leaf := old.Certificates[0]
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if got := m.Certificates()[0].RotateAt; !got.Equal(half) {
			t.Errorf("RotateAt = %v, want half-life %v", got, half)
		}

		time.Sleep(time.Until(half) - time.Second)
		synctest.Wait()
		if got := c.Signed(); got != 1 {
			t.Fatalf("CSRs just before half-life = %d, want 1", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := c.Signed(); got != 2 {
			t.Fatalf("CSRs at half-life = %d, want 2", got)
		}
		renewed := mustSVID(t, m, idA)
		if serial(renewed) == serial(old) {
			t.Errorf("SVID after half-life still has serial %s, want a renewed certificate", serial(old))
		}
		if got, want := m.Certificates()[0].State, "valid"; got != want {
			t.Errorf("state after renewal = %q, want %q", got, want)
		}
	})
}

func TestRenewalFailureKeepsCertificateAndBacksOff(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c, MinBackoff: 500 * time.Millisecond, MaxBackoff: 4 * time.Second})
		stop := run(t, m)
		defer stop()

		old := mustSVID(t, m, idA)
		errCA := errors.New("ca unavailable")
		c.SetError(errCA)
		time.Sleep(time.Until(m.Certificates()[0].RotateAt))
		synctest.Wait()
		if got := c.Signed(); got != 2 {
			t.Fatalf("CSRs at half-life = %d, want 2", got)
		}

		// Each failure schedules the next attempt after a doubled backoff,
		// capped at MaxBackoff; the old certificate is served throughout.
		var gotWaits []time.Duration
		for range 6 {
			info := m.Certificates()[0]
			if !strings.HasPrefix(info.State, "failed: ") || !strings.Contains(info.State, "ca unavailable") {
				t.Fatalf("state during failing renewal = %q, want failed: ...ca unavailable", info.State)
			}
			if info.Serial != serial(old) {
				t.Fatalf("Certificates() serial = %s, want the old %s", info.Serial, serial(old))
			}
			if got := mustSVID(t, m, idA); got != old {
				t.Fatalf("SVID during failing renewal returned serial %s, want the old %s", serial(got), serial(old))
			}
			wait := time.Until(info.RotateAt)
			gotWaits = append(gotWaits, wait)
			before := c.Signed()
			time.Sleep(wait)
			synctest.Wait()
			if got := c.Signed(); got != before+1 {
				t.Fatalf("CSRs after backoff %v = %d, want %d", wait, got, before+1)
			}
		}
		wantWaits := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
		if diff := cmp.Diff(wantWaits, gotWaits); diff != "" {
			t.Errorf("backoff waits (-want +got):\n%s", diff)
		}

		c.SetError(nil)
		time.Sleep(time.Until(m.Certificates()[0].RotateAt))
		synctest.Wait()
		info := m.Certificates()[0]
		if info.State != "valid" || info.Serial == serial(old) || info.Failures != 0 {
			t.Errorf("after the CA recovered: state %q serial %s failures %d, want valid, a new serial, 0", info.State, info.Serial, info.Failures)
		}
	})
}

func TestBackoffJitter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		c.SetError(errors.New("down"))
		m := newManager(t, identity.Config{
			Signer:     c,
			MinBackoff: time.Second,
			MaxBackoff: time.Minute,
			Jitter:     func(d time.Duration) time.Duration { return d / 2 },
		})
		if _, err := m.SVID(context.Background(), idA); err == nil {
			t.Fatal("SVID() with a failing CA = nil error, want error")
		}
		if got, want := time.Until(m.Certificates()[0].RotateAt), 1500*time.Millisecond; got != want {
			t.Errorf("first backoff with jitter d/2 = %v, want %v", got, want)
		}
	})
}

func TestForgetStopsRotation(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c})
		stop := run(t, m)
		defer stop()

		mustSVID(t, m, idA)
		mustSVID(t, m, idB)
		m.Forget(idA)
		time.Sleep(25 * time.Hour)
		synctest.Wait()
		var ids []string
		for _, info := range m.Certificates() {
			ids = append(ids, info.ID)
		}
		if diff := cmp.Diff([]string{idB.String()}, ids); diff != "" {
			t.Errorf("Certificates() ids after Forget (-want +got):\n%s", diff)
		}
		// idB renewed once at each half-life (12h, 24h); idA never again.
		if got, want := c.Signed(), 2+2; got != want {
			t.Errorf("CSRs after 25h = %d, want %d", got, want)
		}
	})
}

func TestPrefetch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c})
		if err := m.Prefetch(idA); err != nil {
			t.Fatalf("Prefetch() error = %v", err)
		}
		synctest.Wait()
		if got := c.Signed(); got != 1 {
			t.Fatalf("CSRs after Prefetch = %d, want 1", got)
		}
		if got := m.Certificates()[0].State; got != "valid" {
			t.Errorf("state after Prefetch = %q, want valid", got)
		}
		if err := m.Prefetch(idA); err != nil {
			t.Fatalf("second Prefetch() error = %v", err)
		}
		mustSVID(t, m, idA)
		synctest.Wait()
		if got := c.Signed(); got != 1 {
			t.Errorf("CSRs after Prefetch, Prefetch, SVID = %d, want 1", got)
		}
	})
}

func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		release := make(chan struct{})
		var mu sync.Mutex
		inSigner, maxInSigner := 0, 0
		gated := signerFunc(func(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
			mu.Lock()
			inSigner++
			maxInSigner = max(maxInSigner, inSigner)
			mu.Unlock()
			<-release
			mu.Lock()
			inSigner--
			mu.Unlock()
			return c.Sign(ctx, id, csr)
		})
		m := newManager(t, identity.Config{Signer: gated, Concurrency: 2})
		var wg sync.WaitGroup
		for i := range 5 {
			id := spiffeid.RequireFromString("spiffe://cluster.local/ns/n/sa/s" + string(rune('a'+i)))
			wg.Go(func() { mustSVID(t, m, id) })
		}
		synctest.Wait()
		mu.Lock()
		got := inSigner
		mu.Unlock()
		if got != 2 {
			t.Errorf("CSRs in flight with Concurrency 2 = %d, want 2", got)
		}
		close(release)
		wg.Wait()
		if maxInSigner != 2 || c.Signed() != 5 {
			t.Errorf("max in flight %d, signed %d, want 2 and 5", maxInSigner, c.Signed())
		}
	})
}

func TestSignerErrorIsWrapped(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		errCA := errors.New("connection refused")
		c.SetError(errCA)
		m := newManager(t, identity.Config{Signer: c})

		_, err := m.SVID(context.Background(), idA)
		if !errors.Is(err, errCA) {
			t.Fatalf("SVID() error = %v, want it to wrap %v", err, errCA)
		}
		if want := "fetch svid for " + idA.String() + ": sign csr: connection refused"; err.Error() != want {
			t.Errorf("SVID() error = %q, want %q", err, want)
		}
		// Within the backoff, callers get the last error without a new CSR.
		_, err = m.SVID(context.Background(), idA)
		if !errors.Is(err, errCA) || !strings.Contains(err.Error(), "next attempt at") {
			t.Errorf("SVID() during backoff error = %v, want the last error and the next attempt", err)
		}
		if got := c.Signed(); got != 1 {
			t.Errorf("CSRs = %d, want 1 (no CSR during backoff)", got)
		}
		time.Sleep(time.Until(m.Certificates()[0].RotateAt))
		c.SetError(nil)
		mustSVID(t, m, idA)
		if got := c.Signed(); got != 2 {
			t.Errorf("CSRs after backoff = %d, want 2", got)
		}
	})
}

func TestSVIDRejectsIDWithoutCSR(t *testing.T) {
	t.Parallel()
	c := catest.New(t, "cluster.local")
	m := newManager(t, identity.Config{Signer: c, TrustDomain: c.TrustDomain()})
	tests := []struct {
		id   string
		want string
	}{
		{id: "spiffe://other.org/ns/a/sa/b", want: `not in trust domain "cluster.local"`},
		{id: "spiffe://cluster.local/ns/a", want: "is not /ns/<namespace>/sa/<serviceaccount>"},
	}
	for _, tt := range tests {
		_, err := m.SVID(context.Background(), spiffeid.RequireFromString(tt.id))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SVID(%s) error = %v, want %q", tt.id, err, tt.want)
		}
		if err := m.Prefetch(spiffeid.RequireFromString(tt.id)); err == nil {
			t.Errorf("Prefetch(%s) = nil, want error", tt.id)
		}
	}
	if got := c.Signed(); got != 0 {
		t.Errorf("CSRs = %d, want 0", got)
	}
}

// badCA issues real certificates that a misbehaving CA might return.
type badCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newBadCA(tb testing.TB) *badCA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bad ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &badCA{key: key, cert: cert}
}

func (b *badCA) issue(tb testing.TB, pub crypto.PublicKey, uri string, notAfter time.Time) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.cert, pub, b.key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func TestRejectsBadCertificates(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bad := newBadCA(t)
		good := catest.New(t, "cluster.local")
		csrKey := func(t testing.TB, csr []byte) crypto.PublicKey {
			t.Helper()
			req, err := x509.ParseCertificateRequest(csr)
			if err != nil {
				t.Fatal(err)
			}
			return req.PublicKey
		}
		tests := []struct {
			name   string
			sign   func(t testing.TB, csr []byte) []*x509.Certificate
			bundle x509bundle.Source
			want   string
		}{
			{
				name: "empty chain",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate { return nil },
				want: "ca returned an empty chain",
			},
			{
				name: "wrong id",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate {
					return []*x509.Certificate{bad.issue(t, csrKey(t, csr), idB.String(), time.Now().Add(time.Hour))}
				},
				want: "ca returned a certificate for " + idB.String() + " (misconfigured signer?)",
			},
			{
				name: "no uri san",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate {
					return []*x509.Certificate{bad.issue(t, csrKey(t, csr), "", time.Now().Add(time.Hour))}
				},
				want: "ca returned a leaf without a spiffe id",
			},
			{
				name: "another key",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate {
					return []*x509.Certificate{bad.issue(t, newKey(t).Public(), idA.String(), time.Now().Add(time.Hour))}
				},
				want: "ca returned a certificate for another key",
			},
			{
				name: "expired",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate {
					return []*x509.Certificate{bad.issue(t, csrKey(t, csr), idA.String(), time.Now().Add(-time.Second))}
				},
				want: "already expired",
			},
			{
				name: "untrusted issuer",
				sign: func(t testing.TB, csr []byte) []*x509.Certificate {
					return []*x509.Certificate{bad.issue(t, csrKey(t, csr), idA.String(), time.Now().Add(time.Hour))}
				},
				bundle: good.Bundle(),
				want:   "does not verify against the trust bundle",
			},
		}
		for _, tt := range tests {
			signer := signerFunc(func(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
				return tt.sign(t, csr), nil
			})
			m := newManager(t, identity.Config{Signer: signer, Bundle: tt.bundle})
			_, err := m.SVID(context.Background(), idA)
			prefix := "fetch svid for " + idA.String() + ": "
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: SVID() error = %v, want %q...%q", tt.name, err, prefix, tt.want)
			}
		}
	})
}

func TestSourcePicksUpRotatedCertificate(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c})
		stop := run(t, m)
		defer stop()

		server := m.Source(idA)
		client := c.SVID(t, idB)
		// handshake runs a real TLS 1.3 handshake over an in-memory pipe
		// and returns the serial the server presented.
		handshake := func() string {
			t.Helper()
			cc, sc := net.Pipe()
			defer cc.Close()
			defer sc.Close()
			srv := tls.Server(sc, tlsconfig.MTLSServerConfig(server, c.Bundle(), tlsconfig.AuthorizeID(idB)))
			cli := tls.Client(cc, tlsconfig.MTLSClientConfig(client, c.Bundle(), tlsconfig.AuthorizeID(idA)))
			errc := make(chan error, 1)
			go func() { errc <- srv.Handshake() }()
			if err := cli.Handshake(); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			return cli.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
		}

		first := handshake()
		time.Sleep(13 * time.Hour)
		synctest.Wait()
		second := handshake()
		if first == second {
			t.Errorf("server presented serial %s after half-life, want the rotated certificate", first)
		}
		if got := m.Certificates()[0].Serial; got != second {
			t.Errorf("handshake presented %s, want current certificate %s", second, got)
		}
	})
}

func TestCertificatesDump(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c})
		svid := mustSVID(t, m, idA)
		infos := m.Certificates()
		if len(infos) != 1 {
			t.Fatalf("Certificates() = %d entries, want 1", len(infos))
		}
		leaf := svid.Certificates[0]
		info := infos[0]
		want := identity.CertificateInfo{
			ID:        idA.String(),
			State:     "valid",
			Serial:    leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore,
			NotAfter:  leaf.NotAfter,
			RotateAt:  leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2),
			Chain:     info.Chain,
		}
		if diff := cmp.Diff(want, info); diff != "" {
			t.Errorf("Certificates()[0] (-want +got):\n%s", diff)
		}
		if len(info.Chain) != len(svid.Certificates) {
			t.Fatalf("Chain has %d PEM blocks, want %d", len(info.Chain), len(svid.Certificates))
		}
		block, _ := pem.Decode([]byte(info.Chain[0]))
		if block == nil || block.Type != "CERTIFICATE" || string(block.Bytes) != string(leaf.Raw) {
			t.Errorf("Chain[0] is not the leaf as PEM")
		}
		out, err := json.Marshal(infos)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "PRIVATE KEY") {
			t.Errorf("Certificates() JSON contains a private key: %s", out)
		}
	})
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	c := catest.New(t, "cluster.local")
	tests := []struct {
		name string
		cfg  identity.Config
		want string
	}{
		{name: "no signer", cfg: identity.Config{}, want: "no signer"},
		{name: "negative concurrency", cfg: identity.Config{Signer: c, Concurrency: -1}, want: "negative concurrency"},
		{name: "max below min", cfg: identity.Config{Signer: c, MinBackoff: time.Second, MaxBackoff: time.Millisecond}, want: "backoff range"},
	}
	for _, tt := range tests {
		if _, err := identity.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New() error = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := newManager(t, identity.Config{Signer: catest.New(t, "cluster.local")})
		stop := run(t, m)
		defer stop()
		synctest.Wait()
		if err := m.Run(context.Background()); err == nil {
			t.Errorf("second Run() = nil, want already running")
		}
	})
}

func TestLocalCASignerTTL(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := catest.New(t, "cluster.local")
		m := newManager(t, identity.Config{Signer: c.Authority().Signer(time.Hour)})
		svid := mustSVID(t, m, idA)
		leaf := svid.Certificates[0]
		if got := time.Until(leaf.NotAfter); got != time.Hour {
			t.Errorf("certificate lifetime = %v, want 1h", got)
		}
		if got, want := m.Certificates()[0].RotateAt, leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)/2); !got.Equal(want) {
			t.Errorf("RotateAt = %v, want %v", got, want)
		}
	})
}
