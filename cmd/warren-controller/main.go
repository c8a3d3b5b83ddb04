// Command warren-controller is Warren's control plane: it watches the cluster, translates it
// into node config, pushes that to every ztunnel over the config push stream (:15012), and writes
// status conditions on the policy resources. With --leader-elect several replicas run side by
// side: all serve config push and CSR signing, the leader of the Lease warren-controller writes.
// /metrics, /healthz and /readyz answer on --metrics-addr.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
	"github.com/warren-mesh/warren/controller"
	"github.com/warren-mesh/warren/ztunnel/identity"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "warren-controller:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig      string
	trustDomain     string
	defaultPolicy   string
	clusterNetworks string
	pushAddr        string
	caAddr          string
	namespace       string
	serviceAccount  string
	caSecret        string
	caIntermediate  string
	certTTL         time.Duration
	caMaxTTL        time.Duration
	plaintext       bool
	metricsAddr     string
	audience        string
	ztunnels        string
	waypoints       string
	waypointImage   string
	waypointPush    string
	waypointCA      string
	logLevel        string
	leaderElect     bool
	gatewayClass    bool
	leaseDuration   time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("warren-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty uses the in-cluster config")
	fs.StringVar(&o.trustDomain, "trust-domain", nodeconfig.DefaultTrustDomain, "SPIFFE trust domain of the mesh")
	fs.StringVar(&o.defaultPolicy, "default-inbound-policy", nodeconfig.PolicyAllUnauthenticated, "cluster default inbound policy for ports without a Server")
	fs.StringVar(&o.clusterNetworks, "cluster-networks", "", "comma-separated CIDRs that count as the cluster (default 10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8)")
	fs.StringVar(&o.pushAddr, "push-addr", ":15012", "config push gRPC address")
	fs.StringVar(&o.caAddr, "ca-addr", ":15013", "CSR signing service address")
	fs.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", "warren-system"), "the controller's namespace (default $POD_NAMESPACE, else warren-system)")
	fs.StringVar(&o.serviceAccount, "service-account", "warren-controller", "the controller's ServiceAccount: its SPIFFE ID is the identity ztunnels verify")
	fs.StringVar(&o.caSecret, "ca-secret", kubeca.DefaultRootSecret, "Secret (in --namespace) holding the root CA; created on first start")
	fs.StringVar(&o.caIntermediate, "ca-intermediate-secret", "", "namespace/name of a kubernetes.io/tls Secret with an intermediate CA to sign with instead (cert-manager layout)")
	fs.DurationVar(&o.certTTL, "workload-cert-ttl", 24*time.Hour, "default lifetime of workload certificates")
	fs.DurationVar(&o.caMaxTTL, "ca-max-ttl", 0, "longest lifetime a node agent may ask for (0: the CA's cap of 7 days)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "serve push and CSR without TLS (development only)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15014", "Prometheus metrics address")
	fs.StringVar(&o.audience, "token-audience", "warren-ca", "audience of the ztunnels' projected ServiceAccount tokens")
	fs.StringVar(&o.ztunnels, "ztunnel-service-accounts", "warren-system/warren-ztunnel", "comma-separated namespace/name of the ztunnels' ServiceAccounts")
	fs.StringVar(&o.waypoints, "waypoint-service-accounts", "", "comma-separated namespace/name of extra ServiceAccounts that may subscribe as waypoints (those of Gateways of class warren-waypoint always may)")
	fs.StringVar(&o.waypointImage, "waypoint-image", "warren-waypoint", "container image of the waypoints the controller deploys for Gateways of class warren-waypoint")
	fs.StringVar(&o.waypointPush, "waypoint-controller-addr", "", "config push address waypoint pods dial (default warren-controller.<namespace>.svc:<push port>)")
	fs.StringVar(&o.waypointCA, "waypoint-ca-addr", "", "CSR service address waypoint pods dial (default warren-controller.<namespace>.svc:<ca port>)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "elect a leader among replicas through the Lease "+controller.DefaultLeaseName+" in --namespace: all replicas push config and sign CSRs, only the leader writes status, waypoints and the roots ConfigMap")
	fs.BoolVar(&o.gatewayClass, "create-gateway-class", true, "create the GatewayClass warren-waypoint (controllerName warren.dev/waypoint-controller) when it does not exist")
	fs.DurationVar(&o.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "how long followers wait for a silent leader before taking over (renew deadline 2/3 of it, retry period 2/15)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.caIntermediate != "" && !strings.Contains(o.caIntermediate, "/") {
		return o, errors.New("--ca-intermediate-secret: want namespace/name")
	}
	if _, err := nodeconfig.ParseDefaultPolicy(o.defaultPolicy); err != nil {
		return o, fmt.Errorf("--default-inbound-policy: %w", err)
	}
	if o.leaseDuration < 3*time.Second {
		return o, fmt.Errorf("--leader-elect-lease-duration: %v is shorter than the 3s minimum", o.leaseDuration)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: every setting is a --flag", fs.Args())
	}
	return o, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// rootConfigMap is where node agents find the roots to verify the controller with, before they
// have any config (mounted into the ztunnel as /var/run/secrets/warren/ca.crt). The leader
// publishes it.
const rootConfigMap = "warren-ca-root"

// leaderElection turns the flags into the controller's election settings (nil: no election).
func (o options) leaderElection() *controller.LeaderElection {
	if !o.leaderElect {
		return nil
	}
	return &controller.LeaderElection{
		Namespace: o.namespace, Name: controller.DefaultLeaseName,
		LeaseDuration: o.leaseDuration, RenewDeadline: o.leaseDuration * 2 / 3, RetryPeriod: o.leaseDuration * 2 / 15,
	}
}

// healthHandler serves the metrics and the probes: /healthz answers 200 while the process
// serves; /readyz answers 200 once ready() returns nil, else 503 with its error.
func healthHandler(metrics http.Handler, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	var rc *rest.Config
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	policy, _ := nodeconfig.ParseDefaultPolicy(o.defaultPolicy)
	scheme, err := controller.Scheme()
	if err != nil {
		return err
	}
	kc, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	caCfg := ca.Config{TrustDomain: td, DefaultTTL: o.certTTL}
	var authority *ca.CA
	if o.caIntermediate != "" {
		ns, name, _ := strings.Cut(o.caIntermediate, "/")
		authority, err = kubeca.LoadIntermediate(ctx, kc, ns, name, caCfg)
	} else {
		// Every replica shares one root: the first to start creates the Secret (an atomic
		// create), the others load it, and so does the first when it loses the race. No
		// election is needed for that, and followers need the CA to sign CSRs anyway.
		authority, err = kubeca.LoadOrCreate(ctx, kc, o.namespace, o.caSecret, caCfg)
	}
	if err != nil {
		return err
	}
	// The controller's own serving certificate comes from its CA and rotates like a workload's.
	ids, err := identity.New(identity.Config{Signer: authority.Signer(0), TrustDomain: td})
	if err != nil {
		return err
	}
	go ids.Run(ctx)
	selfID, err := spiffeid.FromSegments(td, "ns", o.namespace, "sa", o.serviceAccount)
	if err != nil {
		return fmt.Errorf("controller identity: %w", err)
	}
	if _, err := ids.SVID(ctx, selfID); err != nil {
		return fmt.Errorf("controller serving certificate: %w", err)
	}
	var serverTLS *tls.Config
	if o.plaintext {
		log.Warn("config push and CSR service without TLS (--plaintext): use only for development")
	} else {
		serverTLS = tlsconfig.TLSServerConfig(ids.Source(selfID))
		serverTLS.MinVersion = tls.VersionTLS13
	}
	reviewer := &controller.TokenReviewer{Client: kc, Audience: o.audience, Ztunnels: splitList(o.ztunnels), Waypoints: splitList(o.waypoints)}
	svcAddr := func(flagValue, listen string) string {
		if flagValue != "" {
			return flagValue
		}
		_, port, _ := net.SplitHostPort(listen)
		return net.JoinHostPort(o.serviceAccount+"."+o.namespace+".svc", port)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c, err := controller.New(controller.Config{
		Rest:        rc,
		TrustDomain: o.trustDomain,
		Defaults: &nodeconfig.MeshDefaults{
			DefaultInboundPolicy: policy,
			ClusterNetworks:      splitList(o.clusterNetworks),
		},
		PushAddr:     o.pushAddr,
		PushTLS:      serverTLS,
		Authenticate: reviewer.Authenticate,
		CA:           authority,
		CAAddr:       o.caAddr,
		CATLS:        serverTLS,
		CAService: kubeca.ServiceConfig{
			Audience: o.audience, Ztunnels: splitList(o.ztunnels), Waypoints: splitList(o.waypoints), MaxTTL: o.caMaxTTL,
		},
		Waypoints: controller.WaypointConfig{
			Image: o.waypointImage, ControllerAddr: svcAddr(o.waypointPush, o.pushAddr), CAAddr: svcAddr(o.waypointCA, o.caAddr),
			Audience: o.audience, ControllerIdentity: selfID.String(), Plaintext: o.plaintext,
		},
		RootsConfigMap:     client.ObjectKey{Namespace: o.namespace, Name: rootConfigMap},
		LeaderElection:     o.leaderElection(),
		CreateGatewayClass: o.gatewayClass,
		Registry:           reg,
		Log:                log,
	})
	if err != nil {
		return err
	}
	// Waypoint Gateways' accounts may subscribe as waypoints, answered from the controller's cache.
	reviewer.IsWaypoint = c.IsWaypoint
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		srv := &http.Server{Handler: healthHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), c.Ready), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "error", err)
			}
		}()
		defer srv.Close()
	}
	log.Info("warren-controller started", "push", c.PushAddr().String(), "ca", c.CAAddr().String(),
		"trust_domain", o.trustDomain, "identity", selfID.String(), "root_expires", authority.Root().NotAfter,
		"leader_elect", o.leaderElect)
	return c.Run(ctx)
}
