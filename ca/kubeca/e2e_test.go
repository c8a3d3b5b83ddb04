package kubeca_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/ztunnel/identity"
)

// TestZtunnelGetsWorkloadCertificate runs the ztunnel's side for real: the
// identity manager with a GRPCSigner, over TLS that checks the
// controller's SPIFFE ID, against the CSR service on a real API server,
// with a real bound token.
func TestZtunnelGetsWorkloadCertificate(t *testing.T) {
	c := newCluster(t)
	authority, err := kubeca.LoadOrCreate(context.Background(), c.env.Client, systemNS, kubeca.DefaultRootSecret, ca.Config{TrustDomain: c.td})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kubeca.NewService(kubeca.ServiceConfig{
		CA:       authority,
		Reader:   c.env.Client,
		Reviewer: c.env.Client,
		Ztunnels: []string{systemNS + "/" + ztunnelSA},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The controller serves with a certificate of its own identity from the
	// same CA; the ztunnel trusts the bundle and checks that identity.
	controllerID := ca.WorkloadID(c.td, systemNS, "warren-controller")
	key := p256(t)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{controllerID.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := authority.Sign(context.Background(), controllerID, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	serving := &x509svid.SVID{ID: controllerID, Certificates: chain, PrivateKey: key}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(serving))), grpc.MaxRecvMsgSize(kubeca.MaxRequestBytes))
	svc.Register(g)
	go g.Serve(ln) //nolint:errcheck // returns when stopped
	t.Cleanup(g.Stop)

	token := c.token(t, systemNS, ztunnelSA, "ztunnel-node-1", audience)
	signer, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{
		Target:    ln.Addr().String(),
		TLSConfig: tlsconfig.TLSClientConfig(authority.Bundle(), tlsconfig.AuthorizeID(controllerID)),
		Token:     func() (string, error) { return token, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { signer.Close() })
	m, err := identity.New(identity.Config{Signer: signer, TrustDomain: c.td, Bundle: authority.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	svid, err := m.SVID(ctx, c.id("service-a"))
	if err != nil {
		t.Fatalf("SVID(service-a) error = %v", err)
	}
	if svid.ID != c.id("service-a") || len(svid.Certificates) != 1 {
		t.Errorf("SVID(service-a) = %v with %d certificates, want service-a's leaf only", svid.ID, len(svid.Certificates))
	}
	if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore) - ca.ClockSkew; got != ca.DefaultTTL {
		t.Errorf("SVID(service-a) lifetime = %v, want %v", got, ca.DefaultTTL)
	}

	_, err = m.SVID(ctx, c.id("service-b"))
	want := "create certificate for " + c.id("service-b").String() + ": rpc error: code = PermissionDenied desc = not authorized (is a pod with this identity scheduled on this node"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("SVID(service-b) error = %v, want containing %q", err, want)
	}

	// A ztunnel that trusts another controller identity refuses to talk.
	wrong, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{
		Target:    ln.Addr().String(),
		TLSConfig: tlsconfig.TLSClientConfig(authority.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y"))),
		Token:     func() (string, error) { return token, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wrong.Close() })
	shortCtx, shortCancel := context.WithTimeout(ctx, 5*time.Second)
	defer shortCancel()
	if _, err := wrong.Sign(shortCtx, c.id("service-a"), csr); err == nil {
		t.Error("Sign() through a connection to an unexpected server identity succeeded, want an error")
	}
}
