//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// requireRoot skips without root, except under CI=true where it fails (a tier that cannot run
// in CI must not pass by skipping).
func requireRoot(t *testing.T) {
	t.Helper()
	var missing string
	if os.Geteuid() != 0 {
		missing = "root"
	} else if _, err := exec.LookPath("kubectl"); err != nil {
		missing = "kubectl"
	} else if root, err := repoRoot(); err == nil {
		bin := os.Getenv("WARREN_TOOLS_BIN")
		if bin == "" {
			bin = filepath.Join(root, ".cache", "bin")
		}
		for _, b := range []string{"kube-apiserver", "etcd", "cni/bridge", "cni/host-local", "cni/loopback"} {
			if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
				missing = filepath.Join(bin, b) + " (test/tools/build.sh kube-apiserver etcd cni-plugins)"
				break
			}
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("lab test needs %s (CI=true: this tier must run)", missing)
	}
	t.Skipf("lab test needs %s; with CI=true this fails", missing)
}

// TestLabSmoke brings a lab up (control plane, warren-controller, two nodes, a pod on each),
// checks the Pod objects and the cross-node path without the mesh, deletes a pod, and tears
// down, leaving no wrn-lab-* network namespace or cgroup behind.
func TestLabSmoke(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	l, err := Up(ctx, Config{StateDir: t.TempDir(), WarrenCNI: "off", Log: testWriter{t}}, 2, true, []PodSpec{
		{Node: "node-1", Namespace: "default", Name: "service-a", ServiceAccount: "service-a", AppArgs: []string{"server", "--listen", ":8080", "--name", "service-a"}},
		{Node: "node-2", Namespace: "default", Name: "service-b", ServiceAccount: "service-b", AppArgs: []string{"server", "--listen", ":8080", "--name", "service-b"}},
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Logf("lab up in %v", time.Since(start).Round(time.Millisecond))
	tornDown := false
	t.Cleanup(func() {
		if !tornDown {
			if err := l.Teardown(); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	})

	for _, want := range []struct{ name, node, cidr string }{
		{"service-a", "node-1", "10.244.1."}, {"service-b", "node-2", "10.244.2."},
	} {
		var pod corev1.Pod
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: want.name}, &pod); err != nil {
			t.Fatalf("get pod %s: %v", want.name, err)
		}
		lp := l.Pod("default", want.name)
		if pod.Spec.NodeName != want.node || pod.Status.Phase != corev1.PodRunning ||
			pod.Status.PodIP != lp.IP.String() || !strings.HasPrefix(pod.Status.PodIP, want.cidr) {
			t.Errorf("pod %s: nodeName %q phase %q podIP %q; want %s, Running, %s (in %s*)",
				want.name, pod.Spec.NodeName, pod.Status.Phase, pod.Status.PodIP, want.node, lp.IP, want.cidr)
		}
	}
	var node corev1.Node
	if err := l.Client.Get(ctx, client.ObjectKey{Name: "node-2"}, &node); err != nil {
		t.Fatal(err)
	}
	if node.Spec.PodCIDR != "10.244.2.0/24" || len(node.Status.Conditions) == 0 || node.Status.Conditions[0].Status != corev1.ConditionTrue {
		t.Errorf("node-2: podCIDR %q conditions %v", node.Spec.PodCIDR, node.Status.Conditions)
	}
	if root, err := l.CARoot(ctx); err != nil || !strings.Contains(string(root), "BEGIN CERTIFICATE") {
		t.Errorf("warren-ca-root: %q, %v", root, err)
	}
	out, err := l.Kubectl(ctx, "get", "pods", "-n", "default", "-o", "wide")
	if err != nil || !strings.Contains(out, "service-b") {
		t.Errorf("kubectl get pods: %q, %v", out, err)
	}

	b := l.Pod("default", "service-b")
	got, err := l.Exec(ctx, "default", "service-a", "app", "client", "--to", b.IP.String()+":8080", "--msg", "across")
	if want := "hello from service-b: across\n"; err != nil || got != want {
		t.Fatalf("client in service-a -> service-b %s:8080: %q, %v; want %q", b.IP, got, err, want)
	}
	// The client ran in the pod's cgroup, the way the eBPF redirect will see it.
	cg, err := l.Exec(ctx, "default", "service-a", "cat", "/proc/self/cgroup")
	if err != nil || !strings.Contains(cg, "/wrn-lab/node1/default_service-a") {
		t.Errorf("exec cgroup: %q, %v", cg, err)
	}

	if err := l.DeletePod(ctx, "default", "service-b"); err != nil {
		t.Errorf("delete pod: %v", err)
	}
	if _, err := os.Stat(b.NetnsPath); !os.IsNotExist(err) {
		t.Errorf("netns %s still there after DeletePod (%v)", b.Netns, err)
	}
	if _, err := l.Exec(ctx, "default", "service-a", "app", "client", "--to", b.IP.String()+":8080", "--timeout", "1s"); err == nil {
		t.Errorf("service-b still answers after DeletePod")
	}

	cgRoot := l.cgroupDir()
	tornDown = true
	if err := l.Teardown(); err != nil {
		t.Errorf("teardown: %v", err)
	}
	nsList, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || strings.Contains(string(nsList), prefix) {
		t.Errorf("after teardown, ip netns list: %s (%v)", nsList, err)
	}
	if _, err := os.Stat(cgRoot); !os.IsNotExist(err) {
		t.Errorf("after teardown, cgroup %s: %v", cgRoot, err)
	}
	if _, err := os.Stat(filepath.Join(l.StateDir(), "lab.json")); !os.IsNotExist(err) {
		t.Errorf("after teardown, lab.json still there: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
