package configstream_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push"
	"github.com/warren-mesh/warren/controller/push/pushtest"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

const node = "node-000"

type harness struct {
	client *configstream.Client
	store  *state.Store
	tokens atomic.Int32 // Token calls
}

// run starts a client of node against addr until the test ends.
func run(tb testing.TB, addr string, tlsCfg *pushtest.TLS) *harness {
	tb.Helper()
	h := &harness{store: state.NewStore(nil)}
	cfg := configstream.Config{
		Target: addr, Node: node, Store: h.store,
		Token: func() (string, error) {
			h.tokens.Add(1)
			return pushtest.ZtunnelToken(node), nil
		},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	if tlsCfg != nil {
		cfg.TLSConfig = tlsCfg.Client
	}
	c, err := configstream.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	h.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			tb.Errorf("Run() = %v, want context.Canceled", err)
		}
	})
	return h
}

// waitStatus waits until cond holds for the client's status.
func (h *harness) waitStatus(tb testing.TB, cond func(configstream.Status) bool) configstream.Status {
	tb.Helper()
	timeout := time.After(time.Minute)
	for {
		ch := h.client.StatusChanged()
		if st := h.client.Status(); cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-timeout:
			tb.Fatalf("status never satisfied the condition; last: %+v", h.client.Status())
		}
	}
}

// waitVersion waits until the store holds version.
func (h *harness) waitVersion(tb testing.TB, version string) {
	tb.Helper()
	h.waitStatus(tb, func(s configstream.Status) bool { return s.Version == version })
	if got := h.store.Load().Version(); got != version {
		tb.Fatalf("store version = %s, want %s", got, version)
	}
}

func (h *harness) checkView(tb testing.TB, mesh *nodeconfig.Snapshot) {
	tb.Helper()
	want := pushtest.Sorted(push.Relevant(mesh, node))
	if diff := cmp.Diff(want, pushtest.Sorted(h.store.Load().Snapshot()), protocmp.Transform()); diff != "" {
		tb.Errorf("store (-want +got):\n%s", diff)
	}
}

func waitAcked(tb testing.TB, srv *pushtest.Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.WaitAcked(ctx, node); err != nil {
		tb.Fatal(err)
	}
}

func clone(s *nodeconfig.Snapshot) *nodeconfig.Snapshot { return proto.Clone(s).(*nodeconfig.Snapshot) }

func TestAppliesInitialAndIncremental(t *testing.T) {
	t.Parallel()
	tlsCfg := pushtest.NewTLS(t)
	srv := pushtest.Start(t, pushtest.Options{TLS: tlsCfg})
	mesh := pushtest.Mesh(2, 3, 12)
	srv.Update(clone(mesh))
	h := run(t, srv.Addr, tlsCfg)
	h.waitVersion(t, srv.Version())
	h.checkView(t, mesh)
	st := h.client.Status()
	if !st.Connected || st.LastError != "" || st.LastApplied.IsZero() {
		t.Errorf("Status() = %+v, want connected, no error, applied", st)
	}

	swaps := make(chan *state.View, 10)
	defer h.store.Subscribe(func(_, cur *state.View) { swaps <- cur })()
	mesh.Workloads[3].Ready = false
	mesh.Workloads = mesh.Workloads[:11] // workload 11 (namespace 2) goes
	mesh.Services[2].Endpoints = mesh.Services[2].Endpoints[:3]
	srv.Update(clone(mesh))
	h.waitVersion(t, srv.Version())
	h.checkView(t, mesh)
	if n := len(swaps); n != 1 {
		t.Errorf("store swaps = %d, want 1 (one atomic apply per response)", n)
	}
	if w := h.store.Load().WorkloadByUID("uid-00003"); w.GetReady() {
		t.Errorf("workload uid-00003 ready = true, want false")
	}
}

func TestBadConfigIsNACKed(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 4)
	srv.Update(clone(mesh))
	h := run(t, srv.Addr, nil)
	h.waitVersion(t, srv.Version())
	good := h.store.Load()

	for _, tc := range []struct {
		name   string
		break_ func(*nodeconfig.Snapshot)
		want   string
	}{
		{"workload address", func(s *nodeconfig.Snapshot) { s.Workloads[0].Addresses = []string{"10.0.0.300"} }, `address "10.0.0.300" is not an IP`},
		{"server port", func(s *nodeconfig.Snapshot) { s.Servers[0].Port = &nodeconfig.Server_PortNumber{PortNumber: 0} }, "port 0 out of range"},
	} {
		bad := clone(mesh)
		tc.break_(bad)
		srv.Update(bad)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := srv.WaitFor(ctx, func(cs []push.ClientInfo) bool { return len(cs) == 1 && cs[0].LastNACK != "" })
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := srv.Clients()[0].LastNACK; !strings.Contains(got, tc.want) {
			t.Errorf("%s: NACK = %q, want it to contain %q", tc.name, got, tc.want)
		}
		st := h.waitStatus(t, func(s configstream.Status) bool { return s.LastError != "" })
		if !strings.Contains(st.LastError, tc.want) || st.Version != good.Version() {
			t.Errorf("%s: Status() = %+v, want the error and the old version %s", tc.name, st, good.Version())
		}
		if h.store.Load() != good {
			t.Errorf("%s: the store changed after a rejected config", tc.name)
		}

		// The controller fixes it: the client applies, and its view is the mesh's again.
		srv.Update(clone(mesh))
		h.waitVersion(t, srv.Version())
		h.checkView(t, mesh)
		waitAcked(t, srv)
		good = h.store.Load()
	}
	if got := srv.Metric(t, "warren_push_nacks_total"); got != 2 {
		t.Errorf("warren_push_nacks_total = %v, want 2", got)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	mesh := pushtest.Mesh(2, 2, 8)
	srv.Update(clone(mesh))
	h := run(t, srv.Addr, nil)
	h.waitVersion(t, srv.Version())
	view := push.Relevant(mesh, node)
	held := len(view.GetWorkloads()) + len(view.GetServices()) + len(view.GetServers()) + 1 /* mesh/defaults */

	srv.Stop()
	h.waitStatus(t, func(s configstream.Status) bool { return !s.Connected })
	// A new controller on the same address, with one workload changed meanwhile.
	mesh.Workloads[2].Ready = false
	srv2 := pushtest.Start(t, pushtest.Options{Addr: srv.Addr})
	srv2.Update(clone(mesh))
	h.waitVersion(t, srv2.Version())
	h.checkView(t, mesh)
	waitAcked(t, srv2)

	info := srv2.Clients()
	if len(info) != 1 {
		t.Fatalf("Clients() = %+v, want one", info)
	}
	if info[0].InitialResources != held || info[0].Resources != 1 {
		t.Errorf("client info = %+v, want it to have sent %d versions and received only the 1 changed resource", info[0], held)
	}
	if n := h.tokens.Load(); n < 2 {
		t.Errorf("Token() called %d times, want once per connection", n)
	}
}

func TestControllerGoneKeepsConfig(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	srv.Update(pushtest.Mesh(1, 1, 2))
	h := run(t, srv.Addr, nil)
	h.waitVersion(t, srv.Version())
	view := h.store.Load()

	srv.Stop()
	st := h.waitStatus(t, func(s configstream.Status) bool {
		return !s.Connected && strings.Contains(s.LastError, "is warren-controller running")
	})
	if !strings.Contains(st.LastError, "connect config push "+srv.Addr) {
		t.Errorf("LastError = %q, want it to name the controller's address", st.LastError)
	}
	if h.store.Load() != view || st.Version != view.Version() {
		t.Errorf("store or version changed while the controller was gone: %+v", st)
	}
}

func TestRefusedToken(t *testing.T) {
	t.Parallel()
	srv := pushtest.Start(t, pushtest.Options{})
	srv.Update(pushtest.Mesh(1, 1, 1))
	store := state.NewStore(nil)
	c, err := configstream.New(configstream.Config{
		Target: srv.Addr, Node: node, Store: store,
		Token:      func() (string, error) { return pushtest.ZtunnelToken("node-999"), nil },
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		ch := c.StatusChanged()
		if st := c.Status(); st.LastError != "" {
			if !strings.Contains(st.LastError, "token of node node-999 cannot subscribe as node node-000") || !strings.Contains(st.LastError, "NODE_NAME") {
				t.Errorf("LastError = %q, want the refusal and a hint", st.LastError)
			}
			break
		}
		<-ch
	}
	if store.Load() != nil {
		t.Errorf("a refused client filled the store")
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	tok := func() (string, error) { return "t", nil }
	store := state.NewStore(nil)
	for _, tc := range []struct {
		name string
		cfg  configstream.Config
		want string
	}{
		{"no target", configstream.Config{Token: tok, Node: "n", Store: store}, "target address is required"},
		{"no token", configstream.Config{Target: "x:1", Node: "n", Store: store}, "Token func is required"},
		{"no node", configstream.Config{Target: "x:1", Token: tok, Store: store}, "node name is required"},
		{"no store", configstream.Config{Target: "x:1", Token: tok, Node: "n"}, "state store is required"},
	} {
		if _, err := configstream.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New() = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
