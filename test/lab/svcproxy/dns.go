//go:build linux

package svcproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"k8s.io/apimachinery/pkg/types"

	"github.com/warren-mesh/warren/redirect"
)

const (
	// dnsTTL is the lifetime of every record, as CoreDNS's kubernetes plugin gives by default.
	dnsTTL = 5
	// maxUDPSize is the largest UDP answer (no EDNS0); longer ones are truncated (TC set).
	maxUDPSize = 512
	// tcpIdle closes a DNS-over-TCP connection that sends no query for this long.
	tcpIdle = 10 * time.Second
)

// resolver answers DNS queries for the cluster domain from a snapshot.
type resolver struct {
	// domain is the cluster domain, lower case, fully qualified ("cluster.local.").
	domain string
}

// canonicalDomain checks a cluster domain and returns it lower case with a final dot.
func canonicalDomain(d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if d == "" {
		return "", errors.New("empty (want the cluster's DNS domain, cluster.local)")
	}
	if len(d) > 253 {
		return "", fmt.Errorf("%q is longer than 253 characters", d)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("%q: empty or over-long label", d)
		}
		for i, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(label)-1
			if !ok {
				return "", fmt.Errorf("%q: label %q is not a DNS label", d, label)
			}
		}
	}
	return d + ".", nil
}

// answer returns the response to the DNS message req, or nil when req cannot be answered at all
// (no header, or a response). udp caps the answer at maxUDPSize.
func (r *resolver) answer(snap *snapshot, req []byte, udp bool) []byte {
	var parser dnsmessage.Parser
	h, err := parser.Start(req)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired}
	if h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeNotImplemented
		return build(resp, nil, nil)
	}
	q, err := parser.Question()
	if err != nil {
		resp.RCode = dnsmessage.RCodeFormatError
		return build(resp, nil, nil)
	}
	rcode, ips := r.lookup(snap, q)
	resp.RCode = rcode
	// Authoritative for the cluster domain: a stub resolver takes an empty, non-authoritative
	// answer for a lame referral.
	resp.Authoritative = rcode != dnsmessage.RCodeRefused
	out := build(resp, &q, ips)
	limit := 65535 // TCP's length prefix
	if udp {
		limit = maxUDPSize
	}
	if len(out) > limit {
		resp.Truncated = true
		out = build(resp, &q, nil)
	}
	return out
}

// lookup resolves q against snap: the response code and the addresses to answer with (all of
// q's type).
func (r *resolver) lookup(snap *snapshot, q dnsmessage.Question) (dnsmessage.RCode, []netip.Addr) {
	name := strings.ToLower(q.Name.String())
	var rest string
	switch {
	case name == r.domain:
	case strings.HasSuffix(name, "."+r.domain):
		rest = strings.TrimSuffix(name, "."+r.domain)
	default:
		return dnsmessage.RCodeRefused, nil // no upstream: fail at once
	}
	if q.Class != dnsmessage.ClassINET && q.Class != dnsmessage.ClassANY {
		return dnsmessage.RCodeRefused, nil
	}
	var labels []string
	if rest != "" {
		labels = strings.Split(rest, ".")
	}
	switch {
	case len(labels) == 0, len(labels) == 1 && labels[0] == "svc":
		return dnsmessage.RCodeSuccess, nil // the zone and svc.<domain> exist, without records
	case len(labels) == 2 && labels[1] == "svc":
		if snap.namespaces[labels[0]] {
			return dnsmessage.RCodeSuccess, nil
		}
		return dnsmessage.RCodeNameError, nil
	case len(labels) == 3 && labels[2] == "svc":
	default:
		return dnsmessage.RCodeNameError, nil
	}
	svc := snap.services[types.NamespacedName{Namespace: labels[1], Name: labels[0]}]
	if svc == nil || svc.externalName {
		return dnsmessage.RCodeNameError, nil
	}
	var want func(netip.Addr) bool
	switch q.Type {
	case dnsmessage.TypeA:
		want = netip.Addr.Is4
	case dnsmessage.TypeAAAA:
		want = netip.Addr.Is6
	default:
		return dnsmessage.RCodeSuccess, nil
	}
	all := svc.clusterIPs
	if svc.headless {
		all = svc.readyIPs
	}
	var ips []netip.Addr
	for _, ip := range all {
		if want(ip) {
			ips = append(ips, ip)
		}
	}
	return dnsmessage.RCodeSuccess, ips
}

// build encodes a response with question q (if any) and an A or AAAA record per address.
func build(h dnsmessage.Header, q *dnsmessage.Question, ips []netip.Addr) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
	b.EnableCompression()
	// The builder only fails on misuse (sections out of order) or on names it cannot encode, and
	// q.Name came from a parsed message; a failure still yields a bare answer below.
	err := func() error {
		if q == nil {
			return nil
		}
		if err := b.StartQuestions(); err != nil {
			return err
		}
		if err := b.Question(*q); err != nil {
			return err
		}
		if err := b.StartAnswers(); err != nil {
			return err
		}
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: dnsTTL}
		for _, ip := range ips {
			var err error
			if ip.Is4() {
				err = b.AResource(rh, dnsmessage.AResource{A: ip.As4()})
			} else {
				err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: ip.As16()})
			}
			if err != nil {
				return err
			}
		}
		return nil
	}()
	msg, ferr := b.Finish()
	if err != nil || ferr != nil {
		h.RCode = dnsmessage.RCodeServerFailure
		h.Truncated = false
		bare := dnsmessage.NewBuilder(nil, h)
		msg, _ = bare.Finish()
	}
	return msg
}

// startDNS listens on ClusterDNS:53 (UDP and TCP) inside the node netns and serves.
func (p *Proxy) startDNS() error {
	addr := netip.AddrPortFrom(p.cfg.ClusterDNS, 53)
	var pc net.PacketConn
	err := redirect.InNetns(p.cfg.NodeNetns, func() (err error) {
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("svcproxy: dns: listen udp %s in %s (is another DNS server there?): %w", addr, p.cfg.NodeNetns, err)
	}
	ln, err := p.listenTCP(addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("svcproxy: dns: %w", err)
	}
	p.dnsClosers = append(p.dnsClosers, pc, ln)
	p.wg.Go(func() { p.serveUDP(pc) })
	p.wg.Go(func() { p.serveTCP(ln) })
	p.log.Info("cluster dns serving", "addr", addr, "domain", p.dns.domain)
	return nil
}

func (p *Proxy) serveUDP(pc net.PacketConn) {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("dns udp read failed", "err", err)
			}
			return
		}
		out := p.dns.answer(p.snap.Load(), buf[:n], true)
		if out == nil {
			continue
		}
		if _, err := pc.WriteTo(out, from); err != nil && !errors.Is(err, net.ErrClosed) {
			p.log.Warn("dns udp reply failed", "to", from, "err", err)
		}
	}
}

func (p *Proxy) serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("dns tcp accept failed", "err", err)
			}
			return
		}
		if !p.conns.add(c) {
			return
		}
		p.wg.Go(func() {
			defer p.conns.remove(c)
			defer c.Close()
			p.serveTCPConn(c)
		})
	}
}

// serveTCPConn answers length-prefixed queries on c until it closes, idles or sends garbage.
func (p *Proxy) serveTCPConn(c net.Conn) {
	var lenBuf [2]byte
	for {
		if err := c.SetReadDeadline(time.Now().Add(tcpIdle)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		req := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		out := p.dns.answer(p.snap.Load(), req, false)
		if out == nil {
			return
		}
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
			return
		}
	}
}
