package push_test

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/push/pushtest"
)

// BenchmarkUpdate measures Update alone (no clients) at 10,000 workloads when one workload
// changed, with a freshly built snapshot (every message a new pointer, as the translator makes)
// and with the unchanged messages reused.
func BenchmarkUpdate(b *testing.B) {
	mesh := pushtest.Mesh(100, 500, 10_000)
	for _, tc := range []struct {
		name  string
		fresh bool
	}{{"fresh", true}, {"reused", false}} {
		b.Run(tc.name, func(b *testing.B) {
			srv, err := push.New(push.Config{Authenticate: pushtest.Authenticate})
			if err != nil {
				b.Fatal(err)
			}
			srv.Update(proto.Clone(mesh).(*nodeconfig.Snapshot))
			// Two snapshots that differ in workload 7 and share every other message.
			snaps := make([]*nodeconfig.Snapshot, 2)
			for j := range snaps {
				m := &nodeconfig.Snapshot{
					TrustDomain: mesh.TrustDomain, Defaults: mesh.Defaults, Services: mesh.Services,
					Servers: mesh.Servers, Workloads: slices.Clone(mesh.Workloads),
				}
				w := proto.CloneOf(mesh.Workloads[7])
				w.Ready = j == 0
				m.Workloads[7] = w
				snaps[j] = m
			}
			b.ResetTimer()
			for i := range b.N {
				next := snaps[i%2]
				if tc.fresh {
					b.StopTimer()
					next = proto.Clone(next).(*nodeconfig.Snapshot)
					b.StartTimer()
				}
				srv.Update(next)
			}
		})
	}
}
