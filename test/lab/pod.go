//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Pod is a simulated pod: a network namespace wired by the CNI chain, a cgroup under its
// node's, and one process (the sample app) running in both.
type Pod struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	Node           string            `json:"node"`
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"`
	UID            string            `json:"uid"`
	// ContainerID is the sandbox id given to the CNI plugins (CNI_CONTAINERID).
	ContainerID string `json:"containerID"`
	// Netns is wrn-lab-<namespace>-<name>; NetnsPath is its /run/netns path (CNI_NETNS).
	Netns     string `json:"netns"`
	NetnsPath string `json:"netnsPath"`
	// Cgroup is <node cgroup>/<namespace>_<name>.
	Cgroup string     `json:"cgroup"`
	IP     netip.Addr `json:"ip"`
	// Args are the app's arguments (after the app binary).
	Args []string `json:"args,omitempty"`
	Pid  int      `json:"pid,omitempty"`
	// LogPath is the app's output.
	LogPath string `json:"logPath,omitempty"`

	proc *Proc
}

// Key is "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// PodSpec describes a pod for AddPod.
type PodSpec struct {
	Node, Namespace, Name, ServiceAccount string
	Labels                                map[string]string
	// AppArgs are the sample app's arguments, e.g. server --listen :8080 --name service-b.
	AppArgs []string
	// Bin, when set, runs that binary with AppArgs instead of the sample app, and Image names
	// it in the Pod object; Env is added to its environment.
	Bin, Image string
	Env        []string
	// Helpers are sample-app commands started in the pod before the main process (for
	// example "forward ..."), the way sidecar init containers run first.
	Helpers [][]string
	// Object, when set, edits the Pod object before it is created (owner references, the
	// container from a Deployment's template).
	Object func(*corev1.Pod)
	// BeforeStart, when set, runs once the Pod object exists and its network is up, before any
	// process starts: what a kubelet does when it mounts volumes (pod-bound tokens need the
	// Pod's UID).
	BeforeStart func(ctx context.Context, p *Pod) error
}

// AddPod does what a kubelet and its container runtime do for a pod: create the Pod object
// (spec.nodeName set: there is no scheduler), create the network namespace and the cgroup, run
// the CNI chain (loopback, then bridge + host-local [+ warren-cni]), start the app in the
// netns and cgroup, and write the Pod status (Running, podIP, Ready).
func (l *Lab) AddPod(ctx context.Context, spec PodSpec) (_ *Pod, err error) {
	node := l.Node(spec.Node)
	if node == nil {
		return nil, fmt.Errorf("add pod %s/%s: no node %q", spec.Namespace, spec.Name, spec.Node)
	}
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = "default"
	}
	if err := l.EnsureNamespace(ctx, spec.Namespace, nil); err != nil {
		return nil, err
	}
	if err := l.EnsureServiceAccount(ctx, spec.Namespace, spec.ServiceAccount); err != nil {
		return nil, err
	}
	appBin, err := l.appBinary(ctx)
	if err != nil {
		return nil, err
	}
	mainBin, image := appBin, "warren-lab/app:local"
	if spec.Bin != "" {
		mainBin, image = spec.Bin, spec.Image
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:           node.Name,
			ServiceAccountName: spec.ServiceAccount,
			Containers: []corev1.Container{{
				Name: "app", Image: image, Command: []string{filepath.Base(mainBin)}, Args: spec.AppArgs,
			}},
		},
	}
	if spec.Object != nil {
		spec.Object(obj)
	}
	if err := l.Client.Create(ctx, obj); err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	p := &Pod{
		Namespace: spec.Namespace, Name: spec.Name, Node: node.Name, ServiceAccount: spec.ServiceAccount,
		Labels: spec.Labels, UID: string(obj.UID), ContainerID: randomID(),
		Netns: prefix + spec.Namespace + "-" + spec.Name, Args: spec.AppArgs,
	}
	p.NetnsPath = filepath.Join("/run/netns", p.Netns)
	p.Cgroup = filepath.Join(node.Cgroup, spec.Namespace+"_"+spec.Name)
	p.LogPath = filepath.Join(l.cfg.StateDir, "logs", "pod-"+spec.Namespace+"-"+spec.Name+".log")
	l.mu.Lock()
	l.pods[p.Key()] = p
	l.mu.Unlock()
	defer func() {
		if err != nil {
			err = errors.Join(err, l.DeletePod(context.WithoutCancel(ctx), p.Namespace, p.Name))
		}
	}()

	if err := ip("netns", "add", p.Netns); err != nil {
		return nil, err
	}
	if err := os.Mkdir(p.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("pod %s cgroup: %w", p.Key(), err)
	}
	res, err := l.cniAdd(ctx, node, p)
	if err != nil {
		return nil, err
	}
	p.IP = res
	if spec.BeforeStart != nil {
		if err := spec.BeforeStart(ctx, p); err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Key(), err)
		}
	}
	for i, h := range spec.Helpers {
		logPath := strings.TrimSuffix(p.LogPath, ".log") + fmt.Sprintf("-helper%d.log", i)
		if _, err := spawn(p.Key()+" helper", logPath, appBin, h, p.NetnsPath, p.Cgroup, nil); err != nil {
			return nil, err
		}
	}
	proc, err := spawn(p.Key(), p.LogPath, mainBin, spec.AppArgs, p.NetnsPath, p.Cgroup, spec.Env)
	if err != nil {
		return nil, err
	}
	p.proc, p.Pid = proc, proc.Pid()
	if err := l.writePodStatus(ctx, node, p); err != nil {
		return nil, err
	}
	l.logf("pod %s on %s: ip %s, netns %s, pid %d", p.Key(), node.Name, p.IP, p.Netns, p.Pid)
	return p, l.saveState()
}

func randomID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// appBinary builds the sample app once per lab.
func (l *Lab) appBinary(ctx context.Context) (string, error) {
	path := filepath.Join(l.cfg.BinDir, appBinary)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.appBuilt {
		return path, nil
	}
	if _, err := l.GoBuild(ctx, "./test/lab/app", appBinary); err != nil {
		return "", err
	}
	l.appBuilt = true
	return path, nil
}

func (l *Lab) writePodStatus(ctx context.Context, node *Node, p *Pod) error {
	var obj corev1.Pod
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, &obj); err != nil {
		return err
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
	}
	obj.Status = corev1.PodStatus{
		Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodScheduled), cond(corev1.PodInitialized), cond(corev1.ContainersReady), cond(corev1.PodReady),
		},
		HostIP:    node.IP.String(),
		HostIPs:   []corev1.HostIP{{IP: node.IP.String()}},
		PodIP:     p.IP.String(),
		PodIPs:    []corev1.PodIP{{IP: p.IP.String()}},
		StartTime: &now,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: obj.Spec.Containers[0].Name, Ready: true, Image: obj.Spec.Containers[0].Image, ImageID: obj.Spec.Containers[0].Image,
			ContainerID: "lab://" + p.ContainerID, Started: new(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	if err := l.Client.Status().Update(ctx, &obj); err != nil {
		return fmt.Errorf("pod %s status: %w", p.Key(), err)
	}
	return nil
}

// Pod returns a pod by namespace and name.
func (l *Lab) Pod(ns, name string) *Pod {
	if l.cfg.Cluster {
		return l.clusterPod(ns, name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pods[ns+"/"+name]
}

// DeletePod stops the pod's process, runs CNI DEL, removes its netns and cgroup and deletes the
// Pod object. It keeps going past errors.
func (l *Lab) DeletePod(ctx context.Context, ns, name string) error {
	p := l.Pod(ns, name)
	if p == nil {
		return fmt.Errorf("delete pod %s/%s: not in the lab", ns, name)
	}
	var errs []error
	if _, err := os.Stat(p.Cgroup); err == nil {
		errs = append(errs, killCgroupTree(p.Cgroup))
	}
	if p.proc != nil {
		errs = append(errs, p.proc.Stop(time.Second))
	}
	if node := l.Node(p.Node); node != nil {
		if _, err := os.Stat(p.NetnsPath); err == nil {
			errs = append(errs, l.cniDel(ctx, node, p))
		}
	}
	if _, err := os.Stat(p.NetnsPath); err == nil {
		errs = append(errs, ip("netns", "del", p.Netns))
	}
	errs = append(errs, removeCgroupTree(p.Cgroup))
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := l.Client.Delete(ctx, obj, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	l.mu.Lock()
	delete(l.pods, p.Key())
	l.mu.Unlock()
	errs = append(errs, l.saveState())
	return errors.Join(errs...)
}

// Exec runs a command to completion inside the pod's netns and cgroup (as a process of the
// pod) and returns its stdout. "app" as bin means the sample app.
func (l *Lab) Exec(ctx context.Context, ns, name, bin string, args ...string) (string, error) {
	if l.cfg.Cluster {
		return l.clusterExec(ctx, ns, name, bin, args...)
	}
	p := l.Pod(ns, name)
	if p == nil {
		return "", fmt.Errorf("exec: no pod %s/%s", ns, name)
	}
	if bin == "app" {
		bin = filepath.Join(l.cfg.BinDir, appBinary)
	}
	out, err := runIn(ctx, p.NetnsPath, p.Cgroup, nil, nil, bin, args...)
	return string(out), err
}

// cniResult is the part of a CNI result the lab reads.
type cniResult struct {
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

// cniConfList is the node's network: bridge + host-local for the node's pod CIDR, then
// warren-cni when configured. ipMasq is off (no iptables anywhere in the lab).
func (l *Lab) cniConfList(node *Node) (map[string]any, error) {
	gw := node.PodCIDR.Addr().Next()
	plugins := []any{map[string]any{
		"type": "bridge", "bridge": node.Bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1500,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  []any{[]any{map[string]any{"subnet": node.PodCIDR.String(), "gateway": gw.String()}}},
			"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
			"dataDir": filepath.Join(l.cfg.StateDir, "cni", node.Short, "ipam"),
		},
	}}
	if wc := l.warrenCNI(); wc != "" {
		entry := map[string]any{"type": filepath.Base(wc)}
		for k, v := range l.warrenCNIConfig(node) {
			entry[k] = v
		}
		plugins = append(plugins, entry)
	}
	return map[string]any{"cniVersion": "1.0.0", "name": "wrn-lab-" + node.Short, "plugins": plugins}, nil
}

// warrenCNI is the warren-cni binary to chain, or "".
func (l *Lab) warrenCNI() string {
	switch l.cfg.WarrenCNI {
	case "off":
		return ""
	case "auto":
		p := filepath.Join(l.cfg.BinDir, "warren-cni")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	default:
		return l.cfg.WarrenCNI
	}
}

func (l *Lab) cniPath() string {
	dirs := []string{l.cfg.CNIBinDir}
	if wc := l.warrenCNI(); wc != "" {
		dirs = append(dirs, filepath.Dir(wc))
	}
	return strings.Join(dirs, ":")
}

// cniEnv is what a container runtime passes to every plugin (CNI spec section "Parameters";
// the K8S_* args are containerd's).
func (l *Lab) cniEnv(cmd string, p *Pod) []string {
	return []string{
		"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + p.ContainerID, "CNI_NETNS=" + p.NetnsPath, "CNI_IFNAME=eth0",
		"CNI_PATH=" + l.cniPath(),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name +
			";K8S_POD_INFRA_CONTAINER_ID=" + p.ContainerID + ";K8S_POD_UID=" + p.UID,
	}
}

// execPlugin runs one plugin the way a runtime on the node does: in the node's host network
// namespace (here the node's netns), config on stdin, result on stdout.
func (l *Lab) execPlugin(ctx context.Context, node *Node, cmd string, p *Pod, conf map[string]any) ([]byte, error) {
	typ, _ := conf["type"].(string)
	bin := ""
	for _, d := range strings.Split(l.cniPath(), ":") {
		if _, err := os.Stat(filepath.Join(d, typ)); err == nil {
			bin = filepath.Join(d, typ)
			break
		}
	}
	if bin == "" {
		return nil, fmt.Errorf("CNI plugin %q not found in %s (build the reference plugins with test/tools/build.sh cni-plugins)", typ, l.cniPath())
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	netns := node.NetnsPath
	if wc := l.warrenCNI(); wc != "" && typ == filepath.Base(wc) {
		// warren-cni runs in the host network namespace, like the ztunnel whose node agent it
		// calls: it reads the Pod from the API server, which listens on the host's loopback
		// (the node netns stands for the node's pod-facing network only).
		netns = ""
	}
	out, err := runIn(ctx, netns, "", stdin, l.cniEnv(cmd, p), bin)
	if err != nil {
		return nil, fmt.Errorf("CNI %s %s for pod %s: %w (stdout %s)", typ, cmd, p.Key(), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// chainConf is plugin conf with the list's name and version and the previous result.
func chainConf(list map[string]any, plugin any, prev json.RawMessage) map[string]any {
	conf := map[string]any{}
	for k, v := range plugin.(map[string]any) {
		conf[k] = v
	}
	conf["name"], conf["cniVersion"] = list["name"], list["cniVersion"]
	if prev != nil {
		conf["prevResult"] = prev
	}
	return conf
}

func loopbackConf() map[string]any {
	return map[string]any{"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
}

// cniAdd runs loopback, then the node's chain, and caches the final result for DEL.
func (l *Lab) cniAdd(ctx context.Context, node *Node, p *Pod) (netip.Addr, error) {
	if _, err := l.execPlugin(ctx, node, "ADD", p, loopbackConf()); err != nil {
		return netip.Addr{}, err
	}
	list, err := l.cniConfList(node)
	if err != nil {
		return netip.Addr{}, err
	}
	if b, err := json.MarshalIndent(list, "", "  "); err == nil {
		_ = os.MkdirAll(filepath.Join(l.cfg.StateDir, "cni", node.Short), 0o755)
		_ = os.WriteFile(filepath.Join(l.cfg.StateDir, "cni", node.Short, "10-wrn-lab.conflist"), b, 0o644)
	}
	var prev json.RawMessage
	for _, pl := range list["plugins"].([]any) {
		out, err := l.execPlugin(ctx, node, "ADD", p, chainConf(list, pl, prev))
		if err != nil {
			return netip.Addr{}, err
		}
		prev = json.RawMessage(out)
	}
	if err := os.WriteFile(l.resultPath(node, p), prev, 0o644); err != nil {
		return netip.Addr{}, err
	}
	var res cniResult
	if err := json.Unmarshal(prev, &res); err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result for %s: %w", p.Key(), err)
	}
	for _, a := range res.IPs {
		if pfx, err := netip.ParsePrefix(a.Address); err == nil {
			return pfx.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("CNI result for %s has no IP: %s", p.Key(), prev)
}

func (l *Lab) resultPath(node *Node, p *Pod) string {
	return filepath.Join(l.cfg.StateDir, "cni", node.Short, "result-"+p.ContainerID+".json")
}

// cniDel runs the chain's DEL in reverse order with the cached result, then loopback's.
func (l *Lab) cniDel(ctx context.Context, node *Node, p *Pod) error {
	list, err := l.cniConfList(node)
	if err != nil {
		return err
	}
	prev, _ := os.ReadFile(l.resultPath(node, p))
	var errs []error
	plugins := list["plugins"].([]any)
	for i := len(plugins) - 1; i >= 0; i-- {
		var pr json.RawMessage
		if len(prev) > 0 {
			pr = prev
		}
		_, err := l.execPlugin(ctx, node, "DEL", p, chainConf(list, plugins[i], pr))
		errs = append(errs, err)
	}
	_, err = l.execPlugin(ctx, node, "DEL", p, loopbackConf())
	errs = append(errs, err, os.RemoveAll(l.resultPath(node, p)))
	return errors.Join(errs...)
}
