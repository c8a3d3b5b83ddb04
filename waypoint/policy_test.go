package waypoint_test

import (
	"net/http"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// TestPolicyChangeOnOpenConnection: a config change applies to the next request of an open
// client connection.
func TestPolicyChangeOnOpenConnection(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.h1(t, idC, e.addr(hostB0, 8080))
	if code, _, _ := get(t, c, "GET", "/foo/bar", nil); code != http.StatusForbidden {
		t.Fatalf("GET from c before the change = %d, want 403", code)
	}
	snap := proto.Clone(e.store.Load().Snapshot()).(*nodeconfig.Snapshot)
	snap.Version = "2"
	for _, srv := range snap.Servers {
		if srv.GetName() == "b" {
			srv.Authorizations = append(srv.Authorizations, &nodeconfig.Authorization{
				Name: "c-get-foo", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_HTTP_ROUTE,
				Route: "b-get-foo", MeshTls: &nodeconfig.MeshTLS{Identities: []string{idC}},
			})
		}
	}
	v, err := state.Build(snap)
	if err != nil {
		t.Fatal(err)
	}
	e.store.Swap(v)
	if code, _, _ := get(t, c, "GET", "/foo/bar", nil); code != http.StatusOK {
		t.Errorf("GET from c after the change = %d, want 200", code)
	}
	if got := metric(t, e, "warren_waypoint_streams_total", ""); got != 1 {
		t.Errorf("streams = %v, want 1 (both requests on one connection)", got)
	}
}

// TestAuditDefault: with the mesh default audit, a request to a port no Server covers passes
// and is one audit security event.
func TestAuditDefault(t *testing.T) {
	e := newEnv(t, envOptions{mutate: func(s *nodeconfig.Snapshot) {
		s.Defaults = &nodeconfig.MeshDefaults{DefaultInboundPolicy: nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT}
	}})
	if code, _, _ := get(t, e.h2(t, idC, e.addr(vipWeb, 80)), "GET", "/", nil); code != http.StatusOK {
		t.Fatalf("GET = %d, want 200", code)
	}
	evs := e.securityEvents(t)
	if len(evs) != 1 || evs[0]["event"] != "audit" || evs[0]["policy"] != "default:audit" || evs[0]["src.identity"] != idC {
		t.Errorf("security events = %v, want one audit by default:audit for %s", evs, idC)
	}
}
