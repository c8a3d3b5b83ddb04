package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/envtest"
	"github.com/warren-mesh/warren/test/netns"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

// mainEnv makes the test binary run warren-ztunnel's main instead of the tests, so that the
// process tests exercise the real binary's signal handling.
const mainEnv = "WARREN_ZTUNNEL_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// cluster is the API objects of one ztunnel pod: its DaemonSet and the pod it controls.
type cluster struct {
	env *envtest.Env
	ns  string
}

func (c cluster) daemonSet(t testing.TB, name string) *appsv1.DaemonSet {
	t.Helper()
	return c.env.DaemonSet(t, c.ns, name)
}

// pod creates a pod controlled by owner (nil: a bare pod).
func (c cluster) pod(t testing.TB, name string, owner *appsv1.DaemonSet) {
	t.Helper()
	c.env.PodOf(t, c.ns, name, owner)
}

func (c cluster) delete(t testing.TB, obj client.Object) {
	t.Helper()
	c.env.Delete(t, obj)
}

// TestProcessLifecycle runs whole warren-ztunnel processes (netns tier, root) through a restart
// and an uninstall, against a real API server; the decision itself is tested in
// ztunnel/uninstall.
func TestProcessLifecycle(t *testing.T) {
	netns.RequireRoot(t)
	env := envtest.Start(t)
	testProcessLifecycle(t, cluster{env: env, ns: env.Namespace(t)})
}

// writeKubeconfig writes a kubeconfig for rc.
func writeKubeconfig(t testing.TB, rc *rest.Config, path string) {
	t.Helper()
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"envtest": {Server: rc.Host, CertificateAuthorityData: rc.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"admin": {ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}},
		Contexts:       map[string]*clientcmdapi.Context{"envtest": {Cluster: "envtest", AuthInfo: "admin"}},
		CurrentContext: "envtest",
	}
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testProcessLifecycle starts warren-ztunnel processes with --cni-install in in-pod mode:
// the first is SIGTERMed with its DaemonSet present and must keep the CNI chaining and the eBPF
// pins; the second adopts them, then is SIGTERMed after its DaemonSet was deleted and must leave
// neither pins nor the warren-cni entry, binary or kubeconfig.
func testProcessLifecycle(t *testing.T, c cluster) {
	netns.RequireRoot(t)
	cg := netns.NewCgroup(t)
	pinPath := filepath.Join("/sys/fs/bpf", netns.Name())
	t.Cleanup(func() {
		if _, err := os.Stat(pinPath); err == nil {
			t.Errorf("pins left at %s; removing them", pinPath)
			uninstallPins(t, cg.Path, pinPath)
		}
	})
	dir := t.TempDir()
	netDir, binDir, saDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin"), filepath.Join(dir, "sa")
	for _, d := range []string{netDir, binDir, saDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist, err := os.ReadFile("../../ztunnel/cniinstall/testdata/10-bridge.conflist")
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(netDir, "10-bridge.conflist"), conflist, 0o644)
	mustWrite(t, filepath.Join(dir, "warren-cni"), []byte("#!/bin/sh\nexit 0\n"), 0o755)
	mustWrite(t, filepath.Join(saDir, "token"), []byte("sa-token"), 0o600)
	mustWrite(t, filepath.Join(saDir, "ca.crt"), c.env.Config.CAData, 0o644)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(t, c.env.Config, kubeconfig)
	config := writeConfig(t, dir, ztunneltest.RandomNet(), "v1")

	ds := c.daemonSet(t, "warren-ztunnel")
	c.pod(t, "warren-ztunnel-abcde", ds)

	start := func() (*exec.Cmd, *syncBuffer, string) {
		ready := freeAddr(t)
		out := &syncBuffer{}
		cmd := exec.Command(os.Args[0],
			"--config", config, "--node", "node-1", "--mark=false",
			"--admin-addr", freeAddr(t), "--metrics-addr", "", "--ready-addr", ready,
			"--node-agent-socket", filepath.Join(dir, "node-agent.sock"), "--pod-state-dir", filepath.Join(dir, "pods"),
			"--redirect-cgroup", cg.Path, "--bpf-pin-path", pinPath,
			"--cni-install", "--cni-net-dir", netDir, "--cni-bin-dir", binDir, "--cni-host-net-dir", "/etc/cni/net.d",
			"--cni-binary", filepath.Join(dir, "warren-cni"), "--cni-service-account-dir", saDir, "--cni-api-server", c.env.Config.Host,
			"--kubeconfig", kubeconfig, "--pod-name", "warren-ztunnel-abcde", "--pod-namespace", c.ns,
		)
		cmd.Env = append(os.Environ(), mainEnv+"=1")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		return cmd, out, ready
	}
	waitReady := func(out *syncBuffer, ready string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get("http://" + ready + "/healthz/ready")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
			if time.Now().After(deadline) {
				t.Fatalf("ztunnel not ready after 30s: %v\n%s", err, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stop := func(cmd *exec.Cmd, out *syncBuffer) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ztunnel exited with %v\n%s", err, out)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("ztunnel did not exit within 60s of SIGTERM\n%s", out)
		}
	}
	chained := func() bool {
		data, err := os.ReadFile(filepath.Join(netDir, "10-bridge.conflist"))
		return err == nil && bytes.Contains(data, []byte(`"type":"warren-cni"`))
	}

	// A restart: the DaemonSet is there.
	cmd, out, ready := start()
	waitReady(out, ready)
	if !chained() || !pinsPresent(t, pinPath) {
		t.Fatalf("ready, but chained %v, pins %v\n%s", chained(), pinsPresent(t, pinPath), out)
	}
	stop(cmd, out)
	if !strings.Contains(out.String(), "exiting without uninstalling") || !strings.Contains(out.String(), "is still there") {
		t.Errorf("first ztunnel's log does not say it kept Warren installed:\n%s", out)
	}
	if !chained() || !pinsPresent(t, pinPath) {
		t.Fatalf("after a restart's SIGTERM: chained %v, pins %v; want both kept\n%s", chained(), pinsPresent(t, pinPath), out)
	}

	// The next ztunnel adopts the pins; then the DaemonSet is deleted and it goes.
	cmd, out, ready = start()
	waitReady(out, ready)
	c.delete(t, ds)
	stop(cmd, out)
	if !strings.Contains(out.String(), "uninstalling Warren from this node") || !strings.Contains(out.String(), "is gone") {
		t.Errorf("second ztunnel's log does not say it uninstalled:\n%s", out)
	}
	if testing.Verbose() {
		t.Logf("second ztunnel:\n%s", out)
	}
	if _, err := os.Stat(pinPath); !os.IsNotExist(err) {
		t.Errorf("pin path %s after uninstall: %v; want it gone\n%s", pinPath, err, out)
	}
	got, err := os.ReadFile(filepath.Join(netDir, "10-bridge.conflist"))
	if err != nil || !bytes.Equal(got, conflist) {
		t.Errorf("conflist after uninstall = %s, %v; want the original\n%s", got, err, out)
	}
	for _, p := range []string{filepath.Join(binDir, "warren-cni"), filepath.Join(netDir, "warren-cni.kubeconfig")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after uninstall: %v; want it gone", p, err)
		}
	}
}

func mustWrite(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
}

// pinsPresent reports whether the redirect's pinned links are under pinPath.
func pinsPresent(t testing.TB, pinPath string) bool {
	t.Helper()
	ents, err := os.ReadDir(pinPath)
	if err != nil {
		return false
	}
	return len(ents) > 0
}

// uninstallPins removes pins a failed test left, by adopting and uninstalling them.
func uninstallPins(t testing.TB, cgroup, pinPath string) {
	t.Helper()
	rd, err := redirect.New(redirect.Config{CgroupPath: cgroup, PinPath: pinPath})
	if err != nil {
		t.Errorf("adopt pins at %s: %v", pinPath, err)
		return
	}
	if err := rd.Uninstall(); err != nil {
		t.Errorf("remove pins at %s: %v", pinPath, err)
	}
}
