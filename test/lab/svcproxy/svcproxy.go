//go:build linux

// Package svcproxy is the lab's Service networking for one simulated node: a userspace service
// proxy (kube-proxy's old "userspace" mode, with no iptables: the ClusterIPs are real local
// addresses of the node) and the cluster DNS server, both inside the node's network namespace.
//
// A [Proxy] watches Services and EndpointSlices (discovery.k8s.io/v1) with informers. For every
// ClusterIP of a Service it adds <ClusterIP>/32 (/128 for IPv6) to the node netns's lo (with the ip
// command run through nsenter: the lab's kernels have no dummy driver and the module graph has no
// netlink library) and, for every TCP port, listens on ClusterIP:port inside the node netns. Each
// accepted connection goes to a ready endpoint picked round robin: the target port is the port of
// the EndpointSlice port named like the Service port (so named targetPorts resolve per pod), and
// endpoints that are not ready or are terminating are skipped. With no ready endpoint the client
// connection is reset at once. Endpoints are dialed from the node netns, where pod IPs are routed
// (and where the lab routes the API server's advertised address: the API server refuses loopback
// addresses in EndpointSlices, so a host-loopback API server cannot be a Service endpoint). If a
// dial fails the next endpoint is tried (at most three). Established connections keep their
// endpoint when the endpoints change; new ones follow.
//
// Run ends by closing every listener and connection and removing every address it added; an
// address that was already on lo when a Service needed it (left by a run that crashed) is taken
// over and removed too.
//
// Pods reach the ClusterIPs because their default route leads into the node netns (the pod
// bridge's gateway), where the addresses are local; hostNetwork pods live in the node netns
// itself.
//
// The cluster DNS server answers on [Config.ClusterDNS]:53, UDP and TCP, inside the node netns,
// authoritatively for [Config.ClusterDomain]: A and AAAA for <service>.<namespace>.svc.<domain>
// give the Service's ClusterIPs of that family (a headless Service's ready endpoint addresses);
// the other family and other types get an empty answer (NODATA); unknown names in the domain get
// NXDOMAIN; names outside it get REFUSED at once (the lab has no upstream resolver). Records live
// 5 seconds. A Service port on ClusterDNS:53 is not proxied: the DNS server holds it.
//
// Left out: UDP and SCTP Service ports (only the DNS server speaks UDP), NodePort, LoadBalancer
// and externalIPs, session affinity, traffic policies and topology hints, ExternalName Services
// (NXDOMAIN), SRV and PTR records, per-pod records of headless Services (<hostname>.<svc>...),
// EDNS0 (UDP answers are capped at 512 bytes and set TC beyond, so resolvers retry over TCP).
//
// The Kubernetes client needs list and watch on services and on
// endpointslices.discovery.k8s.io in all namespaces. The process needs CAP_SYS_ADMIN and
// CAP_NET_ADMIN (setns, addresses) and the ip and nsenter commands.
//
// Only the lab (test/lab) and its tests import this package.
package svcproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/warren-mesh/warren/redirect"
)

// Config of a node's service proxy and DNS server.
type Config struct {
	// Client watches Services and EndpointSlices.
	Client kubernetes.Interface
	// NodeNetns is the path of the node's network namespace (/run/netns/<name>).
	NodeNetns string
	// ClusterDNS is the address the DNS server answers on (10.0.0.10 in the lab).
	ClusterDNS netip.Addr
	// ClusterDomain is the cluster's DNS domain (cluster.local).
	ClusterDomain string
	// DialTimeout bounds each connection attempt to an endpoint; zero means 5s.
	DialTimeout time.Duration
	// Log receives the proxy's events.
	Log *slog.Logger
}

const (
	// maxDialAttempts is how many endpoints a connection tries before it is given up.
	maxDialAttempts = 3
	// retryInterval is how soon a reconcile that failed (an address, a listener) is retried; it
	// doubles while the failures go on, up to maxRetryInterval.
	retryInterval    = time.Second
	maxRetryInterval = 30 * time.Second
)

// Proxy is one node's service proxy and DNS server. Create it with [New] and start it with
// [Proxy.Run], once.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	dns     *resolver
	snap    atomic.Pointer[snapshot]
	conns   tracker
	wg      sync.WaitGroup
	started atomic.Bool
	// dnsClosers are the DNS server's sockets.
	dnsClosers []io.Closer

	// Owned by Run's goroutine.
	addrs     map[netip.Addr]bool
	listeners map[netip.AddrPort]*listener
}

// New checks cfg and returns a proxy that has not touched the node yet.
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("svcproxy: config: Client is nil")
	case cfg.Log == nil:
		return nil, errors.New("svcproxy: config: Log is nil")
	case cfg.NodeNetns == "":
		return nil, errors.New("svcproxy: config: NodeNetns is empty (want the node's netns path, /run/netns/<name>)")
	case !cfg.ClusterDNS.IsValid():
		return nil, errors.New("svcproxy: config: ClusterDNS is not set (want the cluster DNS address, 10.0.0.10 in the lab)")
	case cfg.ClusterDNS.Zone() != "" || cfg.ClusterDNS.Is4In6() || cfg.ClusterDNS.IsUnspecified() || cfg.ClusterDNS.IsLoopback() || cfg.ClusterDNS.IsMulticast():
		return nil, fmt.Errorf("svcproxy: config: ClusterDNS %s is not a unicast address a node can hold", cfg.ClusterDNS)
	case cfg.DialTimeout < 0:
		return nil, fmt.Errorf("svcproxy: config: DialTimeout %v is negative", cfg.DialTimeout)
	}
	domain, err := canonicalDomain(cfg.ClusterDomain)
	if err != nil {
		return nil, fmt.Errorf("svcproxy: config: ClusterDomain: %w", err)
	}
	st, err := os.Stat(cfg.NodeNetns)
	if err != nil {
		return nil, fmt.Errorf("svcproxy: config: node netns: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("svcproxy: config: node netns %s is a directory, not a network namespace file", cfg.NodeNetns)
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("svcproxy: the %s command is needed to add addresses in the node netns: %w", tool, err)
		}
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Log.With("netns", cfg.NodeNetns),
		dns:       &resolver{domain: domain},
		addrs:     map[netip.Addr]bool{},
		listeners: map[netip.AddrPort]*listener{},
	}
	p.snap.Store(&snapshot{})
	return p, nil
}

// Run watches the API server and serves until ctx ends, then closes every listener and open
// connection and removes the addresses it added. It fails when the DNS server cannot start
// (the address or port is taken); other failures (a Service listener) are logged and retried.
func (p *Proxy) Run(ctx context.Context) (err error) {
	if p.started.Swap(true) {
		return errors.New("svcproxy: Run called twice")
	}
	defer func() { err = errors.Join(err, p.shutdown()) }()

	kick := make(chan struct{}, 1)
	notify := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	factory := informers.NewSharedInformerFactory(p.cfg.Client, 0)
	defer factory.Shutdown()
	// The informers stop with this context: cancel it (before Shutdown waits for them) when Run
	// returns early with an error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svcs := factory.Core().V1().Services()
	slices := factory.Discovery().V1().EndpointSlices()
	for name, inf := range map[string]cache.SharedIndexInformer{"services": svcs.Informer(), "endpointslices": slices.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("svcproxy: watch %s: %w", name, err)
		}
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			p.log.Warn("service proxy stopped before its informers synced", "type", typ.String())
			return nil
		}
	}

	// The DNS server needs its address; it starts before the first reconcile so that it holds
	// ClusterDNS:53 whatever the Services say.
	if err := p.ensureAddr(p.cfg.ClusterDNS); err != nil {
		return err
	}
	if err := p.startDNS(); err != nil {
		return err
	}

	// reported holds the problems already logged, so each is logged once while it lasts.
	reported := map[string]bool{}
	sync := func() error {
		s, err := svcs.Lister().List(labels.Everything())
		if err != nil {
			return fmt.Errorf("svcproxy: list services from cache: %w", err)
		}
		es, err := slices.Lister().List(labels.Everything())
		if err != nil {
			return fmt.Errorf("svcproxy: list endpointslices from cache: %w", err)
		}
		snap, problems := buildSnapshot(s, es)
		now := map[string]bool{}
		for _, pr := range problems {
			if now[pr] = true; !reported[pr] {
				p.log.Warn("service skipped in part", "problem", pr)
			}
		}
		reported = now
		p.snap.Store(snap)
		return p.reconcile(snap)
	}
	var retry <-chan time.Time
	backoff := retryInterval
	for {
		retry = nil
		if err := sync(); err != nil {
			p.log.Error("service proxy reconcile failed; retrying", "err", err, "in", backoff)
			retry = time.After(backoff)
			backoff = min(2*backoff, maxRetryInterval)
		} else {
			backoff = retryInterval
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-retry:
		}
	}
}

// reconcile makes the node's addresses and listeners match snap.
func (p *Proxy) reconcile(snap *snapshot) error {
	wantListeners := map[netip.AddrPort]target{}
	wantAddrs := map[netip.Addr]bool{p.cfg.ClusterDNS: true}
	for _, svc := range snap.services {
		for _, ip := range svc.clusterIPs {
			wantAddrs[ip] = true
			for _, sp := range svc.ports {
				key := netip.AddrPortFrom(ip, sp.port)
				if ip == p.cfg.ClusterDNS && sp.port == 53 {
					continue // the DNS server's
				}
				wantListeners[key] = target{svc: svc.name, port: sp.name}
			}
		}
	}

	var errs []error
	failedAddrs := map[netip.Addr]bool{}
	for ip := range wantAddrs {
		if err := p.ensureAddr(ip); err != nil {
			errs = append(errs, err)
			failedAddrs[ip] = true
		}
	}
	for key, l := range p.listeners {
		if _, ok := wantListeners[key]; !ok {
			l.close()
			delete(p.listeners, key)
			p.log.Info("service listener closed", "addr", key)
		}
	}
	for key, t := range wantListeners {
		if l, ok := p.listeners[key]; ok {
			if *l.target.Load() != t {
				l.target.Store(&t)
				p.log.Info("service listener retargeted", "addr", key, "service", t.svc, "port", t.port)
			}
			continue
		}
		if failedAddrs[key.Addr()] {
			continue
		}
		l, err := p.listen(key, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.listeners[key] = l
		p.log.Info("service listener opened", "addr", key, "service", t.svc, "port", t.port)
	}
	for ip := range p.addrs {
		if !wantAddrs[ip] {
			if err := p.removeAddr(ip); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// shutdown closes the listeners and connections, waits for their goroutines and removes the
// addresses.
func (p *Proxy) shutdown() error {
	for key, l := range p.listeners {
		l.close()
		delete(p.listeners, key)
	}
	for _, c := range p.dnsClosers {
		c.Close()
	}
	p.conns.closeAll()
	p.wg.Wait()
	var errs []error
	for ip := range p.addrs {
		if err := p.removeAddr(ip); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureAddr adds ip to the node netns's lo unless this proxy already did. An address already
// there (left by an earlier run that did not clean up) is taken over: it is removed at the end.
func (p *Proxy) ensureAddr(ip netip.Addr) error {
	if p.addrs[ip] {
		return nil
	}
	// replace is add that succeeds when the address exists.
	if out, err := p.ip("addr", "replace", netip.PrefixFrom(ip, ip.BitLen()).String(), "dev", "lo"); err != nil {
		return fmt.Errorf("svcproxy: add %s to lo in %s: %w: %s", ip, p.cfg.NodeNetns, err, strings.TrimSpace(out))
	}
	p.addrs[ip] = true
	p.log.Debug("address added", "addr", ip)
	return nil
}

// removeAddr removes ip from the node netns's lo, if it is there.
func (p *Proxy) removeAddr(ip netip.Addr) error {
	present, err := p.hasAddr(ip)
	if err != nil {
		return err
	}
	if present {
		if out, err := p.ip("addr", "del", netip.PrefixFrom(ip, ip.BitLen()).String(), "dev", "lo"); err != nil {
			return fmt.Errorf("svcproxy: remove %s from lo in %s: %w: %s", ip, p.cfg.NodeNetns, err, strings.TrimSpace(out))
		}
	}
	delete(p.addrs, ip)
	p.log.Debug("address removed", "addr", ip)
	return nil
}

// hasAddr reports whether ip is on the node netns's lo.
func (p *Proxy) hasAddr(ip netip.Addr) (bool, error) {
	var found bool
	err := redirect.InNetns(p.cfg.NodeNetns, func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		as, err := lo.Addrs()
		if err != nil {
			return err
		}
		for _, a := range as {
			if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr() == ip {
				found = true
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("svcproxy: addresses of lo in %s: %w", p.cfg.NodeNetns, err)
	}
	return found, nil
}

// ip runs the ip command inside the node netns.
func (p *Proxy) ip(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + p.cfg.NodeNetns, "--", "ip"}, args...)...).CombinedOutput()
	return string(out), err
}

// tracker holds the open connections so that shutdown can close them.
type tracker struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// add records c; it returns false (and closes c) after closeAll.
func (t *tracker) add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return false
	}
	if t.conns == nil {
		t.conns = map[net.Conn]struct{}{}
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tracker) remove(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
}

func (t *tracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.conns = nil
}
