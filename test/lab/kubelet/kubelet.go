//go:build linux

// Package kubelet is the lab's kubelet and container runtime for one simulated node: it
// watches the Pods bound to its node, runs them as local processes, each container in its own
// mount namespace (an overlay of its image's root filesystem, volume bind mounts, chroot),
// the pod's network namespace (wired by the node's CNI chain) and cgroup, and reports their
// status to the API server as a kubelet does.
//
// Only the lab (test/lab) and its tests import it. It needs root.
//
// What it follows from Kubernetes: the CNI chain as containerd runs it (loopback, then the
// first conflist of <NodeRoot>/etc/cni/net.d, plugins from <NodeRoot>/opt/cni/bin, run in the
// node's view: its network namespace, chrooted into NodeRoot); a failed sandbox
// (FailedCreatePodSandBox event) is cleaned up and retried with backoff; volumes (configMap,
// secret, downwardAPI, projected with serviceAccountToken bound to the Pod, emptyDir,
// hostPath with its type checks) written atomically through a ..data symbolic link and
// refreshed (tokens at 80% of their lifetime, the rest every ResyncPeriod); the ServiceAccount
// token, ca.crt (ConfigMap kube-root-ca.crt) and namespace at
// /var/run/secrets/kubernetes.io/serviceaccount when the pod has no kube-api-access volume
// and automounting is not turned off; init containers in order, then containers; image
// Entrypoint/Cmd overridden by command/args with $(VAR) expansion; env with fieldRef,
// resourceFieldRef, envFrom and service links; resolv.conf by dnsPolicy and dnsConfig;
// /etc/hosts with hostAliases; startup, readiness and liveness probes (httpGet and tcpSocket
// from the node's network namespace, exec, grpc); restart policies with exponential backoff;
// status through the status subresource; graceful deletion.
//
// Where it simplifies (documented, on purpose):
//   - processes run as root with every capability: securityContext (users, capabilities,
//     seccomp, read-only root) is not enforced; there is no pid or IPC namespace;
//   - resources are not limited (no cgroup controllers are written); resourceFieldRef reads
//     the container's limits/requests, and the Node's allocatable when a limit is unset;
//   - imagePullPolicy is ignored: Images resolves every reference; emptyDir medium Memory is a
//     plain directory; mountPropagation Bidirectional is honoured only as rshared on our side;
//   - restart and retry backoff starts at 1 s and is capped at MaxBackoff (10 s), not 5 min;
//     terminationGracePeriodSeconds is capped at MaxGracePeriod (30 s); preStop/postStart
//     hooks, ephemeral containers and sidecar init containers (restartPolicy Always) are not
//     supported (a sidecar init container runs like an ordinary one);
//   - container logs are plain files (one per container attempt, see PodInfo), not CRI
//     formatted; kubectl logs does not reach them (there is no kubelet API server).
package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Images resolves image references to unpacked root filesystems.
type Images interface {
	// Rootfs returns the directory holding ref's unpacked root filesystem (read only: the
	// kubelet never writes into it) and its configuration.
	Rootfs(ctx context.Context, ref string) (rootfs string, cfg ImageConfig, err error)
}

// ImageConfig is the part of an OCI image configuration a runtime uses.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	// Env is KEY=value entries, the base of every container's environment.
	Env        []string
	WorkingDir string
	// ID is reported as the container's imageID (for example the manifest digest); "" reports
	// the reference.
	ID string
}

// DefaultNodeLocalPaths are the host paths served from NodeRoot.
var DefaultNodeLocalPaths = []string{"/etc/cni", "/opt/cni", "/var/run/warren", "/run/warren", "/var/lib/cni", "/var/lib/kubelet", "/var/log"}

// Config is a node's kubelet.
type Config struct {
	// Client reaches the API server (pods, pods/status, events, serviceaccounts/token,
	// configmaps, secrets, services, nodes).
	Client kubernetes.Interface
	// NodeName is the Node this kubelet runs pods for.
	NodeName string
	// NodeIP is the node's address: hostIP of every pod and podIP of hostNetwork pods.
	NodeIP netip.Addr
	// NodeNetns is the node's network namespace file (its host network): hostNetwork pods
	// run there, CNI plugins and HTTP/TCP/gRPC probes run from there.
	NodeNetns string
	// NodeRoot is the node's own file system for NodeLocalPaths (and where CNI plugins are
	// chrooted).
	NodeRoot string
	// NodeLocalPaths are the host paths (and everything below them) that hostPath volumes
	// get from NodeRoot; other hostPaths are the real host's. Nil means DefaultNodeLocalPaths.
	NodeLocalPaths []string
	// CgroupParent is the node's pods cgroup (cgroup v2 directory); each pod gets
	// <CgroupParent>/pod<uid> and each container a child of that named after it.
	CgroupParent string
	// Images resolves image references.
	Images Images
	// ShimPath is the built test/lab/kubelet/shim binary.
	ShimPath string
	// NetnsPrefix starts every network namespace name the kubelet creates
	// (<prefix><namespace>-<name>, under /run/netns). Required, so cleanup by name is safe.
	NetnsPrefix string
	// ClusterDNS and ClusterDomain go into pods' resolv.conf.
	ClusterDNS    netip.Addr
	ClusterDomain string
	// StateDir holds per-pod state (volumes, writable layers, CNI results) under pods/ and
	// container logs under logs/.
	StateDir string
	// Logger receives the kubelet's own log; nil discards it.
	Logger *slog.Logger
	// MaxBackoff caps restart and retry backoff; 0 means 10 s.
	MaxBackoff time.Duration
	// MaxGracePeriod caps terminationGracePeriodSeconds; 0 means 30 s.
	MaxGracePeriod time.Duration
	// ResyncPeriod is how often configMap, secret and downwardAPI volumes are refreshed; 0
	// means 10 s.
	ResyncPeriod time.Duration
}

// Kubelet runs the pods of one node. Create it with New, then Run it.
type Kubelet struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	wg      sync.WaitGroup
	runCtx  context.Context
}

// New checks cfg and returns a kubelet ready to Run.
func New(cfg Config) (*Kubelet, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("field Client is nil"))
	}
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("field NodeName is empty"))
	}
	if !cfg.NodeIP.IsValid() {
		errs = append(errs, errors.New("field NodeIP is not set"))
	}
	if !cfg.ClusterDNS.IsValid() {
		errs = append(errs, errors.New("field ClusterDNS is not set"))
	}
	if cfg.ClusterDomain == "" {
		errs = append(errs, errors.New("field ClusterDomain is empty"))
	}
	if cfg.Images == nil {
		errs = append(errs, errors.New("field Images is nil"))
	}
	if cfg.NetnsPrefix == "" || strings.ContainsAny(cfg.NetnsPrefix, "/ ") {
		errs = append(errs, fmt.Errorf("field NetnsPrefix %q must be a non-empty name without slashes or spaces", cfg.NetnsPrefix))
	}
	for name, dir := range map[string]string{"NodeRoot": cfg.NodeRoot, "CgroupParent": cfg.CgroupParent, "StateDir": cfg.StateDir} {
		if !filepath.IsAbs(dir) {
			errs = append(errs, fmt.Errorf("field %s %q is not an absolute path", name, dir))
			continue
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			errs = append(errs, fmt.Errorf("field %s %s is not a directory (%v)", name, dir, err))
		}
	}
	if cfg.CgroupParent != "" {
		if _, err := os.Stat(filepath.Join(cfg.CgroupParent, "cgroup.procs")); err != nil {
			errs = append(errs, fmt.Errorf("field CgroupParent %s is not a cgroup v2 directory: %w", cfg.CgroupParent, err))
		}
	}
	if cfg.NodeNetns != "" {
		if _, err := os.Stat(cfg.NodeNetns); err != nil {
			errs = append(errs, fmt.Errorf("field NodeNetns: %w", err))
		}
	}
	if st, err := os.Stat(cfg.ShimPath); err != nil || st.Mode()&0o111 == 0 {
		errs = append(errs, fmt.Errorf("field ShimPath %q is not an executable (build test/lab/kubelet/shim): %v", cfg.ShimPath, err))
	}
	for _, p := range cfg.NodeLocalPaths {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("field NodeLocalPaths entry %q is not absolute", p))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("kubelet config: %w", errors.Join(errs...))
	}
	if cfg.NodeLocalPaths == nil {
		cfg.NodeLocalPaths = DefaultNodeLocalPaths
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.MaxGracePeriod <= 0 {
		cfg.MaxGracePeriod = 30 * time.Second
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.NodeName)
	for _, d := range []string{"pods", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("kubelet state dir: %w", err)
		}
	}
	return &Kubelet{cfg: cfg, log: log, workers: map[types.UID]*podWorker{}}, nil
}

// Run watches the node's pods and runs them until ctx ends; then it stops every pod it runs
// (containers killed, CNI DEL, network namespaces and cgroups removed; the Pod objects stay)
// and returns.
func (k *Kubelet) Run(ctx context.Context) error {
	k.mu.Lock()
	k.runCtx = ctx
	k.mu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(k.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.podChanged(obj) },
		UpdateFunc: func(_, obj any) { k.podChanged(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				k.podGone(p.UID)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kubelet: watch pods: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) && ctx.Err() == nil {
		return errors.New("kubelet: pod informer did not sync (is the API server reachable?)")
	}
	k.log.Info("kubelet running", "netns", k.cfg.NodeNetns, "root", k.cfg.NodeRoot, "cgroup", k.cfg.CgroupParent)
	<-ctx.Done()
	factory.Shutdown()
	k.mu.Lock()
	for _, w := range k.workers {
		w.shutdown()
	}
	k.mu.Unlock()
	k.wg.Wait()
	k.log.Info("kubelet stopped")
	return nil
}

func (k *Kubelet) podChanged(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName != k.cfg.NodeName {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.runCtx == nil || k.runCtx.Err() != nil {
		return
	}
	if w := k.workers[pod.UID]; w != nil {
		w.update(pod)
		return
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		if pod.DeletionTimestamp == nil {
			return // finished before this kubelet started: nothing runs
		}
	}
	w := newPodWorker(k, pod)
	k.workers[pod.UID] = w
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		w.run(k.runCtx)
		k.mu.Lock()
		delete(k.workers, pod.UID)
		k.mu.Unlock()
	}()
}

func (k *Kubelet) podGone(uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if w := k.workers[uid]; w != nil {
		w.gone()
	}
}

// PodInfo is what the kubelet knows about a running pod.
type PodInfo struct {
	Namespace, Name string
	UID             types.UID
	// Netns is the pod's network namespace file (the node's for hostNetwork pods).
	Netns string
	// IP is the pod's address (the node's for hostNetwork pods); invalid until the sandbox is up.
	IP netip.Addr
	// Cgroup is the pod's cgroup directory.
	Cgroup string
	// Containers are by container name (init containers included).
	Containers map[string]ContainerInfo
}

// ContainerInfo is one container of a PodInfo.
type ContainerInfo struct {
	// Pid is the running process (0 when not running).
	Pid int
	// Log is the current attempt's log file (stdout and stderr); Logs are all attempts', oldest
	// first.
	Log  string
	Logs []string
	// Rootfs is the overlay's upper directory: what the container wrote. The merged view
	// exists only in the container's mount namespace; the host reaches it at /proc/<Pid>/root.
	Rootfs       string
	RestartCount int
}

// Pod returns what the kubelet knows about the pod ns/name (the newest one when an old pod of
// the same name is still terminating).
func (k *Kubelet) Pod(ns, name string) (PodInfo, bool) {
	k.mu.Lock()
	ws := make([]*podWorker, 0, len(k.workers))
	for _, w := range k.workers {
		if w.namespace == ns && w.name == name {
			ws = append(ws, w)
		}
	}
	k.mu.Unlock()
	if len(ws) == 0 {
		return PodInfo{}, false
	}
	slices.SortFunc(ws, func(a, b *podWorker) int { return a.created.Compare(b.created) })
	return ws[len(ws)-1].info(), true
}

// Exec runs argv inside a running container (its mount, network and UTS namespaces, root,
// working directory, cgroup and environment) and returns its output. A non-zero exit is an
// *exec.ExitError wrapped in the error.
func (k *Kubelet) Exec(ctx context.Context, ns, name, container string, argv []string, stdin io.Reader) (stdout, stderr []byte, err error) {
	k.mu.Lock()
	var w *podWorker
	for _, c := range k.workers {
		if c.namespace == ns && c.name == name && (w == nil || c.created.After(w.created)) {
			w = c
		}
	}
	k.mu.Unlock()
	if w == nil {
		return nil, nil, fmt.Errorf("exec in %s/%s: no such pod on node %s", ns, name, k.cfg.NodeName)
	}
	return w.exec(ctx, container, argv, stdin)
}
