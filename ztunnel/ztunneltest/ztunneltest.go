// Package ztunneltest runs an in-process mesh on loopback, in the spirit of net/http/httptest:
// one real ztunnel per simulated node, each workload's listeners bound on its own loopback
// address, and a table that stands in for the eBPF redirect's original-destination map (keyed,
// like the redirect's, by the client's address).
//
// The ztunnel's tests and the demo (test/demo) import it; production code must not.
package ztunneltest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// Mesh is a set of in-process ztunnels sharing one config store.
type Mesh struct {
	store  *state.Store
	snap   *nodeconfig.Snapshot
	signer identity.Signer
	bundle x509bundle.Source
	wrap   func(w *nodeconfig.Workload, f sockets.Factory) sockets.Factory

	outbound, inbound table

	mu      sync.Mutex
	version int
}

// Config of a Mesh.
type Config struct {
	// Snapshot is the initial config; the Mesh keeps it and Update mutates it.
	Snapshot *nodeconfig.Snapshot
	// Signer issues workload certificates; Bundle has the roots they chain to.
	Signer identity.Signer
	Bundle x509bundle.Source
	// WrapSockets, if set, wraps each workload's socket factory (to observe the wire).
	WrapSockets func(w *nodeconfig.Workload, f sockets.Factory) sockets.Factory
}

// New builds a mesh from its initial config.
func New(cfg Config) (*Mesh, error) {
	v, err := state.Build(cfg.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("ztunneltest: %w", err)
	}
	return &Mesh{store: state.NewStore(v), snap: cfg.Snapshot, signer: cfg.Signer, bundle: cfg.Bundle, wrap: cfg.WrapSockets}, nil
}

// RandomNet returns a random 127.x.y.0/24 prefix, so that parallel tests (and test binaries)
// never collide on the fixed in-pod ports.
func RandomNet() [3]byte {
	return [3]byte{127, byte(1 + rand.IntN(250)), byte(1 + rand.IntN(250))}
}

// IP returns host's address in the prefix.
func IP(p [3]byte, host byte) netip.Addr { return netip.AddrFrom4([4]byte{p[0], p[1], p[2], host}) }

// Node is one running ztunnel.
type Node struct {
	Ztunnel  *ztunnel.Ztunnel
	Registry *prometheus.Registry
	// Admin is the admin port's address.
	Admin string
	stop  context.CancelFunc
	done  chan error
}

// Stop ends the node's ztunnel and returns Run's error.
func (n *Node) Stop() error {
	n.stop()
	return <-n.done
}

// Logs are a node's log destinations; nil writers discard.
type Logs struct {
	Log, Access, Security io.Writer
}

func logger(w io.Writer) *slog.Logger {
	if w == nil {
		w = io.Discard
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

// StartNode runs a ztunnel for the named node (admin on an ephemeral loopback port) on the
// mesh's shared config and CA, and waits until it serves all of the node's meshed workloads.
func (m *Mesh) StartNode(name string, logs Logs) (*Node, error) {
	return m.StartNodeWith(name, logs, NodeDeps{})
}

// NodeDeps replace the mesh's shared config store, signer and trust bundle for one node, as a
// node fed by the real controller has them. Zero fields use the mesh's.
type NodeDeps struct {
	Store  *state.Store
	Signer identity.Signer
	Bundle x509bundle.Source
	// Ready, when set, replaces the wait for the node's workloads (for a store that is still
	// empty when the node starts).
	Ready func(*ztunnel.Ztunnel) bool
}

// StartNodeWith is StartNode with the node's own dependencies.
func (m *Mesh) StartNodeWith(name string, logs Logs, deps NodeDeps) (*Node, error) {
	store, signer, bundle := m.store, m.signer, m.bundle
	if deps.Store != nil {
		store = deps.Store
	}
	if deps.Signer != nil {
		signer = deps.Signer
	}
	if deps.Bundle != nil {
		bundle = deps.Bundle
	}
	td := m.TrustDomain()
	n := &Node{Registry: prometheus.NewRegistry(), done: make(chan error, 1)}
	ids, err := identity.New(identity.Config{Signer: signer, TrustDomain: td, Registerer: n.Registry})
	if err != nil {
		return nil, err
	}
	zt, err := ztunnel.New(ztunnel.Config{
		Node:       name,
		Store:      store,
		Identities: ids,
		Bundle:     bundle,
		Sockets: func(w *nodeconfig.Workload) (sockets.Factory, error) {
			var f sockets.Factory = sockets.Host{Source: netip.MustParseAddr(w.GetAddresses()[0])}
			if m.wrap != nil {
				f = m.wrap(w, f)
			}
			return f, nil
		},
		OriginalDst:        m.outbound.lookup,
		InboundOriginalDst: m.inbound.lookup,
		EnrollLocal:        true,
		AdminAddr:          "127.0.0.1:0",
		Registry:           n.Registry,
		Log:                logger(logs.Log),
		AccessLog:          logger(logs.Access),
		SecurityLog:        logger(logs.Security),
		HandshakeTimeout:   2 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	n.Ztunnel = zt
	n.Admin = zt.Addrs()[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	go func() { n.done <- zt.Run(ctx) }()

	ready := deps.Ready
	if ready == nil {
		want := 0
		for _, w := range store.Load().LocalWorkloads(name) {
			if w.GetTunnelProtocol() == nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE {
				want++
			}
		}
		ready = func(zt *ztunnel.Ztunnel) bool { return len(zt.Workloads()) == want }
	}
	deadline := time.Now().Add(20 * time.Second)
	for !ready(zt) {
		if time.Now().After(deadline) {
			n.Stop()
			return nil, fmt.Errorf("ztunneltest: node %s not ready in 20s (%d workloads enrolled)", name, len(zt.Workloads()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return n, nil
}

// Update applies mutate to the mesh's snapshot, bumps its version and swaps it in.
func (m *Mesh) Update(mutate func(s *nodeconfig.Snapshot)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mutate(m.snap)
	m.version++
	m.snap.Version = fmt.Sprintf("%s+%d", m.store.Load().Version(), m.version)
	v, err := state.Build(m.snap)
	if err != nil {
		return fmt.Errorf("ztunneltest: update: %w", err)
	}
	m.store.Swap(v)
	return nil
}

// DialFrom connects as the app of the workload at src would, to dst, through the workload's
// outbound listener, recording dst as the original destination first, as the redirect does.
func (m *Mesh) DialFrom(src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	return m.outbound.dial(src, dst, netip.AddrPortFrom(src, ztunnel.OutboundPort))
}

// DialPlain connects as an unmeshed client at src to dst's plaintext inbound port, recording dst
// as the original destination, as sk_lookup makes it.
func (m *Mesh) DialPlain(src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	return m.inbound.dial(src, dst, netip.AddrPortFrom(dst.Addr(), ztunnel.PlaintextPort))
}

// table maps a client's address to the destination it meant.
type table struct{ m sync.Map }

func (t *table) lookup(c net.Conn) (netip.AddrPort, error) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	v, ok := t.m.Load(src)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("no original destination for %s", src)
	}
	return v.(netip.AddrPort), nil
}

func (t *table) dial(src netip.Addr, dst, via netip.AddrPort) (*net.TCPConn, error) {
	// The client's port must be known before connecting, so the entry exists before the proxy
	// looks it up: take a free port, then bind the dial to it.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(src, 0).String())
	if err != nil {
		return nil, err
	}
	local := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	t.m.Store(local, dst)
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", via.String())
	if err != nil {
		t.m.Delete(local)
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// TrustDomain returns the mesh's trust domain.
func (m *Mesh) TrustDomain() spiffeid.TrustDomain { return m.store.Load().TrustDomain() }
