package identity_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/api/caservice"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel/identity"
)

var _ identity.Signer = (*identity.GRPCSigner)(nil)

// fakeCAServer is the CSR protocol served by a test CA on a loopback
// socket: it records the requests and answers with respond.
type fakeCAServer struct {
	caservice.UnimplementedCertificatesServer
	ca *catest.CA

	mu      sync.Mutex
	tokens  []string
	reqs    []*caservice.CreateCertificateRequest
	respond func(req *caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error)
}

func (f *fakeCAServer) CreateCertificate(ctx context.Context, req *caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.tokens = append(f.tokens, strings.Join(md.Get("authorization"), ","))
	f.reqs = append(f.reqs, req)
	respond := f.respond
	f.mu.Unlock()
	if respond != nil {
		return respond(req)
	}
	return f.sign(req)
}

// sign answers like warren-controller: leaf first, root last.
func (f *fakeCAServer) sign(req *caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "csr is not PEM")
	}
	id, err := spiffeid.FromString(req.GetIdentity())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	chain, err := f.ca.Authority().Sign(context.Background(), id, block.Bytes, time.Duration(req.GetValiditySeconds())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &caservice.CreateCertificateResponse{}
	for _, c := range append(chain, f.ca.Authority().Root()) {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return resp, nil
}

func startFakeCA(tb testing.TB) (*fakeCAServer, string) {
	tb.Helper()
	f := &fakeCAServer{ca: catest.New(tb, "cluster.local")}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := grpc.NewServer()
	caservice.RegisterCertificatesServer(g, f)
	go g.Serve(ln) //nolint:errcheck // returns when stopped
	tb.Cleanup(g.Stop)
	return f, ln.Addr().String()
}

func newGRPCSigner(tb testing.TB, cfg identity.GRPCSignerConfig) *identity.GRPCSigner {
	tb.Helper()
	s, err := identity.NewGRPCSigner(cfg)
	if err != nil {
		tb.Fatalf("NewGRPCSigner() error = %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestGRPCSignerWithManager(t *testing.T) {
	t.Parallel()
	f, addr := startFakeCA(t)
	var (
		mu sync.Mutex
		n  int
	)
	signer := newGRPCSigner(t, identity.GRPCSignerConfig{
		Target: addr,
		Token: func() (string, error) { // a rotating projected token
			mu.Lock()
			defer mu.Unlock()
			n++
			return fmt.Sprintf("token-%d", n), nil
		},
		TTL: time.Hour,
	})
	m := newManager(t, identity.Config{Signer: signer, Bundle: f.ca.Bundle()})
	for _, id := range []spiffeid.ID{idA, idB} {
		svid := mustSVID(t, m, id)
		if len(svid.Certificates) != 1 {
			t.Errorf("SVID(%v) chain has %d certificates, want the leaf only (the root is in the bundle)", id, len(svid.Certificates))
		}
		if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore) - ca.ClockSkew; got != time.Hour {
			t.Errorf("SVID(%v) lifetime = %v, want 1h", id, got)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if diff := cmp.Diff([]string{"Bearer token-1", "Bearer token-2"}, f.tokens); diff != "" {
		t.Errorf("tokens sent mismatch (-want +got):\n%s", diff)
	}
	for _, r := range f.reqs {
		if r.GetValiditySeconds() != 3600 || !strings.HasPrefix(r.GetCsr(), "-----BEGIN CERTIFICATE REQUEST-----") {
			t.Errorf("request validity %d csr %.40q, want 3600 and a PEM CERTIFICATE REQUEST", r.GetValiditySeconds(), r.GetCsr())
		}
	}
}

func TestGRPCSignerErrors(t *testing.T) {
	t.Parallel()
	f, addr := startFakeCA(t)
	csr := newCSRDER(t, idA)
	leafPEM := func() []string {
		resp, err := f.sign(&caservice.CreateCertificateRequest{Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), Identity: idA.String()})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetCertChain()
	}()

	tests := []struct {
		name    string
		token   func() (string, error)
		respond func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error)
		want    string
	}{
		{
			name: "refused",
			respond: func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
				return nil, status.Error(codes.PermissionDenied, "not authorized")
			},
			want: "create certificate for " + idA.String() + ": rpc error: code = PermissionDenied desc = not authorized (is a pod with this identity scheduled on this node",
		},
		{
			name: "bad token",
			respond: func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
				return nil, status.Error(codes.Unauthenticated, "not authorized")
			},
			want: "desc = not authorized (is the projected service account token for audience warren-ca mounted",
		},
		{
			name:  "token unreadable",
			token: func() (string, error) { return "", errors.New("open /var/run/secrets/tokens/warren-ca: no such file") },
			want:  "create certificate for " + idA.String() + ": read service account token: open /var/run/secrets/tokens/warren-ca",
		},
		{
			name: "no root at the end",
			respond: func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
				return &caservice.CreateCertificateResponse{CertChain: leafPEM[:1]}, nil
			},
			want: "ca answer: chain of 1 certificates, want the leaf up to the root",
		},
		{
			name: "leaf last",
			respond: func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
				return &caservice.CreateCertificateResponse{CertChain: []string{leafPEM[1], leafPEM[0]}}, nil
			},
			want: "is not a self-signed root",
		},
		{
			name: "garbage",
			respond: func(*caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
				return &caservice.CreateCertificateResponse{CertChain: []string{"junk", leafPEM[1]}}, nil
			},
			want: "ca answer: chain element 0 is not one PEM CERTIFICATE",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.mu.Lock()
			f.respond = tt.respond
			f.mu.Unlock()
			token := tt.token
			if token == nil {
				token = func() (string, error) { return "t", nil }
			}
			s := newGRPCSigner(t, identity.GRPCSignerConfig{Target: addr, Token: token})
			chain, err := s.Sign(context.Background(), idA, csr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Sign() = %d certificates, error %v; want error containing %q", len(chain), err, tt.want)
			}
		})
	}
}

func TestGRPCSignerUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := newGRPCSigner(t, identity.GRPCSignerConfig{Target: addr, Token: func() (string, error) { return "t", nil }})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = s.Sign(ctx, idA, newCSRDER(t, idA))
	if err == nil || !strings.Contains(err.Error(), "is warren-controller reachable at "+addr) {
		t.Errorf("Sign() error = %v, want a hint naming %s", err, addr)
	}
}

func TestNewGRPCSignerRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tok := func() (string, error) { return "t", nil }
	for name, tt := range map[string]struct {
		cfg  identity.GRPCSignerConfig
		want string
	}{
		"no target":    {identity.GRPCSignerConfig{Token: tok}, "no ca address"},
		"no token":     {identity.GRPCSignerConfig{Target: "x:1"}, "no token source"},
		"negative ttl": {identity.GRPCSignerConfig{Target: "x:1", Token: tok, TTL: -time.Second}, "negative ttl"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := identity.NewGRPCSigner(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewGRPCSigner() error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestTokenFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "token")
	read := identity.TokenFile(path)
	if _, err := read(); err == nil {
		t.Error("TokenFile(missing)() error = nil, want an error")
	}
	for _, want := range []string{"first", "rotated"} {
		if err := os.WriteFile(path, []byte(want+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := read()
		if err != nil || got != want {
			t.Errorf("TokenFile()() = %q, %v; want %q", got, err, want)
		}
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := read(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("TokenFile(empty)() error = %v, want \"is empty\"", err)
	}
}

// newCSRDER returns a DER CSR for id with a fresh key.
func newCSRDER(tb testing.TB, id spiffeid.ID) []byte {
	tb.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, newKey(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return der
}
