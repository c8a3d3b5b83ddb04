//go:build linux

package svcproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/ztunnel/relay"
)

// listener accepts on one ClusterIP:port and forwards to its target's endpoints.
type listener struct {
	addr   netip.AddrPort
	ln     net.Listener
	target atomic.Pointer[target]
	// next is the round-robin position.
	next atomic.Uint64
}

func (l *listener) close() { l.ln.Close() }

// listen opens addr inside the node netns and serves it.
func (p *Proxy) listen(addr netip.AddrPort, t target) (*listener, error) {
	ln, err := p.listenTCP(addr)
	if err != nil {
		return nil, err
	}
	l := &listener{addr: addr, ln: ln}
	l.target.Store(&t)
	p.wg.Go(func() { p.serve(l) })
	return l, nil
}

// listenTCP opens a TCP listener on addr inside the node netns (MPTCP off, so accepted
// connections are plain TCP and the relay can splice).
func (p *Proxy) listenTCP(addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := redirect.InNetns(p.cfg.NodeNetns, func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("svcproxy: listen on %s in %s: %w", addr, p.cfg.NodeNetns, err)
	}
	return ln, nil
}

// serve accepts until the listener is closed.
func (p *Proxy) serve(l *listener) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("service listener failed", "addr", l.addr, "err", err)
			}
			return
		}
		if !p.conns.add(c) {
			return
		}
		p.wg.Go(func() {
			defer p.conns.remove(c)
			p.forward(l, c)
		})
	}
}

// forward carries the client connection c to one of the listener's ready endpoints.
func (p *Proxy) forward(l *listener, c net.Conn) {
	t := *l.target.Load()
	eps := p.snap.Load().endpointsFor(t)
	if len(eps) == 0 {
		p.log.Debug("no ready endpoint; connection reset", "service", t.svc, "port", t.port, "client", c.RemoteAddr())
		reset(c)
		return
	}
	start := l.next.Add(1) - 1
	var up net.Conn
	for i := range min(len(eps), maxDialAttempts) {
		ep := eps[(start+uint64(i))%uint64(len(eps))]
		var err error
		if up, err = p.dial(ep); err == nil {
			break
		}
		p.log.Warn("endpoint dial failed", "service", t.svc, "port", t.port, "endpoint", ep, "err", err)
	}
	if up == nil {
		reset(c)
		return
	}
	if !p.conns.add(up) {
		c.Close()
		return
	}
	defer p.conns.remove(up)
	p.log.Debug("connection forwarded", "service", t.svc, "port", t.port, "client", c.RemoteAddr(), "endpoint", up.RemoteAddr())
	// Relay closes both connections; its error (a reset on either side) is the client's business.
	_, _, _ = relay.Relay(c, up)
}

// dial connects to ep from the node netns.
func (p *Proxy) dial(ep netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: p.cfg.DialTimeout}
	d.SetMultipathTCP(false)
	var c net.Conn
	err := redirect.InNetns(p.cfg.NodeNetns, func() (err error) {
		c, err = d.Dial("tcp", ep.String())
		return err
	})
	return c, err
}

// reset closes c with an RST, so the client fails at once instead of reading an EOF later.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
