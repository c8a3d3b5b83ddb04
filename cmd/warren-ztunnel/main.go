// Command warren-ztunnel is Warren's per-node proxy.
//
// With --controller it subscribes to warren-controller's config push and gets workload
// certificates from its CSR service (--ca-addr), authenticated with the pod's projected
// ServiceAccount token and verifying the controller's SPIFFE ID against the roots in
// --ca-root-file. In standalone mode (--config) it reads the node config from a file (the same
// contract the controller pushes; re-read when it changes, a bad file keeps the last good config)
// and signs certificates with a local CA read from files. Either way it enrolls this node's
// meshed workloads by binding their listeners on their addresses.
//
// In-pod mode (--redirect-cgroup with --node-agent-socket) loads the eBPF redirect and serves the
// node agent that warren-cni calls: pods are enrolled when created (and, from the pod records,
// when already running), with the ztunnel's listeners inside each pod's network namespace. The
// redirect is pinned under --bpf-pin-path (a mounted bpffs), so if the ztunnel stops or crashes its
// pods stay captured and fail closed until the next one adopts the pins; uninstalling Warren from
// a node must remove that directory (redirect.Redirector.Uninstall).
//
// With --cni-install (in-pod mode, as the warren-ztunnel DaemonSet runs it) it also installs
// warren-cni on the node through the host directories mounted into its pod (ztunnel/cniinstall):
// the binary into --cni-bin-dir, the plugin's kubeconfig and the warren-cni entry, last, into the
// primary config of --cni-net-dir, re-chained whenever the network plugin rewrites its config;
// /healthz/ready then also waits for the chaining. The --node-agent-socket and --pod-state-dir
// paths go into the entry as they are, so they must be the same on the node (hostPath mounted at
// the same path).
//
// On exit (SIGTERM) it decides between an upgrade and an uninstall (ztunnel/uninstall;
// --uninstall-on-exit, default auto): only when the DaemonSet that owns its pod (--pod-name/--pod-namespace, from $POD_NAME and
// $POD_NAMESPACE), or its namespace, is gone or being deleted does it remove the CNI entry,
// kubeconfig and binary and the eBPF redirect pins, so pods go back to plain networking (reads
// that worked at start and are refused at exit count as that too: the uninstall deleted its
// ServiceAccount or RBAC first); otherwise, or when it cannot tell (no API server), everything
// stays and captured pods fail closed until the next ztunnel adopts them. Its ServiceAccount
// needs get on pods and on daemonsets.apps in its namespace, and get on namespaces (which the
// warren-cni plugin, using its token, needs cluster-wide with get on pods).
package main

import (
	"context"
	"crypto"
	"crypto/tls"
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
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/cniinstall"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/nodeagent"
	"github.com/warren-mesh/warren/ztunnel/nodeagent/protocol"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/uninstall"
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
	controller   string
	caAddr       string
	caRootFile   string
	tokenFile    string
	controllerID string
	trustDomain  string
	plaintext    bool
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
	agentSocket  string
	cgroup       string
	podStateDir  string
	bpfPinPath   string

	cniInstall      bool
	cniNetDir       string
	cniBinDir       string
	cniHostNetDir   string
	cniBinary       string
	cniSADir        string
	cniAPIServer    string
	uninstallOnExit uninstall.Mode
	kubeconfig      string
	podName         string
	podNamespace    string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("warren-ztunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.controller, "controller", "", "warren-controller's config push address (host:port); empty: standalone mode")
	fs.StringVar(&o.caAddr, "ca-addr", "", "warren-controller's CSR service address (host:port); required with --controller")
	fs.StringVar(&o.caRootFile, "ca-root-file", "/var/run/secrets/warren/ca.crt", "PEM roots that the controller's certificate chains to")
	fs.StringVar(&o.tokenFile, "token-file", "/var/run/secrets/tokens/warren-ca", "projected ServiceAccount token (audience warren-ca)")
	fs.StringVar(&o.controllerID, "controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/warren-system/sa/warren-controller)")
	fs.StringVar(&o.trustDomain, "trust-domain", nodeconfig.DefaultTrustDomain, "trust domain (controller mode; standalone mode takes it from the file)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "talk to the controller without TLS (development only)")
	fs.StringVar(&o.configFile, "config", "", "node config file (YAML or JSON, api/nodeconfig Snapshot): standalone mode")
	fs.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM certificate of the local signing CA (root or intermediate)")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of the local signing CA")
	fs.StringVar(&o.adminAddr, "admin-addr", ":15000", "admin (read-only debug JSON) address; several, comma-separated, all serve it")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics address")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness address")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.accessLog, "access-log", false, "write one access-log line per connection at close (off by default: the data path does no per-connection logging; /connections and the metrics keep the counts)")
	fs.BoolVar(&o.mark, "mark", true, "set SO_MARK 0x539 on workload sockets (needs CAP_NET_ADMIN)")
	fs.DurationVar(&o.pollInterval, "config-poll", 2*time.Second, "how often to check the config file for changes")
	fs.StringVar(&o.agentSocket, "node-agent-socket", "", "in-pod mode: serve the node agent (for warren-cni) on this unix socket, e.g. "+protocol.DefaultSocket+"; needs --redirect-cgroup")
	fs.StringVar(&o.cgroup, "redirect-cgroup", "", "in-pod mode: cgroup v2 directory the eBPF redirect attaches to (the kubepods cgroup); needs --node-agent-socket")
	fs.StringVar(&o.podStateDir, "pod-state-dir", protocol.DefaultStateDir, "in-pod mode: where warren-cni records pods (to find running pods' netns)")
	fs.StringVar(&o.bpfPinPath, "bpf-pin-path", "", "in-pod mode: bpffs directory where the eBPF redirect is pinned so pods stay captured (fail closed) while no ztunnel runs; a restarted ztunnel adopts it (default /sys/fs/bpf/warren/<node>; \"none\": do not pin, pods connect directly when the ztunnel is gone)")
	fs.BoolVar(&o.cniInstall, "cni-install", false, "in-pod mode: install warren-cni on the node (binary, kubeconfig, entry in the primary CNI config) and keep it chained; readiness waits for it")
	fs.StringVar(&o.cniNetDir, "cni-net-dir", "/host/etc/cni/net.d", "with --cni-install: the node's CNI config dir as mounted here")
	fs.StringVar(&o.cniBinDir, "cni-bin-dir", "/host/opt/cni/bin", "with --cni-install: the node's CNI bin dir as mounted here")
	fs.StringVar(&o.cniHostNetDir, "cni-host-net-dir", "/etc/cni/net.d", "with --cni-install: the node's CNI config dir as the container runtime sees it (the plugin's kubeconfig path)")
	fs.StringVar(&o.cniBinary, "cni-binary", "/usr/local/bin/warren-cni", "with --cni-install: the warren-cni binary to install")
	fs.StringVar(&o.cniSADir, "cni-service-account-dir", cniinstall.DefaultServiceAccountDir, "with --cni-install: the ServiceAccount token and ca.crt the plugin's kubeconfig is made of")
	fs.StringVar(&o.cniAPIServer, "cni-api-server", "", "with --cni-install: API server URL for the plugin's kubeconfig (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	var uninstallOnExit string
	fs.StringVar(&uninstallOnExit, "uninstall-on-exit", string(uninstall.Auto), "on exit, remove the CNI chaining and the eBPF redirect pins from the node: auto (only if this pod's DaemonSet is gone or being deleted), always or never")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for reading this pod and its DaemonSet on exit (default: in-cluster config)")
	fs.StringVar(&o.podName, "pod-name", os.Getenv("POD_NAME"), "this pod's name (default $POD_NAME)")
	fs.StringVar(&o.podNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this pod's namespace (default $POD_NAMESPACE)")
	err := fs.Parse(args)
	if err != nil {
		return o, err
	}
	switch {
	case o.configFile == "" && o.controller == "":
		return o, errors.New("either --controller (with --ca-addr) or --config (standalone mode) is required")
	case o.configFile != "" && o.controller != "":
		return o, errors.New("--config and --controller exclude each other")
	case o.controller != "" && o.caAddr == "":
		return o, errors.New("--controller needs --ca-addr")
	case o.controller != "" && o.caCert != "":
		return o, errors.New("--ca-cert/--ca-key are for standalone mode; with --controller certificates come from --ca-addr")
	}
	if (o.agentSocket == "") != (o.cgroup == "") {
		return o, errors.New("--node-agent-socket and --redirect-cgroup go together (in-pod mode)")
	}
	if o.node == "" {
		return o, errors.New("--node (or $NODE_NAME) is required")
	}
	switch {
	case o.cgroup == "":
	case o.bpfPinPath == "":
		if strings.ContainsAny(o.node, "/\x00") || o.node == "." || o.node == ".." {
			return o, fmt.Errorf("--node %q cannot name a pin directory; set --bpf-pin-path", o.node)
		}
		o.bpfPinPath = "/sys/fs/bpf/warren/" + o.node
	case o.bpfPinPath == "none":
		o.bpfPinPath = ""
	}
	if (o.caCert == "") != (o.caKey == "") {
		return o, errors.New("--ca-cert and --ca-key go together")
	}
	if o.cniInstall && o.agentSocket == "" {
		return o, errors.New("--cni-install needs in-pod mode (--node-agent-socket and --redirect-cgroup): warren-cni calls the node agent")
	}
	if o.uninstallOnExit, err = uninstall.ParseMode(uninstallOnExit); err != nil {
		return o, fmt.Errorf("--uninstall-on-exit %w", err)
	}
	return o, nil
}

// run is main without the exit: flags and their validation, build the components, run them
// until ctx ends.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	n, err := build(o, stderr)
	if err != nil {
		return err
	}
	defer n.close()
	return n.run(ctx)
}

// node is warren-ztunnel's components, built from the options; the optional ones are nil when
// their mode is off.
type node struct {
	o   options
	log *slog.Logger

	store   *state.Store
	stream  *configstream.Client // controller mode
	zt      *ztunnel.Ztunnel
	rd      *redirect.Redirector  // in-pod mode
	agent   *nodeagent.Agent      // in-pod mode
	exit    *uninstall.Policy     // in-pod mode
	inst    *cniinstall.Installer // --cni-install
	closers []func() error
}

func (n *node) close() {
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i]()
	}
}

// build makes the components; on error, it closes those made so far.
func build(o options, stderr io.Writer) (_ *node, err error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	n := &node{o: o, log: slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("node", o.node)}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	log := n.log
	var accessLog *slog.Logger
	if o.accessLog {
		accessLog = slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "access", "node", o.node)
	}
	securityLog := slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "security", "node", o.node)
	if o.cniInstall {
		// Checked first: a bad install setup fails before anything is loaded into the kernel.
		if n.inst, err = newInstaller(o, log); err != nil {
			return nil, err
		}
	}

	var (
		td     spiffeid.TrustDomain
		signer identity.Signer
		bundle x509bundle.Source
	)
	if o.configFile != "" {
		snap, err := readConfig(o.configFile)
		if err != nil {
			return nil, err
		}
		view, err := state.Build(snap)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", o.configFile, err)
		}
		n.store, td = state.NewStore(view), view.TrustDomain()
		authority, err := localCA(td, o.caCert, o.caKey)
		if err != nil {
			return nil, err
		}
		if o.caCert == "" {
			log.Warn("no --ca-cert/--ca-key: signing with an ephemeral root; ztunnels on other nodes will not trust it")
		}
		signer, bundle = authority.Signer(0), state.BundleSource(n.store, authority.Bundle())
	} else {
		if td, err = spiffeid.TrustDomainFromString(o.trustDomain); err != nil {
			return nil, fmt.Errorf("--trust-domain: %w", err)
		}
		n.store = state.NewStore(nil)
		var tlsConf *tls.Config
		var roots *x509bundle.Bundle
		if !o.plaintext {
			if roots, err = x509bundle.Load(td, o.caRootFile); err != nil {
				return nil, fmt.Errorf("--ca-root-file: %w (is the warren-ca-root ConfigMap mounted?)", err)
			}
			cid := o.controllerID
			if cid == "" {
				cid = "spiffe://" + td.Name() + "/ns/warren-system/sa/warren-controller"
			}
			id, err := spiffeid.FromString(cid)
			if err != nil {
				return nil, fmt.Errorf("--controller-identity: %w", err)
			}
			tlsConf = tlsconfig.TLSClientConfig(state.BundleSource(n.store, roots), tlsconfig.AuthorizeID(id))
		} else {
			log.Warn("talking to the controller without TLS (--plaintext): use only for development")
		}
		token := identity.TokenFile(o.tokenFile)
		gs, err := identity.NewGRPCSigner(identity.GRPCSignerConfig{Target: o.caAddr, TLSConfig: tlsConf, Token: token})
		if err != nil {
			return nil, err
		}
		n.closers = append(n.closers, gs.Close)
		signer = gs
		var fallback x509bundle.Source // until the first config brings the trust bundle
		if roots != nil {
			fallback = roots
		}
		bundle = state.BundleSource(n.store, fallback)
		n.stream, err = configstream.New(configstream.Config{
			Target: o.controller, TLSConfig: tlsConf, Token: token, Node: o.node, Store: n.store, Log: log.With("component", "configstream"),
		})
		if err != nil {
			return nil, err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ids, err := identity.New(identity.Config{Signer: signer, TrustDomain: td, Registerer: reg})
	if err != nil {
		return nil, err
	}
	var mark uint32
	if o.mark {
		mark = sockets.Mark
	}
	zcfg := ztunnel.Config{
		Node:       o.node,
		Store:      n.store,
		Identities: ids,
		Bundle:     bundle,
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
		BuildVersion: buildVersion(),
	}
	if o.cgroup != "" {
		// In-pod mode: the eBPF redirect captures pods that the node agent enrolls.
		if n.rd, err = redirect.New(redirect.Config{CgroupPath: o.cgroup, PinPath: o.bpfPinPath}); err != nil {
			return nil, err
		}
		// Close keeps the pins: pods stay captured, failing closed, until the next ztunnel.
		n.closers = append(n.closers, n.rd.Close)
		zcfg.EnrollLocal = false
		zcfg.Sockets = func(*nodeconfig.Workload) (sockets.Factory, error) {
			return nil, errors.New("in-pod mode: pods are enrolled by the node agent")
		}
		zcfg.ListenAddr = ztunnel.InPodListenAddr
		zcfg.OriginalDst = n.rd.OriginalDst
		zcfg.TrustDomain = td
		if n.exit, err = uninstall.New(uninstall.Config{
			Mode: o.uninstallOnExit, Kubeconfig: o.kubeconfig, Namespace: o.podNamespace, Pod: o.podName, Log: log,
		}); err != nil {
			return nil, err
		}
	}
	if n.inst != nil {
		// Readiness also needs the chaining: new pods on the node need warren-cni.
		zcfg.ReadyChecks = append(zcfg.ReadyChecks, n.inst.Ready)
	}
	if n.zt, err = ztunnel.New(zcfg); err != nil {
		return nil, err
	}
	if n.rd != nil {
		if n.agent, err = nodeagent.New(nodeagent.Config{
			Socket: o.agentSocket, Node: o.node, Ztunnel: n.zt, Redirect: n.rd, Store: n.store,
			StateDir: o.podStateDir, Log: log,
		}); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// run runs the components until ctx ends, then, in in-pod mode, keeps or removes Warren from
// the node (uninstall.Policy).
func (n *node) run(ctx context.Context) error {
	if n.o.configFile != "" {
		go watchConfig(ctx, n.o.configFile, n.o.pollInterval, n.store, n.log)
	}
	if n.exit != nil {
		go n.exit.Verify(ctx)
	}
	if n.stream != nil {
		go n.stream.Run(ctx)
	}
	agentDone := make(chan error, 1)
	if n.agent != nil {
		go func() { agentDone <- n.agent.Run(ctx) }()
	} else {
		agentDone <- nil
	}
	instDone := make(chan error, 1)
	if n.inst != nil {
		go func() { instDone <- n.inst.Run(ctx) }()
	} else {
		instDone <- nil
	}
	n.log.Info("warren-ztunnel started", "controller", n.o.controller, "config", n.o.configFile, "addrs", fmt.Sprint(n.zt.Addrs()))
	err := n.zt.Run(ctx)
	if aerr := <-agentDone; aerr != nil && err == nil {
		err = aerr
	}
	if ierr := <-instDone; ierr != nil && err == nil {
		err = ierr
	}
	if n.exit != nil {
		// ctx has ended: the exit check gets its own time (uninstall.CheckTimeout).
		if xerr := n.exit.OnExit(context.Background(), n.inst, n.rd, n.o.bpfPinPath); xerr != nil && err == nil {
			err = xerr
		}
	}
	return err
}

func newInstaller(o options, log *slog.Logger) (*cniinstall.Installer, error) {
	server := o.cniAPIServer
	if server == "" {
		var err error
		if server, err = cniinstall.ServerFromEnv(os.Getenv); err != nil {
			return nil, fmt.Errorf("--cni-install: %w; set --cni-api-server", err)
		}
	}
	return cniinstall.New(cniinstall.Config{
		NetDir: o.cniNetDir, HostNetDir: o.cniHostNetDir, BinDir: o.cniBinDir, Binary: o.cniBinary,
		ServiceAccountDir: o.cniSADir, APIServer: server,
		NodeAgentSocket: o.agentSocket, StateDir: o.podStateDir,
		OnEvent: logInstallerEvent(log.With("component", "cniinstall")),
	})
}

// logInstallerEvent logs what the CNI installer did.
func logInstallerEvent(log *slog.Logger) func(cniinstall.Event) {
	return func(e cniinstall.Event) {
		attrs := []any{"event", string(e.Kind), "path", e.Path}
		if e.Detail != "" {
			attrs = append(attrs, "detail", e.Detail)
		}
		if e.Err != nil {
			log.Warn("cni install: "+string(e.Kind), append(attrs, "error", e.Err.Error())...)
			return
		}
		log.Info("cni install: "+string(e.Kind), attrs...)
	}
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

// version is set at link time (-ldflags "-X main.version=v0.1.0"); buildVersion falls back to the
// module version and VCS revision Go recorded, then "devel".
var version string

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	return v + " " + bi.GoVersion
}
