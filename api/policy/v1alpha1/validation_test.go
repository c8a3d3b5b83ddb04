package v1alpha1_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	policy "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/test/envtest"
)

// These tests run against a real kube-apiserver with the generated CRDs, so
// they check the CEL rules and schema exactly as admission applies them.

const group = policy.GroupName

func server(name string, port intstr.IntOrString, mod ...func(*policy.ServerSpec)) *policy.Server {
	s := &policy.Server{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policy.ServerSpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Port:        port,
		},
	}
	for _, m := range mod {
		m(&s.Spec)
	}
	return s
}

func authzPolicy(name string, target policy.TargetReference, refs ...policy.AuthenticationReference) *policy.AuthorizationPolicy {
	return &policy.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       policy.AuthorizationPolicySpec{TargetRef: target, RequiredAuthenticationRefs: refs},
	}
}

func meshTLS(name string, spec policy.MeshTLSAuthenticationSpec) *policy.MeshTLSAuthentication {
	return &policy.MeshTLSAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

func networkAuthn(name string, networks ...policy.Network) *policy.NetworkAuthentication {
	return &policy.NetworkAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       policy.NetworkAuthenticationSpec{Networks: networks},
	}
}

var (
	serverRef    = policy.TargetReference{Group: group, Kind: "Server", Name: "service-b"}
	meshTLSRef   = policy.AuthenticationReference{Group: group, Kind: "MeshTLSAuthentication", Name: "service-a"}
	networkRef   = policy.AuthenticationReference{Group: group, Kind: "NetworkAuthentication", Name: "cluster"}
	saRef        = policy.AuthenticationReference{Kind: "ServiceAccount", Name: "service-a"}
	saIdentity   = policy.IdentityReference{Kind: "ServiceAccount", Name: "service-a"}
	tenNet       = policy.Network{CIDR: "10.0.0.0/8"}
	portNumber   = intstr.FromInt32(8080)
	withProtocol = func(p policy.ProxyProtocol) func(*policy.ServerSpec) {
		return func(s *policy.ServerSpec) { s.ProxyProtocol = p }
	}
	withAccess = func(a policy.AccessPolicy) func(*policy.ServerSpec) {
		return func(s *policy.ServerSpec) { s.AccessPolicy = a }
	}
)

// rejection is one object the API server must refuse, the field the error
// names and a substring of its message (the CEL rule's message).
type rejection struct {
	name      string
	obj       client.Object
	wantField string
	wantMsg   string
}

func TestAdmission(t *testing.T) {
	env := envtest.Start(t)
	t.Run("ArticleExample", func(t *testing.T) { testArticleExample(t, env) })
	t.Run("Accepts", func(t *testing.T) { testAccepts(t, env) })
	t.Run("Rejects", func(t *testing.T) { testRejects(t, env) })
	t.Run("RejectsByAdmissionPolicy", func(t *testing.T) { testRejectsByAdmissionPolicy(t, env) })
}

// testRejectsByAdmissionPolicy covers the rules CRD validation cannot express
// (they need metadata.namespace), enforced by the ValidatingAdmissionPolicy in
// manifests/crds/admission. The API server loads it asynchronously, hence
// the retries.
func testRejectsByAdmissionPolicy(t *testing.T, env *envtest.Env) {
	ns := env.Namespace(t)
	const msg = "cannot target another namespace"
	tests := []struct {
		name   string
		target policy.TargetReference
	}{
		{"Namespace target names another namespace", policy.TargetReference{Kind: "Namespace", Name: "kube-system"}},
		{"Server target in another namespace", policy.TargetReference{Group: group, Kind: "Server", Name: "service-b", Namespace: "kube-system"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			envtest.Eventually(t, 20*time.Second, func() error {
				ap := authzPolicy(fmt.Sprintf("other-ns-%d", i), tt.target, saRef)
				ap.Namespace = ns
				err := env.Client.Create(ctx, ap)
				switch {
				case err == nil:
					if err := env.Client.Delete(ctx, ap); err != nil {
						t.Fatalf("delete accepted policy: %v", err)
					}
					return errors.New("Create = nil error, want rejection (admission policy not active yet?)")
				case apierrors.IsInvalid(err) && strings.Contains(err.Error(), msg):
					return nil
				default:
					t.Fatalf("Create = %v, want an Invalid error containing %q", err, msg)
					return nil
				}
			})
		})
	}
	// Targets in the policy's own namespace pass the admission policy.
	for i, target := range []policy.TargetReference{
		{Kind: "Namespace", Name: ns},
		{Group: group, Kind: "Server", Name: "service-b", Namespace: ns},
	} {
		ap := authzPolicy(fmt.Sprintf("own-ns-%d", i), target, saRef)
		ap.Namespace = ns
		if err := env.Client.Create(context.Background(), ap); err != nil {
			t.Errorf("Create(target %+v) = %v, want accepted", target, err)
		}
	}
}

// testArticleExample applies the seed article's example, as YAML, and checks
// what the API server stored, defaults included.
func testArticleExample(t *testing.T, env *envtest.Env) {
	ns := env.Namespace(t)
	ctx := context.Background()
	raw, err := os.ReadFile("testdata/article-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("parse testdata/article-example.yaml: %v", err)
		}
		u.SetNamespace(ns)
		if err := env.Client.Create(ctx, &u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}

	var srv policy.Server
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "service-b"}, &srv); err != nil {
		t.Fatal(err)
	}
	wantSrv := policy.ServerSpec{
		PodSelector:   metav1.LabelSelector{MatchLabels: map[string]string{"app": "service-b"}},
		Port:          intstr.FromInt32(8080),
		ProxyProtocol: policy.ProxyProtocolHTTP2,
		AccessPolicy:  policy.AccessDeny, // defaulted
	}
	if diff := cmp.Diff(wantSrv, srv.Spec); diff != "" {
		t.Errorf("stored Server spec (-want +got):\n%s", diff)
	}

	var mtls policy.MeshTLSAuthentication
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "service-a"}, &mtls); err != nil {
		t.Fatal(err)
	}
	wantMTLS := policy.MeshTLSAuthenticationSpec{IdentityRefs: []policy.IdentityReference{saIdentity}}
	if diff := cmp.Diff(wantMTLS, mtls.Spec); diff != "" {
		t.Errorf("stored MeshTLSAuthentication spec (-want +got):\n%s", diff)
	}

	var ap policy.AuthorizationPolicy
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "service-a-to-b"}, &ap); err != nil {
		t.Fatal(err)
	}
	wantAP := policy.AuthorizationPolicySpec{TargetRef: serverRef, RequiredAuthenticationRefs: []policy.AuthenticationReference{meshTLSRef}}
	if diff := cmp.Diff(wantAP, ap.Spec); diff != "" {
		t.Errorf("stored AuthorizationPolicy spec (-want +got):\n%s", diff)
	}
}

func testAccepts(t *testing.T, env *envtest.Env) {
	ns := env.Namespace(t)
	tests := []struct {
		name string
		obj  client.Object
	}{
		{"Server/named port", server("named", intstr.FromString("http-metrics"), withProtocol(policy.ProxyProtocolGRPC))},
		{"Server/port 1", server("low", intstr.FromInt32(1), withAccess(policy.AccessAudit))},
		{"Server/port 65535", server("high", intstr.FromInt32(65535), withAccess(policy.AccessClusterAuthenticated))},
		{"Server/15-char name", server("fifteen", intstr.FromString("abcdefghij-1234"), withProtocol(policy.ProxyProtocolOpaque))},
		{"AuthorizationPolicy/no refs", authzPolicy("no-refs", serverRef)},
		{"AuthorizationPolicy/identity and network", authzPolicy("both", serverRef, meshTLSRef, networkRef)},
		{"AuthorizationPolicy/ServiceAccount", authzPolicy("sa", serverRef, saRef)},
		{"AuthorizationPolicy/HTTPRoute", authzPolicy("httproute", policy.TargetReference{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Name: "r"}, meshTLSRef)},
		{"AuthorizationPolicy/GRPCRoute", authzPolicy("grpcroute", policy.TargetReference{Group: "gateway.networking.k8s.io", Kind: "GRPCRoute", Name: "r"}, networkRef)},
		{"AuthorizationPolicy/own Namespace", authzPolicy("namespace", policy.TargetReference{Kind: "Namespace", Name: ns}, saRef)},
		{"MeshTLSAuthentication/identities only", meshTLS("ids", policy.MeshTLSAuthenticationSpec{Identities: []string{"spiffe://cluster.local/ns/default/sa/service-a", "*"}})},
		{"MeshTLSAuthentication/Namespace ref", meshTLS("nsref", policy.MeshTLSAuthenticationSpec{IdentityRefs: []policy.IdentityReference{{Kind: "Namespace", Name: "team-a"}, {Kind: "ServiceAccount", Name: "x", Namespace: "team-b"}}})},
		{"NetworkAuthentication/except inside", networkAuthn("except", policy.Network{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16", "10.2.3.4"}})},
		{"NetworkAuthentication/IPv6 and bare IP", networkAuthn("v6", policy.Network{CIDR: "fd00::/8", Except: []string{"fd00:1::/32"}}, policy.Network{CIDR: "192.168.1.7"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.obj.SetNamespace(ns)
			if err := env.Client.Create(context.Background(), tt.obj); err != nil {
				t.Errorf("Create(%s) = %v, want accepted", tt.name, err)
			}
		})
	}
}

func testRejects(t *testing.T, env *envtest.Env) {
	ns := env.Namespace(t)
	const (
		msgPortNumber   = "port number must be between 1 and 65535"
		msgPortName     = "port name must be an IANA service name"
		msgTarget       = "unsupported targetRef: want kind Server in group policy.warren.dev, HTTPRoute or GRPCRoute in group gateway.networking.k8s.io, or Namespace in the core group"
		msgTargetNS     = "a Namespace targetRef must not set namespace: Namespaces are cluster-scoped"
		msgOneIdentity  = "at most one identity authentication (a MeshTLSAuthentication or a ServiceAccount) may be required"
		msgOneNetwork   = "at most one NetworkAuthentication may be required"
		msgAuthnKind    = "unsupported authentication kind: want MeshTLSAuthentication or NetworkAuthentication in group policy.warren.dev, or ServiceAccount in the core group"
		msgNoIdentities = "no identities configured: set identities or identityRefs"
		msgIdentityRef  = "unsupported identityRef: want kind ServiceAccount or Namespace in the core group"
		msgIdentityNS   = "a Namespace identityRef must not set namespace: Namespaces are cluster-scoped"
		msgNoNetworks   = "no networks configured: networks must list at least one network"
		msgCIDR         = "cidr must be an IP address or a CIDR"
		msgExceptSyntax = "each except must be an IP address or a CIDR"
		msgExceptInside = "each except must be a strictly smaller range inside cidr"
	)
	otherTarget := func(g, k string) policy.TargetReference { return policy.TargetReference{Group: g, Kind: k, Name: "x"} }
	tests := []rejection{
		// Server.spec.port
		{"port 0", server("p0", intstr.FromInt32(0)), "spec.port", msgPortNumber},
		{"port 65536", server("p65536", intstr.FromInt32(65536)), "spec.port", msgPortNumber},
		{"port name uppercase", server("pupper", intstr.FromString("HTTP")), "spec.port", msgPortName},
		{"port name too long", server("plong", intstr.FromString("abcdefghij-12345")), "spec.port", msgPortName},
		{"port name digits only", server("pdigits", intstr.FromString("8080")), "spec.port", msgPortName},
		{"port name double dash", server("pdash", intstr.FromString("a--b")), "spec.port", msgPortName},
		{"port name leading dash", server("plead", intstr.FromString("-http")), "spec.port", msgPortName},
		// Server enums (schema, not CEL)
		{"proxyProtocol unknown value", server("proto", portNumber, withProtocol("HTTP/3")), "spec.proxyProtocol", `Unsupported value: "HTTP/3"`},
		{"accessPolicy unknown value", server("access", portNumber, withAccess("allow")), "spec.accessPolicy", `Unsupported value: "allow"`},
		// AuthorizationPolicy.spec.targetRef
		{"target Service", authzPolicy("t-svc", otherTarget("", "Service")), "spec.targetRef", msgTarget},
		{"target Server in core group", authzPolicy("t-srv-core", otherTarget("", "Server")), "spec.targetRef", msgTarget},
		{"target HTTPRoute in policy group", authzPolicy("t-route-policy", otherTarget(group, "HTTPRoute")), "spec.targetRef", msgTarget},
		{"target Namespace in policy group", authzPolicy("t-ns-policy", otherTarget(group, "Namespace")), "spec.targetRef", msgTarget},
		{"target Namespace with namespace", authzPolicy("t-ns-ns", policy.TargetReference{Kind: "Namespace", Name: ns, Namespace: ns}), "spec.targetRef", msgTargetNS},
		// AuthorizationPolicy.spec.requiredAuthenticationRefs
		{"two MeshTLSAuthentications", authzPolicy("two-mtls", serverRef, meshTLSRef, meshTLSRef), "spec.requiredAuthenticationRefs", msgOneIdentity},
		{"MeshTLSAuthentication and ServiceAccount", authzPolicy("mtls-sa", serverRef, meshTLSRef, saRef), "spec.requiredAuthenticationRefs", msgOneIdentity},
		{"two NetworkAuthentications", authzPolicy("two-net", serverRef, networkRef, networkRef), "spec.requiredAuthenticationRefs", msgOneNetwork},
		{"authentication kind Secret", authzPolicy("secret", serverRef, policy.AuthenticationReference{Kind: "Secret", Name: "x"}), "spec.requiredAuthenticationRefs[0]", msgAuthnKind},
		{"ServiceAccount in policy group", authzPolicy("sa-policy", serverRef, policy.AuthenticationReference{Group: group, Kind: "ServiceAccount", Name: "x"}), "spec.requiredAuthenticationRefs[0]", msgAuthnKind},
		{"MeshTLSAuthentication in core group", authzPolicy("mtls-core", serverRef, policy.AuthenticationReference{Kind: "MeshTLSAuthentication", Name: "x"}), "spec.requiredAuthenticationRefs[0]", msgAuthnKind},
		// MeshTLSAuthentication
		{"no identities", meshTLS("empty", policy.MeshTLSAuthenticationSpec{}), "spec", msgNoIdentities},
		{"empty identities lists", meshTLS("empty-lists", policy.MeshTLSAuthenticationSpec{Identities: []string{}, IdentityRefs: []policy.IdentityReference{}}), "spec", msgNoIdentities},
		{"identityRef kind Pod", meshTLS("pod", policy.MeshTLSAuthenticationSpec{IdentityRefs: []policy.IdentityReference{{Kind: "Pod", Name: "x"}}}), "spec.identityRefs[0]", msgIdentityRef},
		{"identityRef in policy group", meshTLS("sa-group", policy.MeshTLSAuthenticationSpec{IdentityRefs: []policy.IdentityReference{{Group: group, Kind: "ServiceAccount", Name: "x"}}}), "spec.identityRefs[0]", msgIdentityRef},
		{"Namespace identityRef with namespace", meshTLS("ns-ns", policy.MeshTLSAuthenticationSpec{IdentityRefs: []policy.IdentityReference{{Kind: "Namespace", Name: "a", Namespace: "b"}}}), "spec.identityRefs[0]", msgIdentityNS},
		// NetworkAuthentication
		{"no networks", networkAuthn("empty"), "spec", msgNoNetworks},
		{"cidr prefix too long", networkAuthn("p33", policy.Network{CIDR: "10.0.0.0/33"}), "spec.networks[0].cidr", msgCIDR},
		{"cidr not an address", networkAuthn("name", policy.Network{CIDR: "cluster"}), "spec.networks[0].cidr", msgCIDR},
		{"except not an address", networkAuthn("ex-name", policy.Network{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16", "nope"}}), "spec.networks[0].except", msgExceptSyntax},
		{"except outside cidr", networkAuthn("ex-out", tenNet, policy.Network{CIDR: "10.0.0.0/8", Except: []string{"192.168.0.0/16"}}), "spec.networks[1]", msgExceptInside},
		{"except IP outside cidr", networkAuthn("ex-ip-out", policy.Network{CIDR: "10.0.0.0/8", Except: []string{"11.0.0.1"}}), "spec.networks[0]", msgExceptInside},
		{"except equals cidr", networkAuthn("ex-eq", policy.Network{CIDR: "10.0.0.0/8", Except: []string{"10.0.0.0/8"}}), "spec.networks[0]", msgExceptInside},
		{"except wider than cidr", networkAuthn("ex-wide", policy.Network{CIDR: "10.1.0.0/16", Except: []string{"10.0.0.0/8"}}), "spec.networks[0]", msgExceptInside},
		{"except other family", networkAuthn("ex-v6", policy.Network{CIDR: "10.0.0.0/8", Except: []string{"fd00::/64"}}), "spec.networks[0]", msgExceptInside},
		{"except on a bare IP", networkAuthn("ex-bare", policy.Network{CIDR: "10.0.0.1", Except: []string{"10.0.0.1"}}), "spec.networks[0]", msgExceptInside},
		{"except IP negating a /32", networkAuthn("ex-32", policy.Network{CIDR: "10.0.0.1/32", Except: []string{"10.0.0.1"}}), "spec.networks[0]", msgExceptInside},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.obj.SetNamespace(ns)
			err := env.Client.Create(context.Background(), tt.obj)
			checkRejected(t, err, tt.wantField, tt.wantMsg)
		})
	}
}

// checkRejected fails t unless err is an Invalid error with a cause on field
// whose message contains msg.
func checkRejected(t *testing.T, err error, field, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Create = nil error, want rejection on %s: %q", field, msg)
	}
	var status apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &status) || status.Status().Details == nil {
		t.Fatalf("Create = %v, want an Invalid error on %s: %q", err, field, msg)
	}
	for _, c := range status.Status().Details.Causes {
		if c.Field == field && strings.Contains(c.Message, msg) {
			return
		}
	}
	t.Errorf("Create = %v\nwant a cause on field %s containing %q", err, field, msg)
}
