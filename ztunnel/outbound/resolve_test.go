package outbound

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// TestResolveWaypoint: traffic to a destination bound to a waypoint goes to the waypoint with
// the original destination as authority; a waypoint named by its Service VIP is reached on one
// of the Service's ready pods, since nothing else translates the VIP.
func TestResolveWaypoint(t *testing.T) {
	const wpID = "spiffe://cluster.local/ns/shop/sa/waypoint"
	hbone := func(uid, name, ip string, ready bool) *nodeconfig.Workload {
		return &nodeconfig.Workload{Uid: uid, Name: name, Namespace: "shop", ServiceAccount: name, Addresses: []string{ip},
			Node: "node-1", TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, Ready: ready}
	}
	snap := func(wpAddr string, wpReady bool) *nodeconfig.Snapshot {
		gw := &nodeconfig.GatewayAddress{Name: "waypoint", Namespace: "shop", Address: wpAddr, Identity: wpID}
		cart := hbone("uid-cart", "cart", "10.0.1.30", true)
		cart.Waypoint = gw
		wp := hbone("uid-wp", "waypoint", "10.0.2.30", wpReady)
		wp.ServiceAccount = "waypoint"
		return &nodeconfig.Snapshot{
			Workloads: []*nodeconfig.Workload{cart, wp, hbone("uid-client", "client", "10.0.1.10", true)},
			Services: []*nodeconfig.Service{{
				Name: "waypoint", Namespace: "shop", Addresses: []string{"10.96.9.9"},
				Ports:     []*nodeconfig.ServicePort{{ServicePort: 15008, TargetPort: 15008}},
				Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "uid-wp"}},
			}},
		}
	}
	dst := netip.MustParseAddrPort("10.0.1.30:8080")
	tests := []struct {
		name     string
		snap     *nodeconfig.Snapshot
		wantNext string
		wantErr  string
	}{
		{name: "waypoint by pod address", snap: snap("10.0.2.30", true), wantNext: "10.0.2.30:15008"},
		{name: "waypoint by service VIP", snap: snap("10.96.9.9", true), wantNext: "10.0.2.30:15008"},
		{name: "waypoint VIP without a ready pod", snap: snap("10.96.9.9", false), wantErr: "is the waypoint Deployment running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view, err := state.Build(tt.snap)
			if err != nil {
				t.Fatal(err)
			}
			src := view.WorkloadByAddr(netip.MustParseAddr("10.0.1.10"))
			r, err := Resolve(view, src, dst, 15008)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resolve error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{r.Next.String(), r.Authority.String(), r.Identity.String(), r.Workload}
			want := []string{tt.wantNext, dst.String(), wpID, "shop/waypoint"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("route (-want +got):\n%s", diff)
			}
		})
	}
}
