// Package pushtest runs a real push server on a loopback socket for tests, with a trivial token
// scheme, a throwaway TLS certificate and a generator of valid mesh snapshots of any size.
//
// Only tests import it (controller/push, ztunnel/configstream and the controller's own tests).
package pushtest

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push"
)

// ZtunnelToken returns the bearer token that Authenticate maps to the ztunnel of node.
func ZtunnelToken(node string) string { return "ztunnel:" + node }

// WaypointToken returns the bearer token that Authenticate maps to a waypoint named name.
func WaypointToken(name string) string { return "waypoint:" + name }

// Authenticate accepts the tokens ZtunnelToken and WaypointToken make.
func Authenticate(_ context.Context, token string) (push.Caller, error) {
	kind, name, ok := strings.Cut(token, ":")
	if !ok || name == "" || (kind != push.KindZtunnel && kind != push.KindWaypoint) {
		return push.Caller{}, errors.New("unknown test token")
	}
	c := push.Caller{Kind: kind, Identity: "test:" + token}
	if kind == push.KindZtunnel {
		c.Node = name
	}
	return c, nil
}

// Options of Start.
type Options struct {
	// Addr to listen on; empty means "127.0.0.1:0".
	Addr string
	// TLS serves TLS with a throwaway certificate for 127.0.0.1 (Server.ClientTLS trusts it).
	TLS *TLS
	Log *slog.Logger
}

// Server is a push server serving gRPC on a loopback socket.
type Server struct {
	*push.Server
	Addr     string
	Registry *prometheus.Registry
	g        *grpc.Server
	done     chan struct{}
}

// Start serves a new push server until the test ends (or Stop).
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	reg := prometheus.NewRegistry()
	ps, err := push.New(push.Config{Authenticate: Authenticate, Log: opts.Log, Registerer: reg})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", cmp.Or(opts.Addr, "127.0.0.1:0"))
	if err != nil {
		tb.Fatal(err)
	}
	var gopts []grpc.ServerOption
	if opts.TLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(opts.TLS.Server)))
	}
	g := grpc.NewServer(gopts...)
	ps.Register(g)
	s := &Server{Server: ps, Addr: ln.Addr().String(), Registry: reg, g: g, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = g.Serve(ln)
	}()
	tb.Cleanup(s.Stop)
	return s
}

// Stop closes the listener and every stream, and waits for the server to end.
func (s *Server) Stop() {
	s.g.Stop()
	<-s.done
}

// Metric returns the sum of a counter or gauge family's values, or of a histogram's counts.
func (s *Server) Metric(tb testing.TB, name string) float64 {
	tb.Helper()
	mfs, err := s.Registry.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// TLS holds matching server and client TLS configs.
type TLS struct {
	Server, Client *tls.Config
}

// NewTLS makes a self-signed certificate for 127.0.0.1 and configs that use and trust it.
func NewTLS(tb testing.TB) *TLS {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "warren-controller"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &TLS{
		Server: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}},
		Client: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool},
	}
}

// Mesh returns a valid mesh-wide snapshot: workloads spread round-robin over nodes and
// namespaces; per namespace one Service over its workloads and two Servers ("http" on port 8080,
// allowing the namespace's own identities, and "admin" on the port named "admin"), both
// referenced by every workload of the namespace.
func Mesh(nodes, namespaces, workloads int) *nodeconfig.Snapshot {
	s := &nodeconfig.Snapshot{
		Version:     "gen",
		TrustDomain: "cluster.local",
		Defaults:    &nodeconfig.MeshDefaults{DefaultInboundPolicy: nodeconfig.DefaultPolicy_DEFAULT_POLICY_ALL_AUTHENTICATED},
	}
	svcs := make([]*nodeconfig.Service, namespaces)
	for n := range namespaces {
		ns := Namespace(n)
		s.Servers = append(s.Servers,
			&nodeconfig.Server{
				Name: "http", Namespace: ns, Port: &nodeconfig.Server_PortNumber{PortNumber: 8080},
				Authorizations: []*nodeconfig.Authorization{{
					Name: "same-namespace", Namespace: ns, TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
					MeshTls:            &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/" + ns + "/*"}},
					AuthenticationRefs: []string{"MeshTLSAuthentication/" + ns + "/same-namespace"},
				}},
			},
			&nodeconfig.Server{Name: "admin", Namespace: ns, Port: &nodeconfig.Server_PortName{PortName: "admin"}},
		)
		vip := netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)})
		svcs[n] = &nodeconfig.Service{
			Name: "svc", Namespace: ns, Hostname: "svc." + ns + ".svc.cluster.local",
			Addresses: []string{vip.String()},
			Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080, AppProtocol: nodeconfig.AppProtocol_APP_PROTOCOL_HTTP1}},
		}
	}
	for i := range workloads {
		n := i % namespaces
		ns := Namespace(n)
		ip := netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)})
		w := &nodeconfig.Workload{
			Uid: WorkloadUID(i), Name: fmt.Sprintf("pod-%05d", i), Namespace: ns, ServiceAccount: "default",
			Addresses:      []string{ip.String()},
			Node:           Node(i % nodes),
			Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}, {Name: "admin", Port: 9090}},
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Servers:        []string{ns + "/admin", ns + "/http"},
			Ready:          true,
			ProbePorts:     []uint32{9090},
		}
		s.Workloads = append(s.Workloads, w)
		svcs[n].Endpoints = append(svcs[n].Endpoints, &nodeconfig.Endpoint{WorkloadUid: w.Uid})
	}
	s.Services = svcs
	return s
}

// Node, Namespace and WorkloadUID name the generated objects.
func Node(i int) string        { return fmt.Sprintf("node-%03d", i) }
func Namespace(i int) string   { return fmt.Sprintf("ns-%03d", i) }
func WorkloadUID(i int) string { return fmt.Sprintf("uid-%05d", i) }

// Sorted returns a copy of s with its lists ordered as a push client assembles them and the
// version cleared, for comparing a client's view with push.Relevant.
func Sorted(s *nodeconfig.Snapshot) *nodeconfig.Snapshot {
	c := proto.Clone(s).(*nodeconfig.Snapshot)
	c.Version = ""
	slices.SortFunc(c.Workloads, func(a, b *nodeconfig.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	key := func(ns, name string) string { return ns + "/" + name }
	slices.SortFunc(c.Services, func(a, b *nodeconfig.Service) int {
		return strings.Compare(key(a.GetNamespace(), a.GetName()), key(b.GetNamespace(), b.GetName()))
	})
	slices.SortFunc(c.Servers, func(a, b *nodeconfig.Server) int {
		return strings.Compare(key(a.GetNamespace(), a.GetName()), key(b.GetNamespace(), b.GetName()))
	})
	return c
}
