//go:build linux

package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/nodeagent/protocol"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// Proxy is the ztunnel side of an enrollment (*ztunnel.Ztunnel).
type Proxy interface {
	AddPod(p ztunnel.Pod, socks sockets.Factory) (ztunnel.Listeners, error)
	RemoveWorkload(uid string)
}

// Capture is the redirect side of an enrollment (*redirect.Redirector).
type Capture interface {
	Enroll(netnsCookie uint64, podIPs ...netip.Addr) error
	Unenroll(netnsCookie uint64) error
	AttachInbound(hbone, plaintext net.Listener) (*redirect.Inbound, error)
}

// Config of an [Agent].
type Config struct {
	// Socket is the unix socket path; default protocol.DefaultSocket. A stale socket file is
	// replaced; a live one (another agent) is an error.
	Socket string
	// Node is this node's name (which workloads of the config are local).
	Node string
	// Ztunnel and Redirect are what enrollment drives. Required.
	Ztunnel  Proxy
	Redirect Capture
	// Store, when set, is reconciled against on start and on every change (see the package doc).
	Store *state.Store
	// StateDir holds warren-cni's pod records; default protocol.DefaultStateDir.
	StateDir string
	// NetnsFor finds a running pod's network namespace; default: its record in StateDir.
	NetnsFor func(uid string) (path string, ok bool)
	// Sockets makes a pod's socket factory; default a *sockets.Netns with SO_MARK 0x539.
	// A factory that implements io.Closer is closed when the pod leaves.
	Sockets func(netns string, source netip.Addr) sockets.Factory
	// NetnsCookie returns the cookie of a netns; default redirect.NetnsCookie.
	NetnsCookie func(path string) (uint64, error)
	// RequestTimeout bounds one connection; default 30s.
	RequestTimeout time.Duration
	// Log is required.
	Log *slog.Logger
}

// Agent is the node agent. Construct with New, then Run.
type Agent struct {
	cfg Config
	log *slog.Logger
	ln  *net.UnixListener

	mu      sync.Mutex // serializes enrollments
	pods    map[string]*enrollment
	unknown map[string]bool // HBONE workloads whose netns was not found (logged once)
}

type enrollment struct {
	pod     protocol.Pod
	cookie  uint64
	socks   sockets.Factory
	inbound *redirect.Inbound
	// inConfig: the config has had the pod as an HBONE workload, so its disappearing from the
	// config later means it left the mesh (the controller omits non-member pods).
	inConfig bool
}

// New checks cfg and binds the socket (mode 0600).
func New(cfg Config) (*Agent, error) {
	if cfg.Ztunnel == nil || cfg.Redirect == nil || cfg.Log == nil {
		return nil, errors.New("node agent: ztunnel, redirect and log are required")
	}
	if cfg.Socket == "" {
		cfg.Socket = protocol.DefaultSocket
	}
	if cfg.StateDir == "" {
		cfg.StateDir = protocol.DefaultStateDir
	}
	if cfg.NetnsFor == nil {
		dir := cfg.StateDir
		cfg.NetnsFor = func(uid string) (string, bool) {
			rec, err := protocol.ReadRecord(dir, uid)
			if err != nil || rec.Netns == "" {
				return "", false
			}
			if _, err := os.Stat(rec.Netns); err != nil {
				return "", false
			}
			return rec.Netns, true
		}
	}
	if cfg.Sockets == nil {
		cfg.Sockets = func(netns string, src netip.Addr) sockets.Factory {
			return &sockets.Netns{Path: netns, Source: src, Mark: sockets.Mark}
		}
	}
	if cfg.NetnsCookie == nil {
		cfg.NetnsCookie = redirect.NetnsCookie
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	ln, err := listen(cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}
	return &Agent{
		cfg: cfg, log: cfg.Log.With("component", "nodeagent"), ln: ln,
		pods: make(map[string]*enrollment), unknown: make(map[string]bool),
	}, nil
}

func listen(path string) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another node agent is listening", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// Addr is the socket path.
func (a *Agent) Addr() string { return a.cfg.Socket }

// Run serves requests (and reconciles, with Config.Store) until ctx ends, then closes the socket
// (removing the file), waits for requests in flight and removes its pods from the ztunnel (they
// stay captured: fail closed).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if a.cfg.Store != nil {
		kick := make(chan struct{}, 1)
		unsub := a.cfg.Store.Subscribe(func(_, _ *state.View) {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		defer unsub()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				a.Reconcile(a.cfg.Store.Load())
				select {
				case <-ctx.Done():
					return
				case <-kick:
				}
			}
		}()
	}
	stop := context.AfterFunc(ctx, func() { a.ln.Close() })
	defer stop()
	a.log.Info("node agent listening", "socket", a.cfg.Socket)
	var err error
	for {
		c, aerr := a.ln.AcceptUnix()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("node agent: accept: %w", aerr)
				a.ln.Close()
			}
			cancel()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serve(c)
		}()
	}
	wg.Wait()
	a.mu.Lock()
	for uid, e := range a.pods {
		a.cfg.Ztunnel.RemoveWorkload(uid)
		closeFactory(e.socks)
		delete(a.pods, uid)
	}
	a.mu.Unlock()
	a.log.Info("node agent stopped")
	return err
}

func (a *Agent) serve(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(a.cfg.RequestTimeout))
	resp := a.handle(c)
	if err := protocol.Write(c, resp); err != nil {
		a.log.Warn("write answer", "error", err)
	}
}

func (a *Agent) handle(r io.Reader) protocol.Response {
	req, err := protocol.ReadRequest(r)
	if err != nil {
		a.log.Warn("bad request", "error", err)
		return protocol.Response{Error: "bad request: " + err.Error()}
	}
	switch req.Op {
	case protocol.OpAdd:
		err = a.Add(*req)
	case protocol.OpDel:
		err = a.Del(req.PodUID)
	case protocol.OpCheck:
		pods := a.List()
		for _, p := range pods {
			if p.UID == req.PodUID {
				return protocol.Response{OK: true, Pods: []protocol.Pod{p}}
			}
		}
		err = fmt.Errorf("pod %s is not enrolled", req.PodUID)
	case protocol.OpList:
		return protocol.Response{OK: true, Pods: a.List()}
	}
	if err != nil {
		return protocol.Response{Error: err.Error()}
	}
	return protocol.Response{OK: true}
}

// List returns the enrolled pods, sorted by namespace/name.
func (a *Agent) List() []protocol.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]protocol.Pod, 0, len(a.pods))
	for _, e := range a.pods {
		out = append(out, e.pod)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}

// Add enrolls a pod (an add request).
func (a *Agent) Add(req protocol.Request) error {
	req.Op = protocol.OpAdd
	if err := req.Validate(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.waypointProxy(req.PodUID) {
		a.log.Info("pod is a waypoint, which speaks HBONE itself; not enrolled", "pod", req.PodNamespace+"/"+req.PodName, "uid", req.PodUID)
		return nil
	}
	return a.addLocked(req, "cni")
}

// waypointProxy reports whether the node config says the pod is a waypoint's own (never
// captured).
func (a *Agent) waypointProxy(uid string) bool {
	if a.cfg.Store == nil {
		return false
	}
	v := a.cfg.Store.Load()
	return v != nil && v.WorkloadByUID(uid).GetWaypointProxy()
}

// enrollable reports whether a workload of the config is one the node agent captures: an HBONE
// workload that is not a waypoint's own pod.
func enrollable(w *nodeconfig.Workload) bool {
	return w.GetTunnelProtocol() == nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE && !w.GetWaypointProxy()
}

func (a *Agent) addLocked(req protocol.Request, via string) error {
	name := req.PodNamespace + "/" + req.PodName
	if e := a.pods[req.PodUID]; e != nil {
		if e.pod.Netns == req.Netns {
			return nil
		}
		a.log.Info("pod has a new network namespace; re-enrolling", "pod", name, "uid", req.PodUID, "old", e.pod.Netns, "new", req.Netns)
		a.removeLocked(req.PodUID, "new netns")
	}
	p := ztunnel.Pod{UID: req.PodUID, Name: req.PodName, Namespace: req.PodNamespace, ServiceAccount: req.ServiceAccount}
	for _, s := range req.Addresses {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("enroll %s: address %q: %w", name, s, err)
		}
		p.Addresses = append(p.Addresses, ip.Unmap())
	}
	if p.ServiceAccount == "" {
		var w *nodeconfig.Workload
		if a.cfg.Store != nil {
			if v := a.cfg.Store.Load(); v != nil {
				w = v.WorkloadByUID(p.UID)
			}
		}
		if w == nil || w.GetServiceAccount() == "" {
			return fmt.Errorf("enroll %s: no service account given and the node config does not have the pod yet (configure warren-cni with a kubeconfig)", name)
		}
		p.ServiceAccount = w.GetServiceAccount()
	}
	src := p.Addresses[0]
	for _, ip := range p.Addresses {
		if ip.Is4() {
			src = ip
			break
		}
	}

	socks := a.cfg.Sockets(req.Netns, src)
	lns, err := a.cfg.Ztunnel.AddPod(p, socks)
	if err != nil {
		closeFactory(socks)
		return fmt.Errorf("enroll %s: %w", name, err)
	}
	undo := func() {
		a.cfg.Ztunnel.RemoveWorkload(p.UID)
		closeFactory(socks)
	}
	cookie, err := a.cfg.NetnsCookie(req.Netns)
	if err != nil {
		undo()
		return fmt.Errorf("enroll %s: %w", name, err)
	}
	in, err := a.cfg.Redirect.AttachInbound(lns.HBONE, lns.Plaintext)
	if err != nil {
		undo()
		return fmt.Errorf("enroll %s: %w", name, err)
	}
	if err := a.cfg.Redirect.Enroll(cookie, p.Addresses...); err != nil {
		closeInbound(in)
		undo()
		return fmt.Errorf("enroll %s: %w", name, err)
	}
	pod := protocol.Pod{
		UID: p.UID, Name: p.Name, Namespace: p.Namespace,
		Identity: "ns/" + p.Namespace + "/sa/" + p.ServiceAccount, Netns: req.Netns, Addresses: req.Addresses,
	}
	a.pods[p.UID] = &enrollment{pod: pod, cookie: cookie, socks: socks, inbound: in}
	delete(a.unknown, p.UID)
	a.log.Info("pod enrolled", "pod", name, "uid", p.UID, "netns", req.Netns, "addresses", req.Addresses, "via", via)
	return nil
}

// Del un-enrolls a pod (a del request); a pod that is not enrolled is not an error.
func (a *Agent) Del(uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.removeLocked(uid, "cni del")
}

func (a *Agent) removeLocked(uid, why string) error {
	e := a.pods[uid]
	if e == nil {
		return nil
	}
	delete(a.pods, uid)
	// Outbound first, so new connects go direct rather than to a closing listener.
	err := a.cfg.Redirect.Unenroll(e.cookie)
	if cerr := closeInbound(e.inbound); cerr != nil {
		err = errors.Join(err, cerr)
	}
	a.cfg.Ztunnel.RemoveWorkload(uid)
	closeFactory(e.socks)
	a.log.Info("pod un-enrolled", "pod", e.pod.Namespace+"/"+e.pod.Name, "uid", uid, "why", why)
	if err != nil {
		return fmt.Errorf("un-enroll %s/%s: %w", e.pod.Namespace, e.pod.Name, err)
	}
	return nil
}

// Reconcile enrolls the node's HBONE workloads whose netns can be found and un-enrolls pods the
// config now has with another tunnel protocol (see the package doc). Run calls it on every
// config change when Config.Store is set.
func (a *Agent) Reconcile(v *state.View) {
	if v == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for uid, e := range a.pods {
		w := v.WorkloadByUID(uid)
		gone := w == nil && e.inConfig // the controller leaves non-member pods out
		if gone || w != nil && !enrollable(w) {
			if err := a.removeLocked(uid, "not in the mesh any more"); err != nil {
				a.log.Error("un-enroll pod", "uid", uid, "error", err)
			}
		}
	}
	for _, w := range v.LocalWorkloads(a.cfg.Node) {
		uid := w.GetUid()
		if !enrollable(w) || a.pods[uid] != nil {
			continue
		}
		name := w.GetNamespace() + "/" + w.GetName()
		path, ok := a.cfg.NetnsFor(uid)
		if !ok {
			if !a.unknown[uid] {
				a.unknown[uid] = true
				a.log.Warn("meshed pod not enrolled: its network namespace is unknown (started before warren-cni was installed? restart it)", "pod", name, "uid", uid)
			}
			continue
		}
		req := protocol.Request{
			Op: protocol.OpAdd, PodUID: uid, PodName: w.GetName(), PodNamespace: w.GetNamespace(),
			ServiceAccount: w.GetServiceAccount(), Netns: path, Addresses: w.GetAddresses(),
		}
		if err := req.Validate(); err != nil {
			a.log.Error("enroll running pod", "pod", name, "uid", uid, "error", err)
			continue
		}
		if err := a.addLocked(req, "config"); err != nil {
			a.log.Error("enroll running pod", "pod", name, "uid", uid, "error", err)
		}
	}
	for uid := range a.unknown {
		if w := v.WorkloadByUID(uid); w == nil || !enrollable(w) {
			delete(a.unknown, uid)
		}
	}
	for uid, e := range a.pods {
		if w := v.WorkloadByUID(uid); w != nil && enrollable(w) {
			e.inConfig = true
		}
	}
}

func closeFactory(f sockets.Factory) {
	if c, ok := f.(io.Closer); ok {
		c.Close()
	}
}

func closeInbound(in *redirect.Inbound) error {
	if in == nil {
		return nil
	}
	return in.Close()
}
