package ztunnel_test

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/sockets"
)

// TestAddPodBeforeConfig enrolls a pod the config does not have yet (as the node agent does for a
// brand-new pod): inbound answers 503 until a config with the pod arrives, then serves it.
func TestAddPodBeforeConfig(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	n := m.startNode("node-2")
	addr := netip.MustParseAddr(ip(p, 9))
	startApp(t, netip.AddrPortFrom(addr, 8080), "d")

	pod := ztunnel.Pod{UID: "uid-service-d", Name: "service-d-0", Namespace: "default", ServiceAccount: "service-d", Addresses: []netip.Addr{addr}}
	for _, bad := range []ztunnel.Pod{{UID: "u", Namespace: "default", Addresses: pod.Addresses}, {UID: "u", Namespace: "default", ServiceAccount: "x"}} {
		if _, err := n.Ztunnel.AddPod(bad, sockets.Host{Source: addr}); err == nil || !strings.Contains(err.Error(), "required") {
			t.Errorf("AddPod(%+v) = %v; want an error", bad, err)
		}
	}
	lns, err := n.Ztunnel.AddPod(pod, sockets.Host{Source: addr})
	if err != nil {
		t.Fatalf("AddPod() = %v", err)
	}
	if lns.HBONE == nil || lns.Plaintext == nil || lns.HBONE.Addr().String() != addr.String()+":15008" {
		t.Fatalf("AddPod() listeners = %+v", lns)
	}
	if _, err := n.Ztunnel.AddPod(pod, sockets.Host{Source: addr}); err == nil || !strings.Contains(err.Error(), "already enrolled") {
		t.Errorf("second AddPod() = %v; want already enrolled", err)
	}
	if w := workload(t, n.Ztunnel, "default/service-d-0"); w.Identity != td+"/ns/default/sa/service-d" {
		t.Errorf("identity = %s", w.Identity)
	}
	hboneD, authority := addr.String()+":15008", addr.String()+":8080"
	_, err = hboneConnect(t, m, "service-a", hboneD, authority)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("CONNECT before the config has the pod = %v; want 503 (fail closed)", err)
	}

	m.update(func(s *nodeconfig.Snapshot) {
		s.Workloads = append(s.Workloads, &nodeconfig.Workload{
			Uid: pod.UID, Name: pod.Name, Namespace: "default", ServiceAccount: "service-d",
			Addresses: []string{addr.String()}, Node: "node-2", Ready: true,
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		})
	})
	c, err := hboneConnect(t, m, "service-a", hboneD, authority)
	if err != nil {
		t.Fatalf("CONNECT once the config has the pod: %v", err)
	}
	if got, err := roundTrip(c, "hi"); err != nil || got != "hello from d: hi\n" {
		t.Fatalf("round trip = %q, %v", got, err)
	}
	n.Ztunnel.RemoveWorkload(pod.UID)
	if len(n.Ztunnel.Workloads()) != 1 {
		t.Errorf("workloads after RemoveWorkload = %+v", n.Ztunnel.Workloads())
	}
}
