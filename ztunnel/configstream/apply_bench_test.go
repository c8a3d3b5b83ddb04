package configstream

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/push/pushtest"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// BenchmarkApply measures what one ztunnel spends applying a one-workload change to a node view
// of a 10,000-workload mesh: copy, assemble, state.Build, swap.
func BenchmarkApply(b *testing.B) {
	view := push.Relevant(pushtest.Mesh(100, 500, 10_000), pushtest.Node(0))
	c := &Client{cfg: Config{Store: state.NewStore(nil)}}
	first := &nodeconfig.PushResponse{SystemVersion: "v0"}
	first.Resources = append(first.Resources, &nodeconfig.Resource{Name: push.MeshName, Kind: &nodeconfig.Resource_Mesh{Mesh: &nodeconfig.MeshConfig{TrustDomain: view.TrustDomain, Defaults: view.Defaults}}})
	for _, w := range view.Workloads {
		first.Resources = append(first.Resources, &nodeconfig.Resource{Name: push.WorkloadName(w.Uid), Kind: &nodeconfig.Resource_Workload{Workload: w}})
	}
	for _, s := range view.Services {
		first.Resources = append(first.Resources, &nodeconfig.Resource{Name: push.ServiceName(s.Namespace, s.Name), Kind: &nodeconfig.Resource_Service{Service: s}})
	}
	for _, s := range view.Servers {
		first.Resources = append(first.Resources, &nodeconfig.Resource{Name: push.ServerName(s.Namespace, s.Name), Kind: &nodeconfig.Resource_Server{Server: s}})
	}
	if err := c.apply(first); err != nil {
		b.Fatal(err)
	}
	w := proto.CloneOf(view.Workloads[5])
	b.ResetTimer()
	for i := range b.N {
		w = proto.CloneOf(w)
		w.Ready = i%2 == 0
		if err := c.apply(&nodeconfig.PushResponse{SystemVersion: "v", Resources: []*nodeconfig.Resource{{Name: push.WorkloadName(w.Uid), Kind: &nodeconfig.Resource_Workload{Workload: w}}}}); err != nil {
			b.Fatal(err)
		}
	}
}
