package push

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// TestNextServerListChange: the only workload of a node changes its servers list (its old
// Server's count drops to zero and the node's map empties, then the new Servers are counted):
// the update must not fail and the node must reference exactly the new Servers.
func TestNextServerListChange(t *testing.T) {
	w := func(servers ...string) *nodeconfig.Workload {
		return &nodeconfig.Workload{Uid: "uid-b", Name: "b", Namespace: "l7", Node: "node-2", Addresses: []string{"10.0.2.2"}, Servers: servers}
	}
	srv := func(name string) *nodeconfig.Server {
		return &nodeconfig.Server{Name: name, Namespace: "l7", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080}}
	}
	st, _ := emptyState().next(&nodeconfig.Snapshot{Workloads: []*nodeconfig.Workload{w("l7/b")}, Servers: []*nodeconfig.Server{srv("b")}})
	st, _ = st.next(&nodeconfig.Snapshot{Workloads: []*nodeconfig.Workload{w("l7/b-grpc", "l7/b-http")}, Servers: []*nodeconfig.Server{srv("b-grpc"), srv("b-http")}})
	want := map[string]map[string]int{"node-2": {serverRef("l7/b-grpc"): 1, serverRef("l7/b-http"): 1}}
	if diff := cmp.Diff(want, st.nodeServers); diff != "" {
		t.Errorf("nodeServers (-want +got):\n%s", diff)
	}
	st, _ = st.next(&nodeconfig.Snapshot{Workloads: []*nodeconfig.Workload{w()}})
	if len(st.nodeServers) != 0 {
		t.Errorf("nodeServers after the workload dropped its servers = %v, want none", st.nodeServers)
	}
}
