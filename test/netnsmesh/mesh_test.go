//go:build linux

package netnsmesh_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/netns"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

func TestMain(m *testing.M) { netns.Main(m) }

const td = "spiffe://cluster.local"

// logBuffer collects JSON log lines safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the decoded lines whose fields include all of match.
func (b *logBuffer) lines(match map[string]string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(b.String())))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(m[k]) != v {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a workload's socket factory that keeps the listeners it made, by port: the
// redirect's inbound capture needs the HBONE and plaintext listeners.
type recorder struct {
	sockets.Factory
	mu  sync.Mutex
	lns map[uint16]net.Listener
}

func (r *recorder) Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	ln, err := r.Factory.Listen(ctx, addr)
	if err == nil {
		r.mu.Lock()
		r.lns[addr.Port()] = ln
		r.mu.Unlock()
	}
	return ln, err
}

func (r *recorder) listener(port uint16) net.Listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lns[port]
}

// pod is a simulated pod: a netns with one address.
type pod struct {
	name string
	ns   *netns.NS
	ip   netip.Addr
}

// snapshot is the article's policy on one node: only service-a may call service-b on 8080, and
// service-b's admin port 9090 has a Server with no authorization (deny).
func snapshot(a, b *pod) *nodeconfig.Snapshot {
	wl := func(p *pod) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + p.name, Name: p.name + "-0", Namespace: "default", ServiceAccount: p.name,
			Addresses: []string{p.ip.String()}, Node: "n1", Ready: true,
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Ports: []*nodeconfig.WorkloadPort{
				{Name: "http", Port: 8080},
				{Name: "admin", Port: 9090},
			},
		}
	}
	wb := wl(b)
	wb.Servers = []string{"default/service-b", "default/service-b-admin"}
	return &nodeconfig.Snapshot{
		Version:   "v1",
		Workloads: []*nodeconfig.Workload{wl(a), wb},
		Servers: []*nodeconfig.Server{{
			Name: "service-b", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080},
			Authorizations: []*nodeconfig.Authorization{{
				Name: "service-a-to-b", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{td + "/ns/default/sa/service-a"}},
				AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"},
			}},
		}, {
			Name: "service-b-admin", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 9090},
		}},
	}
}

// TestInPodMesh runs pod A's application (a process in A's cgroup and netns) against pod B's IP:
// the redirect sends it to the ztunnel's outbound listener inside A, the ztunnel carries it over
// HBONE from A's IP to B's, where sk_lookup hands it to the ztunnel's HBONE listener inside B,
// which enforces B's policy and forwards to the application from inside B.
func TestInPodMesh(t *testing.T) {
	netns.RequireRoot(t)
	if err := redirect.Probe(); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			netns.SkipOrFail(t, "%v", err)
		}
		t.Fatalf("redirect.Probe() = %v", err)
	}

	// Two pods joined by a veth, in one /16 so they route to each other directly.
	x := byte(1 + rand.IntN(250))
	a := &pod{name: "service-a", ns: netns.New(t), ip: netip.AddrFrom4([4]byte{10, x, 1, 2})}
	b := &pod{name: "service-b", ns: netns.New(t), ip: netip.AddrFrom4([4]byte{10, x, 2, 3})}
	netns.Veth(t, a.ns, []netip.Prefix{netip.PrefixFrom(a.ip, 16)}, b.ns, []netip.Prefix{netip.PrefixFrom(b.ip, 16)})
	parent := netns.NewCgroup(t)
	cgA := parent.Child(t)

	// Pod B's applications, on all addresses.
	netns.Serve(b.ns.Listen(t, "tcp", ":8080"), func(net.Conn) string { return "hello from b" })
	netns.Serve(b.ns.Listen(t, "tcp", ":9090"), func(net.Conn) string { return "b admin" })

	r, err := redirect.New(redirect.Config{CgroupPath: parent.Path})
	if err != nil {
		t.Fatalf("redirect.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("redirect Close() = %v", err)
		}
	})

	// One ztunnel for node n1, serving both pods with in-pod sockets.
	pods := map[string]*pod{a.ip.String(): a, b.ip.String(): b}
	var mu sync.Mutex
	recs := map[string]*recorder{}
	var factories []*sockets.Netns
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range factories {
			f.Close()
		}
	})
	c := catest.New(t, "cluster.local")
	v, err := state.Build(snapshot(a, b))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ids, err := identity.New(identity.Config{Signer: c, TrustDomain: c.TrustDomain(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	logs, access, security := &logBuffer{}, &logBuffer{}, &logBuffer{}
	zt, err := ztunnel.New(ztunnel.Config{
		Node:       "n1",
		Store:      state.NewStore(v),
		Identities: ids,
		Bundle:     c.Bundle(),
		Sockets: func(w *nodeconfig.Workload) (sockets.Factory, error) {
			p := pods[w.GetAddresses()[0]]
			if p == nil {
				return nil, fmt.Errorf("no pod netns for %s", w.GetAddresses())
			}
			f := &sockets.Netns{Path: p.ns.Path, Source: p.ip, Mark: sockets.Mark}
			rec := &recorder{Factory: f, lns: map[uint16]net.Listener{}}
			mu.Lock()
			factories = append(factories, f)
			recs[p.name] = rec
			mu.Unlock()
			return rec, nil
		},
		ListenAddr:       ztunnel.InPodListenAddr, // dual-stack wildcard, outbound included
		OriginalDst:      r.OriginalDst,
		EnrollLocal:      true,
		Registry:         reg,
		Log:              slog.New(slog.NewJSONHandler(logs, nil)),
		AccessLog:        slog.New(slog.NewJSONHandler(access, nil)),
		SecurityLog:      slog.New(slog.NewJSONHandler(security, nil)),
		HandshakeTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- zt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel Run() = %v", err)
		}
		if t.Failed() {
			t.Logf("ztunnel log:\n%s\naccess log:\n%s\nsecurity log:\n%s", logs, access, security)
		}
	})
	waitFor(t, func() bool { return len(zt.Workloads()) == 2 }, "both pods enrolled")

	// Capture: A's outbound connects, and both pods' inbound connections.
	if err := r.Enroll(a.ns.Cookie(t), a.ip); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*pod{a, b} {
		mu.Lock()
		rec := recs[p.name]
		mu.Unlock()
		hb, pl := rec.listener(15008), rec.listener(ztunnel.PlaintextPort)
		if hb == nil || pl == nil {
			t.Fatalf("pod %s: no inbound listeners recorded", p.name)
		}
		in, err := r.AttachInbound(hb, pl)
		if err != nil {
			t.Fatalf("AttachInbound(%s) = %v", p.name, err)
		}
		t.Cleanup(func() { in.Close() })
	}

	dst := netip.AddrPortFrom(b.ip, 8080)
	t.Run("allowed with the client's identity", func(t *testing.T) {
		res := a.ns.Dial(t, cgA, dst, netns.DialOptions{})
		if res.Err != "" || res.Reply != "hello from b" {
			t.Fatalf("service-a -> %s = %+v; want the app's answer", dst, res)
		}
		if res.Peer != dst {
			t.Errorf("application's peer = %s, want %s (the redirect is invisible)", res.Peer, dst)
		}
		if res.Local.Addr().Unmap() != a.ip {
			t.Errorf("application's local address = %s, want pod A's IP %s (the redirect is invisible)", res.Local, a.ip)
		}
		idA := td + "/ns/default/sa/service-a"
		waitFor(t, func() bool {
			return len(access.lines(map[string]string{"direction": "outbound", "mode": "hbone", "dst.addr": dst.String()})) == 1
		}, "outbound hbone access line from service-a")
		out := access.lines(map[string]string{"direction": "outbound", "mode": "hbone", "dst.addr": dst.String()})[0]
		if got, _ := netip.ParseAddrPort(fmt.Sprint(out["src.addr"])); got != res.Local {
			t.Errorf("outbound src.addr = %v, want the application's local address %s", out["src.addr"], res.Local)
		}
		waitFor(t, func() bool {
			return len(access.lines(map[string]string{"direction": "inbound", "mode": "hbone", "src.identity": idA})) == 1
		}, "inbound hbone access line with service-a's identity")
		in := access.lines(map[string]string{"direction": "inbound", "src.identity": idA})[0]
		if got, _ := netip.ParseAddrPort(fmt.Sprint(in["src.addr"])); got.Addr().Unmap() != a.ip {
			t.Errorf("inbound src.addr = %v, want pod A's IP %s (the wire carries the pod's address)", in["src.addr"], a.ip)
		}
	})

	t.Run("server without authorization denies", func(t *testing.T) {
		admin := netip.AddrPortFrom(b.ip, 9090)
		res := a.ns.Dial(t, cgA, admin, netns.DialOptions{})
		if res.Reply != "" || strings.HasPrefix(res.Err, "connect:") {
			t.Fatalf("service-a -> %s = %+v; want an accepted connection closed without data", admin, res)
		}
		waitFor(t, func() bool {
			return len(security.lines(map[string]string{"event": "deny", "src.identity": td + "/ns/default/sa/service-a", "dst.port": "9090"})) == 1
		}, "deny event for service-a on 9090")
	})

	t.Run("plaintext client outside the mesh is denied", func(t *testing.T) {
		// A process of pod A's netns outside its cgroup is not redirected: it reaches B in
		// plaintext, sk_lookup hands it to B's plaintext listener, and B's Server requires mTLS.
		res := a.ns.Dial(t, nil, dst, netns.DialOptions{})
		if res.Reply != "" || strings.HasPrefix(res.Err, "connect:") || res.Local.Addr() != a.ip {
			t.Fatalf("unmeshed -> %s = %+v; want a direct connection from %s closed without data", dst, res, a.ip)
		}
		waitFor(t, func() bool {
			return len(security.lines(map[string]string{"event": "deny", "src.identity": "", "dst.port": "8080", "server": "default/service-b"})) == 1
		}, "deny event for the unauthenticated client on 8080")
	})
}
