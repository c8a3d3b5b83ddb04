package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/test/envtest"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

const (
	systemNS  = "warren-system"
	ztunnelSA = "warren-ztunnel"
)

// lines collects JSON log lines.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), substr)
}

// TestMeshFromTheControlPlane runs the article's policy end to end: objects applied to a real
// API server, translated and pushed by the controller, certificates signed by its CA after a
// TokenReview, and enforced by ztunnels carrying real connections.
func TestMeshFromTheControlPlane(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	nodes := []string{"node-1", "node-2"}
	for _, n := range nodes {
		must(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}))
	}
	must(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}))
	must(c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ztunnelSA, Namespace: systemNS}}))

	// The CA, its root kept in a Secret, and the controller serving push and CSR over TLS with a
	// certificate from that CA.
	authority, err := kubeca.LoadOrCreate(ctx, c, systemNS, kubeca.DefaultRootSecret, ca.Config{})
	must(err)
	td := authority.TrustDomain()
	controllerID := spiffeid.RequireFromString("spiffe://cluster.local/ns/warren-system/sa/warren-controller")
	ctlIDs, err := identity.New(identity.Config{Signer: authority.Signer(0), TrustDomain: td})
	must(err)
	_, err = ctlIDs.SVID(ctx, controllerID)
	must(err)
	serverTLS := tlsconfig.TLSServerConfig(ctlIDs.Source(controllerID))
	reviewer := &controller.TokenReviewer{Client: c, Audience: "warren-ca", Ztunnels: []string{systemNS + "/" + ztunnelSA}}
	ctl, err := controller.New(controller.Config{
		Rest: env.Config, PushAddr: "127.0.0.1:0", PushTLS: serverTLS, Authenticate: reviewer.Authenticate,
		CA: authority, CAAddr: "127.0.0.1:0", CATLS: serverTLS,
		CAService: kubeca.ServiceConfig{Audience: "warren-ca", Ztunnels: []string{systemNS + "/" + ztunnelSA}},
		Registry:  prometheus.NewRegistry(), Log: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	must(err)
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Run(ctx) }()
	defer func() { cancel(); <-ctlDone }()

	// The application namespace, in the mesh, with the article's pods and policy.
	p := ztunneltest.RandomNet()
	ns := env.Namespace(t)
	var nsObj corev1.Namespace
	must(c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj))
	nsObj.Labels = map[string]string{"warren.dev/dataplane-mode": "ambient"}
	must(c.Update(ctx, &nsObj))
	for _, w := range []struct {
		name, node string
		host       byte
	}{{"service-a", "node-1", 2}, {"service-b", "node-2", 3}, {"service-c", "node-1", 4}} {
		must(c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: ns}}))
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: ns, Labels: map[string]string{"app": w.name}},
			Spec: corev1.PodSpec{NodeName: w.node, ServiceAccountName: w.name, Containers: []corev1.Container{{
				Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}}},
		}
		must(c.Create(ctx, pod))
		ip := ztunneltest.IP(p, w.host).String()
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		must(c.Status().Update(ctx, pod))
	}
	for _, o := range []client.Object{
		&policyv1alpha1.Server{ObjectMeta: metav1.ObjectMeta{Name: "service-b", Namespace: ns}, Spec: policyv1alpha1.ServerSpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "service-b"}}, Port: intstr.FromInt32(8080)}},
		&policyv1alpha1.MeshTLSAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: ns}, Spec: policyv1alpha1.MeshTLSAuthenticationSpec{
			IdentityRefs: []policyv1alpha1.IdentityReference{{Kind: "ServiceAccount", Name: "service-a"}}}},
		&policyv1alpha1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "service-a-to-b", Namespace: ns}, Spec: policyv1alpha1.AuthorizationPolicySpec{
			TargetRef: policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "service-b"},
			RequiredAuthenticationRefs: []policyv1alpha1.AuthenticationReference{
				{Group: policyv1alpha1.GroupName, Kind: "MeshTLSAuthentication", Name: "service-a"}}}},
	} {
		must(c.Create(ctx, o))
	}
	startApp(t, netip.AddrPortFrom(ztunneltest.IP(p, 3), 8080))

	// One ztunnel per node, fed only by the controller: config from the push stream, workload
	// certificates from the CSR service, each authenticated by the node's pod-bound token.
	mesh, err := ztunneltest.New(ztunneltest.Config{Snapshot: &nodeconfig.Snapshot{}})
	must(err)
	clientTLS := tlsconfig.TLSClientConfig(authority.Bundle(), tlsconfig.AuthorizeID(controllerID))
	security := map[string]*lines{}
	for _, node := range nodes {
		token := podToken(t, c, node)
		store := state.NewStore(nil)
		cs, err := configstream.New(configstream.Config{
			Target: ctl.PushAddr().String(), TLSConfig: clientTLS, Token: token, Node: node, Store: store,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		})
		must(err)
		go cs.Run(ctx)
		signer, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{Target: ctl.CAAddr().String(), TLSConfig: clientTLS, Token: token})
		must(err)
		defer signer.Close()
		security[node] = &lines{}
		want := map[string]int{"node-1": 2, "node-2": 1}[node]
		n, err := mesh.StartNodeWith(node, ztunneltest.Logs{Security: security[node]}, ztunneltest.NodeDeps{
			Store: store, Signer: signer, Bundle: state.BundleSource(store, nil),
			Ready: func(zt *ztunnel.Ztunnel) bool { return len(zt.Workloads()) == want },
		})
		must(err)
		defer n.Stop()
	}

	dst := netip.AddrPortFrom(ztunneltest.IP(p, 3), 8080)
	call := func(from byte) (string, error) {
		conn, err := mesh.DialFrom(ztunneltest.IP(p, from), dst)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(conn, "hi")
		b, err := io.ReadAll(conn)
		return string(b), err
	}
	// service-a is allowed; certificates were fetched on demand through the CSR service.
	if got, err := call(2); err != nil || got != "hello: hi\n" {
		t.Fatalf("service-a -> service-b = %q, %v; want the app's answer", got, err)
	}
	// service-c is denied by node-2's ztunnel, with one security event.
	if got, err := call(4); err == nil || got != "" {
		t.Fatalf("service-c -> service-b = %q, %v; want the connection closed", got, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for security["node-2"].count(`"event":"deny"`) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("node-2 security events: %d deny lines; want 1", security["node-2"].count(`"event":"deny"`))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// podToken makes a ztunnel pod on node and returns a source of its projected token.
func podToken(t *testing.T, c client.Client, node string) func() (string, error) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + node, Namespace: systemNS},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: ztunnelSA, Containers: []corev1.Container{{Name: "z", Image: "z"}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{"warren-ca"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ztunnelSA, Namespace: systemNS}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatal(err)
	}
	return func() (string, error) { return tr.Status.Token, nil }
}

func startApp(t *testing.T, at netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", at.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "hello: %s", line)
				}
			}()
		}
	}()
}
