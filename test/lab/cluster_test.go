//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// requireClusterBins is requireRoot plus the binaries only the cluster mode needs.
func requireClusterBins(t *testing.T) {
	t.Helper()
	requireRoot(t)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("WARREN_TOOLS_BIN")
	if bin == "" {
		bin = filepath.Join(root, ".cache", "bin")
	}
	for _, b := range []string{"kube-controller-manager", "kube-scheduler", "helm"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("lab cluster test needs %s (test/tools/build.sh %s; CI=true: this tier must run)", filepath.Join(bin, b), b)
			}
			t.Skipf("lab cluster test needs %s (test/tools/build.sh %s); with CI=true this fails", filepath.Join(bin, b), b)
		}
	}
}

// TestLabCluster installs Warren into the lab cluster from its chart with kubectl, as a user of
// `helm template | kubectl apply` would, and then: the DaemonSet's pods come up on both nodes
// and the installer chained warren-cni; the article's L4 example holds; a deleted ztunnel pod
// is recreated and service returns; the L7 example works through a waypoint the controller
// deployed and the lab's kubelet runs; an upgrade (new image tag) rolls the DaemonSet while
// an enrolled pod keeps calling, within the documented window; and an uninstall leaves no eBPF
// program, CNI config line or CRD behind and the pods talk plain TCP again.
func TestLabCluster(t *testing.T) {
	requireClusterBins(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	l, err := ClusterUp(ctx, Config{StateDir: t.TempDir(), Log: testWriter{t}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if ns, _ := labNetns(); len(ns) > 0 {
			t.Errorf("network namespaces left after teardown: %v", ns)
		}
	})
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))
	if err := l.BuildWarrenImages(ctx, WarrenVersion); err != nil {
		t.Fatal(err)
	}
	// Everything the install applies passes a server-side dry run against the lab's API server
	// first: manifests/install as released, and the chart rendered with the lab's values (the
	// namespace must exist for a dry run of the objects in it).
	if out, err := l.Kubectl(ctx, "create", "namespace", SystemNamespace); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	labManifest, err := l.warrenManifest(ctx, WarrenVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(l.cfg.Root, "manifests", "install"), labManifest} {
		out, err := l.Kubectl(ctx, "apply", "--dry-run=server", "-f", f)
		if err != nil {
			t.Fatalf("server dry run of %s: %v\n%s", f, err, out)
		}
		if n := strings.Count(out, "(server dry run)"); n < 25 {
			t.Errorf("server dry run of %s covered %d objects, want all of them:\n%s", f, n, out)
		}
	}
	installStart := time.Now()
	if out, err := l.InstallWarren(ctx, WarrenVersion); err != nil {
		t.Fatalf("install: %v\n%s\n%s", err, out, l.describe(ctx))
	}
	t.Logf("Warren %s installed and rolled out in %v", WarrenVersion, time.Since(installStart).Round(time.Millisecond))

	t.Run("DaemonSetOnEveryNode", func(t *testing.T) {
		var pods corev1.PodList
		if err := l.Client.List(ctx, &pods, client.InNamespace(SystemNamespace), client.MatchingLabels{"app.kubernetes.io/name": "warren-ztunnel"}); err != nil {
			t.Fatal(err)
		}
		onNode := map[string]string{}
		for _, p := range pods.Items {
			if !podReady(&p) {
				t.Errorf("ztunnel pod %s on %s is not Ready: %+v", p.Name, p.Spec.NodeName, p.Status.Conditions)
			}
			n := l.Node(p.Spec.NodeName)
			if n == nil || p.Status.PodIP != n.IP.String() {
				t.Errorf("ztunnel pod %s: podIP %s, want its node's address (hostNetwork)", p.Name, p.Status.PodIP)
			}
			onNode[p.Spec.NodeName] = p.Name
		}
		if len(onNode) != 2 || onNode["node-1"] == "" || onNode["node-2"] == "" {
			t.Errorf("ztunnel pods by node = %v, want one on node-1 and one on node-2", onNode)
		}
		for _, n := range []string{"node-1", "node-2"} {
			b, err := os.ReadFile(filepath.Join(l.nodeRoot(n), "etc/cni/net.d/10-wrn-lab.conflist"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), `"warren-cni"`) {
				t.Errorf("node %s: the installer did not chain warren-cni:\n%s", n, b)
			}
			if _, err := os.Stat(filepath.Join(l.nodeRoot(n), "opt/cni/bin/warren-cni")); err != nil {
				t.Errorf("node %s: warren-cni not installed: %v", n, err)
			}
		}
		// The uninstall check below must see an installed Warren: every kind of leftover it
		// looks for is there now.
		left, err := l.Leftovers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"node node-1: eBPF program", "node node-2: eBPF program", "eBPF pins left in /sys/fs/bpf/warren/node-1",
			"node-1: /etc/cni/net.d/10-wrn-lab.conflist still mentions warren-cni", "node-2: /opt/cni/bin/warren-cni still there",
			"CustomResourceDefinition servers.policy.warren.dev", "CustomResourceDefinition httproutes.gateway.networking.k8s.io",
		} {
			if !slices.ContainsFunc(left, func(s string) bool { return strings.Contains(s, want) }) {
				t.Errorf("Leftovers on an installed Warren has no %q:\n  %s", want, strings.Join(left, "\n  "))
			}
		}
		var dep appsv1.Deployment
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: "warren-controller"}, &dep); err != nil {
			t.Fatal(err)
		}
		if dep.Status.AvailableReplicas != 2 {
			t.Errorf("warren-controller: %d replicas available, want 2", dep.Status.AvailableReplicas)
		}
		var lease coordinationv1.Lease
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: "warren-controller"}, &lease); err != nil {
			t.Errorf("leader election lease: %v", err)
		} else if h := lease.Spec.HolderIdentity; h == nil || !strings.HasPrefix(*h, "warren-controller-") {
			t.Errorf("lease holder = %v, want a warren-controller pod", h)
		}
	})

	if _, err := l.SetNamespaceAmbient(ctx, "default", true); err != nil {
		t.Fatal(err)
	}
	if out, err := l.ApplyWorkloads(ctx, "l4-workloads.yaml", "default"); err != nil {
		t.Fatalf("workloads: %v\n%s\n%s", err, out, l.describe(ctx))
	}
	if out, err := l.Kubectl(ctx, "apply", "-n", "default", "-f", l.ArticleYAML()); err != nil {
		t.Fatalf("article policy: %v\n%s", err, out)
	}
	b := l.Pod("default", "service-b")
	if b == nil {
		t.Fatal("service-b is not running")
	}
	allowed := func() error {
		out, err := l.Call(ctx, "default/service-a", "default/service-b", 8080, "hello b")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "hello from service-b: hello b") {
			return fmt.Errorf("unexpected answer %q", out)
		}
		return nil
	}

	t.Run("ArticleL4", func(t *testing.T) {
		if err := Eventually(ctx, 30*time.Second, allowed); err != nil {
			t.Fatalf("service-a -> service-b should be allowed: %v", err)
		}
		if err := Eventually(ctx, 10*time.Second, func() error {
			if _, _, ok := l.FindLog("node-2", "access", map[string]string{"direction": "inbound", "src.identity": SpiffeID("default", "service-a")}); !ok {
				return errors.New("no inbound access-log line for service-a in node-2's ztunnel log")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "hello b"); err == nil {
			t.Errorf("service-c -> service-b should be denied, got %q", out)
		}
		if err := Eventually(ctx, 10*time.Second, func() error {
			if _, _, ok := l.FindLog("node-2", "security", map[string]string{"event": "deny", "src.identity": SpiffeID("default", "service-c")}); !ok {
				return errors.New("no deny security event for service-c in node-2's ztunnel log")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("ZtunnelPodRecreated", func(t *testing.T) {
		old, err := l.ZtunnelPod(ctx, "node-2")
		if err != nil || old == "" {
			t.Fatalf("ztunnel pod on node-2: %q %v", old, err)
		}
		deleted := time.Now()
		if _, err := l.Kubectl(ctx, "-n", SystemNamespace, "delete", "pod", old, "--wait=false"); err != nil {
			t.Fatal(err)
		}
		var repl string
		if err := Eventually(ctx, 120*time.Second, func() error {
			repl, err = l.ZtunnelPod(ctx, "node-2")
			if err != nil {
				return err
			}
			if repl == "" || repl == old {
				return errors.New("no replacement yet")
			}
			var p corev1.Pod
			if err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: repl}, &p); err != nil {
				return err
			}
			if !podReady(&p) {
				return fmt.Errorf("%s not Ready", repl)
			}
			return nil
		}); err != nil {
			t.Fatalf("the DaemonSet did not recreate node-2's ztunnel: %v\n%s", err, l.describe(ctx))
		}
		if err := Eventually(ctx, 60*time.Second, allowed); err != nil {
			t.Fatalf("service did not return after the ztunnel pod was recreated: %v", err)
		}
		t.Logf("ztunnel pod %s deleted; %s Ready and service-a -> service-b answered again %v after the delete", old, repl, time.Since(deleted).Round(time.Millisecond))
		if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "hello b"); err == nil {
			t.Errorf("service-c -> service-b should still be denied after the restart, got %q", out)
		}
	})

	t.Run("L7Waypoint", func(t *testing.T) {
		if err := l.SetupClusterL7(ctx); err != nil {
			t.Fatalf("%v\n%s", err, l.describe(ctx))
		}
		for _, c := range l7Cases {
			if err := Eventually(ctx, c.wait, func() error { _, err := l.checkL7(ctx, c); return err }); err != nil {
				t.Errorf("%s %s %s: %v", c.from, c.method, c.path, err)
			}
		}
	})

	t.Run("Upgrade", func(t *testing.T) {
		const next = "0.1.1"
		if err := l.BuildWarrenImages(ctx, next); err != nil {
			t.Fatal(err)
		}
		pull := time.Now()
		if err := l.PrePullWarren(ctx, next); err != nil {
			t.Fatal(err)
		}
		t.Logf("images %s pre-pulled in %v", next, time.Since(pull).Round(time.Millisecond))
		probe := newProber(ctx, allowed, 250*time.Millisecond)
		upStart := time.Now()
		if out, err := l.InstallWarren(ctx, next); err != nil {
			probe.stop()
			t.Fatalf("upgrade: %v\n%s\n%s", err, out, l.describe(ctx))
		}
		// Calls keep going a little after the rollout: the last new ztunnel adopts its node.
		time.Sleep(3 * time.Second)
		res := probe.stop()
		t.Logf("upgrade %s -> %s rolled out in %v; %d calls from an enrolled pod, %d failed, longest outage %v from +%v (documented window: %v)",
			WarrenVersion, next, time.Since(upStart).Round(time.Millisecond), res.calls, res.failed, res.longest.Round(time.Millisecond),
			res.longestFrom.Sub(upStart).Round(time.Millisecond), UpgradeWindow)
		if res.longest > UpgradeWindow {
			t.Errorf("an enrolled pod could not call service-b for %v during the upgrade (documented window %v); last error: %v", res.longest, UpgradeWindow, res.lastErr)
		}
		var pods corev1.PodList
		if err := l.Client.List(ctx, &pods, client.InNamespace(SystemNamespace), client.MatchingLabels{"app.kubernetes.io/name": "warren-ztunnel"}); err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			var ready time.Time
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady {
					ready = c.LastTransitionTime.Time
				}
			}
			t.Logf("new ztunnel %s on %s: created +%v, Ready +%v (after the upgrade's apply)", p.Name, p.Spec.NodeName,
				p.CreationTimestamp.Sub(upStart).Round(time.Second), ready.Sub(upStart).Round(time.Second))
			if img := p.Spec.Containers[0].Image; !strings.HasSuffix(img, ":"+next) {
				t.Errorf("ztunnel pod %s runs %s after the upgrade", p.Name, img)
			}
		}
		if err := Eventually(ctx, 30*time.Second, allowed); err != nil {
			t.Errorf("service-a -> service-b after the upgrade: %v", err)
		}
		if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "hello b"); err == nil {
			t.Errorf("service-c -> service-b should still be denied after the upgrade, got %q", out)
		}
	})

	t.Run("Uninstall", func(t *testing.T) {
		if out, err := l.UninstallWarren(ctx, "0.1.1"); err != nil {
			t.Fatalf("uninstall: %v\n%s\n%s", err, out, l.describe(ctx))
		}
		if err := l.WaitUninstalled(ctx, 30*time.Second); err != nil {
			t.Errorf("uninstall left things behind:\n  %v", err)
		}
		// Pods are back on plain networking: service-c (denied while meshed) now reaches
		// service-b, which sees service-c's own address.
		c := l.Pod("default", "service-c")
		out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "plain again", "--show-peer")
		if err != nil {
			t.Fatalf("service-c -> service-b after uninstall: %v", err)
		}
		if !strings.Contains(out, "hello from service-b: plain again") {
			t.Errorf("unexpected answer after uninstall: %q (service-c is %s)", out, c.IP)
		}
		// And a new pod starts without the mesh's CNI plugin.
		if out, err := l.Kubectl(ctx, "-n", "default", "run", "after", "--image", appImage, "--restart=Never",
			"--overrides", `{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node-1"}}}`, "--", "server", "--listen", ":8080", "--name", "after"); err != nil {
			t.Fatalf("kubectl run: %v\n%s", err, out)
		}
		if _, err := l.Kubectl(ctx, "-n", "default", "wait", "--for=condition=Ready", "pod/after", "--timeout=60s"); err != nil {
			t.Errorf("a new pod after uninstall: %v\n%s", err, l.describe(ctx))
		}
	})
}

// UpgradeWindow is the longest an enrolled pod may be unable to open connections while the
// ztunnel DaemonSet rolls to a new version (README "Upgrade"): a node's pods stay captured
// (fail closed) from the old ztunnel's exit until the new one has adopted the node's eBPF
// redirect and is ready.
const UpgradeWindow = 30 * time.Second

// prober calls f every interval until stopped and measures the longest run of failures.
type prober struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	res    probeResult
}

type probeResult struct {
	calls, failed int
	longest       time.Duration
	longestFrom   time.Time
	lastErr       error
}

func newProber(ctx context.Context, f func() error, interval time.Duration) *prober {
	ctx, cancel := context.WithCancel(ctx)
	p := &prober{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var downSince time.Time
		for ctx.Err() == nil {
			err := f()
			now := time.Now()
			p.mu.Lock()
			p.res.calls++
			if err != nil {
				p.res.failed++
				p.res.lastErr = err
				if downSince.IsZero() {
					downSince = now
				}
				if d := now.Sub(downSince); d > p.res.longest {
					p.res.longest, p.res.longestFrom = d, downSince
				}
			} else {
				downSince = time.Time{}
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
		}
	}()
	return p
}

func (p *prober) stop() probeResult {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.res
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
