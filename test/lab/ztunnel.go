//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Ztunnel is a node's warren-ztunnel as the lab runs it.
type Ztunnel struct {
	Node string
	// Socket is the node agent's unix socket (warren-cni's nodeAgentSocket); PodStateDir is where
	// warren-cni records the node's pods.
	Socket, PodStateDir string
	// TokenFile holds the pod-bound ServiceAccount token; CARootFile the controller's roots.
	TokenFile, CARootFile string
	// AdminAddr, MetricsAddr, ReadyAddr are on loopback, distinct per node.
	AdminAddr, MetricsAddr, ReadyAddr string
	// PodIP is the ztunnel Pod's status.podIP: 10.244.255.<i> on the lab's dummy link
	// wrn-lab-zt<i> in the host network namespace, where the admin port also answers
	// (ProxyAdminAddr, <PodIP>:15000) for the API server's pods/proxy.
	PodIP          netip.Addr
	ProxyAdminAddr string
	// LogPath is the ztunnel's output (component, access and security logs, JSON lines).
	LogPath string
	// PinPath is where the ztunnel pins its eBPF redirect (--bpf-pin-path):
	// /sys/fs/bpf/wrn-lab-<node>, distinct per node; Teardown removes it.
	PinPath string

	bin  string
	args []string
	proc *Proc
}

// Ztunnel returns the node's ztunnel (nil before StartZtunnel).
func (l *Lab) Ztunnel(node string) *Ztunnel {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ztunnels[node]
}

// nodeDir is /tmp/wrn-lab/<node>: the node's socket and pod records (a short path: unix
// socket paths are limited to 107 bytes).
func (l *Lab) nodeDir(node string) string {
	return filepath.Join(l.cfg.StateDir, node)
}

// warrenCNIConfig is warren-cni's conflist entry for a node: its node agent, pod records and
// the lab kubeconfig (membership by the namespace/pod label, identity from the Pod).
func (l *Lab) warrenCNIConfig(node *Node) map[string]any {
	conf := map[string]any{}
	if l.Ztunnel(node.Name) != nil || l.cfg.WithZtunnel {
		dir := l.nodeDir(node.Name)
		conf["nodeAgentSocket"] = filepath.Join(dir, "agent.sock")
		conf["stateDir"] = filepath.Join(dir, "pods")
		conf["kubeconfig"] = l.Kubeconfig
	}
	for k, v := range l.cfg.WarrenCNIConfig {
		conf[k] = v
	}
	return conf
}

// StartZtunnel builds warren-ztunnel and warren-cni (once), creates the Pod object
// warren-system/warren-ztunnel-<node> (ServiceAccount warren-ztunnel, nodeName node) and a
// TokenRequest bound to it (audience warren-ca, 24h), and runs warren-ztunnel in the host network
// namespace (it reaches the controller on loopback and enters pod netns itself) in in-pod mode:
// eBPF redirect attached to the node's cgroup, node agent on <state>/<node>/agent.sock. It waits
// until readiness answers 200 (the ztunnel has its first config).
func (l *Lab) StartZtunnel(ctx context.Context, node string) error {
	n := l.Node(node)
	if n == nil {
		return fmt.Errorf("StartZtunnel: no node %q", node)
	}
	if l.PushAddr == "" {
		return errors.New("StartZtunnel: warren-controller not started")
	}
	if err := l.buildMeshBinaries(ctx); err != nil {
		return err
	}
	dir := l.nodeDir(node)
	z := &Ztunnel{
		Node: node, Socket: filepath.Join(dir, "agent.sock"), PodStateDir: filepath.Join(dir, "pods"),
		TokenFile: filepath.Join(dir, "token"), CARootFile: filepath.Join(l.cfg.StateDir, "ca-root.pem"),
		LogPath: filepath.Join(l.cfg.StateDir, "logs", "warren-ztunnel-"+node+".log"),
		PinPath: labPinDir(node),
		bin:     filepath.Join(l.cfg.BinDir, "warren-ztunnel"),
	}
	if err := ensureBPFFS(); err != nil {
		return fmt.Errorf("ztunnel %s: %w", node, err)
	}
	// Pins left by an earlier lab that was not torn down would be adopted: start clean.
	if err := os.RemoveAll(z.PinPath); err != nil {
		return fmt.Errorf("ztunnel %s: remove stale pins: %w", node, err)
	}
	idx := strings.TrimPrefix(n.Short, "node")
	z.AdminAddr, z.MetricsAddr, z.ReadyAddr = "127.0.0.1:1500"+idx, "127.0.0.1:1502"+idx, "127.0.0.1:1503"+idx
	// The API server's pods/proxy refuses loopback: the ztunnel's Pod gets an address of its
	// own on a dummy link the lab owns, and the admin port answers there on :15000 too.
	podIP, err := addZtunnelLink(n)
	if err != nil {
		return fmt.Errorf("ztunnel %s: %w", node, err)
	}
	z.PodIP, z.ProxyAdminAddr = podIP, netip.AddrPortFrom(podIP, 15000).String()
	_ = os.Remove(z.LogPath) // a fresh log per lab (RestartZtunnel appends)
	if err := os.MkdirAll(z.PodStateDir, 0o755); err != nil {
		return err
	}
	root, err := l.CARoot(ctx)
	if err != nil {
		return fmt.Errorf("ztunnel %s: CA root: %w", node, err)
	}
	if err := os.WriteFile(z.CARootFile, root, 0o644); err != nil {
		return err
	}
	if err := l.ztunnelToken(ctx, n, z.PodIP, z.TokenFile); err != nil {
		return err
	}
	z.args = []string{
		"--node", node, "--controller", l.PushAddr, "--ca-addr", l.CAAddr,
		"--ca-root-file", z.CARootFile, "--token-file", z.TokenFile,
		"--node-agent-socket", z.Socket, "--redirect-cgroup", n.Cgroup, "--pod-state-dir", z.PodStateDir,
		"--bpf-pin-path", z.PinPath,
		// The lab's tests, demo and benchmark read the access log (off by default).
		"--access-log",
		"--admin-addr", z.AdminAddr + "," + z.ProxyAdminAddr, "--metrics-addr", z.MetricsAddr, "--ready-addr", z.ReadyAddr,
	}
	l.mu.Lock()
	if l.ztunnels == nil {
		l.ztunnels = map[string]*Ztunnel{}
	}
	l.ztunnels[node] = z
	l.mu.Unlock()
	return l.RestartZtunnel(ctx, node)
}

// RestartZtunnel (re)starts a node's ztunnel process with the arguments of StartZtunnel and
// waits for its readiness.
func (l *Lab) RestartZtunnel(ctx context.Context, node string) error {
	z := l.Ztunnel(node)
	if z == nil {
		return fmt.Errorf("no ztunnel on %s", node)
	}
	if z.proc != nil && !z.proc.Exited() {
		return fmt.Errorf("ztunnel on %s still runs (pid %d)", node, z.proc.Pid())
	}
	// A socket left by a killed process would make the new one fail to bind.
	_ = os.Remove(z.Socket)
	start := time.Now()
	p, err := l.startProcess("warren-ztunnel-"+node, z.bin, z.args, nil)
	if err != nil {
		return err
	}
	z.proc = p
	if err := waitReady(ctx, "http://"+z.ReadyAddr+"/healthz/ready", p, 60*time.Second); err != nil {
		return fmt.Errorf("warren-ztunnel on %s: %w; see %s", node, err, z.LogPath)
	}
	l.logf("warren-ztunnel on %s ready in %v (pid %d, agent %s, admin %s, log %s)",
		node, time.Since(start).Round(time.Millisecond), p.Pid(), z.Socket, z.AdminAddr, z.LogPath)
	return nil
}

// bpffsDir is where the lab expects the bpf filesystem.
const bpffsDir = "/sys/fs/bpf"

// labPinDir is the node's ztunnel pin directory, named with the lab prefix.
func labPinDir(node string) string { return filepath.Join(bpffsDir, prefix+node) }

// ensureBPFFS mounts a bpf filesystem on /sys/fs/bpf unless one is there; it only mounts on an
// empty directory that is not a mount point.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsDir, &st); err != nil {
		return fmt.Errorf("bpffs: statfs %s: %w", bpffsDir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	ents, err := os.ReadDir(bpffsDir)
	if err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	var d, p unix.Stat_t
	if err := unix.Stat(bpffsDir, &d); err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if err := unix.Stat(filepath.Dir(bpffsDir), &p); err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if len(ents) != 0 || d.Dev != p.Dev {
		return fmt.Errorf("bpffs: %s is not a bpf filesystem and not an empty directory to mount one on: mount bpffs there", bpffsDir)
	}
	if err := unix.Mount("bpf", bpffsDir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpffs: mount on %s: %w", bpffsDir, err)
	}
	return nil
}

// removeLabPins removes the ztunnel pin directories of the lab (/sys/fs/bpf/wrn-lab-*), which
// detaches the eBPF redirect the lab's ztunnels left pinned.
func removeLabPins() error {
	ents, err := os.ReadDir(bpffsDir)
	if err != nil {
		return nil // no bpffs: nothing pinned
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			errs = append(errs, os.RemoveAll(filepath.Join(bpffsDir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// KillZtunnel kills a node's ztunnel with SIGKILL (a crash: no cleanup runs) and waits for it.
func (l *Lab) KillZtunnel(node string) error {
	z := l.Ztunnel(node)
	if z == nil || z.proc == nil {
		return fmt.Errorf("no ztunnel on %s", node)
	}
	_ = z.proc.cmd.Process.Kill()
	<-z.proc.done
	return nil
}

// StopController stops warren-controller (SIGTERM).
func (l *Lab) StopController() error {
	l.mu.Lock()
	p := l.procs["warren-controller"]
	l.mu.Unlock()
	if p == nil {
		return errors.New("warren-controller not running")
	}
	return p.Stop(5 * time.Second)
}

func waitReady(ctx context.Context, url string, p *Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	last := "no answer"
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if p.Exited() {
			return fmt.Errorf("exited during start (%v)", p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v (%s)", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (l *Lab) buildMeshBinaries(ctx context.Context) error {
	l.mu.Lock()
	built := l.meshBuilt
	l.mu.Unlock()
	if built {
		return nil
	}
	for _, b := range []string{"warren-ztunnel", "warren-cni"} {
		if _, err := l.GoBuild(ctx, "./cmd/"+b, b); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.meshBuilt = true
	l.mu.Unlock()
	return nil
}

// ztunnelToken creates (or reuses) the ztunnel's Pod object on the node, marks it Running, and
// writes a 24h token of warren-system/warren-ztunnel bound to it (audience warren-ca) to path.
func (l *Lab) ztunnelToken(ctx context.Context, n *Node, podIP netip.Addr, path string) error {
	name := "warren-ztunnel-" + n.Name
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: name, Labels: map[string]string{"app": "warren-ztunnel"}},
		Spec: corev1.PodSpec{
			NodeName: n.Name, ServiceAccountName: "warren-ztunnel", HostNetwork: true,
			Containers: []corev1.Container{{Name: "ztunnel", Image: "warren-lab/warren-ztunnel:local"}},
		},
	}
	err := l.Client.Create(ctx, pod)
	if apierrors.IsAlreadyExists(err) {
		err = l.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod)
	}
	if err != nil {
		return fmt.Errorf("ztunnel pod %s: %w", name, err)
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: n.IP.String(), PodIP: podIP.String(), StartTime: &now,
		PodIPs:     []corev1.PodIP{{IP: podIP.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
	}
	if err := l.Client.Status().Update(ctx, pod); err != nil {
		return fmt.Errorf("ztunnel pod %s status: %w", name, err)
	}
	exp := int64(24 * 3600)
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:         []string{"warren-ca"},
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: "warren-ztunnel"}}
	if err := l.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		return fmt.Errorf("token for %s: %w", name, err)
	}
	if left := time.Until(tr.Status.ExpirationTimestamp.Time); left < time.Hour {
		l.logf("warning: the API server capped the ztunnel token of %s at %v", n.Name, left.Round(time.Second))
	}
	return os.WriteFile(path, []byte(tr.Status.Token), 0o600)
}

// ztunnelLinkPrefix names the dummy links holding the ztunnels' pod IPs (wrn-lab-zt<i>).
const ztunnelLinkPrefix = prefix + "zt"

// addZtunnelLink creates (again, if a crashed lab left it) the dummy link wrn-lab-zt<i> in the
// host network namespace with 10.244.255.<i>/32, the node's ztunnel pod IP.
func addZtunnelLink(n *Node) (netip.Addr, error) {
	idx, err := strconv.Atoi(strings.TrimPrefix(n.Short, "node"))
	if err != nil || idx < 1 || idx > 254 {
		return netip.Addr{}, fmt.Errorf("ztunnel link: node %s has no index", n.Name)
	}
	name := fmt.Sprintf("%s%d", ztunnelLinkPrefix, idx)
	addr := netip.AddrFrom4([4]byte{10, 244, 255, byte(idx)})
	_ = exec.Command("ip", "link", "del", name).Run()
	add := []string{"link", "add", name, "type", "dummy"}
	if exec.Command("ip", add...).Run() != nil {
		// Kernels without the dummy driver: a veth pair in the host namespace does the same
		// (deleting wrn-lab-zt<i> deletes its peer wrn-lab-zp<i>).
		peer := fmt.Sprintf("%szp%d", prefix, idx)
		add = []string{"link", "add", name, "type", "veth", "peer", "name", peer}
		if out, err := exec.Command("ip", add...).CombinedOutput(); err != nil {
			return netip.Addr{}, fmt.Errorf("ip %s: %v: %s", strings.Join(add, " "), err, strings.TrimSpace(string(out)))
		}
		if out, err := exec.Command("ip", "link", "set", peer, "up").CombinedOutput(); err != nil {
			return netip.Addr{}, fmt.Errorf("ip link set %s up: %v: %s", peer, err, strings.TrimSpace(string(out)))
		}
	}
	for _, args := range [][]string{
		{"addr", "add", netip.PrefixFrom(addr, 32).String(), "dev", name},
		{"link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return netip.Addr{}, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return addr, nil
}

// removeZtunnelLinks deletes the lab's wrn-lab-zt* links from the host network namespace.
func removeZtunnelLinks() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, ztunnelLinkPrefix) {
			if out, err := exec.Command("ip", "link", "del", i.Name).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link del %s: %v: %s", i.Name, err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}
