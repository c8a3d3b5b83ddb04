// Command warren-controller is Warren's control plane: it watches the cluster, translates it
// into node config, pushes that to every ztunnel over the config push stream (:15012), and writes
// status conditions on the policy resources.
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
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller"
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
	pushCert        string
	pushKey         string
	metricsAddr     string
	audience        string
	ztunnels        string
	waypoints       string
	logLevel        string
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
	fs.StringVar(&o.pushCert, "push-tls-cert", "", "PEM certificate chain for the push service; empty serves plaintext (development only)")
	fs.StringVar(&o.pushKey, "push-tls-key", "", "PEM private key for the push service")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15014", "Prometheus metrics address")
	fs.StringVar(&o.audience, "token-audience", "warren-ca", "audience of the ztunnels' projected ServiceAccount tokens")
	fs.StringVar(&o.ztunnels, "ztunnel-service-accounts", "warren-system/warren-ztunnel", "comma-separated namespace/name of the ztunnels' ServiceAccounts")
	fs.StringVar(&o.waypoints, "waypoint-service-accounts", "", "comma-separated namespace/name of ServiceAccounts that may subscribe as waypoints")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if (o.pushCert == "") != (o.pushKey == "") {
		return o, errors.New("--push-tls-cert and --push-tls-key go together")
	}
	if _, err := nodeconfig.ParseDefaultPolicy(o.defaultPolicy); err != nil {
		return o, fmt.Errorf("--default-inbound-policy: %w", err)
	}
	return o, nil
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
	var pushTLS *tls.Config
	if o.pushCert != "" {
		cert, err := tls.LoadX509KeyPair(o.pushCert, o.pushKey)
		if err != nil {
			return fmt.Errorf("push tls: %w", err)
		}
		pushTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	} else {
		log.Warn("config push served without TLS (--push-tls-cert unset): use only for development")
	}
	scheme, err := controller.Scheme()
	if err != nil {
		return err
	}
	kc, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	reviewer := &controller.TokenReviewer{Client: kc, Audience: o.audience, Ztunnels: splitList(o.ztunnels), Waypoints: splitList(o.waypoints)}

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
		PushTLS:      pushTLS,
		Authenticate: reviewer.Authenticate,
		Registry:     reg,
		Log:          log,
	})
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "error", err)
			}
		}()
		defer srv.Close()
	}
	log.Info("warren-controller started", "push", c.PushAddr().String(), "trust_domain", o.trustDomain)
	return c.Run(ctx)
}
