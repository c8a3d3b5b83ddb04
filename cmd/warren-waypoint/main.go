// Command warren-waypoint is Warren's shared L7 proxy (a Gateway with gatewayClassName
// warren-waypoint): it accepts HBONE on :15008 from source ztunnels, routes HTTP/1.1, HTTP/2 and
// gRPC requests by HTTPRoute/GRPCRoute, enforces L4 and L7 authorization with the client's
// identity, and forwards over HBONE with its own identity, spiffe://<td>/ns/<ns>/sa/<sa>.
//
// With --controller it subscribes to warren-controller's config push as a "waypoint" client and
// gets its certificate from the CSR service (--ca-addr) with its projected ServiceAccount token.
// In standalone mode (--config) it reads the node config from a file (re-read when it changes; a
// bad file keeps the last good config) and serves a static certificate (--cert, --key, --bundle).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/state"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "warren-waypoint:", err)
		os.Exit(1)
	}
}

type options struct {
	controller, caAddr, caRootFile, tokenFile, controllerID string
	trustDomain, namespace, serviceAccount, node            string
	plaintext                                               bool
	configFile, cert, key, bundle                           string
	hboneAddr, adminAddr, metricsAddr, readyAddr            string
	logLevel                                                string
	pollInterval                                            time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("warren-waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.controller, "controller", "", "warren-controller's config push address (host:port); empty: standalone mode")
	fs.StringVar(&o.caAddr, "ca-addr", "", "warren-controller's CSR service address (host:port); required with --controller")
	fs.StringVar(&o.caRootFile, "ca-root-file", "/var/run/secrets/warren/ca.crt", "PEM roots that the controller's certificate chains to")
	fs.StringVar(&o.tokenFile, "token-file", "/var/run/secrets/tokens/warren-ca", "projected ServiceAccount token (audience warren-ca)")
	fs.StringVar(&o.controllerID, "controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/warren-system/sa/warren-controller)")
	fs.StringVar(&o.trustDomain, "trust-domain", nodeconfig.DefaultTrustDomain, "trust domain")
	fs.StringVar(&o.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the waypoint's namespace (default $POD_NAMESPACE)")
	fs.StringVar(&o.serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "the waypoint's ServiceAccount (default $SERVICE_ACCOUNT)")
	fs.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "the node the waypoint runs on, sent on the config push (default $NODE_NAME)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "talk to the controller without TLS (development only)")
	fs.StringVar(&o.configFile, "config", "", "node config file (YAML or JSON, api/nodeconfig Snapshot): standalone mode")
	fs.StringVar(&o.cert, "cert", "", "standalone: PEM certificate chain of the waypoint's SVID")
	fs.StringVar(&o.key, "key", "", "standalone: PEM private key of the waypoint's SVID")
	fs.StringVar(&o.bundle, "bundle", "", "standalone: PEM trust bundle of the mesh")
	fs.StringVar(&o.hboneAddr, "hbone-addr", ":15008", "HBONE address")
	fs.StringVar(&o.adminAddr, "admin-addr", ":15000", "admin (read-only debug JSON) address")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics address")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness address")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.pollInterval, "config-poll", 2*time.Second, "how often to check the config file for changes")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.configFile == "" && o.controller == "":
		return o, errors.New("either --controller (with --ca-addr) or --config (standalone mode, with --cert, --key and --bundle) is required")
	case o.configFile != "" && o.controller != "":
		return o, errors.New("--config and --controller exclude each other")
	case o.controller != "" && o.caAddr == "":
		return o, errors.New("--controller needs --ca-addr")
	case o.controller != "" && o.node == "":
		return o, errors.New("--controller needs --node (or $NODE_NAME)")
	case o.configFile != "" && (o.cert == "" || o.key == "" || o.bundle == ""):
		return o, errors.New("--config needs --cert, --key and --bundle (the waypoint's certificate)")
	case o.controller != "" && (o.namespace == "" || o.serviceAccount == ""):
		return o, errors.New("--namespace and --service-account are required: they make the waypoint's identity")
	}
	return o, nil
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
	securityLog := slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "security")
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cfg := waypoint.Config{
		HBONEAddr: o.hboneAddr, AdminAddr: o.adminAddr, MetricsAddr: o.metricsAddr, ReadyAddr: o.readyAddr,
		Registry: reg, Log: log, SecurityLog: securityLog,
	}
	var stream *configstream.Client
	if o.configFile != "" {
		svid, err := x509svid.Load(o.cert, o.key)
		if err != nil {
			return fmt.Errorf("--cert/--key: %w", err)
		}
		snap, err := readConfig(o.configFile)
		if err != nil {
			return err
		}
		view, err := state.Build(snap)
		if err != nil {
			return fmt.Errorf("config %s: %w", o.configFile, err)
		}
		bundle, err := x509bundle.Load(view.TrustDomain(), o.bundle)
		if err != nil {
			return fmt.Errorf("--bundle: %w", err)
		}
		cfg.Identity, cfg.SVID, cfg.Store = svid.ID, svid, state.NewStore(view)
		cfg.Bundle = state.BundleSource(cfg.Store, bundle)
		go watchConfig(ctx, o.configFile, o.pollInterval, cfg.Store, log)
	} else {
		td, err := spiffeid.TrustDomainFromString(o.trustDomain)
		if err != nil {
			return fmt.Errorf("--trust-domain: %w", err)
		}
		if cfg.Identity, err = spiffeid.FromSegments(td, "ns", o.namespace, "sa", o.serviceAccount); err != nil {
			return fmt.Errorf("--namespace/--service-account: %w", err)
		}
		cfg.Store = state.NewStore(nil)
		var tlsConf *tls.Config
		var roots *x509bundle.Bundle
		if !o.plaintext {
			if roots, err = x509bundle.Load(td, o.caRootFile); err != nil {
				return fmt.Errorf("--ca-root-file: %w (is the warren-ca-root ConfigMap mounted?)", err)
			}
			cid := o.controllerID
			if cid == "" {
				cid = "spiffe://" + td.Name() + "/ns/warren-system/sa/warren-controller"
			}
			id, err := spiffeid.FromString(cid)
			if err != nil {
				return fmt.Errorf("--controller-identity: %w", err)
			}
			tlsConf = tlsconfig.TLSClientConfig(state.BundleSource(cfg.Store, roots), tlsconfig.AuthorizeID(id))
		} else {
			log.Warn("talking to the controller without TLS (--plaintext): use only for development")
		}
		token := identity.TokenFile(o.tokenFile)
		gs, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{Target: o.caAddr, TLSConfig: tlsConf, Token: token})
		if err != nil {
			return err
		}
		defer gs.Close()
		if cfg.Identities, err = identity.New(identity.Config{Signer: gs, TrustDomain: td, Registerer: reg}); err != nil {
			return err
		}
		var fallback x509bundle.Source
		if roots != nil {
			fallback = roots
		}
		cfg.Bundle = state.BundleSource(cfg.Store, fallback)
		stream, err = configstream.New(configstream.Config{
			Target: o.controller, TLSConfig: tlsConf, Token: token, Node: o.node, Kind: "waypoint",
			Store: cfg.Store, Log: log.With("component", "configstream"),
		})
		if err != nil {
			return err
		}
	}
	wp, err := waypoint.New(cfg)
	if err != nil {
		return err
	}
	if stream != nil {
		go stream.Run(ctx)
	}
	log.Info("warren-waypoint started", "identity", cfg.Identity.String(), "controller", o.controller, "config", o.configFile, "addrs", fmt.Sprint(wp.Addrs()))
	return wp.Run(ctx)
}

func readConfig(path string) (*nodeconfig.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	s, err := nodeconfig.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return s, nil
}

// watchConfig swaps in the config file's new content when its modification time changes; an
// invalid file is logged and the last good config stays.
func watchConfig(ctx context.Context, path string, every time.Duration, store *state.Store, log *slog.Logger) {
	stat := func() time.Time {
		fi, err := os.Stat(path)
		if err != nil {
			return time.Time{}
		}
		return fi.ModTime()
	}
	last := stat()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if m := stat(); !m.Equal(last) {
			last = m
			snap, err := readConfig(path)
			if err == nil {
				var v *state.View
				if v, err = state.Build(snap); err == nil {
					store.Swap(v)
					log.Info("config applied", "version", v.Version())
					continue
				}
			}
			log.Error("config rejected; keeping the last good one", "error", err)
		}
	}
}
