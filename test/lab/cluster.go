//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The lab as a cluster (Config.Cluster):
//
//   - control plane: etcd and kube-apiserver (envtest, with a serving certificate for the
//     kubernetes Service's ClusterIP, see pki.go), kube-controller-manager and kube-scheduler,
//     all processes on the host's loopback;
//   - every node: its network namespace (the node's host network), a root directory
//     <state>/nodes/<node>/root for node-local files (etc/cni/net.d with the node's bridge
//     conflist, opt/cni/bin with the reference plugins, var/run/warren, var/lib/cni), the
//     cgroup <cgroup2>/wrn-lab/<node>, a veth to the host (wrn-lab-h<i> 10.98.<i>.1/30 <->
//     to-host 10.98.<i>.2/30) so the API server reaches node and pod addresses (pods/proxy,
//     node IP 10.99.0.<i>), a lab kubelet (test/lab/kubelet) and a userspace service proxy
//     with the cluster DNS on 10.0.0.10 (test/lab/svcproxy);
//   - Warren itself is installed by applying manifests/ with kubectl (InstallWarren), from the
//     images `make images` wrote.

// clusterDNSIP is the cluster DNS address pods get in resolv.conf.
var clusterDNSIP = netip.MustParseAddr("10.0.0.10")

// clusterDomain is the cluster's DNS domain.
const clusterDomain = "cluster.local"

// StartClusterComponents starts kube-controller-manager and kube-scheduler against the lab's
// API server and reserves the cluster DNS address with Service kube-system/kube-dns.
func (l *Lab) StartClusterComponents(ctx context.Context) error {
	if l.pki == nil {
		return errors.New("cluster components: the control plane was not started in cluster mode")
	}
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(l.cfg.BinDir, b)); err != nil {
			return fmt.Errorf("cluster components: %w (build it with test/tools/build.sh %s)", err, b)
		}
	}
	kcm := []string{
		"--kubeconfig", l.Kubeconfig,
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--root-ca-file", filepath.Join(l.pki.Dir, "ca.crt"),
		"--service-account-private-key-file", filepath.Join(l.pki.Dir, "sa-signer.key"),
		"--cluster-name", "wrn-lab",
		"--bind-address", "127.0.0.1", "--secure-port", "10257",
		// The lab's nodes are stable: do not evict their pods after a slow heartbeat.
		"--node-monitor-grace-period", "120s",
		"--controllers", "*,-node-ipam-controller",
	}
	if _, err := l.startProcess("kube-controller-manager", filepath.Join(l.cfg.BinDir, "kube-controller-manager"), kcm, nil); err != nil {
		return err
	}
	sched := []string{
		"--kubeconfig", l.Kubeconfig,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", "10259",
	}
	if _, err := l.startProcess("kube-scheduler", filepath.Join(l.cfg.BinDir, "kube-scheduler"), sched, nil); err != nil {
		return err
	}
	// The DNS server answers on 10.0.0.10 itself (svcproxy); this Service only keeps the
	// address from being given to another Service. Its one port is not 53, so the service proxy
	// does not try to listen where the DNS server does.
	dns := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterDNSIP.String(),
			Ports:     []corev1.ServicePort{{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP}},
		},
	}
	if err := l.Client.Create(ctx, dns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster dns service: %w", err)
	}
	// The root CA ConfigMap in every namespace tells kube-controller-manager is working.
	if err := Eventually(ctx, 60*time.Second, func() error {
		var cm corev1.ConfigMap
		return l.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "kube-root-ca.crt"}, &cm)
	}); err != nil {
		return fmt.Errorf("kube-controller-manager did not publish default/kube-root-ca.crt: %w; see %s", err, l.procLog("kube-controller-manager"))
	}
	l.logf("kube-controller-manager and kube-scheduler running")
	return nil
}

func (l *Lab) procLog(name string) string {
	return filepath.Join(l.cfg.StateDir, "logs", name+".log")
}

// hostLinkAddrs are the two ends of node i's link to the host.
func hostLinkAddrs(i int) (host, node netip.Prefix) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 98, byte(i), 1}), 30),
		netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 98, byte(i), 2}), 30)
}

// hostLinkPrefix names the host ends of the node links (wrn-lab-h<i>).
const hostLinkPrefix = prefix + "h"

// addHostLink joins node i to the host with a veth and routes the node's address and pod CIDR
// over it, so processes on the host (the API server's pods/proxy, the lab's probes of
// addresses) reach the node and its pods. The node gets no default route: nothing in it may
// leave the lab.
func addHostLink(n *Node, i int) error {
	hostIf := fmt.Sprintf("%s%d", hostLinkPrefix, i)
	_ = ip("link", "del", hostIf)
	host, node := hostLinkAddrs(i)
	steps := [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", "to-host", "netns", n.Netns},
		{"addr", "add", host.String(), "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", n.Netns, "addr", "add", node.String(), "dev", "to-host"},
		{"-n", n.Netns, "link", "set", "to-host", "up"},
		{"-n", n.Netns, "route", "add", netip.PrefixFrom(apiServerIP, 32).String(), "via", host.Addr().String(), "dev", "to-host"},
		{"route", "add", n.PodCIDR.String(), "via", node.Addr().String(), "dev", hostIf},
		{"route", "add", netip.PrefixFrom(n.IP, 32).String(), "via", node.Addr().String(), "dev", hostIf},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("node %s host link: %w", n.Name, err)
		}
	}
	return nil
}

// nodeRoot is node's root directory for node-local files.
func (l *Lab) nodeRoot(node string) string {
	return filepath.Join(l.cfg.StateDir, "nodes", node, "root")
}

// prepareNodeRoot lays out the node's root as a node image would: the reference CNI plugins in
// opt/cni/bin and the node's network config (bridge + host-local for its pod CIDR) in
// etc/cni/net.d, where a mesh's installer finds and chains into it.
func (l *Lab) prepareNodeRoot(n *Node) error {
	root := l.nodeRoot(n.Name)
	_ = os.RemoveAll(root)
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin", "var/run/warren", "var/lib/cni", "var/run/netns", "run/netns"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := copyFile(filepath.Join(l.cfg.CNIBinDir, p), filepath.Join(root, "opt/cni/bin", p), 0o755); err != nil {
			return fmt.Errorf("node %s root: %w (build the plugins with test/tools/build.sh cni-plugins)", n.Name, err)
		}
	}
	gw := n.PodCIDR.Addr().Next()
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "wrn-lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
`, n.Bridge, n.PodCIDR.String(), gw.String())
	return os.WriteFile(filepath.Join(root, "etc/cni/net.d", "10-wrn-lab.conflist"), []byte(conf), 0o644)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// renewNodeLease keeps the node's Lease in kube-node-lease fresh, as a kubelet does (the
// node lifecycle controller reads it).
func (l *Lab) renewNodeLease(ctx context.Context, n *Node) error {
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-node-lease", Name: n.Name}}
	err := l.Client.Get(ctx, client.ObjectKeyFromObject(lease), lease)
	if apierrors.IsNotFound(err) {
		lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.Name), LeaseDurationSeconds: ptr.To(int32(40)), RenewTime: &now}
		if err := l.Client.Create(ctx, lease); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("node %s lease: %w", n.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("node %s lease: %w", n.Name, err)
	}
	lease.Spec.HolderIdentity, lease.Spec.RenewTime = ptr.To(n.Name), &now
	if err := l.Client.Update(ctx, lease); err != nil {
		return fmt.Errorf("node %s lease: %w", n.Name, err)
	}
	return nil
}

// removeHostLinks deletes the lab's wrn-lab-h* links (their peers live in node namespaces,
// which teardown deletes too).
func removeHostLinks() error {
	out, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range out {
		if strings.HasPrefix(e.Name(), hostLinkPrefix) {
			errs = append(errs, ip("link", "del", e.Name()))
		}
	}
	return errors.Join(errs...)
}

// apiServerIP is where the cluster's API server listens: a host address on the lab's link
// wrn-lab-api, routed from every node over its host link.
var apiServerIP = netip.MustParseAddr("10.98.0.1")

// apiLink names the host link holding apiServerIP (a veth pair: the kernel here has no dummy
// driver; its peer is wrn-lab-apip).
const apiLink = prefix + "api"

// addAPILink creates wrn-lab-api with apiServerIP/32 (again, if a crashed lab left it).
func addAPILink() error {
	_ = ip("link", "del", apiLink)
	for _, s := range [][]string{
		{"link", "add", apiLink, "type", "veth", "peer", "name", apiLink + "p"},
		{"addr", "add", netip.PrefixFrom(apiServerIP, 32).String(), "dev", apiLink},
		{"link", "set", apiLink + "p", "up"},
		{"link", "set", apiLink, "up"},
	} {
		if err := ip(s...); err != nil {
			return fmt.Errorf("api server link: %w", err)
		}
	}
	return nil
}

// removeAPILink deletes wrn-lab-api (and with it its peer).
func removeAPILink() error {
	if _, err := os.Stat("/sys/class/net/" + apiLink); err != nil {
		return nil
	}
	return ip("link", "del", apiLink)
}

// freePort returns a TCP port free on addr (envtest picks one only for loopback).
func freePort(addr netip.Addr) (string, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return "", fmt.Errorf("free port on %s: %w", addr, err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), nil
}
