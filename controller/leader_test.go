package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/test/envtest"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// replica is one warren-controller of a leader-elected pair.
type replica struct {
	name   string
	ctl    *controller.Controller
	ca     *ca.CA
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's answer, once done is closed
}

// stop cancels the replica and waits for Run to return.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("%s: Run: %v", r.name, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Run did not return within 30s of its context ending", r.name)
	}
}

// counter returns a counter's value from the replica's registry (0 when absent).
func (r *replica) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			return sum
		}
	}
	return 0
}

// startReplica loads (or creates) the CA root from the shared Secret, as cmd/warren-controller
// does, and runs a leader-elected controller with it.
func startReplica(t *testing.T, env *envtest.Env, name string, authority *ca.CA) *replica {
	t.Helper()
	reg := prometheus.NewRegistry()
	reviewer := &controller.TokenReviewer{Client: env.Client, Audience: audience, Ztunnels: []string{systemNS + "/" + ztunnelSA}}
	ctl, err := controller.New(controller.Config{
		Rest:           env.Config,
		PushAddr:       "127.0.0.1:0",
		Authenticate:   reviewer.Authenticate,
		CA:             authority,
		CAAddr:         "127.0.0.1:0",
		CAService:      kubeca.ServiceConfig{Audience: audience, Ztunnels: []string{systemNS + "/" + ztunnelSA}},
		RootsConfigMap: client.ObjectKey{Namespace: systemNS, Name: "warren-ca-root"},
		LeaderElection: &controller.LeaderElection{
			Namespace: systemNS, LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 250 * time.Millisecond,
		},
		CreateGatewayClass: true,
		Waypoints:          controller.WaypointConfig{Image: "warren-waypoint:test", ControllerAddr: "warren-controller.warren-system.svc:15012", CAAddr: "warren-controller.warren-system.svc:15013"},
		Registry:           reg,
		Log:                slog.New(slog.NewJSONHandler(io.Discard, nil)).With("replica", name),
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	reviewer.IsWaypoint = ctl.IsWaypoint
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, ctl: ctl, ca: authority, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = ctl.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// subscribeTo runs a config push client against addr.
func subscribeTo(t *testing.T, addr, node, token string) *state.Store {
	t.Helper()
	store := state.NewStore(nil)
	cs, err := configstream.New(configstream.Config{
		Target: addr, Node: node, Store: store,
		Token:      func() (string, error) { return token, nil },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cs.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return store
}

// signAt sends a CSR for id to the CSR service at addr with token, and returns the chain.
func signAt(t *testing.T, addr, token string, id spiffeid.ID) []*x509.Certificate {
	t.Helper()
	s, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{Target: addr, Token: func() (string, error) { return token, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chain, err := s.Sign(ctx, id, csr)
	if err != nil {
		t.Fatalf("sign %s at %s: %v", id, addr, err)
	}
	return chain
}

// leaders returns the names of the replicas that say they lead.
func leaders(rs ...*replica) []string {
	var out []string
	for _, r := range rs {
		if r.ctl.IsLeader() {
			out = append(out, r.name)
		}
	}
	return out
}

// TestLeaderElection runs two replicas against one API server: they share one CA root, both push
// config and sign CSRs with it, only the leader writes status and the roots ConfigMap, and the
// follower takes over when the leader stops.
func TestLeaderElection(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	c := env.Client
	cl := &cluster{env: env, c: c}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}))
	must(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}))
	must(c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ztunnelSA, Namespace: systemNS}}))
	must(c.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-node-1", Namespace: systemNS},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: ztunnelSA, Containers: []corev1.Container{{Name: "ztunnel", Image: "warren-ztunnel"}}},
	}))
	app := env.Namespace(t)
	cl.pod(t, app, "service-a", "service-a", "node-1", "10.244.1.2")

	// Both replicas start at once on an empty cluster, as a fresh 2-replica Deployment does:
	// one creates the root Secret, the other loads it.
	cas := make([]*ca.CA, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range cas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cas[i], errs[i] = kubeca.LoadOrCreate(ctx, c, systemNS, kubeca.DefaultRootSecret, ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: load or create the CA: %v", i, err)
		}
	}
	if !cas[0].Root().Equal(cas[1].Root()) {
		t.Fatalf("the replicas made two roots: %s and %s", cas[0].Root().Subject, cas[1].Root().Subject)
	}
	root := cas[0].Root()
	rootPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}))

	a := startReplica(t, env, "a", cas[0])
	b := startReplica(t, env, "b", cas[1])
	var first, second *replica
	eventually(t, "exactly one replica leads", func() string {
		switch l := leaders(a, b); {
		case len(l) != 1:
			return fmt.Sprintf("leaders %v", l)
		case l[0] == "a":
			first, second = a, b
		default:
			first, second = b, a
		}
		return ""
	})
	var lease coordinationv1.Lease
	must(c.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: controller.DefaultLeaseName}, &lease))
	if h := ptr.Deref(lease.Spec.HolderIdentity, ""); h == "" {
		t.Errorf("Lease %s/%s has no holder", systemNS, controller.DefaultLeaseName)
	}

	// The leader publishes the roots.
	eventually(t, "the leader publishes the roots ConfigMap", func() string {
		var cm corev1.ConfigMap
		if err := c.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: "warren-ca-root"}, &cm); err != nil {
			return err.Error()
		}
		if got, want := cm.Data["ca.crt"], ca.BundlePEM(first.ca.Bundle()); got != want {
			return fmt.Sprintf("ca.crt differs from the CA's bundle:\n%s", cmp.Diff(want, got))
		}
		return ""
	})

	// The leader creates the GatewayClass, then accepts it.
	eventually(t, "the leader creates and accepts GatewayClass warren-waypoint", func() string {
		var gc gatewayv1.GatewayClass
		if err := c.Get(ctx, client.ObjectKey{Name: "warren-waypoint"}, &gc); err != nil {
			return err.Error()
		}
		if gc.Spec.ControllerName != "warren.dev/waypoint-controller" {
			return "controllerName " + string(gc.Spec.ControllerName)
		}
		if cond := meta.FindStatusCondition(gc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted)); cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Sprintf("Accepted = %+v", cond)
		}
		return ""
	})

	// Status: only the leader writes it.
	writeAndWaitStatus := func(name string) {
		t.Helper()
		ap := &policyv1alpha1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: app},
			Spec:       policyv1alpha1.AuthorizationPolicySpec{TargetRef: policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "nope"}},
		}
		must(c.Create(ctx, ap))
		eventually(t, "status on "+name, func() string {
			if err := c.Get(ctx, client.ObjectKeyFromObject(ap), ap); err != nil {
				return err.Error()
			}
			if cond := meta.FindStatusCondition(ap.Status.Conditions, policyv1alpha1.ConditionResolvedRefs); cond == nil || cond.Reason != "TargetNotFound" {
				return fmt.Sprintf("ResolvedRefs = %+v", cond)
			}
			return ""
		})
	}
	writeAndWaitStatus("to-nowhere")
	eventually(t, "leader "+first.name+" counts its status write", func() string {
		if n := first.counter(t, "warren_controller_status_writes_total"); n == 0 {
			return "leader " + first.name + " wrote no status"
		}
		return ""
	})
	if n := second.counter(t, "warren_controller_status_writes_total"); n != 0 {
		t.Errorf("follower %s wrote status %v times; only the leader may", second.name, n)
	}
	if got := first.counter(t, "warren_controller_leader"); got != 1 {
		t.Errorf("leader %s: warren_controller_leader = %v, want 1", first.name, got)
	}
	if got := second.counter(t, "warren_controller_leader"); got != 0 {
		t.Errorf("follower %s: warren_controller_leader = %v, want 0", second.name, got)
	}

	// Every replica pushes config and signs CSRs, with the one root.
	token := cl.token(t, ztunnelSA, "ztunnel-node-1", audience)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + app + "/sa/service-a")
	pool := x509.NewCertPool()
	pool.AddCert(root)
	for _, r := range []*replica{first, second} {
		if err := r.ctl.Ready(); err != nil {
			t.Errorf("%s: Ready() = %v after the election", r.name, err)
		}
		store := subscribeTo(t, r.ctl.PushAddr().String(), "node-1", token)
		eventually(t, r.name+" pushes node-1's config", func() string {
			v := store.Load()
			if v == nil {
				return "no config"
			}
			if bundle := v.Snapshot().GetTrustBundle(); !strings.Contains(bundle, rootPEM) {
				return "the pushed trust bundle lacks the shared root"
			}
			return ""
		})
		chain := signAt(t, r.ctl.CAAddr().String(), token, id)
		inter := x509.NewCertPool()
		for _, ic := range chain[1:] {
			inter.AddCert(ic)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s signed a certificate that does not chain to the shared root: %v", r.name, err)
		}
	}

	// The leader stops (a rollout, a node drain): it releases the Lease, the follower leads
	// and writes the status of what changed since.
	// Released on the way out, the Lease passes well before it would expire (4s).
	stopping := time.Now()
	tookOver := make(chan time.Duration, 1)
	go func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if second.ctl.IsLeader() {
				tookOver <- time.Since(stopping)
				return
			}
		}
		close(tookOver)
	}()
	first.stop(t)
	took, ok := <-tookOver
	if !ok {
		t.Fatalf("%s did not take over within 30s of %s stopping", second.name, first.name)
	}
	t.Logf("%s took over %v after %s began to stop", second.name, took.Round(time.Millisecond), first.name)
	if took >= 4*time.Second {
		t.Errorf("takeover took %v, as long as the lease: the stopping leader did not release it", took)
	}
	writeAndWaitStatus("to-nowhere-2")
	// The counter goes up just after the write the client saw returns: wait for it.
	eventually(t, "new leader "+second.name+" counts its status write", func() string {
		if n := second.counter(t, "warren_controller_status_writes_total"); n == 0 {
			return "new leader " + second.name + " wrote no status"
		}
		return ""
	})
	must(c.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: controller.DefaultLeaseName}, &lease))
	if n := ptr.Deref(lease.Spec.LeaseTransitions, 0); n < 1 {
		t.Errorf("Lease transitions = %d after a takeover, want >= 1", n)
	}
}

func TestLeaderElectionConfigErrors(t *testing.T) {
	// The settings are checked before anything dials the API server.
	rc := &rest.Config{Host: "https://127.0.0.1:1"}
	tests := []struct {
		name string
		le   controller.LeaderElection
		want string
	}{
		{"no namespace", controller.LeaderElection{}, "the Lease's namespace is required"},
		{"renew deadline not below the lease", controller.LeaderElection{Namespace: systemNS, LeaseDuration: 5 * time.Second, RenewDeadline: 5 * time.Second}, "renew deadline 5s < lease duration 5s"},
		{"retry not below renew", controller.LeaderElection{Namespace: systemNS, RetryPeriod: 10 * time.Second}, "retry period 10s < renew deadline 10s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			le := tc.le
			_, err := controller.New(controller.Config{
				Rest: rc, PushAddr: "127.0.0.1:0", LeaderElection: &le,
				Authenticate: (&controller.TokenReviewer{Audience: audience}).Authenticate,
				Registry:     prometheus.NewRegistry(), Log: slog.New(slog.NewJSONHandler(io.Discard, nil)),
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
