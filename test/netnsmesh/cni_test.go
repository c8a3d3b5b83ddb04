//go:build linux

package netnsmesh_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/netns"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/nodeagent"
	"github.com/warren-mesh/warren/ztunnel/nodeagent/protocol"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// openSnapshot has pods a and b on node n1 with no policy (everything allowed); a's tunnel
// protocol is aProto (NONE: its namespace was un-labelled).
func openSnapshot(version string, a, b *pod, aProto nodeconfig.TunnelProtocol) *nodeconfig.Snapshot {
	wl := func(p *pod, proto nodeconfig.TunnelProtocol) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + p.name, Name: p.name + "-0", Namespace: "default", ServiceAccount: p.name,
			Addresses: []string{p.ip.String()}, Node: "n1", Ready: true, TunnelProtocol: proto,
			Ports: []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		}
	}
	return &nodeconfig.Snapshot{
		Version:   version,
		Workloads: []*nodeconfig.Workload{wl(a, aProto), wl(b, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE)},
	}
}

// cniNode is one node in in-pod mode as warren-ztunnel runs it: the redirect, a ztunnel whose
// workloads are enrolled only by the node agent, and the node agent.
type cniNode struct {
	store  *state.Store
	agent  *nodeagent.Agent
	access *logBuffer
	logs   *logBuffer
}

func startCNINode(t *testing.T, cgroup, socket, stateDir string, snap *nodeconfig.Snapshot) *cniNode {
	t.Helper()
	r, err := redirect.New(redirect.Config{CgroupPath: cgroup})
	if err != nil {
		t.Fatalf("redirect.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("redirect Close() = %v", err)
		}
	})
	c := catest.New(t, "cluster.local")
	v, err := state.Build(snap)
	if err != nil {
		t.Fatal(err)
	}
	n := &cniNode{store: state.NewStore(v), access: &logBuffer{}, logs: &logBuffer{}}
	reg := prometheus.NewRegistry()
	ids, err := identity.New(identity.Config{Signer: c, TrustDomain: c.TrustDomain(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(n.logs, nil))
	zt, err := ztunnel.New(ztunnel.Config{
		Node: "n1", Store: n.store, Identities: ids, Bundle: c.Bundle(), TrustDomain: c.TrustDomain(),
		Sockets: func(*nodeconfig.Workload) (sockets.Factory, error) {
			return nil, errors.New("enrolled by the node agent only")
		},
		ListenAddr:       ztunnel.InPodListenAddr,
		OriginalDst:      r.OriginalDst,
		Registry:         reg,
		Log:              log,
		AccessLog:        slog.New(slog.NewJSONHandler(n.access, nil)),
		HandshakeTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- zt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel Run() = %v", err)
		}
		if t.Failed() {
			t.Logf("ztunnel and agent log:\n%s\naccess log:\n%s", n.logs, n.access)
		}
	})
	n.agent, err = nodeagent.New(nodeagent.Config{
		Socket: socket, Node: "n1", Ztunnel: zt, Redirect: r, Store: n.store, StateDir: stateDir, Log: log,
	})
	if err != nil {
		t.Fatalf("nodeagent.New() = %v", err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("agent socket %s: %v, mode %v; want mode 0600", socket, err, fi.Mode().Perm())
	}
	actx, acancel := context.WithCancel(context.Background())
	adone := make(chan error, 1)
	go func() { adone <- n.agent.Run(actx) }()
	t.Cleanup(func() { // before the ztunnel's
		acancel()
		if err := <-adone; err != nil {
			t.Errorf("agent Run() = %v", err)
		}
		if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("agent socket left behind after Run: %v", err)
		}
	})
	return n
}

func (n *cniNode) enrolled() []string {
	var uids []string
	for _, p := range n.agent.List() {
		uids = append(uids, p.UID)
	}
	return uids
}

// plugin runs the warren-cni binary as a CNI runtime does.
type plugin struct {
	bin, socket, stateDir string
}

func (pl plugin) run(t *testing.T, cmd string, p *pod) (stdout string, err error) {
	t.Helper()
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "warren-cni",
		"nodeAgentSocket": pl.socket, "stateDir": pl.stateDir, "enrollAll": true,
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": p.ns.Path}},
			"ips":        []any{map[string]any{"address": netip.PrefixFrom(p.ip, 16).String(), "interface": 0}},
		},
	}
	stdin, _ := json.Marshal(conf)
	c := exec.Command(pl.bin)
	c.Env = append(os.Environ(),
		"CNI_COMMAND="+cmd, "CNI_CONTAINERID=ctr-"+p.name, "CNI_NETNS="+p.ns.Path, "CNI_IFNAME=eth0",
		"CNI_PATH="+filepath.Dir(pl.bin),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.name+"-0;K8S_POD_UID=uid-"+p.name+";K8S_POD_INFRA_CONTAINER_ID=ctr-"+p.name,
	)
	c.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err = c.Run()
	t.Logf("warren-cni %s %s: err=%v stdout=%s stderr=%s", cmd, p.name, err, out.String(), errb.String())
	return out.String(), err
}

// TestCNIEnrollment drives enrollment the way a kubelet does: the warren-cni binary, called with
// the CNI environment and a prevResult, asks the node agent (in-process, with a real ztunnel and
// the eBPF redirect) to enroll the pod; then the pod's application traffic is in the mesh.
func TestCNIEnrollment(t *testing.T) {
	netns.RequireRoot(t)
	if err := redirect.Probe(); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			netns.SkipOrFail(t, "%v", err)
		}
		t.Fatalf("redirect.Probe() = %v", err)
	}
	bin := filepath.Join(t.TempDir(), "warren-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/warren-mesh/warren/cmd/warren-cni").CombinedOutput(); err != nil {
		t.Fatalf("go build warren-cni: %v\n%s", err, out)
	}

	x := byte(1 + rand.IntN(250))
	a := &pod{name: "service-a", ns: netns.New(t), ip: netip.AddrFrom4([4]byte{10, x, 1, 2})}
	b := &pod{name: "service-b", ns: netns.New(t), ip: netip.AddrFrom4([4]byte{10, x, 2, 3})}
	netns.Veth(t, a.ns, []netip.Prefix{netip.PrefixFrom(a.ip, 16)}, b.ns, []netip.Prefix{netip.PrefixFrom(b.ip, 16)})
	parent := netns.NewCgroup(t)
	cgA := parent.Child(t)
	netns.Serve(b.ns.Listen(t, "tcp", ":8080"), func(net.Conn) string { return "hello from b" })

	dir := t.TempDir()
	pl := plugin{bin: bin, socket: filepath.Join(dir, "node-agent.sock"), stateDir: filepath.Join(dir, "pods")}
	hbone := nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE
	idA := td + "/ns/default/sa/service-a"
	dst := netip.AddrPortFrom(b.ip, 8080)

	// Before the node agent runs: pod B's ADD fails (fail closed), but B's record stays, as it
	// does for a pod the runtime keeps retrying.
	out, err := pl.run(t, "ADD", b)
	if err == nil {
		t.Fatalf("ADD without a node agent succeeded; want a non-zero exit (fail closed)")
	}
	if !strings.Contains(out, "node agent unreachable") || !strings.Contains(out, "failing closed") {
		t.Errorf("ADD without a node agent: stdout %q; want a CNI error naming the unreachable node agent", out)
	}
	if rec, err := protocol.ReadRecord(pl.stateDir, "uid-service-b"); err != nil || rec.Netns != b.ns.Path {
		t.Fatalf("record of pod B = %+v, %v; want its netns %s", rec, err, b.ns.Path)
	}

	// The node agent starts and finds running pod B from its record.
	n := startCNINode(t, parent.Path, pl.socket, pl.stateDir, openSnapshot("v1", a, b, hbone))
	waitFor(t, func() bool { return slices.Equal(n.enrolled(), []string{"uid-service-b"}) }, "running pod B enrolled at agent start")

	// counts of pod A's meshed connections to B, from the access log.
	meshed := func() (out, in int) {
		out = len(n.access.lines(map[string]string{"direction": "outbound", "mode": "hbone", "dst.addr": dst.String()}))
		in = len(n.access.lines(map[string]string{"direction": "inbound", "src.identity": idA}))
		return out, in
	}
	dialMeshed := func(t *testing.T) {
		t.Helper()
		o0, i0 := meshed()
		res := a.ns.Dial(t, cgA, dst, netns.DialOptions{})
		if res.Err != "" || res.Reply != "hello from b" || res.Peer != dst {
			t.Fatalf("service-a -> %s = %+v; want the app's answer from %s", dst, res, dst)
		}
		waitFor(t, func() bool { o, i := meshed(); return o == o0+1 && i == i0+1 }, "outbound and inbound access lines with service-a's identity")
	}
	dialDirect := func(t *testing.T) {
		t.Helper()
		o0, i0 := meshed()
		res := a.ns.Dial(t, cgA, dst, netns.DialOptions{})
		if res.Err != "" || res.Reply != "hello from b" || res.Local.Addr() != a.ip {
			t.Fatalf("service-a -> %s = %+v; want a direct connection from %s", dst, res, a.ip)
		}
		time.Sleep(100 * time.Millisecond)
		if o, i := meshed(); o != o0 || i != i0 {
			t.Fatalf("pod A's connection went through the mesh (access lines %d/%d -> %d/%d); want it direct", o0, i0, o, i)
		}
	}

	t.Run("ADD enrolls", func(t *testing.T) {
		out, err := pl.run(t, "ADD", a)
		if err != nil {
			t.Fatalf("ADD = %v", err)
		}
		if !strings.Contains(out, a.ip.String()) {
			t.Errorf("ADD output %q; want prevResult with %s", out, a.ip)
		}
		if got := n.enrolled(); !slices.Equal(got, []string{"uid-service-a", "uid-service-b"}) {
			t.Fatalf("enrolled = %v", got)
		}
		if _, err := pl.run(t, "ADD", a); err != nil {
			t.Errorf("repeated ADD = %v; want ok (idempotent)", err)
		}
		resp, err := protocol.Call(context.Background(), pl.socket, protocol.Request{Op: protocol.OpCheck, PodUID: "uid-service-a"})
		if err != nil || len(resp.Pods) != 1 || resp.Pods[0].Netns != a.ns.Path {
			t.Errorf("check = %+v, %v; want pod A with its netns", resp, err)
		}
		dialMeshed(t)
	})

	t.Run("un-labelling un-enrolls, labelling enrolls again", func(t *testing.T) {
		swap(t, n.store, openSnapshot("v2", a, b, nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_NONE))
		waitFor(t, func() bool { return slices.Equal(n.enrolled(), []string{"uid-service-b"}) }, "pod A un-enrolled")
		dialDirect(t)
		swap(t, n.store, openSnapshot("v3", a, b, hbone))
		waitFor(t, func() bool { return len(n.enrolled()) == 2 }, "pod A enrolled again from its record")
		dialMeshed(t)
	})

	t.Run("DEL un-enrolls", func(t *testing.T) {
		if _, err := pl.run(t, "DEL", a); err != nil {
			t.Fatalf("DEL = %v", err)
		}
		if got := n.enrolled(); !slices.Equal(got, []string{"uid-service-b"}) {
			t.Fatalf("enrolled after DEL = %v", got)
		}
		if _, err := protocol.ReadRecord(pl.stateDir, "uid-service-a"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("record of pod A after DEL: %v; want none", err)
		}
		dialDirect(t)
		if _, err := pl.run(t, "DEL", a); err != nil {
			t.Errorf("repeated DEL = %v; want ok", err)
		}
	})
}

func swap(t *testing.T, s *state.Store, snap *nodeconfig.Snapshot) {
	t.Helper()
	v, err := state.Build(snap)
	if err != nil {
		t.Fatal(err)
	}
	s.Swap(v)
}
