package kubeca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/caservice"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/test/envtest"
)

const (
	systemNS   = "warren-system"
	ztunnelSA  = "warren-ztunnel"
	audience   = "warren-ca"
	notAuthMsg = "not authorized"
)

// cluster is the world of the CSR tests: two nodes, a ztunnel on each, and
// workloads placed on them.
type cluster struct {
	env *envtest.Env
	ns  string // the workload namespace
	td  spiffeid.TrustDomain
}

// newCluster creates, on a fresh control plane:
//   - Nodes node-1 and node-2;
//   - warren-system/warren-ztunnel and a ztunnel pod bound to it on each node
//     (ztunnel-node-1, ztunnel-node-2);
//   - in a workload namespace: service-a on node-1, service-b on node-2,
//     service-c on node-1 but Failed, service-d on node-1 and terminating,
//     "intruder" (an untrusted account) and "waypoint" on node-1.
func newCluster(tb testing.TB) *cluster {
	tb.Helper()
	env := envtest.Start(tb)
	ctx := context.Background()
	c := &cluster{env: env, td: spiffeid.RequireTrustDomainFromString("cluster.local")}
	for _, n := range []string{"node-1", "node-2"} {
		create(tb, env.Client, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	create(tb, env.Client, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}})
	create(tb, env.Client, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: systemNS, Name: ztunnelSA}})
	c.pod(tb, systemNS, "ztunnel-node-1", ztunnelSA, "node-1")
	c.pod(tb, systemNS, "ztunnel-node-2", ztunnelSA, "node-2")

	c.ns = env.Namespace(tb)
	for _, sa := range []string{"service-a", "service-b", "service-c", "service-d", "intruder", "waypoint"} {
		create(tb, env.Client, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: sa}})
	}
	c.pod(tb, c.ns, "service-a-1", "service-a", "node-1")
	c.pod(tb, c.ns, "service-b-1", "service-b", "node-2")
	c.pod(tb, c.ns, "intruder-1", "intruder", "node-1")
	c.pod(tb, c.ns, "waypoint-1", "waypoint", "node-1")

	failed := c.pod(tb, c.ns, "service-c-1", "service-c", "node-1")
	failed.Status.Phase = corev1.PodFailed
	if err := env.Client.Status().Update(ctx, failed); err != nil {
		tb.Fatalf("mark pod failed: %v", err)
	}
	terminating := c.pod(tb, c.ns, "service-d-1", "service-d", "node-1")
	terminating.Finalizers = []string{"warren.dev/test"}
	if err := env.Client.Update(ctx, terminating); err != nil {
		tb.Fatalf("add finalizer: %v", err)
	}
	if err := env.Client.Delete(ctx, terminating); err != nil {
		tb.Fatalf("delete pod: %v", err)
	}
	return c
}

func create(tb testing.TB, c client.Client, obj client.Object) {
	tb.Helper()
	if err := c.Create(context.Background(), obj); err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// pod creates a pod of service account sa scheduled on node.
func (c *cluster) pod(tb testing.TB, ns, name, sa, node string) *corev1.Pod {
	tb.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/app"}},
		},
	}
	create(tb, c.env.Client, p)
	return p
}

// token requests a token of service account ns/sa for audiences, bound to
// pod ns/boundPod when boundPod is set, through the real TokenRequest API.
func (c *cluster) token(tb testing.TB, ns, sa, boundPod string, audiences ...string) string {
	tb.Helper()
	ctx := context.Background()
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: new(int64(3600))}}
	if boundPod != "" {
		var p corev1.Pod
		if err := c.env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: boundPod}, &p); err != nil {
			tb.Fatalf("get pod to bind: %v", err)
		}
		tr.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}
	}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
	if err := c.env.Client.SubResource("token").Create(ctx, account, tr); err != nil {
		tb.Fatalf("request token for %s/%s: %v", ns, sa, err)
	}
	return tr.Status.Token
}

func (c *cluster) id(sa string) spiffeid.ID { return ca.WorkloadID(c.td, c.ns, sa) }

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// take returns the JSON lines written so far and empties the buffer.
func (b *logBuffer) take(tb testing.TB) []map[string]any {
	tb.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []map[string]any
	for l := range strings.SplitSeq(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			tb.Fatalf("log line %q is not JSON: %v", l, err)
		}
		lines = append(lines, m)
	}
	b.buf.Reset()
	return lines
}

// server is a CSR service on a loopback gRPC server.
type server struct {
	ca     *ca.CA
	client caservice.CertificatesClient
	addr   string
	logs   *logBuffer
	reg    *prometheus.Registry
}

func startService(tb testing.TB, cfg kubeca.ServiceConfig) *server {
	tb.Helper()
	s := &server{logs: &logBuffer{}, reg: prometheus.NewRegistry()}
	if cfg.CA == nil {
		c, err := ca.New(ca.Config{})
		if err != nil {
			tb.Fatal(err)
		}
		cfg.CA = c
	}
	s.ca = cfg.CA
	cfg.Log = slog.New(slog.NewJSONHandler(s.logs, nil))
	cfg.Registerer = s.reg
	svc, err := kubeca.NewService(cfg)
	if err != nil {
		tb.Fatalf("NewService() error = %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(kubeca.MaxRequestBytes))
	svc.Register(g)
	go g.Serve(ln) //nolint:errcheck // returns when stopped
	tb.Cleanup(g.Stop)
	s.addr = ln.Addr().String()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	s.client = caservice.NewCertificatesClient(conn)
	return s
}

// request is one CSR call.
type request struct {
	token    string
	identity string
	csr      string // PEM; empty: a valid CSR for identity
	validity int64
}

func (s *server) call(tb testing.TB, r request) (*caservice.CreateCertificateResponse, *ecdsa.PrivateKey, error) {
	tb.Helper()
	key := p256(tb)
	if r.csr == "" {
		r.csr = csrPEM(tb, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL(tb, r.identity)}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.token)
	}
	resp, err := s.client.CreateCertificate(ctx, &caservice.CreateCertificateRequest{Csr: r.csr, Identity: r.identity, ValiditySeconds: r.validity})
	return resp, key, err
}

func p256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func csrPEM(tb testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	tb.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func mustURL(tb testing.TB, s string) *url.URL {
	tb.Helper()
	u, err := url.Parse(s)
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

func parsePEMChain(tb testing.TB, pems []string) []*x509.Certificate {
	tb.Helper()
	var out []*x509.Certificate
	for _, p := range pems {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			tb.Fatalf("chain element %q is not PEM", p)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestTokenExtras records what the real API server puts in a bound token's
// TokenReview, which the service relies on.
func TestTokenExtras(t *testing.T) {
	c := newCluster(t)
	token := c.token(t, systemNS, ztunnelSA, "ztunnel-node-1", audience)
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{audience}}}
	if err := c.env.Client.Create(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	var zt corev1.Pod
	if err := c.env.Client.Get(context.Background(), client.ObjectKey{Namespace: systemNS, Name: "ztunnel-node-1"}, &zt); err != nil {
		t.Fatal(err)
	}
	t.Logf("TokenReview status: %+v", tr.Status)
	got := map[string]authnv1.ExtraValue{}
	for _, k := range []string{"authentication.kubernetes.io/pod-name", "authentication.kubernetes.io/pod-uid", "authentication.kubernetes.io/node-name"} {
		got[k] = tr.Status.User.Extra[k]
	}
	want := map[string]authnv1.ExtraValue{
		"authentication.kubernetes.io/pod-name":  {"ztunnel-node-1"},
		"authentication.kubernetes.io/pod-uid":   {string(zt.UID)},
		"authentication.kubernetes.io/node-name": {"node-1"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("TokenReview extras mismatch (-want +got):\n%s", diff)
	}
	if !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:warren-system:warren-ztunnel" {
		t.Errorf("TokenReview = authenticated %v user %q, want true system:serviceaccount:warren-system:warren-ztunnel", tr.Status.Authenticated, tr.Status.User.Username)
	}
}

// TestCreateCertificate drives the CSR service over gRPC with real tokens
// from the real API server, reading pods directly and through a cache.
func TestCreateCertificate(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	podCache, err := cache.New(c.env.Config, cache.Options{Scheme: c.env.Scheme, ByObject: map[client.Object]cache.ByObject{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := kubeca.IndexPodNodeName(ctx, podCache); err != nil {
		t.Fatal(err)
	}
	go podCache.Start(ctx) //nolint:errcheck // stops with ctx
	if !podCache.WaitForCacheSync(ctx) {
		t.Fatal("pod cache did not sync")
	}

	zt1 := c.token(t, systemNS, ztunnelSA, "ztunnel-node-1", audience)
	zt2 := c.token(t, systemNS, ztunnelSA, "ztunnel-node-2", audience)
	wrongAud := c.token(t, systemNS, ztunnelSA, "ztunnel-node-1", "someone-else")
	unbound := c.token(t, systemNS, ztunnelSA, "", audience)
	intruder := c.token(t, c.ns, "intruder", "intruder-1", audience)
	waypoint := c.token(t, c.ns, "waypoint", "waypoint-1", audience)

	a := c.id("service-a").String()
	key := p256(t)
	tests := []struct {
		name     string
		req      request
		wantCode codes.Code
		wantMsg  string        // for errors; "" means "not authorized"
		reason   string        // the logged reason of a refusal
		wantTTL  time.Duration // for success
	}{
		{name: "ztunnel gets identity on its node", req: request{token: zt1, identity: a}, wantTTL: ca.DefaultTTL},
		{name: "requested validity", req: request{token: zt1, identity: a, validity: 3600}, wantTTL: time.Hour},
		{name: "validity capped by MaxTTL", req: request{token: zt1, identity: a, validity: 1 << 62}, wantTTL: 48 * time.Hour},
		{name: "terminating pod still counts", req: request{token: zt1, identity: c.id("service-d").String()}, wantTTL: ca.DefaultTTL},
		{name: "other node's ztunnel", req: request{token: zt2, identity: c.id("service-b").String()}, wantTTL: ca.DefaultTTL},
		{name: "waypoint gets its own identity", req: request{token: waypoint, identity: c.id("waypoint").String()}, wantTTL: ca.DefaultTTL},

		{name: "identity only on another node", req: request{token: zt1, identity: c.id("service-b").String()}, wantCode: codes.PermissionDenied, reason: "identity_not_on_node"},
		{name: "made-up identity", req: request{token: zt1, identity: c.id("ghost").String()}, wantCode: codes.PermissionDenied, reason: "identity_not_on_node"},
		{name: "failed pod does not count", req: request{token: zt1, identity: c.id("service-c").String()}, wantCode: codes.PermissionDenied, reason: "identity_not_on_node"},
		{name: "other trust domain", req: request{token: zt1, identity: "spiffe://evil.org/ns/" + c.ns + "/sa/service-a"}, wantCode: codes.PermissionDenied, reason: "bad_identity"},
		{name: "not a workload id", req: request{token: zt1, identity: "spiffe://cluster.local/ns/" + c.ns}, wantCode: codes.PermissionDenied, reason: "bad_identity"},
		{name: "not a spiffe id", req: request{token: zt1, identity: "service-a", csr: csrPEM(t, key, &x509.CertificateRequest{})}, wantCode: codes.PermissionDenied, reason: "bad_identity"},
		{name: "wrong audience", req: request{token: wrongAud, identity: a}, wantCode: codes.Unauthenticated, reason: "invalid_token"},
		{name: "garbage token", req: request{token: "not-a-token", identity: a}, wantCode: codes.Unauthenticated, reason: "invalid_token"},
		{name: "no token", req: request{identity: a}, wantCode: codes.Unauthenticated, reason: "missing_token"},
		{name: "non-ztunnel account", req: request{token: intruder, identity: c.id("intruder").String()}, wantCode: codes.PermissionDenied, reason: "untrusted_account"},
		{name: "token not bound to a pod", req: request{token: unbound, identity: a}, wantCode: codes.PermissionDenied, reason: "unbound_token"},
		{name: "waypoint asks for another identity", req: request{token: waypoint, identity: a}, wantCode: codes.PermissionDenied, reason: "identity_not_own"},

		{name: "csr not pem", req: request{token: zt1, identity: a, csr: "hello"}, wantCode: codes.InvalidArgument, wantMsg: "csr is not PEM", reason: "bad_request"},
		{name: "csr pem of another type", req: request{token: zt1, identity: a, csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}))}, wantCode: codes.InvalidArgument, wantMsg: "csr is a PEM CERTIFICATE block", reason: "bad_request"},
		{name: "csr der garbage", req: request{token: zt1, identity: a, csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}))}, wantCode: codes.InvalidArgument, wantMsg: "parse csr", reason: "bad_request"},
		{name: "csr for another identity", req: request{token: zt1, identity: a, csr: csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{c.id("service-b").URL()}})}, wantCode: codes.InvalidArgument, wantMsg: "csr carries uri san " + c.id("service-b").String(), reason: "bad_request"},
		{name: "csr with extra dns san", req: request{token: zt1, identity: a, csr: csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{c.id("service-a").URL()}, DNSNames: []string{"kubernetes.default"}})}, wantCode: codes.InvalidArgument, wantMsg: "csr carries 1 dns, ip or email sans", reason: "bad_request"},
		{name: "csr asking for a ca", req: request{token: zt1, identity: a, csr: csrPEM(t, key, caRequest(t, c.id("service-a")))}, wantCode: codes.InvalidArgument, wantMsg: "csr asks for a ca certificate", reason: "bad_request"},
		{name: "csr with rsa-sized junk", req: request{token: zt1, identity: a, csr: strings.Repeat("A", kubeca.MaxCSRBytes+1)}, wantCode: codes.InvalidArgument, wantMsg: "more than the limit", reason: "bad_request"},
		{name: "negative validity", req: request{token: zt1, identity: a, validity: -1}, wantCode: codes.InvalidArgument, wantMsg: "negative validity_seconds", reason: "bad_request"},
	}
	for _, rd := range []struct {
		name   string
		reader client.Reader
	}{{"direct", c.env.Client}, {"cached", podCache}} {
		t.Run(rd.name, func(t *testing.T) {
			srv := startService(t, kubeca.ServiceConfig{
				Reader:    rd.reader,
				Reviewer:  c.env.Client,
				Ztunnels:  []string{systemNS + "/" + ztunnelSA},
				Waypoints: []string{c.ns + "/waypoint"},
				MaxTTL:    48 * time.Hour,
			})
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					result, reason := "issued", "ok"
					if tt.wantCode != codes.OK {
						result, reason = "denied", tt.reason
					}
					before := srv.csrs(t, result, reason)
					resp, key, err := srv.call(t, tt.req)
					lines := srv.logs.take(t)
					if got := srv.csrs(t, result, reason); got != before+1 {
						t.Errorf("warren_ca_csr_total{result=%q,reason=%q} = %v after the call, want %v", result, reason, got, before+1)
					}
					if tt.wantCode != codes.OK {
						checkRefusal(t, err, lines, tt.wantCode, tt.wantMsg, tt.reason, tt.req.identity)
						return
					}
					if err != nil {
						t.Fatalf("CreateCertificate() error = %v, want a certificate", err)
					}
					checkIssued(t, srv, resp, key, tt.req.identity, tt.wantTTL)
					if len(lines) != 1 || lines[0]["msg"] != "certificate issued" || lines[0]["identity"] != tt.req.identity || lines[0]["serial"] == "" {
						t.Errorf("logs = %v, want one \"certificate issued\" line for %s with a serial", lines, tt.req.identity)
					}
				})
			}
		})
	}
}

// csrs returns warren_ca_csr_total{result, reason}.
func (s *server) csrs(tb testing.TB, result, reason string) float64 {
	tb.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "warren_ca_csr_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["result"] == result && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// caRequest is a CSR for id that asks for basicConstraints CA:true.
func caRequest(tb testing.TB, id spiffeid.ID) *x509.CertificateRequest {
	tb.Helper()
	bc, err := asn1.Marshal(struct {
		IsCA bool
	}{true})
	if err != nil {
		tb.Fatal(err)
	}
	return &x509.CertificateRequest{
		URIs:            []*url.URL{id.URL()},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
	}
}

func checkRefusal(tb testing.TB, err error, lines []map[string]any, wantCode codes.Code, wantMsg, reason, identity string) {
	tb.Helper()
	st, _ := status.FromError(err)
	if wantMsg == "" {
		if st.Code() != wantCode || st.Message() != notAuthMsg {
			tb.Errorf("CreateCertificate() error = %v, want code %v and exactly %q", err, wantCode, notAuthMsg)
		}
	} else if st.Code() != wantCode || !strings.Contains(st.Message(), wantMsg) {
		tb.Errorf("CreateCertificate() error = %v, want code %v containing %q", err, wantCode, wantMsg)
	}
	var events []map[string]any
	for _, l := range lines {
		if l["msg"] == "security event" {
			events = append(events, l)
		}
	}
	if len(events) != 1 || len(lines) != 1 {
		tb.Fatalf("logs = %v, want exactly one security event line", lines)
	}
	ev := events[0]
	if ev["event"] != "csr_denied" || ev["reason"] != reason || ev["level"] != "WARN" {
		tb.Errorf("security event = %v, want event csr_denied, reason %s, level WARN", ev, reason)
	}
	if s, _ := ev["error"].(string); s == "" {
		tb.Errorf("security event %v has no error detail", ev)
	}
	if id := identity; len(id) < 200 && ev["identity"] != id {
		tb.Errorf("security event identity = %v, want %q", ev["identity"], id)
	}
	for _, k := range []string{"caller.account", "caller.pod", "caller.node", "peer"} {
		if _, ok := ev[k]; !ok {
			tb.Errorf("security event %v lacks %s", ev, k)
		}
	}
}

func checkIssued(tb testing.TB, srv *server, resp *caservice.CreateCertificateResponse, key *ecdsa.PrivateKey, identity string, wantTTL time.Duration) {
	tb.Helper()
	chain := parsePEMChain(tb, resp.GetCertChain())
	if len(chain) != 2 {
		tb.Fatalf("chain has %d certificates, want leaf and root", len(chain))
	}
	if !chain[1].Equal(srv.ca.Root()) {
		tb.Errorf("last chain certificate %q is not the CA root", chain[1].Subject)
	}
	gotID, _, err := x509svid.Verify(chain[:1], srv.ca.Bundle())
	if err != nil {
		tb.Fatalf("x509svid.Verify() error = %v", err)
	}
	if gotID.String() != identity {
		tb.Errorf("leaf identity = %s, want %s", gotID, identity)
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		tb.Error("leaf is not for the CSR's key")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore) - ca.ClockSkew; got != wantTTL {
		tb.Errorf("leaf lifetime = %v, want %v", got, wantTTL)
	}
}

// TestServiceUnavailableAPI: when the API server cannot be asked, the caller
// is told to retry, and it is not a security event.
func TestServiceUnavailableAPI(t *testing.T) {
	t.Parallel()
	broken := brokenClient{err: errors.New("connection refused")}
	srv := startService(t, kubeca.ServiceConfig{Reader: broken, Reviewer: broken, Ztunnels: []string{"warren-system/warren-ztunnel"}})
	_, _, err := srv.call(t, request{token: "t", identity: "spiffe://cluster.local/ns/a/sa/b"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("CreateCertificate() error = %v, want code Unavailable", err)
	}
	lines := srv.logs.take(t)
	if len(lines) != 1 || lines[0]["msg"] != "certificate request failed" || lines[0]["reason"] != "internal" {
		t.Errorf("logs = %v, want one \"certificate request failed\" line with reason internal", lines)
	}
}

// brokenClient fails every call, like an unreachable API server.
type brokenClient struct {
	client.Client
	err error
}

func (b brokenClient) Create(context.Context, client.Object, ...client.CreateOption) error {
	return b.err
}

func (b brokenClient) Get(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error {
	return b.err
}

func (b brokenClient) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return b.err
}

func TestNewServiceRejectsBadConfig(t *testing.T) {
	t.Parallel()
	c, err := ca.New(ca.Config{})
	if err != nil {
		t.Fatal(err)
	}
	k := brokenClient{}
	tests := []struct {
		name string
		cfg  kubeca.ServiceConfig
		want string
	}{
		{"no ca", kubeca.ServiceConfig{Reader: k, Reviewer: k}, "no ca"},
		{"no reader", kubeca.ServiceConfig{CA: c, Reviewer: k}, "no pod reader"},
		{"no reviewer", kubeca.ServiceConfig{CA: c, Reader: k}, "no token reviewer"},
		{"bad account", kubeca.ServiceConfig{CA: c, Reader: k, Reviewer: k, Ztunnels: []string{"warren-ztunnel"}}, `"warren-ztunnel" is not namespace/name`},
		{"negative ttl", kubeca.ServiceConfig{CA: c, Reader: k, Reviewer: k, MaxTTL: -1}, "negative max ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kubeca.NewService(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewService() error = %v, want containing %q", err, tt.want)
			}
		})
	}
}
