package push_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/push/pushtest"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// raw is a hand-driven push client on a real socket.
type raw struct {
	tb     testing.TB
	stream grpc.BidiStreamingClient[nodeconfig.PushRequest, nodeconfig.PushResponse]
}

// open starts a stream with token and sends first; it does not read.
func open(tb testing.TB, srv *pushtest.Server, tlsCfg *pushtest.TLS, token string, first *nodeconfig.PushRequest) *raw {
	tb.Helper()
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg.Client)
	}
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(func() { cancel(); conn.Close() })
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	stream, err := nodeconfig.NewConfigPushClient(conn).Stream(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	// A refused stream fails Send with io.EOF; Recv returns the status.
	if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
		tb.Fatal(err)
	}
	return &raw{tb: tb, stream: stream}
}

func (r *raw) recv() *nodeconfig.PushResponse {
	r.tb.Helper()
	resp, err := r.stream.Recv()
	if err != nil {
		r.tb.Fatalf("Recv() = %v", err)
	}
	return resp
}

func (r *raw) ack(resp *nodeconfig.PushResponse) {
	r.tb.Helper()
	if err := r.stream.Send(&nodeconfig.PushRequest{ResponseNonce: resp.GetNonce()}); err != nil {
		r.tb.Fatal(err)
	}
}

func (r *raw) nack(resp *nodeconfig.PushResponse, detail string) {
	r.tb.Helper()
	if err := r.stream.Send(&nodeconfig.PushRequest{ResponseNonce: resp.GetNonce(), ErrorDetail: detail}); err != nil {
		r.tb.Fatal(err)
	}
}

// recvAcked reads a response, ACKs it and waits until the server recorded the ACK.
func (r *raw) recvAcked(srv *pushtest.Server, node string) *nodeconfig.PushResponse {
	r.tb.Helper()
	resp := r.recv()
	r.ack(resp)
	waitFor(r.tb, srv, func(cs []push.ClientInfo) bool {
		return slices.ContainsFunc(cs, func(c push.ClientInfo) bool {
			return c.Node == node && c.AckedVersion == resp.GetSystemVersion()
		})
	})
	return resp
}

func ztunnel(node string) *nodeconfig.PushRequest {
	return &nodeconfig.PushRequest{Node: node, ClientKind: push.KindZtunnel}
}

func waitFor(tb testing.TB, srv *pushtest.Server, cond func([]push.ClientInfo) bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.WaitFor(ctx, cond); err != nil {
		tb.Fatalf("%v; clients: %+v", err, srv.Clients())
	}
}

// summary is a response in comparable form: sorted names of changed and removed resources.
type summary struct {
	Changed, Removed []string
}

func summarize(resp *nodeconfig.PushResponse) summary {
	var s summary
	for _, r := range resp.GetResources() {
		s.Changed = append(s.Changed, r.GetName())
	}
	s.Removed = resp.GetRemovedResources()
	return s
}

// names lists the resource names of node's view of mesh.
func names(mesh *nodeconfig.Snapshot, node string) []string {
	v := push.Relevant(mesh, node)
	out := []string{push.MeshName}
	for _, w := range v.GetWorkloads() {
		out = append(out, push.WorkloadName(w.GetUid()))
	}
	for _, s := range v.GetServices() {
		out = append(out, push.ServiceName(s.GetNamespace(), s.GetName()))
	}
	for _, s := range v.GetServers() {
		out = append(out, push.ServerName(s.GetNamespace(), s.GetName()))
	}
	slices.Sort(out)
	return out
}

// clone returns a deep copy of mesh, so tests can change it without touching what the server
// owns.
func clone(mesh *nodeconfig.Snapshot) *nodeconfig.Snapshot {
	return proto.Clone(mesh).(*nodeconfig.Snapshot)
}

func TestInitialPush(t *testing.T) {
	t.Parallel()
	tlsCfg := pushtest.NewTLS(t)
	srv := pushtest.Start(t, pushtest.Options{TLS: tlsCfg})
	mesh := pushtest.Mesh(3, 4, 12)
	srv.Update(clone(mesh))

	c := open(t, srv, tlsCfg, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	resp := c.recv()
	if diff := cmp.Diff(summary{Changed: names(mesh, "node-000")}, summarize(resp)); diff != "" {
		t.Errorf("first response (-want +got):\n%s", diff)
	}
	if resp.GetSystemVersion() != srv.Version() || resp.GetSystemVersion() == "" {
		t.Errorf("system version = %q, want the server's %q", resp.GetSystemVersion(), srv.Version())
	}
	for _, r := range resp.GetResources() {
		if r.GetVersion() == "" {
			t.Errorf("resource %s has no version", r.GetName())
		}
	}
	// node-000 holds workloads 0, 3, 6, 9: namespaces 0, 3, 2, 1; all four namespaces' Servers.
	// A remote workload comes without its servers.
	for _, r := range resp.GetResources() {
		if w := r.GetWorkload(); w != nil && w.GetNode() != "node-000" && len(w.GetServers()) > 0 {
			t.Errorf("remote workload %s carries servers %v", r.GetName(), w.GetServers())
		}
	}
	c.ack(resp)
	waitFor(t, srv, func(cs []push.ClientInfo) bool { return len(cs) == 1 && cs[0].AckedVersion == srv.Version() })
	if got := srv.Metric(t, "warren_push_clients"); got != 1 {
		t.Errorf("warren_push_clients = %v, want 1", got)
	}
}

func TestNoResponseBeforeFirstUpdate(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	// A client that holds config connects to a controller that has not translated yet: it must
	// not be told to drop everything.
	first := ztunnel("node-000")
	first.InitialResourceVersions = map[string]string{push.WorkloadName("uid-00000"): "v1"}
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), first)
	waitFor(t, srv, func(cs []push.ClientInfo) bool { return len(cs) == 1 })
	if got := srv.Clients()[0].Responses; got != 0 {
		t.Fatalf("responses before the first Update = %d, want 0", got)
	}
	mesh := pushtest.Mesh(1, 1, 1)
	srv.Update(clone(mesh))
	resp := c.recv()
	if diff := cmp.Diff(summary{Changed: names(mesh, "node-000")}, summarize(resp)); diff != "" {
		t.Errorf("first response (-want +got):\n%s", diff)
	}
}

func TestIncrementalUpdate(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(3, 4, 12)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-001"), ztunnel("node-001"))
	first := c.recvAcked(srv, "node-001")

	mesh.Workloads[5].Ready = false
	srv.Update(clone(mesh)) // every message a new pointer: the server compares contents
	resp := c.recvAcked(srv, "node-001")
	if diff := cmp.Diff(summary{Changed: []string{push.WorkloadName("uid-00005")}}, summarize(resp)); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if resp.GetSystemVersion() == first.GetSystemVersion() {
		t.Errorf("system version did not change: %s", resp.GetSystemVersion())
	}
	if !proto.Equal(resp.GetResources()[0].GetWorkload(), push.Relevant(mesh, "node-001").GetWorkloads()[5]) {
		t.Errorf("sent workload = %v, want %v", resp.GetResources()[0].GetWorkload(), mesh.Workloads[5])
	}

	// Mesh defaults change.
	mesh.Defaults.DefaultInboundPolicy = nodeconfig.DefaultPolicy_DEFAULT_POLICY_DENY
	srv.Update(clone(mesh))
	resp = c.recvAcked(srv, "node-001")
	if diff := cmp.Diff(summary{Changed: []string{push.MeshName}}, summarize(resp)); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if got := srv.Metric(t, "warren_push_latency_seconds"); got != 2 {
		t.Errorf("latency observations = %v, want 2 (one per pushed change)", got)
	}
}

func TestSameContentKeepsVersions(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 4)
	srv.Update(clone(mesh))
	v := srv.Version()
	srv.Update(clone(mesh))
	if srv.Version() != v {
		t.Errorf("Version() after an equal Update = %s, want %s", srv.Version(), v)
	}
	changed := clone(mesh)
	changed.Workloads[0].Ready = false
	srv.Update(changed)
	srv.Update(clone(mesh))
	if srv.Version() != v {
		t.Errorf("Version() after a change and back = %s, want %s", srv.Version(), v)
	}
}

func TestRemoval(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	c.recvAcked(srv, "node-000")

	// Workload 5 (namespace 1, node 1) goes away, and with it its service endpoint.
	mesh.Workloads = slices.Delete(mesh.Workloads, 5, 6)
	svc := mesh.Services[1]
	svc.Endpoints = slices.DeleteFunc(svc.Endpoints, func(e *nodeconfig.Endpoint) bool { return e.GetWorkloadUid() == "uid-00005" })
	srv.Update(clone(mesh))
	resp := c.recvAcked(srv, "node-000")
	want := summary{Changed: []string{push.ServiceName("ns-001", "svc")}, Removed: []string{push.WorkloadName("uid-00005")}}
	if diff := cmp.Diff(want, summarize(resp)); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
}

func TestNodesGetTheirServers(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	// Two nodes, four namespaces, four workloads: node-000 runs workloads 0 and 2 (namespaces
	// 0 and 2), node-001 runs 1 and 3 (namespaces 1 and 3).
	mesh := pushtest.Mesh(2, 4, 4)
	srv.Update(clone(mesh))
	a := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	b := open(t, srv, nil, pushtest.ZtunnelToken("node-001"), ztunnel("node-001"))
	servers := func(resp *nodeconfig.PushResponse) []string {
		var out []string
		for _, r := range resp.GetResources() {
			if r.GetServer() != nil {
				out = append(out, r.GetName())
			}
		}
		return out
	}
	respA, respB := a.recvAcked(srv, "node-000"), b.recvAcked(srv, "node-001")
	if diff := cmp.Diff([]string{"server/ns-000/admin", "server/ns-000/http", "server/ns-002/admin", "server/ns-002/http"}, servers(respA)); diff != "" {
		t.Errorf("node-000 servers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"server/ns-001/admin", "server/ns-001/http", "server/ns-003/admin", "server/ns-003/http"}, servers(respB)); diff != "" {
		t.Errorf("node-001 servers (-want +got):\n%s", diff)
	}

	// Workload 0 on node-000 now uses only ns-000/http: node-000 loses ns-000/admin and gets
	// its new workload; node-001 holds workload 0 without servers, which did not change.
	mesh.Workloads[0].Servers = []string{"ns-000/http"}
	srv.Update(clone(mesh))
	resp := a.recvAcked(srv, "node-000")
	want := summary{Changed: []string{"workload/uid-00000"}, Removed: []string{"server/ns-000/admin"}}
	if diff := cmp.Diff(want, summarize(resp)); diff != "" {
		t.Errorf("node-000 response (-want +got):\n%s", diff)
	}
	// Workload 1 on node-001 gains ns-000/http: node-001 gets that Server.
	mesh.Workloads[1].Servers = append(mesh.Workloads[1].Servers, "ns-000/http")
	srv.Update(clone(mesh))
	// node-001's next response is this one: nothing was sent to it for the previous change.
	resp = b.recvAcked(srv, "node-001")
	want = summary{Changed: []string{"server/ns-000/http", "workload/uid-00001"}}
	if diff := cmp.Diff(want, summarize(resp)); diff != "" {
		t.Errorf("node-001 response (-want +got):\n%s", diff)
	}
	// A changed Server reaches only the nodes it is relevant to.
	mesh.Servers[0].AccessPolicy = nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT // ns-000/http
	mesh.Servers[2].AccessPolicy = nodeconfig.DefaultPolicy_DEFAULT_POLICY_AUDIT // ns-001/http
	srv.Update(clone(mesh))
	if diff := cmp.Diff(summary{Changed: []string{"server/ns-000/http"}}, summarize(a.recvAcked(srv, "node-000"))); diff != "" {
		t.Errorf("node-000 response (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(summary{Changed: []string{"server/ns-000/http", "server/ns-001/http"}}, summarize(b.recvAcked(srv, "node-001"))); diff != "" {
		t.Errorf("node-001 response (-want +got):\n%s", diff)
	}
}

func TestWaypointGetsWholeMesh(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 3, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.WaypointToken("wp"), &nodeconfig.PushRequest{Node: "node-000", ClientKind: push.KindWaypoint})
	resp := c.recv()
	var servers int
	for _, r := range resp.GetResources() {
		if r.GetServer() != nil {
			servers++
		}
		if w := r.GetWorkload(); w != nil && len(w.GetServers()) == 0 {
			t.Errorf("waypoint got workload %s without servers", r.GetName())
		}
	}
	if servers != len(mesh.Servers) {
		t.Errorf("waypoint got %d servers, want all %d", servers, len(mesh.Servers))
	}
}

func TestReconnectGetsOnlyTheDiff(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	resp := c.recv()
	held := map[string]string{}
	for _, r := range resp.GetResources() {
		held[r.GetName()] = r.GetVersion()
	}

	// The client reconnects holding: everything, one stale version, and one resource that no
	// longer exists; meanwhile workload 4 changed.
	held[push.WorkloadName("uid-00001")] = "stale"
	held[push.WorkloadName("uid-gone")] = "v0"
	mesh.Workloads[4].Ready = false
	srv.Update(clone(mesh))

	first := ztunnel("node-000")
	first.InitialResourceVersions = held
	c2 := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), first)
	got := summarize(c2.recv())
	want := summary{
		Changed: []string{push.WorkloadName("uid-00001"), push.WorkloadName("uid-00004")},
		Removed: []string{push.WorkloadName("uid-gone")},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resync response (-want +got):\n%s", diff)
	}
}

func TestResyncInSyncIsEmpty(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	held := map[string]string{}
	for _, r := range c.recv().GetResources() {
		held[r.GetName()] = r.GetVersion()
	}
	first := ztunnel("node-000")
	first.InitialResourceVersions = held
	resp := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), first).recv()
	if diff := cmp.Diff(summary{}, summarize(resp)); diff != "" {
		t.Errorf("resync response of a client in sync (-want +got):\n%s", diff)
	}
	if resp.GetSystemVersion() != srv.Version() {
		t.Errorf("system version = %q, want %q", resp.GetSystemVersion(), srv.Version())
	}
}

func TestNACKKeepsClientState(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	good := c.recvAcked(srv, "node-000")

	mesh.Workloads[1].Ready = false
	srv.Update(clone(mesh))
	resp := c.recv()
	c.nack(resp, "workload uid-00001: bad")
	waitFor(t, srv, func(cs []push.ClientInfo) bool { return len(cs) == 1 && cs[0].LastNACK != "" })
	info := srv.Clients()[0]
	if info.LastNACK != "workload uid-00001: bad" || info.AckedVersion != good.GetSystemVersion() {
		t.Errorf("client info after NACK = %+v, want LastNACK set and AckedVersion %s", info, good.GetSystemVersion())
	}
	if got := srv.Metric(t, "warren_push_nacks_total"); got != 1 {
		t.Errorf("warren_push_nacks_total = %v, want 1", got)
	}

	// Nothing is resent until the next Update; then the response carries the rejected change
	// again (the client still lacks it) together with the new one.
	mesh.Workloads[2].Ready = false
	srv.Update(clone(mesh))
	resp = c.recvAcked(srv, "node-000")
	want := summary{Changed: []string{push.WorkloadName("uid-00001"), push.WorkloadName("uid-00002")}}
	if diff := cmp.Diff(want, summarize(resp)); diff != "" {
		t.Errorf("response after NACK (-want +got):\n%s", diff)
	}
	if got := srv.Clients()[0]; got.LastNACK != "" || got.Responses != 3 {
		t.Errorf("client info = %+v, want no LastNACK after the ACK and 3 responses", got)
	}
}

func TestACKGating(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 6)
	srv.Update(clone(mesh))
	c := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	c.recvAcked(srv, "node-000")

	mesh.Workloads[1].Ready = false
	srv.Update(clone(mesh))
	resp1 := c.recv() // not ACKed yet
	mesh.Workloads[2].Ready = false
	srv.Update(clone(mesh))
	mesh.Workloads[3].Ready = false
	srv.Update(clone(mesh))
	mesh.Workloads[1].Ready = true // back to what the client had before resp1
	srv.Update(clone(mesh))
	c.ack(resp1)
	resp2 := c.recvAcked(srv, "node-000")
	if diff := cmp.Diff(summary{Changed: []string{push.WorkloadName("uid-00001")}}, summarize(resp1)); diff != "" {
		t.Errorf("first response (-want +got):\n%s", diff)
	}
	want := summary{Changed: []string{push.WorkloadName("uid-00001"), push.WorkloadName("uid-00002"), push.WorkloadName("uid-00003")}}
	if diff := cmp.Diff(want, summarize(resp2)); diff != "" {
		t.Errorf("merged response (-want +got):\n%s", diff)
	}
	if resp2.GetSystemVersion() != srv.Version() {
		t.Errorf("merged response version = %s, want the latest %s", resp2.GetSystemVersion(), srv.Version())
	}
	if got := srv.Clients()[0].Responses; got != 3 {
		t.Errorf("responses = %d, want 3 (initial, first change, the merged rest)", got)
	}
}

func TestRefused(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	srv.Update(pushtest.Mesh(1, 1, 1))
	for _, tc := range []struct {
		name  string
		token string
		first *nodeconfig.PushRequest
		code  codes.Code
		msg   string
	}{
		{"no token", "", ztunnel("node-000"), codes.Unauthenticated, "missing or invalid bearer token"},
		{"bad token", "nonsense", ztunnel("node-000"), codes.Unauthenticated, "missing or invalid bearer token"},
		{"other node", pushtest.ZtunnelToken("node-000"), ztunnel("node-001"), codes.PermissionDenied, "token of node node-000 cannot subscribe as node node-001"},
		{"waypoint as ztunnel", pushtest.WaypointToken("wp"), ztunnel("node-000"), codes.PermissionDenied, "token of a waypoint cannot subscribe as a ztunnel"},
		{"unknown kind", pushtest.ZtunnelToken("node-000"), &nodeconfig.PushRequest{Node: "node-000", ClientKind: "sidecar"}, codes.InvalidArgument, `unknown client kind "sidecar" (want "ztunnel" or "waypoint")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := open(t, srv, nil, tc.token, tc.first)
			_, err := c.stream.Recv()
			st, _ := status.FromError(err)
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("Recv() = %v, want %s %q", err, tc.code, tc.msg)
			}
		})
	}
	if got := srv.Clients(); len(got) != 0 {
		t.Errorf("Clients() = %+v, want none", got)
	}
}

func TestRelevant(t *testing.T) {
	t.Parallel()
	mesh := pushtest.Mesh(2, 2, 4) // node-000: workloads 0, 2 (namespace 0)
	before := clone(mesh)
	got := push.Relevant(mesh, "node-000")
	if diff := cmp.Diff(before, mesh, protocmp.Transform()); diff != "" {
		t.Errorf("Relevant modified its input (-before +after):\n%s", diff)
	}
	want := clone(mesh)
	want.Servers = want.Servers[:2] // ns-000's
	want.Workloads[1].Servers = nil
	want.Workloads[3].Servers = nil
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Relevant(node-000) (-want +got):\n%s", diff)
	}
	if _, err := state.Build(got); err != nil {
		t.Errorf("state.Build(Relevant(node-000)) = %v", err)
	}
}

// TestConfigStreamClient drives the real ztunnel client over TLS: its store ends up holding its
// node's view of every Update.
func TestConfigStreamClient(t *testing.T) {
	t.Parallel()
	tlsCfg := pushtest.NewTLS(t)
	srv := pushtest.Start(t, pushtest.Options{TLS: tlsCfg})
	mesh := pushtest.Mesh(3, 4, 24)
	srv.Update(clone(mesh))

	stores := map[string]*state.Store{}
	for _, node := range []string{"node-000", "node-001"} {
		stores[node] = state.NewStore(nil)
		c, err := configstream.New(configstream.Config{
			Target: srv.Addr, TLSConfig: tlsCfg.Client, Node: node, Store: stores[node],
			Token:      func() (string, error) { return pushtest.ZtunnelToken(node), nil },
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	check := func() {
		t.Helper()
		for node, store := range stores {
			if err := srv.WaitAcked(context.Background(), node); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(pushtest.Sorted(push.Relevant(mesh, node)), pushtest.Sorted(store.Load().Snapshot()), protocmp.Transform()); diff != "" {
				t.Errorf("%s's store (-want +got):\n%s", node, diff)
			}
			if got := store.Load().Version(); got != srv.Version() {
				t.Errorf("%s's store version = %s, want %s", node, got, srv.Version())
			}
		}
	}
	check()
	mesh.Workloads[0].Servers = []string{"ns-000/http"}
	mesh.Workloads[7].Ready = false
	mesh.Services[2].Ports[0].ServicePort = 8000
	srv.Update(clone(mesh))
	check()
}

// withRoutes adds an HTTPRoute and a GRPCRoute of the same name on namespace 0's Service.
func withRoutes(mesh *nodeconfig.Snapshot) *nodeconfig.Snapshot {
	parent := []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: "ns-000/svc"}}}
	mesh.Routes = []*nodeconfig.Route{
		{Name: "r", Namespace: "ns-000", Kind: nodeconfig.RouteKind_ROUTE_KIND_GRPC, Parents: parent},
		{Name: "r", Namespace: "ns-000", Kind: nodeconfig.RouteKind_ROUTE_KIND_HTTP, Parents: parent,
			Rules: []*nodeconfig.RouteRule{{TimeoutMs: 1000}}},
	}
	return mesh
}

// TestRoutesGoToWaypointsOnly: a waypoint receives routes, their changes and removals as deltas
// like any resource; a ztunnel never receives a route, not even when only routes change.
func TestRoutesGoToWaypointsOnly(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := withRoutes(pushtest.Mesh(2, 2, 4))
	srv.Update(clone(mesh))
	wp := open(t, srv, nil, pushtest.WaypointToken("wp"), &nodeconfig.PushRequest{Node: "node-000", ClientKind: push.KindWaypoint})
	zt := open(t, srv, nil, pushtest.ZtunnelToken("node-000"), ztunnel("node-000"))
	httpName := push.RouteName(nodeconfig.RouteKind_ROUTE_KIND_HTTP, "ns-000", "r")
	grpcName := push.RouteName(nodeconfig.RouteKind_ROUTE_KIND_GRPC, "ns-000", "r")
	if httpName != "route/http/ns-000/r" || grpcName != "route/grpc/ns-000/r" {
		t.Fatalf("RouteName = %q, %q", httpName, grpcName)
	}
	routes := func(resp *nodeconfig.PushResponse) []string {
		var out []string
		for _, r := range resp.GetResources() {
			if r.GetRoute() != nil {
				out = append(out, r.GetName())
			}
		}
		return out
	}
	if diff := cmp.Diff([]string{grpcName, httpName}, routes(wp.recvAcked(srv, "node-000"))); diff != "" {
		t.Errorf("waypoint's first routes (-want +got):\n%s", diff)
	}
	first := zt.recv()
	zt.ack(first)
	if got := routes(first); len(got) != 0 {
		t.Errorf("ztunnel got routes %q", got)
	}
	if diff := cmp.Diff(names(mesh, "node-000"), summarize(first).Changed); diff != "" {
		t.Errorf("ztunnel's first response (-want +got):\n%s", diff)
	}

	// A route changes: only the waypoint hears of it.
	mesh.Routes[1].Rules[0].TimeoutMs = 2000
	srv.Update(clone(mesh))
	resp := wp.recvAcked(srv, "node-000")
	if diff := cmp.Diff(summary{Changed: []string{httpName}}, summarize(resp)); diff != "" {
		t.Errorf("waypoint delta (-want +got):\n%s", diff)
	}
	if got := resp.GetResources()[0].GetRoute().GetRules()[0].GetTimeoutMs(); got != 2000 {
		t.Errorf("route timeout = %d, want 2000", got)
	}
	// A route goes away.
	mesh.Routes = mesh.Routes[1:]
	srv.Update(clone(mesh))
	if diff := cmp.Diff(summary{Removed: []string{grpcName}}, summarize(wp.recvAcked(srv, "node-000"))); diff != "" {
		t.Errorf("waypoint removal (-want +got):\n%s", diff)
	}
	// Then a workload changes: the ztunnel's next response holds that, and no route.
	mesh.Workloads[0].Ready = !mesh.Workloads[0].Ready
	srv.Update(clone(mesh))
	if diff := cmp.Diff(summary{Changed: []string{push.WorkloadName(mesh.Workloads[0].Uid)}}, summarize(zt.recv())); diff != "" {
		t.Errorf("ztunnel response after route changes (-want +got):\n%s", diff)
	}
	if got := push.Relevant(mesh, "node-000").GetRoutes(); len(got) != 0 {
		t.Errorf("Relevant kept %d routes", len(got))
	}
}
