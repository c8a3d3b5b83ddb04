//go:build linux

package kubelet

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/warren-mesh/warren/test/envtest"
)

// requireRoot skips without root, and fails instead under CI=true.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("the lab kubelet test needs root (network namespaces, cgroups, mounts)")
	}
	tb.Skip("needs root (network namespaces, cgroups, mounts); with CI=true this fails")
}

// dirImages serves images from directories: ref -> rootfs.
type dirImages map[string]string

func (d dirImages) Rootfs(_ context.Context, ref string) (string, ImageConfig, error) {
	dir, ok := d[ref]
	if !ok {
		return "", ImageConfig{}, fmt.Errorf("image %q: manifest unknown", ref)
	}
	return dir, ImageConfig{
		Entrypoint: []string{"/usr/local/bin/app"}, Cmd: []string{"serve", ":8080"},
		Env: []string{"PATH=/usr/local/bin:/bin", "IMAGE_VAR=from-image"}, ID: "sha256:test-" + ref,
	}, nil
}

// node is the test's simulated node.
type node struct {
	prefix, netns, netnsPath, root, cgroup string
	ip                                     netip.Addr
}

func cgroup2Mount(tb testing.TB) string {
	tb.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if fs := strings.Fields(post); ok && len(fs) > 0 && fs[0] == "cgroup2" {
			return strings.Fields(pre)[4]
		}
	}
	tb.Fatal("no cgroup2 mount")
	return ""
}

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func repoFile(tb testing.TB, rel string) string {
	tb.Helper()
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, rel)
		}
	}
	tb.Fatal("no repository root")
	return ""
}

func copyFile(tb testing.TB, src, dst string, mode os.FileMode) {
	tb.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		tb.Fatal(err)
	}
}

func goBuild(tb testing.TB, pkg, out string) {
	tb.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = repoFile(tb, "")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
}

// newNode makes a node netns with the node IP on lo, a node root with the bridge conflist and
// the reference plugins, and a cgroup; all named with a prefix of this test, removed at cleanup.
func newNode(tb testing.TB, appBin string) *node {
	tb.Helper()
	n := &node{prefix: fmt.Sprintf("wrn-kt%d-", os.Getpid()%100000), ip: netip.MustParseAddr("10.99.77.1")}
	n.netns = n.prefix + "node"
	n.netnsPath = "/run/netns/" + n.netns
	run(tb, "ip", "netns", "add", n.netns)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.netns).Run() })
	run(tb, "ip", "-n", n.netns, "link", "set", "lo", "up")
	run(tb, "ip", "-n", n.netns, "addr", "add", n.ip.String()+"/32", "dev", "lo")
	n.root = tb.TempDir()
	cni := repoFile(tb, ".cache/bin/cni")
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cni, p)); err != nil {
			msg := fmt.Sprintf("reference CNI plugin %s missing (build it with test/tools/build.sh cni-plugins): %v", p, err)
			if os.Getenv("CI") == "true" {
				tb.Fatal(msg)
			}
			tb.Skip(msg)
		}
		copyFile(tb, filepath.Join(cni, p), filepath.Join(n.root, "opt/cni/bin", p), 0o755)
	}
	copyFile(tb, appBin, filepath.Join(n.root, "opt/cni/bin/refuse-cni"), 0o755)
	writeConfList(tb, n.root, "10-bridge.conflist", map[string]any{
		"cniVersion": "1.0.0", "name": "wrn-kt",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": "wrn-kt-br0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{
				"type":   "host-local",
				"ranges": []any{[]any{map[string]any{"subnet": "10.244.77.0/24"}}},
				"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
			},
		}},
	})
	n.cgroup = filepath.Join(cgroup2Mount(tb), n.prefix+"node")
	if err := os.Mkdir(n.cgroup, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = killCgroup(n.cgroup, 5*time.Second)
		_ = removeCgroupTree(n.cgroup)
	})
	return n
}

func writeConfList(tb testing.TB, root, name string, list map[string]any) {
	tb.Helper()
	b, _ := json.Marshal(list)
	if err := os.MkdirAll(filepath.Join(root, "etc/cni/net.d"), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/cni/net.d", name), b, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// syncBuffer is a log sink the test can read while the kubelet writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	k    *Kubelet
	cs   kubernetes.Interface
	node *node
	ns   string
}

func eventually(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (f *fixture) pod(tb testing.TB, name string) *corev1.Pod {
	tb.Helper()
	p, err := f.cs.CoreV1().Pods(f.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		tb.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

func cond(p *corev1.Pod, t corev1.PodConditionType) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c
		}
	}
	return corev1.PodCondition{}
}

func (f *fixture) exec(tb testing.TB, pod, ctr string, argv ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _, err := f.k.Exec(ctx, f.ns, pod, ctr, argv, nil)
	if err != nil {
		tb.Fatalf("exec %v in %s/%s: %v", argv, pod, ctr, err)
	}
	return string(out)
}

// httpGet fetches a URL from the node's network namespace.
func (f *fixture) httpGet(url string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialIn(ctx, f.node.netnsPath, network, addr)
	}, DisableKeepAlives: true}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// deleteAndWait deletes the pod gracefully and waits for the kubelet to finish it: the object,
// the process, the netns and the cgroup are gone.
func (f *fixture) deleteAndWait(tb testing.TB, name string) {
	tb.Helper()
	info, _ := f.k.Pod(f.ns, name)
	if err := f.cs.CoreV1().Pods(f.ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		tb.Fatalf("delete pod %s: %v", name, err)
	}
	eventually(tb, 45*time.Second, "pod object deleted by the kubelet", func() error {
		_, err := f.cs.CoreV1().Pods(f.ns).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	// The API server deletes terminal pods at once: the kubelet may still be tearing down.
	eventually(tb, 30*time.Second, "kubelet done with the pod", func() error {
		if _, ok := f.k.Pod(f.ns, name); ok {
			return errors.New("kubelet still knows the pod")
		}
		return nil
	})
	for c, ci := range info.Containers {
		if ci.Pid != 0 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", ci.Pid)); err == nil {
				tb.Errorf("container %s: process %d still exists", c, ci.Pid)
			}
		}
	}
	if info.Cgroup != "" {
		if _, err := os.Stat(info.Cgroup); !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("pod cgroup %s still exists (%v)", info.Cgroup, err)
		}
	}
	if strings.HasPrefix(info.Netns, "/run/netns/"+f.node.prefix+f.ns+"-") {
		if _, err := os.Stat(info.Netns); !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("pod netns %s still exists (%v)", info.Netns, err)
		}
	}
}

func appContainer(name string) corev1.Container {
	return corev1.Container{Name: name, Image: "app:v1", Args: []string{"serve", ":8080"}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
}

func TestKubelet(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	shim, appBin := filepath.Join(tmp, "shim"), filepath.Join(tmp, "app")
	goBuild(t, "./test/lab/kubelet/shim", shim)
	goBuild(t, "./test/lab/kubelet/testdata/app", appBin)
	img := filepath.Join(tmp, "image")
	copyFile(t, appBin, filepath.Join(img, "usr/local/bin/app"), 0o755)
	for _, d := range []string{"tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(img, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(img, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, appBin)
	env := envtest.Start(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t)
	ctx := context.Background()
	for _, obj := range []func() error{
		func() error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": "test-ca-pem"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"greeting": "hello"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-kt"}}, metav1.CreateOptions{})
			return err
		},
	} {
		if err := obj(); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(tmp, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	k, err := New(Config{
		Client: cs, NodeName: "node-kt", NodeIP: n.ip, NodeNetns: n.netnsPath, NodeRoot: n.root,
		CgroupParent: n.cgroup, Images: dirImages{"app:v1": img}, ShimPath: shim, NetnsPrefix: n.prefix,
		ClusterDNS: netip.MustParseAddr("10.0.0.10"), ClusterDomain: "cluster.local", StateDir: state,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ResyncPeriod: time.Second, MaxBackoff: 2 * time.Second, MaxGracePeriod: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- k.Run(runCtx) }()
	stopped := false
	stopKubelet := func() {
		if stopped {
			return
		}
		stopped = true
		stop()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(90 * time.Second):
			t.Errorf("Run did not return 90s after its context ended")
		}
	}
	t.Cleanup(func() {
		stopKubelet()
		if t.Failed() {
			t.Logf("kubelet log:\n%s", logs.String())
		}
	})
	f := &fixture{k: k, cs: cs, node: n, ns: ns}

	t.Run("pod with volumes, env, init container and probes", func(t *testing.T) {
		main := appContainer("main")
		main.Env = []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "greeting"}}},
			{Name: "EXPANDED", Value: "$(POD_NAME)-$(GREETING)-$(UNDEFINED)-$$(POD_NAME)"},
		}
		main.VolumeMounts = []corev1.VolumeMount{
			{Name: "cfg", MountPath: "/etc/cfg"},
			{Name: "tokens", MountPath: "/var/run/secrets/tokens"},
			{Name: "work", MountPath: "/work"},
		}
		probe := func(path string, failures int32) *corev1.Probe {
			return &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("http")}},
				PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: failures,
			}
		}
		main.ReadinessProbe, main.LivenessProbe = probe("/ready", 1), probe("/healthz", 2)
		init := corev1.Container{Name: "init", Image: "app:v1", Command: []string{"app", "touch", "/work/init-done"},
			VolumeMounts: []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}}
		exp := int64(600)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				NodeName: "node-kt", ServiceAccountName: "default", InitContainers: []corev1.Container{init}, Containers: []corev1.Container{main},
				Volumes: []corev1.Volume{
					{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
					{Name: "tokens", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
						{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "warren-ca", ExpirationSeconds: &exp, Path: "warren-ca"}},
					}}}},
					{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				},
			},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var ip string
		eventually(t, 60*time.Second, "pod running with an IP, not ready", func() error {
			p := f.pod(t, "web")
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
				return fmt.Errorf("phase %s ip %q statuses %+v", p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
			}
			ip = p.Status.PodIP
			return nil
		})
		if !strings.HasPrefix(ip, "10.244.77.") {
			t.Errorf("pod IP %s is not from the node's range 10.244.77.0/24", ip)
		}
		p := f.pod(t, "web")
		if c := cond(p, corev1.PodReady); c.Status != corev1.ConditionFalse {
			t.Errorf("Ready = %q before the readiness probe passed; want False", c.Status)
		}
		if c := cond(p, corev1.PodInitialized); c.Status != corev1.ConditionTrue {
			t.Errorf("Initialized = %q, want True", c.Status)
		}
		if ics := p.Status.InitContainerStatuses; len(ics) != 1 || ics[0].State.Terminated == nil || ics[0].State.Terminated.Reason != "Completed" {
			t.Errorf("init container status %+v, want terminated Completed", ics)
		}
		if p.Status.HostIP != n.ip.String() || p.Status.StartTime == nil {
			t.Errorf("hostIP %q startTime %v", p.Status.HostIP, p.Status.StartTime)
		}
		cst := p.Status.ContainerStatuses[0]
		if cst.Image != "app:v1" || cst.ImageID != "sha256:test-app:v1" || !strings.HasPrefix(cst.ContainerID, "lab://") {
			t.Errorf("container status image %q imageID %q containerID %q", cst.Image, cst.ImageID, cst.ContainerID)
		}

		// Files at their paths.
		if got := f.exec(t, "web", "main", "app", "cat", "/etc/cfg/greeting"); got != "hello" {
			t.Errorf("/etc/cfg/greeting = %q, want hello", got)
		}
		if got := f.exec(t, "web", "main", "app", "cat", "/work/init-done"); got != "x" {
			t.Errorf("the init container's file in the emptyDir = %q, want x", got)
		}
		if got := f.exec(t, "web", "main", "app", "cat", saMountPath+"/namespace"); got != ns {
			t.Errorf("automounted namespace = %q, want %q", got, ns)
		}
		if got := f.exec(t, "web", "main", "app", "cat", saMountPath+"/ca.crt"); got != "test-ca-pem" {
			t.Errorf("automounted ca.crt = %q", got)
		}
		for file, aud := range map[string]string{"/var/run/secrets/tokens/warren-ca": "warren-ca", saMountPath + "/token": ""} {
			claims := jwtClaims(t, f.exec(t, "web", "main", "app", "cat", file))
			if aud != "" && !slices.Contains(claims.Aud, aud) {
				t.Errorf("%s: audiences %v, want %s", file, claims.Aud, aud)
			}
			if claims.K8s.Pod.Name != "web" || claims.K8s.Pod.UID != string(p.UID) || claims.K8s.Namespace != ns {
				t.Errorf("%s: not bound to the pod: %+v", file, claims.K8s)
			}
		}
		resolv := f.exec(t, "web", "main", "app", "cat", "/etc/resolv.conf")
		wantResolv := "nameserver 10.0.0.10\nsearch " + ns + ".svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
		if resolv != wantResolv {
			t.Errorf("resolv.conf = %q, want %q", resolv, wantResolv)
		}
		if hosts := f.exec(t, "web", "main", "app", "cat", "/etc/hosts"); !strings.Contains(hosts, ip+"\tweb\n") {
			t.Errorf("/etc/hosts has no %s web line:\n%s", ip, hosts)
		}
		// The process sees its env; reached from the node's netns on the pod IP.
		body, err := f.httpGet("http://" + net.JoinHostPort(ip, "8080") + "/env")
		if err != nil {
			t.Fatalf("GET /env from the node: %v", err)
		}
		for _, want := range []string{
			"POD_NAME=web", "POD_NAMESPACE=" + ns, "POD_IP=" + ip, "NODE_NAME=node-kt", "GREETING=hello",
			"EXPANDED=web-hello-$(UNDEFINED)-$(POD_NAME)", "IMAGE_VAR=from-image", "HOSTNAME=web",
			"KUBERNETES_SERVICE_HOST=10.0.0.1", "KUBERNETES_SERVICE_PORT=443",
		} {
			if !slices.Contains(strings.Split(body, "\n"), want) {
				t.Errorf("env has no %q:\n%s", want, body)
			}
		}

		// The readiness probe gates Ready.
		f.exec(t, "web", "main", "app", "touch", "/tmp/ready")
		eventually(t, 20*time.Second, "pod ready", func() error {
			p := f.pod(t, "web")
			if cond(p, corev1.PodReady).Status != corev1.ConditionTrue || !p.Status.ContainerStatuses[0].Ready {
				return fmt.Errorf("conditions %+v", p.Status.Conditions)
			}
			return nil
		})

		// ConfigMap changes reach the volume.
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cfg", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data["greeting"] = "bonjour"
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "configMap update in the volume", func() error {
			if got := f.exec(t, "web", "main", "app", "cat", "/etc/cfg/greeting"); got != "bonjour" {
				return fmt.Errorf("greeting %q", got)
			}
			return nil
		})

		// A liveness failure restarts the container, with a fresh writable layer.
		info, _ := k.Pod(ns, "web")
		firstPid := info.Containers["main"].Pid
		f.exec(t, "web", "main", "app", "touch", "/tmp/unhealthy")
		eventually(t, 40*time.Second, "container restarted after the liveness failure", func() error {
			p := f.pod(t, "web")
			cs := p.Status.ContainerStatuses[0]
			if cs.RestartCount != 1 || cs.State.Running == nil || cs.LastTerminationState.Terminated == nil {
				return fmt.Errorf("status %+v", cs)
			}
			return nil
		})
		info, _ = k.Pod(ns, "web")
		if info.Containers["main"].Pid == firstPid || len(info.Containers["main"].Logs) != 2 {
			t.Errorf("after restart: pid %d (was %d), logs %v", info.Containers["main"].Pid, firstPid, info.Containers["main"].Logs)
		}
		if _, _, err := k.Exec(ctx, ns, "web", "main", []string{"app", "cat", "/tmp/unhealthy"}, nil); err == nil {
			t.Error("/tmp/unhealthy survived the restart: the writable layer was reused")
		}
		log, err := os.ReadFile(info.Containers["main"].Logs[0])
		if err != nil || !strings.Contains(string(log), "listening on :8080") {
			t.Errorf("first attempt's log %q (%v)", log, err)
		}

		f.deleteAndWait(t, "web")
	})

	t.Run("hostNetwork pod gets the node IP", func(t *testing.T) {
		c := appContainer("main")
		c.Args = []string{"serve", n.ip.String() + ":18080"}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(18080), Host: n.ip.String()}}, PeriodSeconds: 1}
		c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"app", "cat", "/etc/hostname"}}}, PeriodSeconds: 1, FailureThreshold: 5}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnet", Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet, Containers: []corev1.Container{c},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "hostNetwork pod ready", func() error {
			p := f.pod(t, "hostnet")
			if cond(p, corev1.PodReady).Status != corev1.ConditionTrue {
				return fmt.Errorf("phase %s conditions %+v", p.Status.Phase, p.Status.Conditions)
			}
			return nil
		})
		p := f.pod(t, "hostnet")
		if p.Status.PodIP != n.ip.String() {
			t.Errorf("podIP %q, want the node IP %s", p.Status.PodIP, n.ip)
		}
		if _, err := f.httpGet("http://" + net.JoinHostPort(n.ip.String(), "18080") + "/healthz"); err != nil {
			t.Errorf("GET on the node IP: %v", err)
		}
		if cst := p.Status.ContainerStatuses[0]; cst.Started == nil || !*cst.Started {
			t.Errorf("started = %v after the exec startup probe passed", cst.Started)
		}
		if got := f.exec(t, "hostnet", "main", "app", "cat", "/etc/hostname"); got != "node-kt\n" {
			t.Errorf("hostNetwork pod's hostname file = %q, want the node's name", got)
		}
		if got := f.exec(t, "hostnet", "main", "app", "cat", "/etc/resolv.conf"); !strings.HasPrefix(got, "nameserver 10.0.0.10\n") {
			t.Errorf("ClusterFirstWithHostNet resolv.conf = %q", got)
		}
		f.deleteAndWait(t, "hostnet")
	})

	t.Run("hostPath volumes: node-local paths and HostToContainer propagation", func(t *testing.T) {
		c := appContainer("main")
		toContainer := corev1.MountPropagationHostToContainer
		c.VolumeMounts = []corev1.VolumeMount{
			{Name: "warren", MountPath: "/var/run/warren"},
			{Name: "netns", MountPath: "/var/run/netns", MountPropagation: &toContainer},
		}
		dirOrCreate := corev1.HostPathDirectoryOrCreate
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostpaths", Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{c},
			Volumes: []corev1.Volume{
				{Name: "warren", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/warren", Type: &dirOrCreate}}},
				{Name: "netns", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/netns"}}},
			},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "pod running", func() error {
			if info, ok := k.Pod(ns, "hostpaths"); !ok || info.Containers["main"].Pid == 0 {
				return errors.New("not running")
			}
			return nil
		})
		f.exec(t, "hostpaths", "main", "app", "touch", "/var/run/warren/from-pod")
		if _, err := os.Stat(filepath.Join(n.root, "var/run/warren/from-pod")); err != nil {
			t.Errorf("a node-local hostPath is not served from the node root: %v", err)
		}
		// A network namespace created after the pod started is visible, as a namespace file,
		// inside it (what the ztunnel needs from /var/run/netns).
		late := n.prefix + "late"
		run(t, "ip", "netns", "add", late)
		defer func() { _ = exec.Command("ip", "netns", "del", late).Run() }()
		const nsfsMagic = "0x6e736673"
		if got := f.exec(t, "hostpaths", "main", "app", "fstype", "/var/run/netns/"+late); got != nsfsMagic {
			t.Errorf("new netns inside the container has file system type %s, want nsfs %s (mount propagation)", got, nsfsMagic)
		}
		f.deleteAndWait(t, "hostpaths")
	})

	t.Run("hostPath type check failure keeps the container creating", func(t *testing.T) {
		c := appContainer("main")
		c.VolumeMounts = []corev1.VolumeMount{{Name: "missing", MountPath: "/missing"}}
		dir := corev1.HostPathDirectory
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "badhostpath", Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "missing", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/" + n.prefix + "missing", Type: &dir}}}},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "FailedMount event", func() error {
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=badhostpath"})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == "FailedMount" && strings.Contains(e.Message, "does not exist (type Directory)") {
					return nil
				}
			}
			return fmt.Errorf("no FailedMount event in %d events", len(evs.Items))
		})
		p := f.pod(t, "badhostpath")
		if p.Status.Phase != corev1.PodPending || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Waiting == nil ||
			p.Status.ContainerStatuses[0].State.Waiting.Reason != "ContainerCreating" {
			t.Errorf("phase %s statuses %+v, want Pending and ContainerCreating", p.Status.Phase, p.Status.ContainerStatuses)
		}
		f.deleteAndWait(t, "badhostpath")
	})

	t.Run("restart policies and start errors", func(t *testing.T) {
		done := appContainer("main")
		done.Args = []string{"exit", "0"}
		failedInit := corev1.Container{Name: "init", Image: "app:v1", Args: []string{"exit", "3"}}
		noBinary := appContainer("main")
		noBinary.Command = []string{"no-such-binary"}
		for _, tc := range []struct {
			name   string
			spec   corev1.PodSpec
			check  func(p *corev1.Pod) error
			remove bool
		}{
			{"completed under OnFailure", corev1.PodSpec{RestartPolicy: corev1.RestartPolicyOnFailure, Containers: []corev1.Container{done}}, func(p *corev1.Pod) error {
				cs := p.Status.ContainerStatuses
				if p.Status.Phase != corev1.PodSucceeded || len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.Reason != "Completed" || cs[0].RestartCount != 0 {
					return fmt.Errorf("phase %s statuses %+v", p.Status.Phase, cs)
				}
				if c := cond(p, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Reason != "PodCompleted" {
					return fmt.Errorf("Ready %+v, want False PodCompleted", c)
				}
				return nil
			}, true},
			{"failed init container under Never", corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, InitContainers: []corev1.Container{failedInit}, Containers: []corev1.Container{done}}, func(p *corev1.Pod) error {
				ics := p.Status.InitContainerStatuses
				if p.Status.Phase != corev1.PodFailed || len(ics) != 1 || ics[0].State.Terminated == nil || ics[0].State.Terminated.ExitCode != 3 {
					return fmt.Errorf("phase %s init statuses %+v", p.Status.Phase, ics)
				}
				if w := p.Status.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != "PodInitializing" {
					return fmt.Errorf("container state %+v, want waiting PodInitializing", p.Status.ContainerStatuses[0].State)
				}
				return nil
			}, true},
			{"missing executable is a StartError, restarted with backoff", corev1.PodSpec{Containers: []corev1.Container{noBinary}}, func(p *corev1.Pod) error {
				cs := p.Status.ContainerStatuses
				if len(cs) != 1 || cs[0].RestartCount < 1 || cs[0].LastTerminationState.Terminated == nil {
					return fmt.Errorf("statuses %+v", cs)
				}
				if lt := cs[0].LastTerminationState.Terminated; lt.Reason != "StartError" || lt.ExitCode != 128 || !strings.Contains(lt.Message, `executable "no-such-binary" not found`) {
					return fmt.Errorf("last termination %+v", lt)
				}
				return nil
			}, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				name := strings.ReplaceAll(strings.ToLower(strings.Fields(tc.name)[0]), "_", "-") + "-pod"
				tc.spec.NodeName, tc.spec.ServiceAccountName = "node-kt", "default"
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: tc.spec}
				if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				eventually(t, 30*time.Second, tc.name, func() error { return tc.check(f.pod(t, name)) })
				f.deleteAndWait(t, name)
			})
		}
	})

	t.Run("secret and downwardAPI volumes, envFrom, resourceFieldRef", func(t *testing.T) {
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"},
			Data: map[string][]byte{"user": []byte("alice"), "pass": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c := appContainer("main")
		c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
		c.EnvFrom = []corev1.EnvFromSource{
			{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}},
			{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}},
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(true)}},
		}
		c.Env = []corev1.EnvVar{{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}}}
		c.VolumeMounts = []corev1.VolumeMount{{Name: "creds", MountPath: "/creds"}, {Name: "info", MountPath: "/info"}}
		mode := int32(0o400)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "more", Namespace: ns, Labels: map[string]string{"tier": "one"}}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{c},
			Volumes: []corev1.Volume{
				{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds",
					Items: []corev1.KeyToPath{{Key: "pass", Path: "nested/password", Mode: &mode}}}}},
				{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
					{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
				}}}},
			},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var ip string
		eventually(t, 30*time.Second, "pod running", func() error {
			p := f.pod(t, "more")
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				return fmt.Errorf("phase %s", p.Status.Phase)
			}
			ip = p.Status.PodIP
			return nil
		})
		if got := f.exec(t, "more", "main", "app", "cat", "/creds/nested/password"); got != "s3cret" {
			t.Errorf("secret item = %q", got)
		}
		if _, _, err := k.Exec(ctx, ns, "more", "main", []string{"app", "cat", "/creds/user"}, nil); err == nil {
			t.Error("a secret key not listed in items was written")
		}
		if _, _, err := k.Exec(ctx, ns, "more", "main", []string{"app", "touch", "/creds/new"}, nil); err == nil {
			t.Error("a secret volume is writable")
		}
		if got := f.exec(t, "more", "main", "app", "cat", "/info/labels"); got != `tier="one"` {
			t.Errorf("downwardAPI labels = %q", got)
		}
		body, err := f.httpGet("http://" + net.JoinHostPort(ip, "8080") + "/env")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"CFG_greeting=bonjour", "user=alice", "pass=s3cret", "MEM_MI=64"} {
			if !slices.Contains(strings.Split(body, "\n"), want) {
				t.Errorf("env has no %q:\n%s", want, body)
			}
		}
		p := f.pod(t, "more")
		p.Labels["tier"] = "two"
		if _, err := cs.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "label change in the downwardAPI volume", func() error {
			if got := f.exec(t, "more", "main", "app", "cat", "/info/labels"); got != `tier="two"` {
				return fmt.Errorf("labels %q", got)
			}
			return nil
		})
		f.deleteAndWait(t, "more")
	})

	t.Run("a container ignoring SIGTERM is killed after the grace period", func(t *testing.T) {
		c := appContainer("main")
		c.Args = []string{"hang"}
		grace := int64(1)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "stubborn", Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{c},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "pod running", func() error {
			if f.pod(t, "stubborn").Status.Phase != corev1.PodRunning {
				return errors.New("not running")
			}
			return nil
		})
		start := time.Now()
		f.deleteAndWait(t, "stubborn")
		if d := time.Since(start); d < time.Second || d > 15*time.Second {
			t.Errorf("deletion took %v, want about the 1s grace period", d)
		}
	})

	t.Run("gRPC probes", func(t *testing.T) {
		c := appContainer("main")
		c.Args = []string{"grpc-health", ":9090"}
		grpcProbe := func(svc string) *corev1.Probe {
			return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090, Service: &svc}}, PeriodSeconds: 1, FailureThreshold: 1}
		}
		// The overall health ("") is SERVING; service "app" is NOT_SERVING.
		c.StartupProbe = grpcProbe("")
		c.StartupProbe.FailureThreshold = 20 // the first probes may come before the server listens
		c.ReadinessProbe = grpcProbe("app")
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "grpc", Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{c},
		}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "started by the gRPC startup probe", func() error {
			p := f.pod(t, "grpc")
			if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].Started == nil || !*p.Status.ContainerStatuses[0].Started {
				return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
			}
			return nil
		})
		time.Sleep(2 * time.Second) // a few readiness periods
		if p := f.pod(t, "grpc"); p.Status.ContainerStatuses[0].Ready || cond(p, corev1.PodReady).Status != corev1.ConditionFalse {
			t.Errorf("ready with a NOT_SERVING gRPC readiness probe: %+v", p.Status.Conditions)
		}
		f.deleteAndWait(t, "grpc")
	})

	t.Run("bad image waits in ErrImagePull", func(t *testing.T) {
		c := appContainer("main")
		c.Image = "missing:v1"
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "badimage", Namespace: ns}, Spec: corev1.PodSpec{NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{c}}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "image pull failure in the status", func() error {
			p := f.pod(t, "badimage")
			if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Waiting == nil {
				return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
			}
			w := p.Status.ContainerStatuses[0].State.Waiting
			if (w.Reason != "ErrImagePull" && w.Reason != "ImagePullBackOff") || !strings.Contains(w.Message, "manifest unknown") {
				return fmt.Errorf("waiting %+v", w)
			}
			if p.Status.Phase != corev1.PodPending {
				return fmt.Errorf("phase %s, want Pending", p.Status.Phase)
			}
			return nil
		})
		if _, _, err := k.Exec(ctx, ns, "badimage", "main", []string{"app", "cat", "/etc/hostname"}, nil); err == nil || !strings.Contains(err.Error(), `container "main" is not running`) {
			t.Errorf("exec in a container that never started: error %v", err)
		}
		if _, _, err := k.Exec(ctx, ns, "no-such-pod", "main", []string{"true"}, nil); err == nil || !strings.Contains(err.Error(), "no such pod") {
			t.Errorf("exec in a missing pod: error %v", err)
		}
		f.deleteAndWait(t, "badimage")
	})

	t.Run("refused CNI ADD leaves the pod pending, then it retries", func(t *testing.T) {
		writeConfList(t, n.root, "00-refuse.conflist", map[string]any{
			"cniVersion": "1.0.0", "name": "wrn-kt-refuse", "plugins": []any{map[string]any{"type": "refuse-cni"}},
		})
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "refused", Namespace: ns}, Spec: corev1.PodSpec{NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{appContainer("main")}}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "sandbox failure in the status and events", func() error {
			p := f.pod(t, "refused")
			c := cond(p, corev1.PodReadyToStartContainers)
			if p.Status.Phase != corev1.PodPending || c.Status != corev1.ConditionFalse || !strings.Contains(c.Message, "pod refused by the test plugin: fail-closed") {
				return fmt.Errorf("phase %s condition %+v", p.Status.Phase, c)
			}
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=refused"})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, "refused") {
					return nil
				}
			}
			return fmt.Errorf("no FailedCreatePodSandBox event in %d events", len(evs.Items))
		})
		// Each failed attempt is cleaned up (CNI DEL, netns removed): the retries keep failing
		// on the plugin, not on a leftover network namespace.
		time.Sleep(3 * time.Second)
		if c := cond(f.pod(t, "refused"), corev1.PodReadyToStartContainers); !strings.Contains(c.Message, "refused") {
			t.Errorf("after retries the sandbox fails with %q, want the plugin's refusal", c.Message)
		}
		if err := os.Remove(filepath.Join(n.root, "etc/cni/net.d/00-refuse.conflist")); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "pod running once the CNI accepts it", func() error {
			p := f.pod(t, "refused")
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || cond(p, corev1.PodReadyToStartContainers).Status != corev1.ConditionTrue {
				return fmt.Errorf("phase %s conditions %+v", p.Status.Phase, p.Status.Conditions)
			}
			return nil
		})
		f.deleteAndWait(t, "refused")
	})

	t.Run("force-deleted pod is torn down", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "forced", Namespace: ns}, Spec: corev1.PodSpec{NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{appContainer("main")}}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var info PodInfo
		eventually(t, 30*time.Second, "pod running", func() error {
			var ok bool
			if info, ok = k.Pod(ns, "forced"); !ok || info.Containers["main"].Pid == 0 {
				return errors.New("not running")
			}
			return nil
		})
		if err := cs.CoreV1().Pods(ns).Delete(ctx, "forced", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "kubelet forgot the pod", func() error {
			if _, ok := k.Pod(ns, "forced"); ok {
				return errors.New("still known")
			}
			return nil
		})
		for _, p := range []string{info.Netns, info.Cgroup, fmt.Sprintf("/proc/%d", info.Containers["main"].Pid)} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s still exists", p)
			}
		}
	})

	t.Run("kubelet stop tears down running pods", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "left", Namespace: ns}, Spec: corev1.PodSpec{NodeName: "node-kt", ServiceAccountName: "default", Containers: []corev1.Container{appContainer("main")}}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var info PodInfo
		eventually(t, 30*time.Second, "pod running", func() error {
			var ok bool
			if info, ok = k.Pod(ns, "left"); !ok || info.Containers["main"].Pid == 0 {
				return errors.New("not running")
			}
			return nil
		})
		stopKubelet()
		for _, p := range []string{info.Netns, info.Cgroup, fmt.Sprintf("/proc/%d", info.Containers["main"].Pid)} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s still exists after Run returned", p)
			}
		}
		if _, err := cs.CoreV1().Pods(ns).Get(ctx, "left", metav1.GetOptions{}); err != nil {
			t.Errorf("the Pod object should stay when the kubelet stops: %v", err)
		}
		ents, _ := os.ReadDir(n.cgroup)
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("cgroup %s left under the node's", e.Name())
			}
		}
	})
}

type claims struct {
	Aud []string `json:"aud"`
	K8s struct {
		Namespace string `json:"namespace"`
		Pod       struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

func jwtClaims(tb testing.TB, tok string) claims {
	tb.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		tb.Fatalf("token %q is not a JWT", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		tb.Fatal(err)
	}
	var c claims
	if err := json.Unmarshal(raw, &c); err != nil {
		tb.Fatal(err)
	}
	return c
}
