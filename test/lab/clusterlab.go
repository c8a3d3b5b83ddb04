//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/test/images/oci"
	"github.com/warren-mesh/warren/test/lab/kubelet"
	"github.com/warren-mesh/warren/test/lab/svcproxy"
)

const (
	// WarrenVersion is the version `make images` tags Warren's images with by default (the
	// chart's appVersion).
	WarrenVersion = "0.1.0"
	// appImage is the sample app's image.
	appImage = "warren-lab/app:local"
	// appInImage is where the sample app lives inside appImage.
	appInImage = "/usr/local/bin/" + appBinary
)

// nodeAgents are what runs for one node in cluster mode: its kubelet and its service proxy.
type nodeAgents struct {
	Kubelet *kubelet.Kubelet
	Proxy   *svcproxy.Proxy
	cancel  context.CancelFunc
	done    sync.WaitGroup
	errs    []error
}

// clusterMembers are the cluster-mode parts the lab runs besides the processes.
type clusterMembers struct {
	mu     sync.Mutex
	agents map[string]*nodeAgents // by node name
	images *labImages
	shim   string
}

// labImages is the lab's container image store for its kubelets: OCI layouts (Warren's, from
// `make images`/test/images, and the lab's own with the sample app), unpacked once per image
// digest under the cache directory.
type labImages struct {
	layouts []string
	cache   string
}

// Rootfs implements kubelet.Images.
func (li *labImages) Rootfs(_ context.Context, ref string) (string, kubelet.ImageConfig, error) {
	var errs []error
	for _, dir := range li.layouts {
		lay, err := oci.Open(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		img, err := lay.Find(ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rootfs, err := img.Extract(li.cache)
		if err != nil {
			return "", kubelet.ImageConfig{}, err
		}
		c := img.Config
		return rootfs, kubelet.ImageConfig{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, ID: img.Digest}, nil
	}
	return "", kubelet.ImageConfig{}, fmt.Errorf("image %s: %w", ref, errors.Join(errs...))
}

// WarrenImagesDir is the OCI layout `make images` writes and the lab's kubelets pull from.
func (l *Lab) WarrenImagesDir() string { return filepath.Join(l.cfg.Root, "bin", "images", "oci") }

// BuildWarrenImages runs the image build (go run ./test/images) for tag: Warren's binaries,
// built afresh, in the OCI layout the lab's kubelets pull from.
func (l *Lab) BuildWarrenImages(ctx context.Context, tag string) error {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "run", "./test/images", "--out", filepath.Dir(l.WarrenImagesDir()), "--tag", tag)
	cmd.Dir = l.cfg.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make images (tag %s): %w\n%s", tag, err, out)
	}
	l.logf("Warren images %s built into %s in %v", tag, l.WarrenImagesDir(), time.Since(start).Round(time.Millisecond))
	return nil
}

// appImageBinary is the static sample app the lab puts into its image (and "lab exec" runs).
func (l *Lab) appImageBinary() string { return filepath.Join(l.cfg.StateDir, "images", appBinary) }

// buildAppImage builds the sample app statically (it runs in an empty root) into the lab's own
// layout as warren-lab/app:local.
func (l *Lab) buildAppImage(ctx context.Context, layout string) error {
	bin := l.appImageBinary()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./test/lab/app")
	cmd.Dir, cmd.Env = l.cfg.Root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build sample app: %w\n%s", err, out)
	}
	img, err := oci.Build(oci.Spec{
		Ref:        appImage,
		Binaries:   []oci.Binary{{Path: bin, Name: appBinary}},
		Entrypoint: []string{appInImage},
	})
	if err != nil {
		return fmt.Errorf("sample app image: %w", err)
	}
	return oci.Write(layout, img)
}

// startCluster prepares the image store and the shim, then starts every node's agents.
func (l *Lab) startClusterAgents(ctx context.Context) error {
	own := filepath.Join(l.cfg.StateDir, "images", "oci")
	if err := l.buildAppImage(ctx, own); err != nil {
		return err
	}
	shim := filepath.Join(l.cfg.StateDir, "images", "warren-lab-shim")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", shim, "./test/lab/kubelet/shim")
	cmd.Dir, cmd.Env = l.cfg.Root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build kubelet shim: %w\n%s", err, out)
	}
	l.clusterM = &clusterMembers{
		agents: map[string]*nodeAgents{},
		images: &labImages{layouts: []string{l.WarrenImagesDir(), own}, cache: filepath.Join(l.cfg.StateDir, "images", "rootfs")},
		shim:   shim,
	}
	l.mu.Lock()
	nodes := make([]*Node, 0, len(l.nodes))
	for _, n := range l.nodes {
		nodes = append(nodes, n)
	}
	l.mu.Unlock()
	for _, n := range nodes {
		if err := l.startNodeAgents(n); err != nil {
			return err
		}
	}
	return nil
}

// startNodeAgents starts the node's kubelet and service proxy; they run until Teardown.
func (l *Lab) startNodeAgents(n *Node) error {
	cs, err := kubernetes.NewForConfig(l.RestConfig)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(l.procLog("kubelet-"+n.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.Name)
	kubeletDir := filepath.Join(l.cfg.StateDir, "nodes", n.Name, "kubelet")
	if err := os.MkdirAll(kubeletDir, 0o755); err != nil {
		logf.Close()
		return err
	}
	k, err := kubelet.New(kubelet.Config{
		Client: cs, NodeName: n.Name, NodeIP: n.IP, NodeNetns: n.NetnsPath, NodeRoot: l.nodeRoot(n.Name),
		CgroupParent: n.Cgroup, Images: l.clusterM.images, ShimPath: l.clusterM.shim, NetnsPrefix: prefix,
		ClusterDNS: clusterDNSIP, ClusterDomain: clusterDomain,
		StateDir: kubeletDir, Logger: log.With("component", "kubelet"),
	})
	if err != nil {
		logf.Close()
		return fmt.Errorf("kubelet %s: %w", n.Name, err)
	}
	p, err := svcproxy.New(svcproxy.Config{
		Client: cs, NodeNetns: n.NetnsPath, ClusterDNS: clusterDNSIP, ClusterDomain: clusterDomain,
		Log: log.With("component", "svcproxy"),
	})
	if err != nil {
		logf.Close()
		return fmt.Errorf("service proxy %s: %w", n.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &nodeAgents{Kubelet: k, Proxy: p, cancel: cancel}
	for _, run := range []func(context.Context) error{k.Run, p.Run} {
		a.done.Add(1)
		go func() {
			defer a.done.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				log.Error("node agent stopped", "err", err)
				l.mu.Lock()
				a.errs = append(a.errs, err)
				l.mu.Unlock()
			}
		}()
	}
	go func() { a.done.Wait(); logf.Close() }()
	l.clusterM.mu.Lock()
	l.clusterM.agents[n.Name] = a
	l.clusterM.mu.Unlock()
	l.logf("node %s: kubelet and service proxy running (log %s)", n.Name, logf.Name())
	return nil
}

// stopClusterAgents stops every node's kubelet (which stops its pods) and service proxy.
func (l *Lab) stopClusterAgents() error {
	if l.clusterM == nil {
		return nil
	}
	l.clusterM.mu.Lock()
	agents := l.clusterM.agents
	l.clusterM.agents = map[string]*nodeAgents{}
	l.clusterM.mu.Unlock()
	for _, a := range agents {
		a.cancel()
	}
	var errs []error
	for name, a := range agents {
		ch := make(chan struct{})
		go func() { a.done.Wait(); close(ch) }()
		select {
		case <-ch:
		case <-time.After(60 * time.Second):
			errs = append(errs, fmt.Errorf("node %s: kubelet did not stop within 60s", name))
		}
	}
	return errors.Join(errs...)
}

// Agents returns the node's kubelet and service proxy (nil outside cluster mode).
func (l *Lab) Agents(node string) *nodeAgents {
	if l.clusterM == nil {
		return nil
	}
	l.clusterM.mu.Lock()
	defer l.clusterM.mu.Unlock()
	return l.clusterM.agents[node]
}

// clusterPod is the lab's view of a pod a kubelet runs.
func (l *Lab) clusterPod(ns, name string) *Pod {
	var obj corev1.Pod
	if err := l.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &obj); err != nil {
		return nil
	}
	a := l.Agents(obj.Spec.NodeName)
	if a == nil {
		return nil
	}
	info, ok := a.Kubelet.Pod(ns, name)
	if !ok {
		return nil
	}
	p := &Pod{
		Namespace: ns, Name: name, Node: obj.Spec.NodeName, ServiceAccount: obj.Spec.ServiceAccountName,
		Labels: obj.Labels, UID: string(info.UID), NetnsPath: info.Netns, Netns: filepath.Base(info.Netns),
		Cgroup: info.Cgroup, IP: info.IP,
	}
	if len(obj.Spec.Containers) > 0 {
		if c, ok := info.Containers[obj.Spec.Containers[0].Name]; ok {
			p.Pid, p.LogPath = c.Pid, c.Log
		}
	}
	return p
}

// clusterExec runs bin ("app": the sample app) with args in the pod's first container.
func (l *Lab) clusterExec(ctx context.Context, ns, name, bin string, args ...string) (string, error) {
	var obj corev1.Pod
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &obj); err != nil {
		return "", fmt.Errorf("exec in %s/%s: %w", ns, name, err)
	}
	a := l.Agents(obj.Spec.NodeName)
	if a == nil {
		return "", fmt.Errorf("exec in %s/%s: no kubelet for node %q", ns, name, obj.Spec.NodeName)
	}
	if bin == "app" {
		bin = appInImage
	}
	stdout, stderr, err := a.Kubelet.Exec(ctx, ns, name, obj.Spec.Containers[0].Name, append([]string{bin}, args...), nil)
	if err != nil {
		return string(stdout), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(stderr)))
	}
	return string(stdout), nil
}

// ContainerLogs returns the pod's container log (every attempt, oldest first), as read from the
// kubelet's files.
func (l *Lab) ContainerLogs(ctx context.Context, ns, name, container string) (string, error) {
	var obj corev1.Pod
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &obj); err != nil {
		return "", err
	}
	a := l.Agents(obj.Spec.NodeName)
	if a == nil {
		return "", fmt.Errorf("logs of %s/%s: no kubelet for node %q", ns, name, obj.Spec.NodeName)
	}
	info, ok := a.Kubelet.Pod(ns, name)
	if !ok {
		return "", fmt.Errorf("logs of %s/%s: not running on %s", ns, name, obj.Spec.NodeName)
	}
	c, ok := info.Containers[container]
	if !ok {
		return "", fmt.Errorf("logs of %s/%s: no container %q", ns, name, container)
	}
	var b strings.Builder
	for _, f := range c.Logs {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		b.Write(data)
	}
	return b.String(), nil
}

// ZtunnelPod returns the name of the warren-ztunnel pod on node ("" if none runs there).
func (l *Lab) ZtunnelPod(ctx context.Context, node string) (string, error) {
	var pods corev1.PodList
	if err := l.Client.List(ctx, &pods, client.InNamespace(SystemNamespace), client.MatchingLabels{"app.kubernetes.io/name": "warren-ztunnel"}); err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			return p.Name, nil
		}
	}
	return "", nil
}

// clusterZtunnelLog is the log of the ztunnel pod on node (every attempt).
func (l *Lab) clusterZtunnelLog(node string) (string, error) {
	ctx := context.Background()
	name, err := l.ZtunnelPod(ctx, node)
	if err != nil || name == "" {
		return "", fmt.Errorf("no ztunnel pod on %s (%v)", node, err)
	}
	return l.ContainerLogs(ctx, SystemNamespace, name, "ztunnel")
}

// ClusterUp brings the lab up as a cluster (Config.Cluster is set): the control plane with
// kube-controller-manager and kube-scheduler, nodes 1..nodes joined in a chain, each with its
// kubelet and service proxy. Warren is not installed (see InstallWarren). On error it tears
// down what it started.
func ClusterUp(ctx context.Context, cfg Config, nodes int) (*Lab, error) {
	cfg.Cluster = true
	if err := preflight(cfg.StateDir); err != nil {
		return nil, err
	}
	l, err := New(cfg)
	if err != nil {
		return nil, err
	}
	err = func() error {
		if err := l.StartControlPlane(ctx); err != nil {
			return err
		}
		if err := l.StartClusterComponents(ctx); err != nil {
			return err
		}
		if _, err := l.addNodeChain(ctx, nodes); err != nil {
			return err
		}
		return l.startClusterAgents(ctx)
	}()
	if err != nil {
		return nil, errors.Join(err, l.Teardown())
	}
	return l, nil
}

// warrenManifest renders Warren's chart (manifests/charts/warren, the source manifests/install
// is rendered from) for the lab with tag as the image tag, the way a user of
// `helm template | kubectl apply` does; the lab's values are the ones a cluster like it needs:
// the pods' cgroup is the node's (the lab names it after the node) and the ztunnels write
// the access log the demo and tests read. It returns the path of the rendered file.
func (l *Lab) warrenManifest(ctx context.Context, tag string) (string, error) {
	helm := filepath.Join(l.cfg.BinDir, "helm")
	if _, err := os.Stat(helm); err != nil {
		return "", fmt.Errorf("render warren: %w (build helm with test/tools/build.sh helm)", err)
	}
	cmd := exec.CommandContext(ctx, helm, "template", "warren", filepath.Join(l.cfg.Root, "manifests", "charts", "warren"),
		"--namespace", SystemNamespace,
		"--set", "namespace.create=true",
		"--set", "image.tag="+tag,
		"--set", "ztunnel.podCgroup="+filepath.Join(l.cgroupDir(), "$(NODE_NAME)"),
		"--set", "ztunnel.accessLog=true",
	)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("helm template: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	path := filepath.Join(l.cfg.StateDir, "warren-"+tag+".yaml")
	return path, os.WriteFile(path, out, 0o644)
}

// InstallWarren applies Warren (images tagged tag) with kubectl and waits until
// warren-controller and the warren-ztunnel DaemonSet have rolled out. It returns kubectl's
// output. The same call with another tag is an upgrade.
func (l *Lab) InstallWarren(ctx context.Context, tag string) (string, error) {
	file, err := l.warrenManifest(ctx, tag)
	if err != nil {
		return "", err
	}
	// One apply: the chart holds no custom resources (warren-controller creates the
	// GatewayClass), so nothing waits for the CRDs it creates.
	out, err := l.Kubectl(ctx, "apply", "-f", file)
	if err != nil {
		return out, err
	}
	for _, what := range []string{"deployment/warren-controller", "daemonset/warren-ztunnel"} {
		if _, err := l.Kubectl(ctx, "-n", SystemNamespace, "rollout", "status", what, "--timeout=300s"); err != nil {
			return out, fmt.Errorf("install warren %s: %w", tag, err)
		}
	}
	return out, nil
}

// UninstallWarren deletes what InstallWarren(tag) applied and waits until Warren's namespace
// is gone (its pods have stopped: the ztunnels uninstall on the way out).
func (l *Lab) UninstallWarren(ctx context.Context, tag string) (string, error) {
	file, err := l.warrenManifest(ctx, tag)
	if err != nil {
		return "", err
	}
	out, err := l.Kubectl(ctx, "delete", "-f", file, "--ignore-not-found", "--wait=true", "--timeout=180s")
	if err != nil {
		return out, err
	}
	err = Eventually(ctx, 120*time.Second, func() error {
		var ns corev1.Namespace
		if err := l.Client.Get(ctx, client.ObjectKey{Name: SystemNamespace}, &ns); err == nil {
			return fmt.Errorf("namespace %s still there (%s)", SystemNamespace, ns.Status.Phase)
		}
		return nil
	})
	return out, err
}

// ApplyWorkloads applies a manifest of the lab's (test/lab/testdata/cluster/<name>) and waits
// until every pod in namespaces is Ready.
func (l *Lab) ApplyWorkloads(ctx context.Context, name string, namespaces ...string) (string, error) {
	out, err := l.Kubectl(ctx, "apply", "-f", filepath.Join(l.cfg.Root, "test", "lab", "testdata", "cluster", name))
	if err != nil {
		return out, err
	}
	for _, ns := range namespaces {
		if _, err := l.Kubectl(ctx, "-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
			return out, err
		}
	}
	return out, nil
}

// redirectAttachTypes are the hooks Warren's eBPF redirect attaches to a node's pod cgroup.
var redirectAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCGroupSockOps,
}

// Leftovers lists what Warren left on the lab's nodes and in its API server after an
// uninstall, each checked separately: eBPF programs attached to a node's pod cgroup or to a
// pod's network namespace (sk_lookup), pins under /sys/fs/bpf/warren/<node>, a warren-cni
// entry in a node's CNI config, the warren-cni binary or kubeconfig in a node's CNI
// directories, and CustomResourceDefinitions of Warren or of the Gateway API it installed.
// Empty means clean.
func (l *Lab) Leftovers(ctx context.Context) ([]string, error) {
	var out []string
	l.mu.Lock()
	nodes := make([]*Node, 0, len(l.nodes))
	for _, n := range l.nodes {
		nodes = append(nodes, n)
	}
	l.mu.Unlock()
	for _, n := range nodes {
		attached, err := attachedPrograms(n.Cgroup, redirectAttachTypes)
		if err != nil {
			return nil, err
		}
		for _, a := range attached {
			out = append(out, fmt.Sprintf("node %s: eBPF program %s attached to cgroup %s", n.Name, a, n.Cgroup))
		}
		pin := filepath.Join(bpffsDir, "warren", n.Name)
		if ents, err := os.ReadDir(pin); err == nil && len(ents) > 0 {
			out = append(out, fmt.Sprintf("node %s: %d eBPF pins left in %s", n.Name, len(ents), pin))
		}
		root := l.nodeRoot(n.Name)
		confs, _ := filepath.Glob(filepath.Join(root, "etc/cni/net.d", "*"))
		for _, c := range confs {
			b, err := os.ReadFile(c)
			if err != nil {
				continue
			}
			if strings.Contains(string(b), "warren-cni") {
				out = append(out, fmt.Sprintf("node %s: %s still mentions warren-cni", n.Name, strings.TrimPrefix(c, root)))
			}
		}
		if _, err := os.Stat(filepath.Join(root, "opt/cni/bin/warren-cni")); err == nil {
			out = append(out, fmt.Sprintf("node %s: /opt/cni/bin/warren-cni still there", n.Name))
		}
	}
	netns, err := labNetns()
	if err != nil {
		return nil, err
	}
	for _, name := range netns {
		attached, err := attachedPrograms(filepath.Join("/run/netns", name), []ebpf.AttachType{ebpf.AttachSkLookup})
		if err != nil {
			return nil, err
		}
		for _, a := range attached {
			out = append(out, fmt.Sprintf("network namespace %s: eBPF program %s attached (sk_lookup)", name, a))
		}
	}
	crds, err := l.Kubectl(ctx, "get", "crd", "-o", "name")
	if err != nil {
		return nil, err
	}
	for _, c := range strings.Fields(crds) {
		if strings.HasSuffix(c, ".warren.dev") || strings.HasSuffix(c, ".gateway.networking.k8s.io") {
			out = append(out, "CustomResourceDefinition "+strings.TrimPrefix(c, "customresourcedefinition.apiextensions.k8s.io/")+" still installed")
		}
	}
	return out, nil
}

// WaitUninstalled waits up to timeout for Leftovers to come back empty; the error lists what
// is still there.
func (l *Lab) WaitUninstalled(ctx context.Context, timeout time.Duration) error {
	return Eventually(ctx, timeout, func() error {
		left, err := l.Leftovers(ctx)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			return errors.New(strings.Join(left, "\n  "))
		}
		return nil
	})
}

// attachedPrograms returns "<attach type> id <n>" for every program attached to target (a
// cgroup directory or a network namespace file) at each of the attach types.
func attachedPrograms(target string, types []ebpf.AttachType) ([]string, error) {
	f, err := os.Open(target)
	if err != nil {
		return nil, fmt.Errorf("query eBPF programs of %s: %w", target, err)
	}
	defer f.Close()
	var out []string
	for _, t := range types {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: t})
		if err != nil {
			return nil, fmt.Errorf("query %s programs of %s: %w", t, target, err)
		}
		for _, p := range res.Programs {
			out = append(out, fmt.Sprintf("%s id %d", t, p.ID))
		}
	}
	return out, nil
}

// SetupClusterL7 sets up the article's L7 example in the lab cluster as a user would:
// namespace l7 labelled ambient before its pods start, the workloads (l7-workloads.yaml), then
// waypoint-l7.yaml (the waypoint Gateway, Servers, routes, policies), the waypoint Deployment
// the controller creates rolled out, and the namespace bound to it.
func (l *Lab) SetupClusterL7(ctx context.Context) error {
	if err := l.EnsureNamespace(ctx, L7Namespace, map[string]string{LabelDataplaneMode: "ambient"}); err != nil {
		return err
	}
	if out, err := l.ApplyWorkloads(ctx, "l7-workloads.yaml", L7Namespace, "plain"); err != nil {
		return fmt.Errorf("l7 workloads: %w\n%s", err, out)
	}
	if out, err := l.Kubectl(ctx, "apply", "-n", L7Namespace, "-f", l.L7YAML()); err != nil {
		return fmt.Errorf("kubectl apply: %w\n%s", err, out)
	}
	if err := Eventually(ctx, 60*time.Second, func() error {
		_, err := l.Kubectl(ctx, "-n", L7Namespace, "get", "deployment/waypoint")
		return err
	}); err != nil {
		return fmt.Errorf("the controller did not create the waypoint Deployment: %w", err)
	}
	if _, err := l.Kubectl(ctx, "-n", L7Namespace, "rollout", "status", "deployment/waypoint", "--timeout=180s"); err != nil {
		return fmt.Errorf("waypoint rollout: %w", err)
	}
	if out, err := l.Kubectl(ctx, "label", "--overwrite", "ns", L7Namespace, "warren.dev/use-waypoint=waypoint"); err != nil {
		return fmt.Errorf("bind waypoint: %w\n%s", err, out)
	}
	return nil
}

// l7Case is one call of the L7 example and the status it must get.
type l7Case struct {
	from, method, path, want string
	// wait is how long the answer may take to become want (the binding reaches the ztunnels
	// with the next push).
	wait time.Duration
}

var l7Cases = []l7Case{
	{"service-a", "GET", "/foo/bar", "200", 60 * time.Second},
	{"service-a", "POST", "/foo/bar", "403", 10 * time.Second},
	{"service-c", "GET", "/foo/bar", "403", 10 * time.Second},
	{"service-a", "GET", "/other", "404", 10 * time.Second},
}

// checkL7 makes c's call to service-b and returns what came back (the status line and the
// body's first line, or the client's error); the error is set unless the status is c.want.
func (l *Lab) checkL7(ctx context.Context, c l7Case) (string, error) {
	b := l.Pod(L7Namespace, "service-b")
	if b == nil {
		return "", errors.New("service-b is not running")
	}
	out, err := l.Exec(ctx, L7Namespace, c.from, "app", "http", "--url", fmt.Sprintf("http://%s:8080%s", b.IP, c.path), "--method", c.method)
	got := strings.TrimSpace(out)
	if err != nil {
		got = "error: " + lastLine(err.Error())
	}
	if !strings.HasPrefix(got, c.want+" ") {
		return got, errors.New(got)
	}
	return got, nil
}

// describe is what a user would look at when something does not come up: every pod and the
// recent events.
func (l *Lab) describe(ctx context.Context) string {
	pods, _ := l.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
	events, _ := l.Kubectl(ctx, "get", "events", "-A", "--sort-by=.lastTimestamp")
	lines := strings.Split(strings.TrimSpace(events), "\n")
	if len(lines) > 40 {
		lines = append(lines[:1], lines[len(lines)-39:]...)
	}
	return "$ kubectl get pods -A -o wide\n" + pods + "$ kubectl get events -A (last 40)\n" + strings.Join(lines, "\n")
}

// waypointLog is the log of the L7 example's waypoint pod.
func (l *Lab) waypointLog(ctx context.Context) (string, error) {
	var pods corev1.PodList
	if err := l.Client.List(ctx, &pods, client.InNamespace(L7Namespace), client.MatchingLabels{"gateway.networking.k8s.io/gateway-name": "waypoint"}); err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			return l.ContainerLogs(ctx, L7Namespace, p.Name, "waypoint")
		}
	}
	return "", errors.New("no waypoint pod in namespace " + L7Namespace)
}

// PrePullWarren unpacks Warren's images of tag on the lab's nodes before they are needed, as
// an image pre-puller DaemonSet does on a real cluster before an upgrade: the ztunnel's restart
// window then holds no image pull.
func (l *Lab) PrePullWarren(ctx context.Context, tag string) error {
	if l.clusterM == nil {
		return errors.New("pre-pull: not a lab cluster")
	}
	for _, name := range []string{"warren-controller", "warren-ztunnel", "warren-waypoint"} {
		if _, _, err := l.clusterM.images.Rootfs(ctx, "ghcr.io/warren-mesh/"+name+":"+tag); err != nil {
			return fmt.Errorf("pre-pull: %w", err)
		}
	}
	return nil
}
