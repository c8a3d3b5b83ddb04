package authz_test

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/authz"
)

// The article's policy: only service-a may call service-b on 8080. Explain says why
// service-c is denied, as the kubectl plugin prints it.
func ExampleEngine_Explain() {
	b := &nodeconfig.Workload{
		Name: "b-0", Namespace: "default",
		Ports:   []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		Servers: []string{"default/b"},
	}
	e, err := authz.Compile(&nodeconfig.Snapshot{
		Workloads: []*nodeconfig.Workload{b},
		Servers: []*nodeconfig.Server{{
			Name: "b", Namespace: "default",
			Port: &nodeconfig.Server_PortNumber{PortNumber: 8080},
			Authorizations: []*nodeconfig.Authorization{{
				Name: "service-a-to-b", Namespace: "default",
				TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:    &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/default/sa/service-a"}},
			}},
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	c := authz.Source{
		Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/service-c"),
		Addr:     netip.MustParseAddr("10.0.2.4"),
	}
	d := e.Explain(b, 8080, c)
	fmt.Println(d)
	for _, check := range d.Checks {
		fmt.Println("  " + check.String())
	}
	fmt.Println(e.Evaluate(b, 9090, c))
	// Output:
	// deny server/default/b:deny: no authorization on server default/b matched (identity spiffe://cluster.local/ns/default/sa/service-c not in meshtls of default/service-a-to-b); server access policy deny
	//   authorizationpolicy/default/service-a-to-b Server/b failed: identity spiffe://cluster.local/ns/default/sa/service-c not in meshtls of default/service-a-to-b
	// allow default:all-unauthenticated: no server covers the port; mesh default policy all-unauthenticated
}
