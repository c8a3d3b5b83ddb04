// Package kubeca runs Warren's certificate authority on Kubernetes: the CSR
// service that node agents call (api/caservice), which authorizes every
// request with a TokenReview and the pods scheduled on the caller's node,
// and the storage of the CA's root or intermediate in a Secret.
//
// Signing itself is ca's job; this package decides who may ask for which
// identity, logs refusals as security events and keeps the key across
// controller restarts. It imports controller-runtime and k8s.io/*, so only
// the controller and cmd/warren-controller may import it; the data plane
// uses the ca package, which imports nothing from Kubernetes.
package kubeca

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/caservice"
	"github.com/warren-mesh/warren/ca"
)

// Defaults and limits of the CSR service.
const (
	// DefaultAudience is the audience the callers' projected ServiceAccount
	// tokens must carry.
	DefaultAudience = "warren-ca"
	// MaxCSRBytes bounds the PEM CSR of a request; an ECDSA P-256 CSR with
	// one URI SAN is about 500 bytes.
	MaxCSRBytes = 8 << 10
	// MaxTokenBytes bounds the bearer token; projected tokens are 1-2 KiB.
	MaxTokenBytes = 16 << 10
	// MaxIdentityBytes bounds the requested SPIFFE ID.
	MaxIdentityBytes = 2 << 10
	// MaxRequestBytes is what a gRPC server carrying only this service
	// needs for grpc.MaxRecvMsgSize (the default is 4 MiB).
	MaxRequestBytes = 64 << 10

	// PodNodeNameField is the pod field the service lists pods by. The API
	// server supports it as a field selector; a cached client needs the
	// index that IndexPodNodeName registers.
	PodNodeNameField = "spec.nodeName"
)

// Token claims of bound ServiceAccount tokens, as a TokenReview reports them
// in user.extra. The API server adds node-name (and node-uid) when the bound
// pod is scheduled and its Node exists (Kubernetes >= 1.30).
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// notAuthorized is all a refused caller learns about authorization.
const notAuthorized = "not authorized"

// ServiceConfig configures a [Service]. CA, Reader and Reviewer are required.
type ServiceConfig struct {
	// CA signs the certificates. Required.
	CA *ca.CA

	// Reader reads Pods: the caller's pod and the pods on its node. It may
	// be a manager's cached client, which must then have the index
	// IndexPodNodeName registers; a direct client needs nothing (the API
	// server supports the field selector). Required.
	Reader client.Reader

	// Reviewer creates TokenReviews. It must be a direct (uncached) client;
	// TokenReview is create-only. Required.
	Reviewer client.Writer

	// Audience the caller's token must be valid for. Default: "warren-ca".
	Audience string

	// Ztunnels are the ServiceAccounts ("namespace/name") of node agents:
	// they may ask for any identity that has a non-terminated pod on their
	// own node. Empty: no ztunnel is trusted.
	Ztunnels []string

	// Waypoints are the ServiceAccounts ("namespace/name") of waypoint
	// proxies: they may ask only for their own identity. Empty: none.
	Waypoints []string

	// IsWaypoint, when set, reports whether a ServiceAccount
	// ("namespace/name") that is not in Ztunnels or Waypoints is a
	// waypoint's: the controller answers from its cache of Gateways of
	// class warren-waypoint (Gateway <ns>/<gw> runs as ServiceAccount
	// <ns>/<gw>). Such a caller, too, may ask only for its own identity. An
	// error refuses the request as Unavailable.
	IsWaypoint func(ctx context.Context, account string) (bool, error)

	// MaxTTL caps the lifetime a caller may ask for; the CA's own cap
	// applies as well. Zero: only the CA's cap.
	MaxTTL time.Duration

	// Log receives one "security event" line per refused request and one
	// info line per issued certificate. Default: slog.Default().
	Log *slog.Logger

	// Registerer gets the service's metrics. Nil: metrics are kept but not
	// registered.
	Registerer prometheus.Registerer
}

// Service is the CSR service: it implements caservice.CertificatesServer.
// Create it with [NewService] and attach it to a gRPC server with
// [Service.Register]. It is safe for concurrent use.
type Service struct {
	caservice.UnimplementedCertificatesServer

	ca        *ca.CA
	reader    client.Reader
	reviewer  client.Writer
	audience  string
	ztunnels  []string
	waypoints []string
	// isWaypoint is ServiceConfig.IsWaypoint; nil answers false.
	isWaypoint func(ctx context.Context, account string) (bool, error)
	maxTTL     time.Duration
	log        *slog.Logger
	m          metrics
}

// NewService validates cfg and registers the metrics.
func NewService(cfg ServiceConfig) (*Service, error) {
	switch {
	case cfg.CA == nil:
		return nil, errors.New("new ca service: no ca (set ServiceConfig.CA)")
	case cfg.Reader == nil:
		return nil, errors.New("new ca service: no pod reader (set ServiceConfig.Reader)")
	case cfg.Reviewer == nil:
		return nil, errors.New("new ca service: no token reviewer (set ServiceConfig.Reviewer)")
	case cfg.MaxTTL < 0:
		return nil, fmt.Errorf("new ca service: negative max ttl %v", cfg.MaxTTL)
	}
	for _, a := range slices.Concat(cfg.Ztunnels, cfg.Waypoints) {
		if ns, name, ok := strings.Cut(a, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("new ca service: trusted service account %q is not namespace/name", a)
		}
	}
	m, err := newMetrics(cfg.Registerer, cfg.CA)
	if err != nil {
		return nil, fmt.Errorf("new ca service: %w", err)
	}
	return &Service{
		ca:         cfg.CA,
		reader:     cfg.Reader,
		reviewer:   cfg.Reviewer,
		audience:   cmp.Or(cfg.Audience, DefaultAudience),
		ztunnels:   slices.Clone(cfg.Ztunnels),
		waypoints:  slices.Clone(cfg.Waypoints),
		isWaypoint: cfg.IsWaypoint,
		maxTTL:     cfg.MaxTTL,
		log:        cmp.Or(cfg.Log, slog.Default()),
		m:          m,
	}, nil
}

// Register attaches the service to g. A server carrying only this service
// should be built with grpc.MaxRecvMsgSize(MaxRequestBytes).
func (s *Service) Register(g grpc.ServiceRegistrar) {
	caservice.RegisterCertificatesServer(g, s)
}

// IndexPodNodeName registers the spec.nodeName index on Pods that the
// service needs when ServiceConfig.Reader is a cached client, e.g.
// IndexPodNodeName(ctx, mgr.GetFieldIndexer()) before the manager starts.
func IndexPodNodeName(ctx context.Context, indexer client.FieldIndexer) error {
	err := indexer.IndexField(ctx, &corev1.Pod{}, PodNodeNameField, func(o client.Object) []string {
		if p, ok := o.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("index pods by %s: %w", PodNodeNameField, err)
	}
	return nil
}

// Reasons of refusals: the bounded values of the reason label.
const (
	reasonIssued           = "ok"
	reasonMissingToken     = "missing_token"        // no or malformed authorization metadata
	reasonInvalidToken     = "invalid_token"        // TokenReview refused it (expired, wrong audience, deleted pod...)
	reasonUntrustedAccount = "untrusted_account"    // not a ztunnel or waypoint ServiceAccount
	reasonUnboundToken     = "unbound_token"        // token not bound to a pod
	reasonCallerPod        = "caller_pod_mismatch"  // bound pod missing, other uid, account, node, or not scheduled
	reasonBadIdentity      = "bad_identity"         // unparsable, other trust domain, not /ns/<ns>/sa/<sa>
	reasonNotOnNode        = "identity_not_on_node" // no non-terminated pod with the identity on the caller's node
	reasonNotOwnIdentity   = "identity_not_own"     // a waypoint asked for another identity than its own
	reasonBadRequest       = "bad_request"          // malformed or oversized CSR, bad ttl
	reasonInternal         = "internal"             // Kubernetes API or signing failure: not the caller's fault
)

// refusal is why a request was not answered with a certificate.
type refusal struct {
	code   codes.Code
	reason string // a reason* constant
	msg    string // what the caller is told
	err    error  // the real cause, for the log only
}

func (r *refusal) Error() string { return r.err.Error() }

// deny refuses with "not authorized" and logs err.
func deny(code codes.Code, reason string, err error) *refusal {
	return &refusal{code: code, reason: reason, msg: notAuthorized, err: err}
}

// badRequest refuses an authorized caller's malformed request; the caller
// is told err, which holds no authorization decision.
func badRequest(err error) *refusal {
	return &refusal{code: codes.InvalidArgument, reason: reasonBadRequest, msg: err.Error(), err: err}
}

// caller is what the service learned about the caller, for the log.
type caller struct {
	account string // "namespace/name" of the ServiceAccount
	kind    string // "ztunnel" or "waypoint"
	pod     string // "namespace/name"
	node    string
}

// CreateCertificate implements caservice.CertificatesServer. Every refusal
// is counted and logged once as a security event with its real reason; the
// caller gets PermissionDenied (Unauthenticated for a bad token) and "not
// authorized". A malformed CSR from an authorized caller gets
// InvalidArgument with the cause, and Kubernetes API failures Unavailable,
// so the caller retries.
func (s *Service) CreateCertificate(ctx context.Context, req *caservice.CreateCertificateRequest) (*caservice.CreateCertificateResponse, error) {
	var c caller
	resp, leaf, err := s.createCertificate(ctx, req, &c)
	attrs := []slog.Attr{
		slog.String("identity", truncate(req.GetIdentity(), 256)),
		slog.String("caller.account", c.account),
		slog.String("caller.pod", c.pod),
		slog.String("caller.node", c.node),
	}
	if err == nil {
		s.m.csrs.WithLabelValues("issued", reasonIssued).Inc()
		s.log.LogAttrs(ctx, slog.LevelInfo, "certificate issued", append(attrs,
			slog.String("serial", leaf.SerialNumber.Text(16)),
			slog.Time("not_after", leaf.NotAfter))...)
		return resp, nil
	}
	var r *refusal
	if !errors.As(err, &r) {
		r = &refusal{code: codes.Internal, reason: reasonInternal, err: err}
	}
	attrs = append(attrs, slog.String("peer", peerAddr(ctx)), slog.String("reason", r.reason), slog.String("error", r.err.Error()))
	if r.reason == reasonInternal {
		s.m.csrs.WithLabelValues("error", r.reason).Inc()
		s.log.LogAttrs(ctx, slog.LevelError, "certificate request failed", attrs...)
		msg := "ca cannot check the request right now; retry later"
		if r.code == codes.Internal {
			msg = "ca failed to sign the request"
		}
		return nil, status.Error(r.code, msg)
	}
	s.m.csrs.WithLabelValues("denied", r.reason).Inc()
	s.log.LogAttrs(ctx, slog.LevelWarn, "security event", append([]slog.Attr{slog.String("event", "csr_denied")}, attrs...)...)
	return nil, status.Error(r.code, r.msg)
}

func (s *Service) createCertificate(ctx context.Context, req *caservice.CreateCertificateRequest, c *caller) (*caservice.CreateCertificateResponse, *x509.Certificate, error) {
	// Sizes first: an oversized request costs no API call.
	switch {
	case len(req.GetCsr()) > MaxCSRBytes:
		return nil, nil, badRequest(fmt.Errorf("csr is %d bytes, more than the limit of %d", len(req.GetCsr()), MaxCSRBytes))
	case len(req.GetIdentity()) > MaxIdentityBytes:
		return nil, nil, badRequest(fmt.Errorf("identity is %d bytes, more than the limit of %d", len(req.GetIdentity()), MaxIdentityBytes))
	case req.GetValiditySeconds() < 0:
		return nil, nil, badRequest(fmt.Errorf("negative validity_seconds %d", req.GetValiditySeconds()))
	}
	if err := s.authenticate(ctx, c); err != nil {
		return nil, nil, err
	}
	id, err := s.authorize(ctx, c, req.GetIdentity())
	if err != nil {
		return nil, nil, err
	}
	csrDER, err := decodeCSR(req.GetCsr())
	if err != nil {
		return nil, nil, badRequest(err)
	}
	chain, err := s.ca.Sign(ctx, id, csrDER, s.ttl(req.GetValiditySeconds()))
	switch {
	case errors.Is(err, ca.ErrInvalidCSR):
		return nil, nil, badRequest(err)
	case err != nil:
		return nil, nil, &refusal{code: codes.Internal, reason: reasonInternal, err: err}
	}
	resp := &caservice.CreateCertificateResponse{CertChain: make([]string, 0, len(chain)+1)}
	for _, cert := range append(chain, s.ca.Root()) {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})))
	}
	return resp, chain[0], nil
}

// authenticate checks the bearer token with a TokenReview and the pod it is
// bound to, and fills c.
func (s *Service) authenticate(ctx context.Context, c *caller) error {
	token, err := bearerToken(ctx)
	if err != nil {
		return deny(codes.Unauthenticated, reasonMissingToken, err)
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{s.audience}}}
	if err := s.reviewer.Create(ctx, tr); err != nil {
		return &refusal{code: codes.Unavailable, reason: reasonInternal, err: fmt.Errorf("token review: %w", err)}
	}
	st := tr.Status
	switch {
	case !st.Authenticated:
		return deny(codes.Unauthenticated, reasonInvalidToken, fmt.Errorf("token review refused the token for audience %q: %s", s.audience, cmp.Or(st.Error, "not authenticated")))
	case !slices.Contains(st.Audiences, s.audience):
		return deny(codes.Unauthenticated, reasonInvalidToken, fmt.Errorf("token review accepted the token for audiences %q, not %q", st.Audiences, s.audience))
	}
	rest, isSA := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok := strings.Cut(rest, ":")
	if !isSA || !ok || ns == "" || sa == "" {
		c.account = st.User.Username
		return deny(codes.PermissionDenied, reasonUntrustedAccount, fmt.Errorf("user %q is not a service account", st.User.Username))
	}
	c.account = ns + "/" + sa
	switch {
	case slices.Contains(s.ztunnels, c.account):
		c.kind = "ztunnel"
	case slices.Contains(s.waypoints, c.account):
		c.kind = "waypoint"
	case s.isWaypoint != nil:
		ok, err := s.isWaypoint(ctx, c.account)
		if err != nil {
			return &refusal{code: codes.Unavailable, reason: reasonInternal, err: fmt.Errorf("look up waypoint account %s: %w", c.account, err)}
		}
		if !ok {
			return deny(codes.PermissionDenied, reasonUntrustedAccount, fmt.Errorf("service account %s is neither a trusted ztunnel account nor a waypoint Gateway's", c.account))
		}
		c.kind = "waypoint"
	default:
		return deny(codes.PermissionDenied, reasonUntrustedAccount, fmt.Errorf("service account %s is neither a trusted ztunnel nor waypoint account", c.account))
	}
	podName, podUID := single(st.User.Extra[extraPodName]), single(st.User.Extra[extraPodUID])
	c.node = single(st.User.Extra[extraNodeName])
	if podName == "" || podUID == "" {
		return deny(codes.PermissionDenied, reasonUnboundToken, errors.New("token is not bound to a pod (no pod-name and pod-uid claims); mount a projected service account token"))
	}
	c.pod = ns + "/" + podName
	var pod corev1.Pod
	if err := s.reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: podName}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s not found", c.pod))
		}
		return &refusal{code: codes.Unavailable, reason: reasonInternal, err: fmt.Errorf("get caller pod %s: %w", c.pod, err)}
	}
	switch {
	case string(pod.UID) != podUID:
		return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s has uid %s, the token is bound to uid %s", c.pod, pod.UID, podUID))
	case podServiceAccount(&pod) != sa:
		return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s runs as service account %s, the token is of %s", c.pod, podServiceAccount(&pod), sa))
	case pod.Spec.NodeName == "":
		return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s is not scheduled on a node", c.pod))
	case c.node != "" && pod.Spec.NodeName != c.node:
		return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s is on node %s, the token names node %s", c.pod, pod.Spec.NodeName, c.node))
	case terminated(&pod):
		return deny(codes.PermissionDenied, reasonCallerPod, fmt.Errorf("caller pod %s has terminated (phase %s)", c.pod, pod.Status.Phase))
	}
	// Without a node-name claim (API servers before 1.30, or a token
	// requested before the Node existed) the bound pod, checked by uid,
	// names the node.
	c.node = pod.Spec.NodeName
	return nil
}

// authorize checks that c may ask for identity and returns it parsed.
func (s *Service) authorize(ctx context.Context, c *caller, identity string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(identity)
	if err != nil {
		return spiffeid.ID{}, deny(codes.PermissionDenied, reasonBadIdentity, fmt.Errorf("parse requested identity: %w", err))
	}
	if td := s.ca.TrustDomain(); !id.MemberOf(td) {
		return spiffeid.ID{}, deny(codes.PermissionDenied, reasonBadIdentity, fmt.Errorf("requested identity %s is not in trust domain %q", id, td.Name()))
	}
	ns, sa, err := ca.ParseWorkloadID(id)
	if err != nil {
		return spiffeid.ID{}, deny(codes.PermissionDenied, reasonBadIdentity, err)
	}
	if c.kind == "waypoint" {
		if ns+"/"+sa != c.account {
			return spiffeid.ID{}, deny(codes.PermissionDenied, reasonNotOwnIdentity, fmt.Errorf("waypoint account %s may only ask for its own identity", c.account))
		}
		return id, nil
	}
	var pods corev1.PodList
	if err := s.reader.List(ctx, &pods, client.InNamespace(ns), client.MatchingFields{PodNodeNameField: c.node}); err != nil {
		return spiffeid.ID{}, &refusal{code: codes.Unavailable, reason: reasonInternal, err: fmt.Errorf("list pods of namespace %s on node %s: %w", ns, c.node, err)}
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		// A terminating pod (deletionTimestamp set) still runs and still
		// counts until it is gone.
		if p.Spec.NodeName == c.node && podServiceAccount(p) == sa && !terminated(p) {
			return id, nil
		}
	}
	return spiffeid.ID{}, deny(codes.PermissionDenied, reasonNotOnNode, fmt.Errorf("no running pod of service account %s/%s on node %s", ns, sa, c.node))
}

// ttl turns the requested validity into a Sign ttl: 0 is the CA's default,
// s.maxTTL (if set) caps it, and Sign caps it again at the CA's maximum.
func (s *Service) ttl(seconds int64) time.Duration {
	seconds = min(seconds, math.MaxInt64/int64(time.Second)) // no overflow
	d := time.Duration(seconds) * time.Second
	if s.maxTTL > 0 && d > s.maxTTL {
		return s.maxTTL
	}
	return d
}

// oidBasicConstraints is the basicConstraints extension (RFC 5280 4.2.1.9).
var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// decodeCSR returns the DER of a PEM CSR, refusing what a workload CSR never
// needs: other SANs than the URI (ca.Sign checks that one) and a request to
// be a CA. ca.Sign would ignore both; the service refuses them so a caller
// that sends them learns it is wrong.
func decodeCSR(csrPEM string) ([]byte, error) {
	block, rest := pem.Decode([]byte(csrPEM))
	switch {
	case block == nil:
		return nil, errors.New("csr is not PEM (want one CERTIFICATE REQUEST block)")
	case block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST":
		return nil, fmt.Errorf("csr is a PEM %s block, want CERTIFICATE REQUEST", block.Type)
	case len(strings.TrimSpace(string(rest))) > 0:
		return nil, errors.New("csr has data after its CERTIFICATE REQUEST block (want exactly one)")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse csr (not a PKCS #10 request?): %w", err)
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return nil, fmt.Errorf("csr carries %d dns, ip or email sans (want only the requested identity as uri san)", n)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA bool `asn1:"optional"`
		}
		if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
			return nil, fmt.Errorf("csr basic constraints: %w", err)
		}
		if bc.IsCA {
			return nil, errors.New("csr asks for a ca certificate (basic constraints CA:true); workload certificates never are")
		}
	}
	return block.Bytes, nil
}

// bearerToken returns the token of the "authorization: Bearer <token>"
// metadata.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", fmt.Errorf("want one authorization metadata value, got %d", len(vals))
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	token = strings.TrimSpace(token)
	switch {
	case !ok || !strings.EqualFold(scheme, "bearer") || token == "":
		return "", errors.New("authorization metadata is not \"Bearer <token>\"")
	case len(token) > MaxTokenBytes:
		return "", fmt.Errorf("bearer token is %d bytes, more than the limit of %d", len(token), MaxTokenBytes)
	}
	return token, nil
}

func podServiceAccount(p *corev1.Pod) string {
	return cmp.Or(p.Spec.ServiceAccountName, "default")
}

func terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// single returns the only element of vals, or "" when there is not exactly one.
func single(vals authnv1.ExtraValue) string {
	if len(vals) != 1 {
		return ""
	}
	return vals[0]
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// truncate shortens s for a log line.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
