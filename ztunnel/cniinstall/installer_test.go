package cniinstall

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"

type fixture struct {
	cfg    Config
	mu     sync.Mutex
	events []Event
}

// newFixture makes a node's directories (net, bin), a warren-cni "binary" and a ServiceAccount
// dir laid out as the kubelet projects it (..data symlink swapped on rotation).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{cfg: Config{
		NetDir:            filepath.Join(root, "host", "etc", "cni", "net.d"),
		HostNetDir:        "/etc/cni/net.d",
		BinDir:            filepath.Join(root, "host", "opt", "cni", "bin"),
		Binary:            filepath.Join(root, "usr", "local", "bin", "warren-cni"),
		ServiceAccountDir: filepath.Join(root, "sa"),
		APIServer:         "https://10.0.0.1:443",
		NodeAgentSocket:   "/var/run/warren/node-agent.sock",
		StateDir:          "/var/run/warren/pods",
		Resync:            time.Hour,
	}}
	f.cfg.OnEvent = func(e Event) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.events = append(f.events, e)
	}
	for _, d := range []string{f.cfg.NetDir, f.cfg.BinDir, filepath.Dir(f.cfg.Binary), f.cfg.ServiceAccountDir} {
		mkdir(t, d)
	}
	writeFile(t, f.cfg.Binary, "#!/bin/sh\necho warren-cni v1\n", 0o755)
	project(t, f.cfg.ServiceAccountDir, "1", map[string]string{"token": "token-1", "ca.crt": testCA, "namespace": "warren-system"})
	return f
}

func mkdir(t testing.TB, d string) {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path, data string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
}

// project writes files the way the kubelet updates a projected volume: into a fresh timestamped
// directory, then an atomic swap of the ..data symlink; the visible names link through ..data.
func project(t testing.TB, dir, gen string, files map[string]string) {
	t.Helper()
	ts := "..gen_" + gen
	mkdir(t, filepath.Join(dir, ts))
	for name, data := range files {
		writeFile(t, filepath.Join(dir, ts, name), data, 0o644)
		if _, err := os.Lstat(filepath.Join(dir, name)); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) kinds() []EventKind {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []EventKind
	for _, e := range f.events {
		out = append(out, e.Kind)
	}
	return out
}

func (f *fixture) has(kind EventKind, pathSuffix string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.events, func(e Event) bool { return e.Kind == kind && strings.HasSuffix(e.Path, pathSuffix) })
}

// start runs an installer until the test ends (or the returned stop is called).
func (f *fixture) start(t *testing.T) (*Installer, func()) {
	t.Helper()
	inst, err := New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inst.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return inst, stop
}

func eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 10s", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// snapshot returns the net dir's files (name -> content).
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(data)
	}
	return out
}

func copyTestdata(t testing.TB, dir, name string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, name), string(readTestdata(t, name).Data), 0o644)
}

func TestNewRejects(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"no net dir", func(c *Config) { c.NetDir = "" }, "net dir is required"},
		{"no bin dir", func(c *Config) { c.BinDir = "" }, "bin dir is required"},
		{"no binary", func(c *Config) { c.Binary = "" }, "binary is required"},
		{"relative host net dir", func(c *Config) { c.HostNetDir = "etc/cni/net.d" }, `host net dir "etc/cni/net.d" is not an absolute path`},
		{"no API server", func(c *Config) { c.APIServer = "" }, "API server URL is required"},
		{"plain http", func(c *Config) { c.APIServer = "http://10.0.0.1:443" }, "want https://host:port"},
		{"bad URL", func(c *Config) { c.APIServer = "https://[::1" }, "API server URL"},
		{"missing binary", func(c *Config) { c.Binary = filepath.Join(c.BinDir, "nope") }, "warren-cni binary: stat"},
		{"binary is a dir", func(c *Config) { c.Binary = c.BinDir }, "is not a regular file"},
		{"no token", func(c *Config) { c.ServiceAccountDir = c.BinDir }, "service account token"},
		{"relative socket", func(c *Config) { c.NodeAgentSocket = "node-agent.sock" }, `node agent socket "node-agent.sock" is not an absolute path`},
		{"no state dir", func(c *Config) { c.StateDir = "" }, `state dir "" is not an absolute path`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.cfg
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestInstallAndUninstall(t *testing.T) {
	f := newFixture(t)
	copyTestdata(t, f.cfg.NetDir, "10-calico.conflist")
	copyTestdata(t, f.cfg.NetDir, "10-flannel.conflist")
	writeFile(t, filepath.Join(f.cfg.NetDir, "calico-kubeconfig"), "calico's own", 0o600)
	before := snapshot(t, f.cfg.NetDir)

	inst, stop := f.start(t)
	eventually(t, "ready", inst.Ready)

	bin, err := os.ReadFile(filepath.Join(f.cfg.BinDir, "warren-cni"))
	if err != nil || !strings.Contains(string(bin), "warren-cni v1") {
		t.Errorf("installed binary = %q, %v", bin, err)
	}
	if fi, err := os.Stat(filepath.Join(f.cfg.BinDir, "warren-cni")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed binary mode = %v, %v; want 0755", fi.Mode(), err)
	}
	kc, err := clientcmd.LoadFromFile(filepath.Join(f.cfg.NetDir, KubeconfigName))
	if err != nil {
		t.Fatalf("plugin kubeconfig: %v", err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatalf("plugin kubeconfig: %v", err)
	}
	if rc.Host != "https://10.0.0.1:443" || rc.BearerToken != "token-1" || string(rc.CAData) != testCA {
		t.Errorf("plugin kubeconfig: host %q token %q CA %q", rc.Host, rc.BearerToken, rc.CAData)
	}
	if fi, _ := os.Stat(filepath.Join(f.cfg.NetDir, KubeconfigName)); fi.Mode().Perm() != 0o600 {
		t.Errorf("plugin kubeconfig mode = %v; want 0600 (it holds a token)", fi.Mode())
	}
	got := snapshot(t, f.cfg.NetDir)
	want, _, err := Chain(readTestdata(t, "10-calico.conflist"), Entry{
		NodeAgentSocket: f.cfg.NodeAgentSocket, StateDir: f.cfg.StateDir, Kubeconfig: "/etc/cni/net.d/warren-cni.kubeconfig",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["10-calico.conflist"] != string(want.Data) {
		t.Errorf("primary config =\n%s\nwant\n%s", got["10-calico.conflist"], want.Data)
	}
	if got["10-flannel.conflist"] != before["10-flannel.conflist"] {
		t.Errorf("a config that is not the primary was changed")
	}

	if err := inst.Uninstall(); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Uninstall while running = %v; want an error", err)
	}
	stop()
	if err := inst.Ready(); err != nil {
		t.Errorf("Ready after Run returned = %v; Run must leave everything installed", err)
	}
	if err := inst.Uninstall(); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	if diff := cmp.Diff(before, snapshot(t, f.cfg.NetDir)); diff != "" {
		t.Errorf("net dir after uninstall (-before +after):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(f.cfg.BinDir, "warren-cni")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary after uninstall: %v; want it gone", err)
	}
	for _, k := range []EventKind{BinaryInstalled, KubeconfigWritten, Chained, Unchained, Removed} {
		if !slices.Contains(f.kinds(), k) {
			t.Errorf("events %v lack %s", f.kinds(), k)
		}
	}
	if err := inst.Ready(); err == nil {
		t.Error("Ready after Uninstall = nil")
	}
	// A second uninstall (the next ztunnel to exit) finds nothing to do.
	if err := inst.Uninstall(); err != nil {
		t.Errorf("second Uninstall: %v", err)
	}
}

// TestWaitsForTheNetworkPlugin: a node whose network plugin has not written its config yet; the
// installer waits, then chains (converting a .conf) as soon as it appears, and the uninstall
// brings the .conf back.
func TestWaitsForTheNetworkPlugin(t *testing.T) {
	f := newFixture(t)
	writeFile(t, filepath.Join(f.cfg.NetDir, "README"), "not a config", 0o644)
	inst, stop := f.start(t)
	eventually(t, "waiting event", func() error {
		if !f.has(Waiting, "net.d") {
			return errors.New("no Waiting event")
		}
		return nil
	})
	if err := inst.Ready(); err == nil || !strings.Contains(err.Error(), "no CNI config") {
		t.Errorf("Ready before any config = %v; want no CNI config", err)
	}
	// The network plugin writes its config in place (not atomically).
	conf := readTestdata(t, "05-cilium.conf")
	writeFile(t, filepath.Join(f.cfg.NetDir, conf.Name), string(conf.Data), 0o640)
	eventually(t, "ready", inst.Ready)
	got := snapshot(t, f.cfg.NetDir)
	if _, ok := got["05-cilium.conf"]; ok {
		t.Error("05-cilium.conf still there after conversion")
	}
	checkRuntimeView(t, File{Name: "05-cilium.conflist", Data: []byte(got["05-cilium.conflist"])}, 1)
	if fi, err := os.Stat(filepath.Join(f.cfg.NetDir, "05-cilium.conflist")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("converted file mode = %v, %v; want the original's 0640", fi.Mode(), err)
	}
	stop()
	if err := inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	got = snapshot(t, f.cfg.NetDir)
	if got["05-cilium.conf"] != string(conf.Data) {
		t.Errorf("05-cilium.conf after uninstall = %q; want the original", got["05-cilium.conf"])
	}
	if _, ok := got["05-cilium.conflist"]; ok {
		t.Error("05-cilium.conflist left after uninstall")
	}
}

// TestRechains: other writers change the net dir under a running installer.
func TestRechains(t *testing.T) {
	f := newFixture(t)
	copyTestdata(t, f.cfg.NetDir, "10-calico.conflist")
	inst, stop := f.start(t)
	eventually(t, "ready", inst.Ready)
	path := filepath.Join(f.cfg.NetDir, "10-calico.conflist")

	// Calico's installer rewrites its config (a new MTU), dropping our entry.
	calico := strings.Replace(string(readTestdata(t, "10-calico.conflist").Data), `"mtu": 0`, `"mtu": 1450`, 1)
	writeFile(t, path, calico, 0o644)
	eventually(t, "re-chained after a rewrite", inst.Ready)
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), `"mtu": 1450`) {
		t.Errorf("re-chained config lost the rewrite:\n%s", data)
	}
	checkRuntimeView(t, File{Name: "10-calico.conflist", Data: data}, 1)

	// The primary becomes invalid: not ready, and the failure is reported.
	writeFile(t, path, `{"name": "k8s-pod-network", "plugins": [`, 0o644)
	eventually(t, "failure reported", func() error {
		if err := inst.Ready(); err == nil || !f.has(Failed, "10-calico.conflist") {
			return errors.New("no failure yet")
		}
		return nil
	})
	if err := inst.Ready(); !strings.Contains(err.Error(), "invalid conflist JSON") {
		t.Errorf("Ready with an invalid primary = %v", err)
	}
	writeFile(t, path, calico, 0o644)
	eventually(t, "re-chained after the fix", inst.Ready)

	// A lexically earlier config appears: it becomes the primary and gets chained.
	copyTestdata(t, f.cfg.NetDir, "05-cilium.conf")
	eventually(t, "new primary chained", func() error {
		if _, err := os.Stat(filepath.Join(f.cfg.NetDir, "05-cilium.conflist")); err != nil {
			return err
		}
		return inst.Ready()
	})
	// Cilium writes its .conf again next to Warren's conversion: converted again.
	copyTestdata(t, f.cfg.NetDir, "05-cilium.conf")
	eventually(t, "converted again", func() error {
		if _, err := os.Stat(filepath.Join(f.cfg.NetDir, "05-cilium.conf")); err == nil {
			return errors.New("05-cilium.conf still there")
		}
		return inst.Ready()
	})
	// And once more, while Warren is stopped: the uninstall keeps Cilium's newer file and drops
	// the conversion.
	stop()
	copyTestdata(t, f.cfg.NetDir, "05-cilium.conf")
	if err := inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, f.cfg.NetDir)
	want := map[string]string{"05-cilium.conf": string(readTestdata(t, "05-cilium.conf").Data), "10-calico.conflist": calico}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("net dir after uninstall (-want +got):\n%s", diff)
	}
}

func TestRefusesToOverwriteAnotherConflist(t *testing.T) {
	f := newFixture(t)
	copyTestdata(t, f.cfg.NetDir, "05-cilium.conf")
	other := `{"name":"other","plugins":[{"type":"bridge"}]}`
	writeFile(t, filepath.Join(f.cfg.NetDir, "05-cilium.conflist"), other, 0o644)
	inst, _ := f.start(t)
	eventually(t, "failure reported", func() error {
		if !f.has(Failed, "05-cilium.conf") {
			return errors.New("no failure yet")
		}
		return nil
	})
	if err := inst.Ready(); err == nil {
		t.Error("Ready = nil with the primary unchained")
	}
	if got := snapshot(t, f.cfg.NetDir)["05-cilium.conflist"]; got != other {
		t.Errorf("05-cilium.conflist was overwritten: %s", got)
	}
}

func TestTokenRotationAndBinaryRepair(t *testing.T) {
	f := newFixture(t)
	f.cfg.Resync = 50 * time.Millisecond
	copyTestdata(t, f.cfg.NetDir, "10-bridge.conflist")
	// An older warren-cni is on the node (a previous version's install).
	writeFile(t, filepath.Join(f.cfg.BinDir, "warren-cni"), "#!/bin/sh\necho warren-cni v0\n", 0o755)
	inst, _ := f.start(t)
	eventually(t, "ready", inst.Ready)
	binPath := filepath.Join(f.cfg.BinDir, "warren-cni")
	if b, _ := os.ReadFile(binPath); !strings.Contains(string(b), "v1") {
		t.Errorf("old binary not replaced: %q", b)
	}

	project(t, f.cfg.ServiceAccountDir, "2", map[string]string{"token": "token-2", "ca.crt": testCA, "namespace": "warren-system"})
	eventually(t, "kubeconfig with the rotated token", func() error {
		kc, err := clientcmd.LoadFromFile(filepath.Join(f.cfg.NetDir, KubeconfigName))
		if err != nil {
			return err
		}
		if tok := kc.AuthInfos[PluginType].Token; tok != "token-2" {
			return errors.New("token " + tok)
		}
		return nil
	})

	// Someone deletes the binary: the next resync puts it back.
	n := count(f.kinds(), BinaryInstalled)
	if err := os.Remove(binPath); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binary restored", func() error { _, err := os.Stat(binPath); return err })
	if got := count(f.kinds(), BinaryInstalled); got != n+1 {
		t.Errorf("%d binary installs after the delete; want %d", got, n+1)
	}
	// Identical content is not rewritten by a new installer (a ztunnel restart).
	time.Sleep(120 * time.Millisecond)
	n = count(f.kinds(), BinaryInstalled)
	f2 := &fixture{cfg: f.cfg}
	f2.cfg.OnEvent = func(e Event) { f2.mu.Lock(); f2.events = append(f2.events, e); f2.mu.Unlock() }
	inst2, err := New(f2.cfg)
	if err != nil {
		t.Fatal(err)
	}
	inst2.sync()
	if slices.Contains(f2.kinds(), BinaryInstalled) || slices.Contains(f2.kinds(), KubeconfigWritten) {
		t.Errorf("a new installer rewrote identical files: %v", f2.kinds())
	}
	if got := count(f.kinds(), BinaryInstalled); got != n {
		t.Errorf("binary rewritten by resync without a change")
	}
}

func count(ks []EventKind, k EventKind) int {
	n := 0
	for _, x := range ks {
		if x == k {
			n++
		}
	}
	return n
}

func TestKubeconfigRejects(t *testing.T) {
	tests := []struct {
		name, server, ca, token, want string
	}{
		{"empty token", "https://h:1", testCA, " \n", "token is empty"},
		{"no PEM CA", "https://h:1", "garbage", "t", "ca.crt has no PEM certificate"},
		{"http server", "http://h:1", testCA, "t", "want https://host:port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Kubeconfig(tc.server, []byte(tc.ca), []byte(tc.token))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Kubeconfig = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestServerFromEnv(t *testing.T) {
	tests := []struct {
		host, port, want, wantErr string
	}{
		{"10.0.0.1", "443", "https://10.0.0.1:443", ""},
		{"fd00::1", "6443", "https://[fd00::1]:6443", ""},
		{"", "443", "", "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"},
		{"10.0.0.1", "", "", "not set"},
	}
	for _, tc := range tests {
		env := map[string]string{"KUBERNETES_SERVICE_HOST": tc.host, "KUBERNETES_SERVICE_PORT": tc.port}
		got, err := ServerFromEnv(func(k string) string { return env[k] })
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ServerFromEnv(%q, %q) = %q, %v; want %q, %q", tc.host, tc.port, got, err, tc.want, tc.wantErr)
		}
	}
}
