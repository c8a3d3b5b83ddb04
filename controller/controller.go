// Package controller is Warren's control plane: a controller-runtime manager that watches
// Namespaces, Pods, Services, EndpointSlices, ServiceAccounts, the policy.warren.dev CRDs, and
// Gateway API HTTPRoutes, GRPCRoutes, ReferenceGrants and Gateways; translates them
// (controller/translate) into the node config on every change; pushes it to every ztunnel and
// waypoint over the config push stream (controller/push); and writes Accepted/ResolvedRefs
// conditions on the policy resources and status.parents on the routes. It also deploys the
// waypoint of every Gateway of class warren-waypoint (ServiceAccount, Deployment, Service and
// root ConfigMap, owned by the Gateway), writes the Gateway's address and Accepted/Programmed
// conditions, and accepts GatewayClasses whose controllerName is warren.dev/waypoint-controller
// (creating warren-waypoint with Config.CreateGatewayClass).
// With Config.LeaderElection, several replicas share the work: all of them translate, push and
// sign; only the elected one writes to the API server (see LeaderElection).
//
// cmd/warren-controller imports it; nothing else should.
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/controller/push"
)

// Config of the controller.
type Config struct {
	// Rest reaches the API server.
	Rest *rest.Config
	// TrustDomain of the mesh; empty means cluster.local.
	TrustDomain string
	// Defaults are the install-time mesh defaults (cluster default policy, cluster networks).
	Defaults *nodeconfig.MeshDefaults
	// PushAddr is where the config push gRPC service listens (e.g. ":15012"); PushTLS, when set,
	// serves it over TLS (nil: plaintext, for tests only).
	PushAddr string
	PushTLS  *tls.Config
	// Authenticate checks a push client's bearer token; required. TokenReviewer is the
	// production implementation.
	Authenticate func(ctx context.Context, token string) (push.Caller, error)
	// CA, when set, signs workload certificates: the CSR service (ca/kubeca) listens on CAAddr
	// with CATLS, and the CA's trust bundle goes into every node config. CAService carries the
	// service's policy (audience, trusted accounts, TTL cap); the controller fills in its
	// clients, log and registry.
	CA        *ca.CA
	CAAddr    string
	CATLS     *tls.Config
	CAService kubeca.ServiceConfig
	// Waypoints says how the waypoint of each Gateway of class warren-waypoint is deployed.
	Waypoints WaypointConfig
	// RootsConfigMap, when its Name is set and CA is, is where the leader publishes the CA's
	// roots (key ca.crt) for node agents to verify the controller with before they have config.
	RootsConfigMap client.ObjectKey
	// CreateGatewayClass makes the leader create the GatewayClass warren-waypoint when it does
	// not exist.
	CreateGatewayClass bool
	// LeaderElection, when set, elects one leader among the controller's replicas; nil means
	// this controller is alone and leads from the start.
	LeaderElection *LeaderElection
	// Registry receives the controller's metrics.
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// Controller is the running control plane.
type Controller struct {
	cfg    Config
	mgr    manager.Manager
	push   *push.Server
	grpc   *grpc.Server
	pushLn net.Listener
	caGRPC *grpc.Server
	caLn   net.Listener
	rec    *meshReconciler
	leader *leader
	// synced is closed once the manager's cache has synced (see Ready).
	synced chan struct{}
	// isWaypoint answers from the cache whether a ServiceAccount is a waypoint Gateway's.
	isWaypoint func(ctx context.Context, account string) (bool, error)
}

// IsWaypoint reports whether ServiceAccount account ("namespace/name") is a waypoint's: Gateway
// <namespace>/<name> of class warren-waypoint exists (the controller runs it as that account).
// The CSR service uses it unless CAService.IsWaypoint is set; TokenReviewer.IsWaypoint should be
// set to it, so waypoints may subscribe to config. It answers once the manager's cache started.
func (c *Controller) IsWaypoint(ctx context.Context, account string) (bool, error) {
	return c.isWaypoint(ctx, account)
}

// Scheme returns the scheme of every kind the controller reads.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, policyv1alpha1.AddToScheme, gatewayv1.Install} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("build scheme: %w", err)
		}
	}
	return s, nil
}

// New builds the manager and binds the push listener.
func New(cfg Config) (*Controller, error) {
	if cfg.Rest == nil || cfg.Authenticate == nil || cfg.Registry == nil || cfg.Log == nil {
		return nil, errors.New("new controller: rest config, authenticator, registry and log are required")
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	mopts := manager.Options{
		Scheme:                 scheme,
		Logger:                 logr.FromSlogHandler(cfg.Log.Handler()),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// controller-runtime checks controller names against a process-wide list meant for its
		// global metrics registry, which Warren does not use; several controllers may run in
		// one process (tests).
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	}
	if cfg.LeaderElection != nil {
		if err := cfg.LeaderElection.options(&mopts); err != nil {
			return nil, fmt.Errorf("new controller: %w", err)
		}
	}
	mgr, err := ctrl.NewManager(cfg.Rest, mopts)
	if err != nil {
		return nil, fmt.Errorf("new controller: manager: %w (is the API server reachable?)", err)
	}
	lead, err := newLeader(mgr, cfg.Registry, cfg.Log.With("component", "leader"))
	if err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	ps, err := push.New(push.Config{Authenticate: cfg.Authenticate, Log: cfg.Log.With("component", "push"), Registerer: cfg.Registry})
	if err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	rec, err := newReconciler(mgr.GetClient(), ps, cfg, cfg.Log.With("component", "translate"))
	if err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	rec.isLeader = lead.IsLeader
	// A new leader recomputes once, to write the status its predecessor may have left behind.
	elected := make(chan event.GenericEvent, 1)
	lead.onElected = func(context.Context) {
		select {
		case elected <- event.GenericEvent{Object: &corev1.Namespace{}}:
		default:
		}
	}
	if err := mgr.Add(lead); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if err := registerWatches(mgr, rec, elected); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	synced := make(chan struct{})
	// Runnables that need no election start once the caches have synced.
	err = mgr.Add(everyReplica(func(ctx context.Context) error {
		close(synced)
		<-ctx.Done()
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if cfg.CreateGatewayClass {
		err := mgr.Add(&gatewayClassCreator{c: mgr.GetClient(), log: cfg.Log.With("component", "gatewayclass"), retry: 5 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("new controller: %w", err)
		}
	}
	if cfg.CA != nil && cfg.RootsConfigMap.Name != "" {
		direct, err := client.New(cfg.Rest, client.Options{Scheme: scheme})
		if err != nil {
			return nil, fmt.Errorf("new controller: kubernetes client: %w", err)
		}
		err = mgr.Add(&rootsPublisher{c: direct, key: cfg.RootsConfigMap, authority: cfg.CA, log: cfg.Log.With("component", "roots")})
		if err != nil {
			return nil, fmt.Errorf("new controller: %w", err)
		}
	}
	td := cfg.TrustDomain
	if td == "" {
		td = nodeconfig.DefaultTrustDomain
	}
	wr := &waypointReconciler{c: mgr.GetClient(), scheme: scheme, cfg: cfg.Waypoints, td: td, bundle: bundleFunc(cfg.CA),
		classes: &gatewayClassReconciler{c: mgr.GetClient()}}
	if err := registerWaypoints(mgr, wr); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.PushAddr)
	if err != nil {
		return nil, fmt.Errorf("new controller: listen for config push on %s: %w", cfg.PushAddr, err)
	}
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if cfg.PushTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.PushTLS)))
	}
	g := grpc.NewServer(opts...)
	ps.Register(g)
	c := &Controller{cfg: cfg, mgr: mgr, push: ps, grpc: g, pushLn: ln, rec: rec, leader: lead, synced: synced,
		isWaypoint: kubeca.WaypointGateways(mgr.GetClient())}
	if cfg.CA != nil {
		if err := c.newCAService(scheme); err != nil {
			ln.Close()
			return nil, fmt.Errorf("new controller: %w", err)
		}
	}
	return c, nil
}

// newCAService builds the CSR service on its own port.
func (c *Controller) newCAService(scheme *runtime.Scheme) error {
	if err := kubeca.IndexPodNodeName(context.Background(), c.mgr.GetFieldIndexer()); err != nil {
		return fmt.Errorf("ca service: %w", err)
	}
	direct, err := client.New(c.cfg.Rest, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("ca service: kubernetes client: %w", err)
	}
	sc := c.cfg.CAService
	sc.CA, sc.Reader, sc.Reviewer = c.cfg.CA, c.mgr.GetClient(), direct
	if sc.IsWaypoint == nil {
		sc.IsWaypoint = c.isWaypoint
	}
	sc.Log, sc.Registerer = c.cfg.Log.With("component", "ca"), c.cfg.Registry
	svc, err := kubeca.NewService(sc)
	if err != nil {
		return fmt.Errorf("ca service: %w", err)
	}
	ln, err := net.Listen("tcp", c.cfg.CAAddr)
	if err != nil {
		return fmt.Errorf("ca service: listen on %s: %w", c.cfg.CAAddr, err)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(kubeca.MaxRequestBytes)}
	if c.cfg.CATLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(c.cfg.CATLS)))
	}
	c.caGRPC = grpc.NewServer(opts...)
	svc.Register(c.caGRPC)
	c.caLn = ln
	return nil
}

// CAAddr returns the bound CSR service address, or nil without a CA.
func (c *Controller) CAAddr() net.Addr {
	if c.caLn == nil {
		return nil
	}
	return c.caLn.Addr()
}

// PushAddr returns the bound push address (for tests that pass ":0").
func (c *Controller) PushAddr() net.Addr { return c.pushLn.Addr() }

// Push returns the push server (for status and debugging).
func (c *Controller) Push() *push.Server { return c.push }

// IsLeader reports whether this replica is the elected leader, the one that writes status,
// waypoint objects and the roots ConfigMap. Without Config.LeaderElection it is true once Run
// started the manager.
func (c *Controller) IsLeader() bool { return c.leader.IsLeader() }

// Ready returns nil once the controller's cache has synced, so config push and CSR signing answer
// from a complete view of the cluster; leader or not does not matter. It backs /readyz.
func (c *Controller) Ready() error {
	select {
	case <-c.synced:
		return nil
	default:
		return errors.New("cache not synced yet")
	}
}

// Run runs the manager and the push service until ctx ends, then drains: the push service
// stops gracefully (5s at most) while the manager stops its controllers and, when it led,
// releases the Lease, so a follower takes over at once. It returns after both stopped.
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- c.grpc.Serve(c.pushLn) }()
	if c.caGRPC != nil {
		go func() { errc <- c.caGRPC.Serve(c.caLn) }()
		defer c.caGRPC.Stop()
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- c.mgr.Start(ctx) }()
	var err error
	mgrStopped := false
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-mgrDone:
		mgrStopped = true
	}
	cancel()
	stopped := make(chan struct{})
	go func() { c.grpc.GracefulStop(); close(stopped) }()
	if !mgrStopped {
		// The manager bounds its own shutdown (30s by default).
		if merr := <-mgrDone; err == nil {
			err = merr
		}
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		c.grpc.Stop()
	}
	return err
}

// everyReplica is a runnable that runs on every replica, leader or not (a plain
// manager.RunnableFunc runs on the leader only), once the caches have synced.
type everyReplica func(ctx context.Context) error

func (f everyReplica) Start(ctx context.Context) error { return f(ctx) }
func (everyReplica) NeedLeaderElection() bool          { return false }

// meshKey is the single work item: any change recomputes the whole mesh (translation is a pure
// function of the cache, fast enough for 10k pods), and the work queue collapses bursts.
var meshKey = reconcile.Request{}

// registerWatches makes every watched kind, and each event on elected, enqueue the single mesh
// key. The mesh controller runs on every replica (each one pushes config); it writes status only
// while leading.
func registerWatches(mgr manager.Manager, rec *meshReconciler, elected <-chan event.GenericEvent) error {
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{meshKey}
	})
	kinds := []client.Object{
		&corev1.Namespace{}, &corev1.Pod{}, &corev1.Service{}, &discoveryv1.EndpointSlice{}, &corev1.ServiceAccount{},
		&policyv1alpha1.Server{}, &policyv1alpha1.AuthorizationPolicy{}, &policyv1alpha1.MeshTLSAuthentication{},
		&policyv1alpha1.NetworkAuthentication{}, &gatewayv1.HTTPRoute{}, &gatewayv1.GRPCRoute{}, &gatewayv1.Gateway{},
		&gatewayv1.ReferenceGrant{},
	}
	bld := builder.ControllerManagedBy(mgr).Named("mesh").
		WithOptions(crcontroller.Options{NeedLeaderElection: ptr.To(false)}).
		WatchesRawSource(source.Channel(elected, all))
	for _, k := range kinds {
		bld = bld.Watches(k, all)
	}
	return bld.Complete(rec)
}
