package configstream

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// TestAssembleRoutes: route resources (pushed to waypoints) land in Snapshot.Routes; a route
// under another kind's name is refused.
func TestAssembleRoutes(t *testing.T) {
	rt := &nodeconfig.Route{Name: "r", Namespace: "default", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP}
	snap, err := assemble("v1", []*nodeconfig.Resource{
		{Name: "route/default/r", Kind: &nodeconfig.Resource_Route{Route: rt}},
	})
	if err != nil {
		t.Fatalf("assemble: %v", err)
	}
	want := &nodeconfig.Snapshot{Version: "v1", Routes: []*nodeconfig.Route{rt}}
	if diff := cmp.Diff(want, snap, protocmp.Transform()); diff != "" {
		t.Errorf("assemble (-want +got):\n%s", diff)
	}
	if _, err := assemble("v1", []*nodeconfig.Resource{
		{Name: "server/default/r", Kind: &nodeconfig.Resource_Route{Route: rt}},
	}); err == nil {
		t.Error("assemble accepted a route named as a server")
	}
}
