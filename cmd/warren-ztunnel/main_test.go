package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

func TestParseFlagsRejects(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--node", "n"}, "either --controller (with --ca-addr) or --config (standalone mode) is required"},
		{[]string{"--node", "n", "--controller", "c:15012"}, "--controller needs --ca-addr"},
		{[]string{"--node", "n", "--controller", "c:15012", "--config", "x.yaml"}, "--config and --controller exclude each other"},
		{[]string{"--node", "n", "--controller", "c:15012", "--ca-addr", "c:15013", "--ca-cert", "a", "--ca-key", "b"}, "--ca-cert/--ca-key are for standalone mode"},
		{[]string{"--config", "x.yaml", "--node", ""}, "--node (or $NODE_NAME) is required"},
		{[]string{"--config", "x.yaml", "--node", "n", "--ca-cert", "c.pem"}, "--ca-cert and --ca-key go together"},
		{[]string{"--node", "n", "--controller", "c:15012", "--ca-addr", "c:15013", "--node-agent-socket", "/tmp/a.sock"}, "--node-agent-socket and --redirect-cgroup go together"},
		{[]string{"--node", "n", "--config", "x.yaml", "--cni-install"}, "--cni-install needs in-pod mode"},
		{[]string{"--node", "n", "--config", "x.yaml", "--uninstall-on-exit", "sometimes"}, `--uninstall-on-exit "sometimes": want auto, always or never`},
		{[]string{"--bogus"}, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("NODE_NAME", "")
			_, err := parseFlags(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseFlags(%q) = %v; want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestRunRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("workloads: [{uid: a}]"), 0o600)
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not pem"), 0o600)
	good := writeConfig(t, dir, ztunneltest.RandomNet(), "v1")
	// In-pod mode with --cni-install: the install setup is checked before the eBPF redirect loads
	// (the cgroup does not exist, so getting past the checks would fail differently).
	inPod := []string{"--config", good, "--node", "n", "--node-agent-socket", filepath.Join(dir, "a.sock"),
		"--redirect-cgroup", filepath.Join(dir, "no-cgroup"), "--cni-install", "--cni-api-server", "https://10.0.0.1:443"}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--config", filepath.Join(dir, "missing.yaml"), "--node", "n"}, "read config"},
		{[]string{"--config", bad, "--node", "n"}, "name, namespace and service account are required"},
		{[]string{"--config", good, "--node", "n", "--ca-cert", garbage, "--ca-key", garbage}, "--ca-cert: no PEM CERTIFICATE block"},
		{[]string{"--config", good, "--node", "n", "--log-level", "loud"}, "--log-level"},
		{append(inPod, "--cni-binary", filepath.Join(dir, "missing-cni")), "cni install: warren-cni binary"},
		{append(inPod, "--cni-binary", garbage, "--cni-service-account-dir", dir), "cni install: service account token"},
		{append(inPod, "--cni-binary", garbage, "--cni-api-server", ""), "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?); set --cni-api-server"},
		{append(inPod, "--cni-binary", garbage, "--cni-api-server", "http://10.0.0.1"), `API server URL "http://10.0.0.1": want https://host:port`},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v; want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

// writeConfig writes the article's config on the prefix p with the given version.
func writeConfig(t testing.TB, dir string, p [3]byte, version string) string {
	t.Helper()
	data, err := os.ReadFile("../../api/nodeconfig/testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(data), "127.10.", fmt.Sprintf("127.%d.", p[1]))
	s = strings.Replace(s, `version: "v1"`, fmt.Sprintf("version: %q", version), 1)
	path := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestStandaloneServesAndReloads(t *testing.T) {
	dir := t.TempDir()
	p := ztunneltest.RandomNet()
	path := writeConfig(t, dir, p, "v1")
	admin, ready := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", path, "--node", "node-1", "--admin-addr", admin,
			"--metrics-addr", "", "--ready-addr", ready, "--mark=false", "--config-poll", "20ms"}, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	dump := func() ztunnel.ConfigDump {
		var d ztunnel.ConfigDump
		resp, err := http.Get("http://" + admin + "/config_dump")
		if err != nil {
			return d
		}
		defer resp.Body.Close()
		json.NewDecoder(resp.Body).Decode(&d)
		return d
	}
	waitUntil(t, func() bool { return len(dump().Workloads) == 2 }, "both workloads enrolled")
	resp, err := http.Get("http://" + ready + "/healthz/ready")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("readiness = %v, %v; want 200", resp, err)
	}
	resp.Body.Close()

	// A broken file keeps the last good config; a good one is applied.
	os.WriteFile(path, []byte("workloads: ["), 0o600)
	time.Sleep(100 * time.Millisecond)
	if v := dump().Version; v != "v1" {
		t.Fatalf("after a broken file the version is %q; want v1 kept", v)
	}
	future := time.Now().Add(time.Second)
	writeConfig(t, dir, p, "v2")
	os.Chtimes(path, future, future)
	waitUntil(t, func() bool { return dump().Version == "v2" }, "version v2 applied")
}

func waitUntil(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseFlagsBPFPinPath(t *testing.T) {
	base := []string{"--node", "n1", "--config", "c.yaml", "--node-agent-socket", "/tmp/a.sock", "--redirect-cgroup", "/sys/fs/cgroup/k"}
	for _, tc := range []struct {
		extra []string
		want  string
	}{
		{nil, "/sys/fs/bpf/warren/n1"},
		{[]string{"--bpf-pin-path", "/sys/fs/bpf/x"}, "/sys/fs/bpf/x"},
		{[]string{"--bpf-pin-path", "none"}, ""},
	} {
		o, err := parseFlags(append(append([]string{}, base...), tc.extra...), io.Discard)
		if err != nil || o.bpfPinPath != tc.want {
			t.Errorf("parseFlags(%q): bpfPinPath %q, %v; want %q", tc.extra, o.bpfPinPath, err, tc.want)
		}
	}
}
