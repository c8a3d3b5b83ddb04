//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const (
	// prefix names everything the lab creates outside its state directory: network namespaces,
	// the cgroup parent, the bridge. Teardown removes only names with this prefix.
	prefix     = "wrn-lab-"
	modulePath = "github.com/warren-mesh/warren"
	// SystemNamespace is Warren's namespace.
	SystemNamespace = "warren-system"
	// appBinary is the sample app's name in the bin directory.
	appBinary = "warren-lab-app"
)

// Config says where the lab finds its binaries and keeps its state.
type Config struct {
	// Root is the repository root (default: found from the working directory).
	Root string
	// StateDir holds the kubeconfig, logs, pids, CNI results and lab.json (default /tmp/wrn-lab).
	StateDir string
	// BinDir holds kube-apiserver, etcd, and where the lab builds warren-controller and the app
	// (default $WARREN_TOOLS_BIN, else <Root>/.cache/bin).
	BinDir string
	// CNIBinDir holds the reference CNI plugins (default <BinDir>/cni).
	CNIBinDir string
	// WarrenCNI is the warren-cni plugin binary to chain after bridge: "auto" (default:
	// <BinDir>/warren-cni if it exists), "off", or a path.
	WarrenCNI string
	// WarrenCNIConfig holds extra fields for warren-cni's entry in the conflist.
	WarrenCNIConfig map[string]any
	// WithZtunnel starts warren-ztunnel on every node before the pods (Up) and chains
	// warren-cni with the node's agent socket, pod-record directory and the lab kubeconfig.
	WithZtunnel bool
	// Log receives progress lines (default os.Stderr).
	Log io.Writer
	// Cluster makes the lab a cluster (see cluster.go): kube-controller-manager and
	// kube-scheduler run beside the API server, every node gets a lab kubelet, a service proxy
	// with cluster DNS, a root directory and a link to the host, and Warren is installed from
	// manifests/ with kubectl instead of being started by the lab.
	Cluster bool
}

// Lab is a running lab: a control plane, warren-controller, simulated nodes and pods.
type Lab struct {
	cfg Config

	env        *crenvtest.Environment
	RestConfig *rest.Config
	Client     client.Client
	// Kubeconfig is the path of a cluster-admin kubeconfig file.
	Kubeconfig string
	// ControllerAddrs are the controller's push and CA addresses (set by StartController).
	PushAddr, CAAddr string

	mu         sync.Mutex
	nodes      map[string]*Node
	pods       map[string]*Pod // "ns/name"
	procs      map[string]*Proc
	cgroupRoot string // <cgroup2 mount>/wrn-lab, once created
	stopBeat   context.CancelFunc
	appBuilt   bool
	meshBuilt  bool
	ztunnels   map[string]*Ztunnel
	wg         sync.WaitGroup
	// cluster mode (cluster.go)
	pki      *clusterPKI
	clusterM *clusterMembers
}

// New prepares a lab; nothing runs until the Start* and Add* calls.
func New(cfg Config) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (network namespaces, cgroups)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the lab needs %s: %w", tool, err)
		}
	}
	if cfg.Root == "" {
		r, err := repoRoot()
		if err != nil {
			return nil, err
		}
		cfg.Root = r
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/tmp/wrn-lab"
	}
	if cfg.BinDir == "" {
		cfg.BinDir = os.Getenv("WARREN_TOOLS_BIN")
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(cfg.Root, ".cache", "bin")
	}
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = filepath.Join(cfg.BinDir, "cni")
	}
	if cfg.WarrenCNI == "" {
		cfg.WarrenCNI = "auto"
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "logs"), filepath.Join(cfg.StateDir, "cni")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return &Lab{cfg: cfg, nodes: map[string]*Node{}, pods: map[string]*Pod{}, procs: map[string]*Proc{}}, nil
}

func (l *Lab) logf(format string, args ...any) {
	fmt.Fprintf(l.cfg.Log, "lab: "+format+"\n", args...)
}

// StateDir is where the lab keeps its files.
func (l *Lab) StateDir() string { return l.cfg.StateDir }

// StartControlPlane starts etcd and kube-apiserver (controller-runtime envtest, binaries from
// BinDir), installs the CRDs and admission policies of manifests/crds, writes the kubeconfig
// and creates namespace warren-system with Warren's ServiceAccounts.
func (l *Lab) StartControlPlane(ctx context.Context) error {
	bin := l.cfg.BinDir
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("control-plane binary missing: %w (build it with test/tools/build.sh)", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := gatewayv1.Install(scheme); err != nil {
		return err
	}
	crds := filepath.Join(l.cfg.Root, "manifests", "crds")
	env := &crenvtest.Environment{
		Scheme:                   scheme,
		BinaryAssetsDirectory:    bin,
		ErrorIfCRDPathMissing:    true,
		CRDDirectoryPaths:        []string{crds, filepath.Join(crds, "gateway-api")},
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	if l.cfg.Cluster {
		// A cluster starts empty: Warren's CRDs, namespace and accounts come from manifests/.
		env.CRDDirectoryPaths, env.ErrorIfCRDPathMissing = nil, false
	}
	env.ControlPlane.GetAPIServer().Path = filepath.Join(bin, "kube-apiserver")
	if l.cfg.Cluster {
		pki, err := writeClusterPKI(filepath.Join(l.cfg.StateDir, "pki"))
		if err != nil {
			return err
		}
		l.pki = pki
		if err := addAPILink(); err != nil {
			return err
		}
		api := env.ControlPlane.GetAPIServer()
		api.CertDir = pki.Dir
		api.SecureServing.CA = pki.CAPEM
		// The API server listens (and advertises itself in the kubernetes EndpointSlice) on
		// 10.98.0.1, a host address every node routes to over its host link.
		port, err := freePort(apiServerIP)
		if err != nil {
			return err
		}
		api.SecureServing.ListenAddr.Address, api.SecureServing.ListenAddr.Port = apiServerIP.String(), port
		api.Configure().Set("advertise-address", apiServerIP.String())
		// envtest turns the ServiceAccount admission plugin off (it runs no controllers); a
		// cluster has kube-controller-manager, and pods get their kube-api-access volume.
		api.Configure().Disable("disable-admission-plugins")
	}
	env.ControlPlane.Etcd = &crenvtest.Etcd{Path: filepath.Join(bin, "etcd")}
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return fmt.Errorf("start control plane: %w", err)
	}
	l.env, l.RestConfig = env, cfg
	l.logf("control plane (etcd + kube-apiserver %s) up in %v", cfg.Host, time.Since(start).Round(time.Millisecond))
	l.recordControlPlanePids()
	// envtest removes these on Stop; "down" removes them after a crash.
	l.writeTmpDirs(env.ControlPlane.Etcd.DataDir, env.ControlPlane.GetAPIServer().CertDir)

	user, err := env.AddUser(crenvtest.User{Name: "lab-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("control plane admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	l.Kubeconfig = filepath.Join(l.cfg.StateDir, "kubeconfig")
	if err := os.WriteFile(l.Kubeconfig, kc, 0o600); err != nil {
		return err
	}
	if l.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if l.cfg.Cluster {
		return l.saveState()
	}
	if adm := filepath.Join(crds, "admission"); dirHasYAML(adm) {
		if _, err := l.Kubectl(ctx, "apply", "-f", adm); err != nil {
			return err
		}
	}
	if err := l.EnsureNamespace(ctx, SystemNamespace, nil); err != nil {
		return err
	}
	for _, sa := range []string{"warren-controller", "warren-ztunnel"} {
		if err := l.EnsureServiceAccount(ctx, SystemNamespace, sa); err != nil {
			return err
		}
	}
	return l.saveState()
}

// recordControlPlanePids writes the pids of this process's children that run the
// control-plane binaries, so "down" can stop them if the supervisor died without tearing down.
func (l *Lab) recordControlPlanePids() {
	kids, err := childPids(os.Getpid())
	if err != nil {
		return
	}
	for _, pid := range kids {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			continue
		}
		for _, b := range []string{"kube-apiserver", "etcd"} {
			if exe == filepath.Join(l.cfg.BinDir, b) {
				l.writePid(b, pid, exe)
			}
		}
	}
}

func childPids(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func dirHasYAML(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	return len(m) > 0
}

// EnsureNamespace creates a namespace with labels (or adds the labels to an existing one).
func (l *Lab) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	err := l.Client.Create(ctx, ns)
	if apierrors.IsAlreadyExists(err) && len(labels) > 0 {
		if err = l.Client.Get(ctx, client.ObjectKey{Name: name}, ns); err == nil {
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			for k, v := range labels {
				ns.Labels[k] = v
			}
			err = l.Client.Update(ctx, ns)
		}
	} else if apierrors.IsAlreadyExists(err) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// EnsureServiceAccount creates a ServiceAccount unless it exists.
func (l *Lab) EnsureServiceAccount(ctx context.Context, ns, name string) error {
	err := l.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("serviceaccount %s/%s: %w", ns, name, err)
	}
	return nil
}

// Kubectl runs kubectl (from PATH) with the lab's kubeconfig and returns its stdout; on
// failure the error carries stderr.
func (l *Lab) Kubectl(ctx context.Context, args ...string) (string, error) {
	if l.Kubeconfig == "" {
		return "", errors.New("kubectl: control plane not started")
	}
	return kubectl(ctx, l.Kubeconfig, args...)
}

func kubectl(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// GoBuild builds a main package of the main module into BinDir/name and returns the path.
func (l *Lab) GoBuild(ctx context.Context, pkg, name string) (string, error) {
	out := filepath.Join(l.cfg.BinDir, name)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = l.cfg.Root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	l.logf("built %s in %v", out, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// StartController builds and starts warren-controller with the lab's kubeconfig, TLS on
// (its root lands in ConfigMap warren-system/warren-ca-root), listening on loopback, and waits
// until it has published its root.
func (l *Lab) StartController(ctx context.Context, extraArgs ...string) error {
	bin, err := l.GoBuild(ctx, "./cmd/warren-controller", "warren-controller")
	if err != nil {
		return err
	}
	l.PushAddr, l.CAAddr = "127.0.0.1:15012", "127.0.0.1:15013"
	args := append([]string{
		"--kubeconfig", l.Kubeconfig,
		"--namespace", SystemNamespace,
		"--push-addr", l.PushAddr,
		"--ca-addr", l.CAAddr,
		"--metrics-addr", "127.0.0.1:15014",
		// Waypoint pods reach these through the forwarder the lab runs in each of them (see
		// RunWaypoint): the lab has no Service proxy for warren-controller's Service.
		"--waypoint-controller-addr", l.PushAddr,
		"--waypoint-ca-addr", l.CAAddr,
	}, extraArgs...)
	p, err := l.startProcess("warren-controller", bin, args, nil)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var cm corev1.ConfigMap
		err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: "warren-ca-root"}, &cm)
		if err == nil && cm.Data["ca.crt"] != "" {
			break
		}
		if p.Exited() {
			return fmt.Errorf("warren-controller exited during start; see %s", p.LogPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warren-controller did not publish warren-system/warren-ca-root within 60s (last error %v); see %s", err, p.LogPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	l.logf("warren-controller running (pid %d, push %s, CA %s, log %s)", p.Pid(), l.PushAddr, l.CAAddr, p.LogPath)
	return l.saveState()
}

// CARoot returns the PEM trust bundle warren-controller published.
func (l *Lab) CARoot(ctx context.Context) ([]byte, error) {
	var cm corev1.ConfigMap
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: "warren-ca-root"}, &cm); err != nil {
		return nil, err
	}
	return []byte(cm.Data["ca.crt"]), nil
}

// Teardown stops everything the lab started and removes what it created, by name: pod
// processes (cgroup.kill on the lab's cgroup), warren-controller and the control plane,
// network namespaces wrn-lab-*, the lab's cgroups, CNI state. It keeps going past errors and
// returns them all.
func (l *Lab) Teardown() error {
	var errs []error
	if l.stopBeat != nil {
		l.stopBeat()
	}
	l.wg.Wait()
	l.mu.Lock()
	procs := l.procs
	l.procs = map[string]*Proc{}
	l.mu.Unlock()
	// Kubelets first (they stop their pods gracefully and run CNI DEL), then whatever is left
	// in the lab's cgroup, then the controller.
	errs = append(errs, l.stopClusterAgents())
	errs = append(errs, killCgroupTree(l.cgroupDir()))
	for _, p := range procs {
		errs = append(errs, p.Stop(5*time.Second))
	}
	if l.env != nil {
		if err := l.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop control plane: %w", err))
		}
		l.env = nil
	}
	errs = append(errs, cleanupHost(l.cgroupDir(), l.cfg.StateDir))
	if l.cfg.Cluster {
		// A Warren the lab installed and did not uninstall keeps its nodes' eBPF redirect
		// pinned (as on an upgrade): remove the pins of the lab's nodes, by node name.
		l.mu.Lock()
		for name := range l.nodes {
			errs = append(errs, os.RemoveAll(filepath.Join(bpffsDir, "warren", name)))
		}
		l.mu.Unlock()
		if err := os.Remove(filepath.Join(bpffsDir, "warren")); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	l.mu.Lock()
	l.pods, l.nodes = map[string]*Pod{}, map[string]*Node{}
	l.mu.Unlock()
	return errors.Join(errs...)
}

// cleanupHost removes the lab's network namespaces, cgroups and ztunnel bpffs pin directories
// and its runtime state files; both "Teardown" and "down" use it. Only names starting with
// wrn-lab- are touched.
func cleanupHost(cgroupDir, stateDir string) error {
	var errs []error
	errs = append(errs, killCgroupTree(cgroupDir))
	names, err := labNetns()
	errs = append(errs, err)
	for _, n := range names {
		if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", n, err, bytes.TrimSpace(out)))
		}
	}
	errs = append(errs, removeLabPins(), removeZtunnelLinks(), removeHostLinks(), removeAPILink(), removeCgroupTree(cgroupDir), removeTmpDirs(stateDir))
	for _, f := range []string{"pids", "tmpdirs", "lab.json", "cni"} {
		errs = append(errs, os.RemoveAll(filepath.Join(stateDir, f)))
	}
	return errors.Join(errs...)
}

// labNetns lists the named network namespaces wrn-lab-*.
func labNetns() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// State is what lab.json records for "status", "exec" and "down" in other processes.
type State struct {
	SupervisorPid int              `json:"supervisorPid"`
	Kubeconfig    string           `json:"kubeconfig"`
	APIServer     string           `json:"apiServer"`
	PushAddr      string           `json:"pushAddr,omitempty"`
	CAAddr        string           `json:"caAddr,omitempty"`
	AppBinary     string           `json:"appBinary,omitempty"`
	CgroupRoot    string           `json:"cgroupRoot,omitempty"`
	Nodes         map[string]*Node `json:"nodes"`
	Pods          map[string]*Pod  `json:"pods"`
	// Cluster is true for a lab cluster, whose pods (not in Pods) run under the supervisor's
	// kubelets.
	Cluster bool `json:"cluster,omitempty"`
}

func (l *Lab) saveState() error {
	app := filepath.Join(l.cfg.BinDir, appBinary)
	if l.cfg.Cluster {
		app = l.appImageBinary() // the static build inside warren-lab/app:local
	}
	l.mu.Lock()
	st := State{
		SupervisorPid: os.Getpid(), Kubeconfig: l.Kubeconfig, PushAddr: l.PushAddr, CAAddr: l.CAAddr,
		AppBinary: app, CgroupRoot: l.cgroupRoot, Nodes: l.nodes, Pods: l.pods,
		Cluster: l.cfg.Cluster,
	}
	if l.RestConfig != nil {
		st.APIServer = l.RestConfig.Host
	}
	b, err := json.MarshalIndent(st, "", "  ")
	l.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.cfg.StateDir, "lab.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(l.cfg.StateDir, "lab.json"))
}

// LoadState reads lab.json from stateDir.
func LoadState(stateDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "lab.json"))
	if err != nil {
		return nil, err
	}
	var st State
	return &st, json.Unmarshal(b, &st)
}

// writePid appends "name pid exe" to the pids file, for "down".
func (l *Lab) writePid(name string, pid int, exe string) {
	f, err := os.OpenFile(filepath.Join(l.cfg.StateDir, "pids"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %d %s\n", name, pid, exe)
}

// writeTmpDirs records envtest's temporary directories (etcd data, API server certificates)
// in <state>/tmpdirs.
func (l *Lab) writeTmpDirs(dirs ...string) {
	f, err := os.OpenFile(filepath.Join(l.cfg.StateDir, "tmpdirs"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	for _, d := range dirs {
		if d != "" {
			fmt.Fprintln(f, d)
		}
	}
}

// removeTmpDirs removes the recorded envtest directories (only envtest's k8s_test_framework_*
// directories under the temp dir).
func removeTmpDirs(stateDir string) error {
	b, err := os.ReadFile(filepath.Join(stateDir, "tmpdirs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range strings.Fields(string(b)) {
		if filepath.Dir(d) == filepath.Clean(os.TempDir()) && strings.HasPrefix(filepath.Base(d), "k8s_test_framework_") {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// killRecordedPids signals every process of the pids file whose executable is still the one
// recorded (so a recycled pid is never hit).
func killRecordedPids(stateDir string, sig syscall.Signal) (int, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "pids"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == f[2] {
			if syscall.Kill(pid, sig) == nil {
				n++
			}
		}
	}
	return n, nil
}

// repoRoot walks up from the working directory to the main module's root.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		mod, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(mod, []byte("module "+modulePath+"\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of module %s above %s; run the lab inside the repository", modulePath, dir)
		}
	}
}
