//go:build linux

package nodeagent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/nodeagent/protocol"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// fake records what the agent asked of the ztunnel and the redirect.
type fake struct {
	mu        sync.Mutex
	pods      map[string]ztunnel.Pod
	cookies   map[uint64]bool
	podIPs    map[uint64][]netip.Addr
	enrollErr error
}

func (f *fake) AddPod(p ztunnel.Pod, _ sockets.Factory) (ztunnel.Listeners, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.pods[p.UID]; dup {
		return ztunnel.Listeners{}, errors.New("already enrolled")
	}
	f.pods[p.UID] = p
	return ztunnel.Listeners{}, nil
}

func (f *fake) RemoveWorkload(uid string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, uid)
}

func (f *fake) Enroll(c uint64, podIPs ...netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.enrollErr != nil {
		return f.enrollErr
	}
	f.cookies[c] = true
	f.podIPs[c] = podIPs
	return nil
}

func (f *fake) Unenroll(c uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.cookies, c)
	return nil
}

func (f *fake) AttachInbound(_, _ net.Listener) (*redirect.Inbound, error) { return nil, nil }

func (f *fake) state() (uids []string, cookies int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for uid := range f.pods {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids, len(f.cookies)
}

func start(t *testing.T, store *state.Store, netnsFor func(string) (string, bool)) (*Agent, *fake) {
	t.Helper()
	f := &fake{pods: map[string]ztunnel.Pod{}, cookies: map[uint64]bool{}, podIPs: map[uint64][]netip.Addr{}}
	a, err := New(Config{
		Socket: filepath.Join(t.TempDir(), "agent.sock"), Node: "n1", Ztunnel: f, Redirect: f, Store: store,
		StateDir: t.TempDir(), NetnsFor: netnsFor,
		Sockets:     func(string, netip.Addr) sockets.Factory { return sockets.Host{} },
		NetnsCookie: func(path string) (uint64, error) { return uint64(len(path)), nil },
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v", err)
		}
	})
	return a, f
}

func addReq(uid, netns string) protocol.Request {
	return protocol.Request{
		Op: protocol.OpAdd, PodUID: uid, PodName: "p-" + uid, PodNamespace: "ns", ServiceAccount: "sa",
		Netns: netns, Addresses: []string{"fd00::1", "10.0.0.1"},
	}
}

func TestAddDelOverTheSocket(t *testing.T) {
	a, f := start(t, nil, nil)
	ctx := context.Background()
	call := func(req protocol.Request) (*protocol.Response, error) { return protocol.Call(ctx, a.Addr(), req) }

	if _, err := call(addReq("u1", "/run/netns/one")); err != nil {
		t.Fatalf("add = %v", err)
	}
	if _, err := call(addReq("u1", "/run/netns/one")); err != nil {
		t.Errorf("repeated add = %v; want ok", err)
	}
	if uids, cookies := f.state(); !slices.Equal(uids, []string{"u1"}) || cookies != 1 {
		t.Errorf("after add: pods %v, cookies %d", uids, cookies)
	}
	if got := f.pods["u1"].Addresses; len(got) != 2 {
		t.Errorf("pod addresses = %v", got)
	}
	f.mu.Lock()
	for c, ips := range f.podIPs {
		if want := []netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.1")}; !slices.Equal(ips, want) {
			t.Errorf("Enroll(%d) got pod IPs %v, want %v", c, ips, want)
		}
	}
	f.mu.Unlock()
	// A new sandbox of the same pod replaces the enrollment.
	if _, err := call(addReq("u1", "/run/netns/second")); err != nil {
		t.Fatalf("add with a new netns = %v", err)
	}
	resp, err := call(protocol.Request{Op: protocol.OpCheck, PodUID: "u1"})
	if err != nil || len(resp.Pods) != 1 || resp.Pods[0].Netns != "/run/netns/second" {
		t.Errorf("check = %+v, %v; want the new netns", resp, err)
	}
	if _, cookies := f.state(); cookies != 1 {
		t.Errorf("cookies after re-enrollment = %d, want 1", cookies)
	}
	if _, err := call(protocol.Request{Op: protocol.OpCheck, PodUID: "nope"}); err == nil || !strings.Contains(err.Error(), "not enrolled") {
		t.Errorf("check unknown = %v; want not enrolled", err)
	}
	if _, err := call(protocol.Request{Op: protocol.OpDel, PodUID: "u1"}); err != nil {
		t.Fatalf("del = %v", err)
	}
	if _, err := call(protocol.Request{Op: protocol.OpDel, PodUID: "u1"}); err != nil {
		t.Errorf("repeated del = %v; want ok", err)
	}
	if uids, cookies := f.state(); len(uids) != 0 || cookies != 0 {
		t.Errorf("after del: pods %v, cookies %d", uids, cookies)
	}
	resp, err = call(protocol.Request{Op: protocol.OpList})
	if err != nil || len(resp.Pods) != 0 {
		t.Errorf("list = %+v, %v", resp, err)
	}
}

func TestAddFailureRollsBack(t *testing.T) {
	a, f := start(t, nil, nil)
	f.enrollErr = errors.New("map full")
	_, err := protocol.Call(context.Background(), a.Addr(), addReq("u1", "/run/netns/one"))
	if err == nil || !strings.Contains(err.Error(), "map full") {
		t.Fatalf("add = %v; want the enroll error", err)
	}
	if uids, _ := f.state(); len(uids) != 0 {
		t.Errorf("pods after failed add = %v; want none (rolled back)", uids)
	}
	if len(a.List()) != 0 {
		t.Errorf("agent lists %v after a failed add", a.List())
	}
}

func TestAddWithoutServiceAccount(t *testing.T) {
	a, _ := start(t, state.NewStore(nil), nil)
	req := addReq("u1", "/run/netns/one")
	req.ServiceAccount = ""
	_, err := protocol.Call(context.Background(), a.Addr(), req)
	if err == nil || !strings.Contains(err.Error(), "no service account") {
		t.Errorf("add without service account or config = %v; want an error", err)
	}
}

func TestBadRequestsOverTheSocket(t *testing.T) {
	a, _ := start(t, nil, nil)
	for _, in := range []string{
		`{"op":"explode"}` + "\n",
		`{"op":"add","podUID":"u"}` + "\n",
		"garbage\n",
		strings.Repeat("x", protocol.MaxMessage+10),
	} {
		c, err := net.Dial("unix", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		go func() { io.WriteString(c, in); c.(*net.UnixConn).CloseWrite() }()
		var resp protocol.Response
		err = protocol.Read(c, &resp)
		c.Close()
		if err != nil || resp.OK || !strings.HasPrefix(resp.Error, "bad request: ") {
			t.Errorf("answer to %.40q = %+v, %v; want a bad request error", in, resp, err)
		}
	}
}

func TestReconcile(t *testing.T) {
	ips := map[string]string{"running": "10.0.0.1", "unknown": "10.0.0.2", "plain": "10.0.0.3"}
	wl := func(uid string, p nodeconfig.TunnelProtocol) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: uid, Name: uid, Namespace: "ns", ServiceAccount: "sa", Addresses: []string{ips[uid]},
			Node: "n1", TunnelProtocol: p,
		}
	}
	build := func(ws ...*nodeconfig.Workload) *state.View {
		v, err := state.Build(&nodeconfig.Snapshot{Version: "v", Workloads: ws})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	hb, none := nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_NONE
	known := func(uid string) (string, bool) { return "/run/netns/" + uid, uid != "unknown" }
	store := state.NewStore(build(wl("running", hb), wl("unknown", hb), wl("plain", none)))
	a, f := start(t, store, known)
	wait := func(want ...string) {
		t.Helper()
		for range 500 {
			if uids, _ := f.state(); slices.Equal(uids, want) {
				return
			}
			waitABit()
		}
		uids, _ := f.state()
		t.Fatalf("enrolled = %v, want %v", uids, want)
	}
	wait("running")
	// A pod added by the CNI that the config does not have yet is left alone.
	if err := a.Add(addReq("new", "/run/netns/new")); err != nil {
		t.Fatal(err)
	}
	store.Swap(build(wl("running", none), wl("unknown", hb), wl("plain", hb)))
	wait("new", "plain")
	// A pod the config had and now omits (namespace un-labelled; the controller leaves
	// non-members out) is un-enrolled; "new" was never in the config and stays.
	store.Swap(build(wl("unknown", hb)))
	wait("new")
}

func waitABit() { <-time.After(10 * time.Millisecond) }

// TestWaypointPodsNotEnrolled: a waypoint's own pod (waypoint_proxy) speaks HBONE itself and is
// never enrolled, neither from the config nor by a CNI add; a pod that becomes one is un-enrolled.
func TestWaypointPodsNotEnrolled(t *testing.T) {
	wl := func(uid, ip string, waypoint bool) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: uid, Name: uid, Namespace: "ns", ServiceAccount: uid, Addresses: []string{ip}, Node: "n1",
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE, WaypointProxy: waypoint,
		}
	}
	build := func(ws ...*nodeconfig.Workload) *state.View {
		v, err := state.Build(&nodeconfig.Snapshot{Version: "v", Workloads: ws})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	known := func(uid string) (string, bool) { return "/run/netns/" + uid, true }
	store := state.NewStore(build(wl("app", "10.0.0.1", false), wl("waypoint", "10.0.0.2", true)))
	a, f := start(t, store, known)
	wait := func(want ...string) {
		t.Helper()
		for range 500 {
			if uids, _ := f.state(); slices.Equal(uids, want) {
				return
			}
			waitABit()
		}
		uids, _ := f.state()
		t.Fatalf("enrolled = %v, want %v", uids, want)
	}
	wait("app")
	// The CNI asks anyway (an old plugin, or no kubeconfig): answered ok, not enrolled.
	if err := a.Add(addReq("waypoint", "/run/netns/waypoint")); err != nil {
		t.Fatalf("Add(waypoint) = %v, want nil", err)
	}
	if uids, cookies := f.state(); !slices.Equal(uids, []string{"app"}) || cookies != 1 {
		t.Fatalf("after Add(waypoint): enrolled %v with %d cookies, want [app] and 1", uids, cookies)
	}
	// app turns out to be a waypoint's pod: un-enrolled, and not enrolled again.
	store.Swap(build(wl("app", "10.0.0.1", true), wl("waypoint", "10.0.0.2", true)))
	wait()
	store.Swap(build(wl("app", "10.0.0.1", true), wl("waypoint", "10.0.0.2", true), wl("other", "10.0.0.3", false)))
	wait("other")
}
