package identity

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/api/caservice"
)

// GRPCSignerConfig configures a [GRPCSigner]. Target and Token are required.
type GRPCSignerConfig struct {
	// Target is the CA's gRPC address, e.g.
	// "warren-controller.warren-system.svc:15013" (any grpc.NewClient
	// target). Required.
	Target string

	// TLSConfig secures the connection; it must trust the mesh root and
	// check the controller's identity. Nil connects without TLS, which
	// only tests should do: the bearer token would travel in the clear.
	TLSConfig *tls.Config

	// Token returns the node agent's projected ServiceAccount token
	// (audience warren-ca). It is called for every CSR, since the kubelet
	// rotates projected tokens; see TokenFile. Required.
	Token func() (string, error)

	// TTL is the lifetime asked for; zero leaves it to the CA (24h by
	// default). The CA caps it.
	TTL time.Duration

	// DialOptions are appended to the signer's own (transport credentials),
	// for tests and tuning.
	DialOptions []grpc.DialOption
}

// GRPCSigner is the [Signer] of a node agent in a cluster: it sends each CSR
// to warren-controller's CSR service (api/caservice), authenticated by the
// node agent's own ServiceAccount token. Create it with [NewGRPCSigner];
// Close releases its connection. It is safe for concurrent use.
type GRPCSigner struct {
	conn   *grpc.ClientConn
	client caservice.CertificatesClient
	target string
	token  func() (string, error)
	ttl    time.Duration
}

// NewGRPCSigner returns a signer for cfg.Target. It does not connect: the
// connection is made by the first Sign and re-made after failures.
func NewGRPCSigner(cfg GRPCSignerConfig) (*GRPCSigner, error) {
	switch {
	case cfg.Target == "":
		return nil, errors.New("new grpc signer: no ca address (set GRPCSignerConfig.Target)")
	case cfg.Token == nil:
		return nil, errors.New("new grpc signer: no token source (set GRPCSignerConfig.Token)")
	case cfg.TTL < 0:
		return nil, fmt.Errorf("new grpc signer: negative ttl %v", cfg.TTL)
	}
	creds := insecure.NewCredentials()
	if cfg.TLSConfig != nil {
		creds = credentials.NewTLS(cfg.TLSConfig)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Target, opts...)
	if err != nil {
		return nil, fmt.Errorf("new grpc signer for %s: %w", cfg.Target, err)
	}
	return &GRPCSigner{
		conn:   conn,
		client: caservice.NewCertificatesClient(conn),
		target: cfg.Target,
		token:  cfg.Token,
		ttl:    cfg.TTL,
	}, nil
}

// Close closes the connection to the CA.
func (s *GRPCSigner) Close() error { return s.conn.Close() }

// Sign implements [Signer]: it sends csrDER as PEM with the current token
// and returns the chain the CA answered, leaf first, without the root (the
// root is the trust anchor, distributed in the trust bundle; the CA's
// answer ends with it).
func (s *GRPCSigner) Sign(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	chain, err := s.sign(ctx, id, csrDER)
	if err != nil {
		return nil, fmt.Errorf("create certificate for %s: %w", id, err)
	}
	return chain, nil
}

func (s *GRPCSigner) sign(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	token, err := s.token()
	if err != nil {
		return nil, fmt.Errorf("read service account token: %w", err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := s.client.CreateCertificate(ctx, &caservice.CreateCertificateRequest{
		Csr:             string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		Identity:        id.String(),
		ValiditySeconds: int64(s.ttl / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, s.hint(err))
	}
	return parseChain(resp.GetCertChain())
}

// hint suggests the likely cause of a refusal, which the CA never tells.
func (s *GRPCSigner) hint(err error) string {
	switch status.Code(err) {
	case codes.PermissionDenied:
		return " (is a pod with this identity scheduled on this node, and is this node agent's service account trusted by the ca?)"
	case codes.Unauthenticated:
		return " (is the projected service account token for audience warren-ca mounted, bound to this pod and unexpired?)"
	case codes.Unavailable:
		return fmt.Sprintf(" (is warren-controller reachable at %s, and does its certificate verify?)", s.target)
	}
	return ""
}

// parseChain parses the CA's answer, leaf first and the root last, and
// returns it without the root.
func parseChain(pems []string) ([]*x509.Certificate, error) {
	chain := make([]*x509.Certificate, 0, len(pems))
	for i, p := range pems {
		block, rest := pem.Decode([]byte(p))
		if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("ca answer: chain element %d is not one PEM CERTIFICATE", i)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca answer: chain element %d: %w", i, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) < 2 {
		return nil, fmt.Errorf("ca answer: chain of %d certificates, want the leaf up to the root", len(chain))
	}
	root := chain[len(chain)-1]
	if !bytes.Equal(root.RawIssuer, root.RawSubject) || root.CheckSignatureFrom(root) != nil {
		return nil, fmt.Errorf("ca answer: last certificate %q is not a self-signed root", root.Subject)
	}
	return chain[:len(chain)-1], nil
}

// TokenFile returns a token source reading path on every call, for
// GRPCSignerConfig.Token: the kubelet rewrites projected tokens before they
// expire.
func TokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		token := strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("token file %s is empty", path)
		}
		return token, nil
	}
}
