package authz

import (
	"fmt"
	"testing"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// benchEngine is a node with a busy Server: 20 authorizations, the allowing one sorted last, so
// the allow path walks every other one first.
func benchEngine(b *testing.B) (*Engine, *nodeconfig.Workload) {
	b.Helper()
	var authz []*nodeconfig.Authorization
	for i := range 19 {
		authz = append(authz, &nodeconfig.Authorization{
			Name: fmt.Sprintf("a%02d", i), Namespace: "default", TargetKind: targetServer,
			MeshTls:  &nodeconfig.MeshTLS{Identities: []string{fmt.Sprintf("spiffe://cluster.local/ns/n%d/sa/x", i), "spiffe://cluster.local/ns/team-b/*"}},
			Networks: []*nodeconfig.Network{{Cidr: "10.0.0.0/8", Except: []string{"10.9.0.0/16"}}},
		})
	}
	authz = append(authz, meshTLSAuthz("z-service-a", idA))
	w := workload("default/b")
	w.ProbePorts = []uint32{15021}
	e := mustCompile(b, &nodeconfig.Snapshot{
		Workloads: []*nodeconfig.Workload{w},
		Servers:   []*nodeconfig.Server{serverOn("b", 8080, policyDeny, authz...)},
	})
	return e, w
}

func BenchmarkEvaluate(b *testing.B) {
	e, w := benchEngine(b)
	allowed := src(b, idA, "10.0.2.3")
	denied := src(b, idC, "10.0.2.3")
	mapped := src(b, idA, "::ffff:10.0.2.3")
	tests := []struct {
		name string
		port uint16
		src  Source
		want bool
	}{
		{"allow/last-of-20-authorizations", 8080, allowed, true},
		{"allow/ipv4-mapped", 8080, mapped, true},
		{"allow/default-policy", 9090, allowed, true},
		{"deny/no-authorization-matched", 8080, denied, false},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if e.Evaluate(w, tt.port, tt.src).Allow != tt.want {
					b.Fatal("unexpected decision")
				}
			}
		})
	}
	b.Run("explain/deny", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(e.Explain(w, 8080, denied).Checks) != 20 {
				b.Fatal("unexpected checks")
			}
		}
	})
}
