// Command warren-ztunnel is Warren's per-node proxy. In standalone mode it reads the node config
// from a file (the same contract the controller pushes), enrolls this node's meshed workloads by
// binding their listeners on their addresses, and signs their certificates with a local CA whose
// root is read from files. The file is re-read when it changes; a bad file keeps the last good
// config.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "warren-ztunnel:", err)
		os.Exit(1)
	}
}

type options struct {
	configFile   string
	node         string
	caCert       string
	caKey        string
	adminAddr    string
	metricsAddr  string
	readyAddr    string
	logLevel     string
	accessLog    bool
	mark         bool
	pollInterval time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("warren-ztunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configFile, "config", "", "node config file (YAML or JSON, api/nodeconfig Snapshot); required in standalone mode")
	fs.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM certificate of the local signing CA (root or intermediate)")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of the local signing CA")
	fs.StringVar(&o.adminAddr, "admin-addr", ":15000", "admin (read-only debug JSON) address")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics address")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness address")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.accessLog, "access-log", true, "write one access-log line per connection at close")
	fs.BoolVar(&o.mark, "mark", true, "set SO_MARK 0x539 on workload sockets (needs CAP_NET_ADMIN)")
	fs.DurationVar(&o.pollInterval, "config-poll", 2*time.Second, "how often to check the config file for changes")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.configFile == "" {
		return o, errors.New("--config is required (the controller connection comes in a later release)")
	}
	if o.node == "" {
		return o, errors.New("--node (or $NODE_NAME) is required")
	}
	if (o.caCert == "") != (o.caKey == "") {
		return o, errors.New("--ca-cert and --ca-key go together")
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
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("node", o.node)
	var accessLog *slog.Logger
	if o.accessLog {
		accessLog = slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "access", "node", o.node)
	}
	securityLog := slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "security", "node", o.node)

	snap, err := readConfig(o.configFile)
	if err != nil {
		return err
	}
	view, err := state.Build(snap)
	if err != nil {
		return fmt.Errorf("config %s: %w", o.configFile, err)
	}
	store := state.NewStore(view)

	authority, err := localCA(view.TrustDomain(), o.caCert, o.caKey)
	if err != nil {
		return err
	}
	if o.caCert == "" {
		log.Warn("no --ca-cert/--ca-key: signing with an ephemeral root; ztunnels on other nodes will not trust it")
	}
	ids, err := identity.New(identity.Config{Signer: authority.Signer(0), TrustDomain: view.TrustDomain()})
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var mark uint32
	if o.mark {
		mark = sockets.Mark
	}
	zt, err := ztunnel.New(ztunnel.Config{
		Node:       o.node,
		Store:      store,
		Identities: ids,
		Bundle:     authority.Bundle(),
		Sockets: func(w *nodeconfig.Workload) (sockets.Factory, error) {
			src, err := netip.ParseAddr(w.GetAddresses()[0])
			if err != nil {
				return nil, err
			}
			return sockets.Host{Source: src, Mark: mark}, nil
		},
		EnrollLocal: true,
		AdminAddr:   o.adminAddr, MetricsAddr: o.metricsAddr, ReadyAddr: o.readyAddr,
		Registry: reg, Log: log, AccessLog: accessLog, SecurityLog: securityLog,
	})
	if err != nil {
		return err
	}
	go watchConfig(ctx, o.configFile, o.pollInterval, store, log)
	log.Info("warren-ztunnel started", "config", o.configFile, "version", view.Version(), "addrs", fmt.Sprint(zt.Addrs()))
	return zt.Run(ctx)
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
	last := modTime(path)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := modTime(path)
		if m.Equal(last) {
			continue
		}
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

func modTime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// localCA builds the standalone signing CA from PEM files, or an ephemeral one.
func localCA(td spiffeid.TrustDomain, certFile, keyFile string) (*ca.CA, error) {
	cfg := ca.Config{TrustDomain: td}
	if certFile != "" {
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-cert: %w", err)
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-key: %w", err)
		}
		cert, key, err := parseCA(certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		cfg.Certificate, cfg.Signer = cert, key
	}
	c, err := ca.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("local ca: %w", err)
	}
	return c, nil
}

func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, errors.New("--ca-cert: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-cert: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || !strings.HasSuffix(kb.Type, "PRIVATE KEY") {
		return nil, nil, errors.New("--ca-key: no PEM PRIVATE KEY block")
	}
	var key any
	switch kb.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("--ca-key: %T cannot sign", key)
	}
	return cert, signer, nil
}
