// Package ztunnel is Warren's per-node proxy: it wires the node's config store, the workload
// certificate manager, the HBONE connection pools and one inbound and one outbound proxy per
// enrolled workload, and serves the admin (:15000), metrics (:15020) and readiness (:15021)
// endpoints.
//
// Construct with New (which binds the node ports and fails fast), enroll workloads with
// AddWorkload (a workload of the config) or AddPod (a pod the config may not have yet, as the
// node agent does), or let EnrollLocal follow the config, then Run until the context ends.
// cmd/warren-ztunnel imports it; nothing else should.
package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/inbound"
	"github.com/warren-mesh/warren/ztunnel/outbound"
	"github.com/warren-mesh/warren/ztunnel/pool"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// In-pod ports.
const (
	OutboundPort  = 15001
	PlaintextPort = 15006
)

// Config of a ztunnel.
type Config struct {
	// Node is the name of the node this ztunnel serves.
	Node string
	// Store holds the node's config; the caller swaps new snapshots into it.
	Store *state.Store
	// Identities issues and rotates workload certificates.
	Identities *identity.Manager
	// TrustDomain is used for pods enrolled with AddPod before the first config arrives (the
	// config's trust domain wins once there is one). Optional.
	TrustDomain spiffeid.TrustDomain
	// Bundle has the mesh's trust anchors.
	Bundle x509bundle.Source
	// Sockets returns the socket factory of a workload (in its network namespace, or the host's).
	Sockets func(w *nodeconfig.Workload) (sockets.Factory, error)
	// OriginalDst finds where a captured outbound connection was going. Nil disables the
	// outbound listeners (nothing captures traffic to them).
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// InboundOriginalDst, when set, replaces the plaintext inbound's use of the local address.
	InboundOriginalDst func(net.Conn) (netip.AddrPort, error)
	// EnrollLocal enrolls every meshed workload of this node found in the config, and removes
	// those that leave it (standalone mode).
	EnrollLocal bool
	// ListenAddrs decides where a workload's listeners bind; nil binds on the workload's first
	// address (standalone mode). In-pod mode binds on the wildcard address inside the pod.
	ListenAddr func(w *nodeconfig.Workload, port uint16) netip.AddrPort
	// ProbeSources are the node's addresses, from which kubelet probes come.
	ProbeSources []netip.Addr
	// HBONEPort is the in-pod HBONE port; zero means 15008.
	HBONEPort uint16
	// AdminAddr, MetricsAddr and ReadyAddr are the node ports; empty disables each.
	// The usual values are ":15000", ":15020" and ":15021". AdminAddr may list several
	// comma-separated addresses that all serve the admin endpoints.
	AdminAddr, MetricsAddr, ReadyAddr string
	// ReadyChecks are more conditions of readiness, checked on every request, after the
	// ztunnel's own (e.g. the CNI chaining that the node's new pods need, cniinstall's
	// Installer.Ready): Ready, and so /healthz/ready and /version, report not ready while any
	// returns an error, with every error's message. Optional.
	ReadyChecks []func() error
	// Registry receives the metrics and is what /metrics serves.
	Registry *prometheus.Registry
	// Log is the component log; AccessLog gets one line per connection (nil: off); SecurityLog
	// gets security events (nil: Log).
	Log, AccessLog, SecurityLog *slog.Logger
	// HandshakeTimeout bounds inbound TLS handshakes; zero means 10s.
	HandshakeTimeout time.Duration
	// Pool tunes the HBONE pools (Dial is set by the ztunnel).
	Pool pool.Config
	// BuildVersion is the binary's version, served by the admin port (/version, /config_dump).
	BuildVersion string
}

// Ztunnel is one node's proxy.
type Ztunnel struct {
	cfg Config
	log *slog.Logger
	tel *telemetry.Telemetry

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	listeners []net.Listener // node ports
	servers   []served

	mu        sync.Mutex
	workloads map[string]*enrolled
}

// enrolled is one workload being served.
type enrolled struct {
	uid      string
	name     string
	identity spiffeid.ID
	addrs    []string
	in       *inbound.Proxy
	pool     *pool.Pool
	cancel   context.CancelFunc
	done     chan struct{}
}

// New validates the config and binds the node ports.
func New(cfg Config) (*Ztunnel, error) {
	if cfg.Store == nil || cfg.Identities == nil || cfg.Bundle == nil || cfg.Sockets == nil || cfg.Registry == nil || cfg.Log == nil {
		return nil, errors.New("new ztunnel: store, identities, bundle, sockets, registry and log are required")
	}
	for i, check := range cfg.ReadyChecks {
		if check == nil {
			return nil, fmt.Errorf("new ztunnel: ready check %d is nil", i)
		}
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = nodeconfig.DefaultHBONEPort
	}
	if cfg.SecurityLog == nil {
		cfg.SecurityLog = cfg.Log
	}
	tel, err := telemetry.New(telemetry.Config{AccessLog: cfg.AccessLog, SecurityLog: cfg.SecurityLog, Registerer: cfg.Registry})
	if err != nil {
		return nil, fmt.Errorf("new ztunnel: %w", err)
	}
	z := &Ztunnel{cfg: cfg, log: cfg.Log, tel: tel, workloads: make(map[string]*enrolled)}
	z.ctx, z.cancel = context.WithCancel(context.Background())
	if err := z.bindNodePorts(); err != nil {
		z.cancel()
		for _, ln := range z.listeners {
			ln.Close()
		}
		return nil, err
	}
	return z, nil
}

// Run serves until ctx ends, then drains: every workload's proxies stop and open connections
// close.
func (z *Ztunnel) Run(ctx context.Context) error {
	defer z.cancel()
	errc := make(chan error, 1)
	go func() { errc <- z.cfg.Identities.Run(z.ctx) }()
	if z.cfg.EnrollLocal {
		unsub := z.cfg.Store.Subscribe(func(_, cur *state.View) { z.reconcile(cur) })
		defer unsub()
		z.reconcile(z.cfg.Store.Load())
	}
	z.serveNodePorts()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("identity manager: %w", err)
	}
	z.log.Info("draining")
	z.mu.Lock()
	for uid := range z.workloads {
		z.removeLocked(uid)
	}
	z.mu.Unlock()
	for _, ln := range z.listeners {
		ln.Close()
	}
	z.cancel()
	z.wg.Wait()
	return err
}

// reconcile enrolls this node's meshed workloads and removes the ones that left.
func (z *Ztunnel) reconcile(v *state.View) {
	if v == nil {
		return
	}
	want := make(map[string]*nodeconfig.Workload)
	for _, w := range v.LocalWorkloads(z.cfg.Node) {
		if w.GetTunnelProtocol() == nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE {
			want[w.GetUid()] = w
		}
	}
	z.mu.Lock()
	var gone []string
	for uid := range z.workloads {
		if want[uid] == nil {
			gone = append(gone, uid)
		}
	}
	for _, uid := range gone {
		z.removeLocked(uid)
	}
	z.mu.Unlock()
	for uid, w := range want {
		z.mu.Lock()
		_, have := z.workloads[uid]
		z.mu.Unlock()
		if have {
			continue
		}
		socks, err := z.cfg.Sockets(w)
		if err == nil {
			err = z.AddWorkload(uid, socks)
		}
		if err != nil {
			z.log.Error("enroll workload", "workload", w.GetNamespace()+"/"+w.GetName(), "uid", uid, "error", err)
		}
	}
}

// Pod is what [Ztunnel.AddPod] needs to know about a workload, so that a pod can be enrolled
// before the config has it (the CNI plugin runs before the kubelet even reports the pod's IP).
type Pod struct {
	// UID names the workload in the config; the proxies look it up by UID on every connection.
	UID string
	// Name and Namespace name the pod (logs, /config_dump).
	Name, Namespace string
	// ServiceAccount and Namespace make the workload's identity:
	// spiffe://<trust domain>/ns/<Namespace>/sa/<ServiceAccount>.
	ServiceAccount string
	// Addresses are the pod's IPs; at least one.
	Addresses []netip.Addr
}

// Listeners are the inbound listeners of an enrolled workload, which the eBPF redirect's inbound
// capture needs (redirect.Redirector.AttachInbound). They stay owned by the ztunnel and are
// closed by RemoveWorkload.
type Listeners struct {
	HBONE, Plaintext net.Listener
}

// AddWorkload starts serving a workload of the current config (see [Ztunnel.AddPod]).
func (z *Ztunnel) AddWorkload(uid string, socks sockets.Factory) error {
	view := z.cfg.Store.Load()
	if view == nil {
		return fmt.Errorf("add workload %s: no config yet", uid)
	}
	w := view.WorkloadByUID(uid)
	if w == nil {
		return fmt.Errorf("add workload %s: not in config version %q", uid, view.Version())
	}
	p := Pod{UID: uid, Name: w.GetName(), Namespace: w.GetNamespace(), ServiceAccount: w.GetServiceAccount()}
	for _, a := range w.GetAddresses() {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("add workload %s/%s: address %q: %w", p.Namespace, p.Name, a, err)
		}
		p.Addresses = append(p.Addresses, ip)
	}
	_, err := z.AddPod(p, socks)
	return err
}

// AddPod starts serving a pod whether or not the config has it yet: it binds the pod's listeners
// with socks (where Config.ListenAddr says), starts fetching the certificate of the identity made
// from its namespace and service account, and runs its proxies until RemoveWorkload or the end of
// Run. It returns the inbound listeners for the redirect.
//
// The proxies look the workload up in the config by UID on every connection: until a config that
// has it arrives, inbound connections are refused (HBONE answers 503: fail closed) and policy
// cannot be evaluated; outbound connections from the pod already carry its identity. Do not mix
// with Config.EnrollLocal, which removes workloads the config does not have.
func (z *Ztunnel) AddPod(p Pod, socks sockets.Factory) (Listeners, error) {
	name := p.Namespace + "/" + p.Name
	if p.UID == "" || p.Namespace == "" || p.ServiceAccount == "" || len(p.Addresses) == 0 {
		return Listeners{}, fmt.Errorf("add workload %s: uid, namespace, service account and an address are required", name)
	}
	id, err := z.identity(p)
	if err != nil {
		return Listeners{}, fmt.Errorf("add workload %s: %w", name, err)
	}
	uid := p.UID
	addrs := make([]string, len(p.Addresses))
	for i, a := range p.Addresses {
		addrs[i] = a.String()
	}
	// ListenAddr takes the config's form of the workload.
	w := &nodeconfig.Workload{
		Uid: uid, Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount,
		Addresses: addrs, Node: z.cfg.Node,
	}
	z.mu.Lock()
	_, dup := z.workloads[uid]
	z.mu.Unlock()
	if dup {
		return Listeners{}, fmt.Errorf("add workload %s: already enrolled", name)
	}
	if err := z.cfg.Identities.Prefetch(id); err != nil {
		return Listeners{}, fmt.Errorf("add workload %s: %w", name, err)
	}

	var lns []net.Listener
	listen := func(port uint16) (net.Listener, error) {
		addr := z.listenAddr(w, port)
		ln, err := socks.Listen(z.ctx, addr)
		if err != nil {
			return nil, fmt.Errorf("add workload %s: %w", name, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	hboneLn, err := listen(z.cfg.HBONEPort)
	if err != nil {
		closeAll()
		return Listeners{}, err
	}
	plainLn, err := listen(PlaintextPort)
	if err != nil {
		closeAll()
		return Listeners{}, err
	}
	log := z.log.With("workload", name)
	in, err := inbound.New(inbound.Config{
		UID: uid, Identity: id, SVID: z.cfg.Identities.Source(id), Bundle: z.cfg.Bundle,
		HBONE: hboneLn, Plaintext: plainLn, Store: z.cfg.Store, Dial: socks.Dial,
		OriginalDst: z.cfg.InboundOriginalDst, ProbeSources: z.cfg.ProbeSources,
		HandshakeTimeout: z.cfg.HandshakeTimeout, Telemetry: z.tel, Log: log,
	})
	if err != nil {
		closeAll()
		return Listeners{}, fmt.Errorf("add workload %s: %w", name, err)
	}
	pcfg := z.cfg.Pool
	pcfg.Dial = z.hboneDialer(socks)
	// A pooled connection is tied to the certificate it was made with: after a rotation, new
	// streams go on connections that present the new one.
	pcfg.Epoch = func(ctx context.Context, k pool.Key) (string, error) {
		svid, err := z.cfg.Identities.SVID(ctx, k.Src)
		if err != nil {
			return "", fmt.Errorf("certificate for %s: %w", k.Src, err)
		}
		return svid.Certificates[0].SerialNumber.String(), nil
	}
	pl, err := pool.New(pcfg)
	if err != nil {
		closeAll()
		return Listeners{}, fmt.Errorf("add workload %s: %w", name, err)
	}
	var out *outbound.Proxy
	if z.cfg.OriginalDst != nil {
		outLn, err := listen(OutboundPort)
		if err != nil {
			closeAll()
			pl.Close()
			return Listeners{}, err
		}
		out, err = outbound.New(outbound.Config{
			UID: uid, Identity: id, Listener: outLn, OriginalDst: z.cfg.OriginalDst,
			Store: z.cfg.Store, Pool: pl, Dial: socks.Dial, HBONEPort: z.cfg.HBONEPort,
			Telemetry: z.tel, Log: log,
		})
		if err != nil {
			closeAll()
			pl.Close()
			return Listeners{}, fmt.Errorf("add workload %s: %w", name, err)
		}
	}

	ctx, cancel := context.WithCancel(z.ctx)
	e := &enrolled{uid: uid, name: name, identity: id, addrs: addrs, in: in, pool: pl, cancel: cancel, done: make(chan struct{})}
	z.mu.Lock()
	z.workloads[uid] = e
	z.mu.Unlock()

	var wg sync.WaitGroup
	run := func(what string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil {
				log.Error(what+" stopped", "error", err)
			}
		}()
	}
	run("inbound proxy", in.Run)
	if out != nil {
		run("outbound proxy", out.Run)
	}
	z.wg.Add(1)
	go func() {
		defer z.wg.Done()
		wg.Wait()
		pl.Close()
		close(e.done)
	}()
	log.Info("workload enrolled", "identity", id.String(), "addresses", addrs)
	return Listeners{HBONE: hboneLn, Plaintext: plainLn}, nil
}

// RemoveWorkload stops serving a workload and waits until its proxies have stopped.
func (z *Ztunnel) RemoveWorkload(uid string) {
	z.mu.Lock()
	e := z.workloads[uid]
	z.removeLocked(uid)
	z.mu.Unlock()
	if e != nil {
		<-e.done
	}
}

func (z *Ztunnel) removeLocked(uid string) {
	e := z.workloads[uid]
	if e == nil {
		return
	}
	delete(z.workloads, uid)
	e.cancel()
	shared := false
	for _, o := range z.workloads {
		if o.identity == e.identity {
			shared = true
		}
	}
	if !shared {
		z.cfg.Identities.Forget(e.identity)
	}
	z.log.Info("workload removed", "workload", e.name, "uid", uid)
}

// identity is the SPIFFE ID of a pod, in the config's trust domain (Config.TrustDomain until the
// first config).
func (z *Ztunnel) identity(p Pod) (spiffeid.ID, error) {
	td := z.cfg.TrustDomain
	if v := z.cfg.Store.Load(); v != nil {
		td = v.TrustDomain()
	}
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("no trust domain: no config yet and Config.TrustDomain is unset")
	}
	id, err := spiffeid.FromSegments(td, "ns", p.Namespace, "sa", p.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}

// InPodListenAddr is Config.ListenAddr for in-pod sockets, where package redirect sends
// connections: every listener on the dual-stack wildcard. Package redirect sends outbound
// connections to <pod IP>:15001 (IPv4 or IPv6; loopback for a pod enrolled without an address of
// that family), which the wildcard covers. Connections from other pods to <pod IP>:15001 never
// reach the outbound listener: the inbound sk_lookup program hands them to the plaintext
// listener, which refuses the reserved port; only self-sourced ones (the redirected connects)
// pass through to it.
func InPodListenAddr(_ *nodeconfig.Workload, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.IPv6Unspecified(), port)
}

func (z *Ztunnel) listenAddr(w *nodeconfig.Workload, port uint16) netip.AddrPort {
	if z.cfg.ListenAddr != nil {
		return z.cfg.ListenAddr(w, port)
	}
	var ip netip.Addr
	if a := w.GetAddresses(); len(a) > 0 {
		ip, _ = netip.ParseAddr(a[0])
	}
	return netip.AddrPortFrom(ip, port)
}

// hboneDialer dials HBONE connections from a workload: TCP from its sockets, then mTLS presenting
// the pool key's source identity and requiring the destination identity.
func (z *Ztunnel) hboneDialer(socks sockets.Factory) func(ctx context.Context, k pool.Key) (*hbone.ClientConn, error) {
	return func(ctx context.Context, k pool.Key) (*hbone.ClientConn, error) {
		raw, err := socks.Dial(ctx, "tcp", k.Addr.String())
		if err != nil {
			hint := ""
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded) {
				hint = fmt.Sprintf(" (is the destination's ztunnel running, and is port %d allowed by NetworkPolicy?)", k.Addr.Port())
			}
			return nil, fmt.Errorf("dial hbone %s: %w%s", k.Addr, err, hint)
		}
		tlsConf := hbone.ClientTLSConfig(z.cfg.Identities.Source(k.Src), z.cfg.Bundle, tlsconfig.AuthorizeID(k.Dst))
		cc, err := hbone.NewClientConn(ctx, raw, tlsConf, hbone.ClientOptions{})
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("dial hbone %s as %s to %s: %w", k.Addr, k.Src, k.Dst, err)
		}
		return cc, nil
	}
}

// Enrolled describes one enrolled workload (for /config_dump and tests).
type Enrolled struct {
	UID       string   `json:"uid"`
	Name      string   `json:"name"`
	Identity  string   `json:"identity"`
	Addresses []string `json:"addresses"`
	// OpenInbound is the number of open authorized inbound connections.
	OpenInbound int `json:"openInbound"`
	// Pool is the outbound HBONE pool's state.
	Pool pool.Stats `json:"pool"`
}

// Workloads returns the enrolled workloads, sorted by name.
func (z *Ztunnel) Workloads() []Enrolled {
	z.mu.Lock()
	defer z.mu.Unlock()
	out := make([]Enrolled, 0, len(z.workloads))
	for _, e := range z.workloads {
		out = append(out, Enrolled{
			UID: e.uid, Name: e.name, Identity: e.identity.String(), Addresses: e.addrs,
			OpenInbound: e.in.Open(), Pool: e.pool.Stats(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
