//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Node is a simulated node: a network namespace (the node's host network, holding its pod
// bridge and its end of the inter-node link) and a cgroup parent for its pods.
type Node struct {
	// Name is the Node object's name (node-1).
	Name string `json:"name"`
	// Short is the name used on the host (node1).
	Short string `json:"short"`
	// Netns is the node's network namespace (wrn-lab-node1) and NetnsPath its /run/netns path.
	Netns     string `json:"netns"`
	NetnsPath string `json:"netnsPath"`
	// IP is the node's address on the inter-node link (10.99.0.<i>).
	IP netip.Addr `json:"ip"`
	// PodCIDR is the node's pod range (10.244.<i>.0/24).
	PodCIDR netip.Prefix `json:"podCIDR"`
	// Cgroup is the cgroup v2 directory all the node's pods live under: attach per-node cgroup
	// programs (the eBPF redirect) here.
	Cgroup string `json:"cgroup"`
	// Bridge is the pod bridge inside the node's netns.
	Bridge string `json:"bridge"`
	// Links maps a peer node's name to this node's interface toward it.
	Links map[string]string `json:"links,omitempty"`
}

// AddNode creates node-<i>: netns wrn-lab-node<i> with IP forwarding on, a cgroup
// <cgroup2>/wrn-lab/node<i>, and a Node object (podCIDR, InternalIP, Ready) whose Ready
// condition the lab keeps fresh. i is 1..254.
func (l *Lab) AddNode(ctx context.Context, i int) (*Node, error) {
	if i < 1 || i > 254 {
		return nil, fmt.Errorf("node index %d out of 1..254", i)
	}
	short := fmt.Sprintf("node%d", i)
	n := &Node{
		Name:    fmt.Sprintf("node-%d", i),
		Short:   short,
		Netns:   prefix + short,
		IP:      netip.AddrFrom4([4]byte{10, 99, 0, byte(i)}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
		Bridge:  "wrn-lab-br0",
		Links:   map[string]string{},
	}
	n.NetnsPath = filepath.Join("/run/netns", n.Netns)
	if err := ip("netns", "add", n.Netns); err != nil {
		return nil, err
	}
	if err := ip("-n", n.Netns, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	if _, err := runIn(ctx, n.NetnsPath, "", nil, nil, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return nil, fmt.Errorf("node %s: enable forwarding: %w", n.Name, err)
	}
	cg := l.cgroupDir()
	if cg == "" {
		return nil, fmt.Errorf("node %s: no cgroup v2 mount", n.Name)
	}
	l.cgroupRoot = cg
	n.Cgroup = filepath.Join(cg, short)
	if l.cfg.Cluster {
		// Named like the Node, so that a DaemonSet reaches it as /sys/fs/cgroup/wrn-lab/$(NODE_NAME).
		n.Cgroup = filepath.Join(cg, n.Name)
	}
	if err := os.MkdirAll(n.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: cgroup: %w", n.Name, err)
	}
	if l.cfg.Cluster {
		if err := addHostLink(n, i); err != nil {
			return nil, err
		}
		if err := l.prepareNodeRoot(n); err != nil {
			return nil, err
		}
	}
	if err := l.writeNodeObject(ctx, n); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.nodes[n.Name] = n
	l.mu.Unlock()
	l.startHeartbeat()
	l.logf("node %s: netns %s, link address %s, pod CIDR %s, cgroup %s", n.Name, n.Netns, n.IP, n.PodCIDR, n.Cgroup)
	return n, l.saveState()
}

// ConnectNodes joins two nodes with a veth pair (the inter-node "wire": capture on
// a.Links[b.Name] inside a's netns), gives each end its node's address in 10.99.0.0/24, and
// routes each node's pod CIDR to the other over it.
func (l *Lab) ConnectNodes(a, b *Node) error {
	aIf, bIf := "to-"+b.Short, "to-"+a.Short
	if err := ip("link", "add", aIf, "netns", a.Netns, "type", "veth", "peer", "name", bIf, "netns", b.Netns); err != nil {
		return err
	}
	for _, s := range []struct {
		n, peer *Node
		ifc     string
	}{{a, b, aIf}, {b, a, bIf}} {
		if err := ip("-n", s.n.Netns, "addr", "add", netip.PrefixFrom(s.n.IP, 24).String(), "dev", s.ifc); err != nil {
			return err
		}
		if err := ip("-n", s.n.Netns, "link", "set", s.ifc, "up"); err != nil {
			return err
		}
		if err := ip("-n", s.n.Netns, "route", "add", s.peer.PodCIDR.String(), "via", s.peer.IP.String(), "dev", s.ifc); err != nil {
			return err
		}
	}
	l.mu.Lock()
	a.Links[b.Name], b.Links[a.Name] = aIf, bIf
	l.mu.Unlock()
	l.logf("link %s(%s %s) <-> %s(%s %s)", a.Name, aIf, a.IP, b.Name, bIf, b.IP)
	return l.saveState()
}

// Node returns a node by name.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nodes[name]
}

func (l *Lab) writeNodeObject(ctx context.Context, n *Node) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "warren.dev/lab": "true",
		}},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	if err := l.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	return l.nodeStatus(ctx, n)
}

// nodeStatus writes the node's addresses and a fresh Ready condition (again on a conflict:
// in a cluster, kube-controller-manager writes the Node too).
func (l *Lab) nodeStatus(ctx context.Context, n *Node) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return l.nodeStatusOnce(ctx, n) })
}

func (l *Lab) nodeStatusOnce(ctx context.Context, n *Node) error {
	var obj corev1.Node
	if err := l.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &obj); err != nil {
		return fmt.Errorf("get node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	since := now
	for _, c := range obj.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			since = c.LastTransitionTime
		}
	}
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.IP.String()},
		{Type: corev1.NodeHostName, Address: n.Name},
	}
	obj.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "warren lab node (network namespace " + n.Netns + ")", LastHeartbeatTime: now, LastTransitionTime: since,
	}}
	res := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi"), corev1.ResourcePods: resource.MustParse("110"),
	}
	obj.Status.Capacity, obj.Status.Allocatable = res, res
	obj.Status.NodeInfo.OperatingSystem, obj.Status.NodeInfo.Architecture = "linux", "amd64"
	obj.Status.NodeInfo.KubeletVersion = "warren-lab"
	if err := l.Client.Status().Update(ctx, &obj); err != nil {
		if apierrors.IsConflict(err) {
			return err
		}
		return fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return nil
}

// startHeartbeat refreshes every node's Ready condition every 20 s, as a kubelet would.
func (l *Lab) startHeartbeat() {
	if l.stopBeat != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.stopBeat = cancel
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			l.mu.Lock()
			nodes := make([]*Node, 0, len(l.nodes))
			for _, n := range l.nodes {
				nodes = append(nodes, n)
			}
			l.mu.Unlock()
			for _, n := range nodes {
				if err := l.nodeStatus(ctx, n); err != nil && ctx.Err() == nil {
					l.logf("heartbeat: %v", err)
				}
				if l.cfg.Cluster {
					if err := l.renewNodeLease(ctx, n); err != nil && ctx.Err() == nil {
						l.logf("heartbeat: %v", err)
					}
				}
			}
		}
	}()
}
