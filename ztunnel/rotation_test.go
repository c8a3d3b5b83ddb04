package ztunnel_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

// TestCertificateRotation runs workload certificates with a 2-minute TTL, so they renew at
// half-life about 30 s in (NotBefore is back-dated a minute for clock skew). The CA is down when
// the renewal is due: the old certificate keeps serving and the failure shows in the metrics.
// When the CA is back, the renewal succeeds; a connection opened before it keeps working, and new
// connections are made with the new certificate.
func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	p := randomNet()
	c := catest.NewFromConfig(t, ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), DefaultTTL: 2 * time.Minute})
	m, err := ztunneltest.New(ztunneltest.Config{Snapshot: articleSnapshot(p), Signer: c, Bundle: c.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	mesh := &mesh{Mesh: m, t: t, ca: c}
	n1 := mesh.startNode("node-1")
	mesh.startNode("node-2")
	dst := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	echoServer(t, dst)

	serial := func() string {
		t.Helper()
		d, err := n1.Ztunnel.Dump()
		if err != nil {
			t.Fatal(err)
		}
		for _, cert := range d.Certificates {
			if cert.ID == td+"/ns/default/sa/service-a" {
				return cert.Serial
			}
		}
		return ""
	}
	long, err := mesh.dialFrom(ip(p, 2), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	echo(t, long, "before")
	first := serial()
	if first == "" {
		t.Fatal("no certificate for service-a after a connection")
	}

	// The CA goes away before the renewal is due.
	c.SetError(errors.New("ca unreachable"))
	waitForLong(t, 45*time.Second, func() bool {
		return metricValue(t, n1.Registry, "warren_ztunnel_csr_total", map[string]string{"result": "failed"}) > 0
	}, "a failed renewal in the metrics")
	if got := gaugeValue(t, n1, "warren_ztunnel_certificates_failing"); got < 1 {
		t.Errorf("warren_ztunnel_certificates_failing = %v; want >= 1 while the CA is down", got)
	}
	if serial() != first {
		t.Fatal("the certificate changed while the CA was down")
	}
	// The still-valid certificate keeps serving: old and new connections work.
	echo(t, long, "during outage")
	fresh, err := mesh.dialFrom(ip(p, 2), dst)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, fresh, "new during outage")
	fresh.Close()

	// The CA is back: the renewal goes through with the next retry.
	c.SetError(nil)
	waitForLong(t, 45*time.Second, func() bool { return serial() != first }, "a renewed certificate")
	echo(t, long, "after renewal, on the connection opened before it")
	dialsBefore := workload(t, n1.Ztunnel, "default/service-a-0").Pool.Dials
	fresh, err = mesh.dialFrom(ip(p, 2), dst)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, fresh, "new after renewal")
	fresh.Close()
	st := workload(t, n1.Ztunnel, "default/service-a-0").Pool
	if st.Dials != dialsBefore+1 || st.Retired < 1 {
		t.Errorf("after the renewal the pool dialed %d new connections and retired %d; want a new connection with the new certificate (1) and the old one retired", st.Dials-dialsBefore, st.Retired)
	}
}

func echoServer(t *testing.T, at netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", at.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("echo %q: write: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, buf, err)
	}
}

func waitForLong(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func gaugeValue(t *testing.T, n *node, name string) float64 {
	t.Helper()
	mfs, err := n.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
