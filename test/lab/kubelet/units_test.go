//go:build linux

package kubelet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func validConfig(tb testing.TB) Config {
	tb.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		tb.Fatal(err)
	}
	cg := cgroup2Mount(tb)
	shim := filepath.Join(tb.TempDir(), "shim")
	if err := os.WriteFile(shim, []byte("#!/bin/true\n"), 0o755); err != nil {
		tb.Fatal(err)
	}
	return Config{
		Client: cs, NodeName: "n", NodeIP: netip.MustParseAddr("10.99.0.1"), NodeRoot: tb.TempDir(), CgroupParent: cg,
		Images: dirImages{}, ShimPath: shim, NetnsPrefix: "wrn-kt-", ClusterDNS: netip.MustParseAddr("10.0.0.10"),
		ClusterDomain: "cluster.local", StateDir: tb.TempDir(),
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(validConfig(t)); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no client", func(c *Config) { c.Client = nil }, "field Client is nil"},
		{"no node name", func(c *Config) { c.NodeName = "" }, "field NodeName is empty"},
		{"no node IP", func(c *Config) { c.NodeIP = netip.Addr{} }, "field NodeIP is not set"},
		{"no cluster DNS", func(c *Config) { c.ClusterDNS = netip.Addr{} }, "field ClusterDNS is not set"},
		{"no cluster domain", func(c *Config) { c.ClusterDomain = "" }, "field ClusterDomain is empty"},
		{"no images", func(c *Config) { c.Images = nil }, "field Images is nil"},
		{"no netns prefix", func(c *Config) { c.NetnsPrefix = "" }, "field NetnsPrefix"},
		{"netns prefix with slash", func(c *Config) { c.NetnsPrefix = "a/b" }, "without slashes"},
		{"relative node root", func(c *Config) { c.NodeRoot = "root" }, `field NodeRoot "root" is not an absolute path`},
		{"missing state dir", func(c *Config) { c.StateDir = "/nonexistent-wrn-kt" }, "field StateDir /nonexistent-wrn-kt is not a directory"},
		{"cgroup parent not a cgroup", func(c *Config) { c.CgroupParent = t.TempDir() }, "is not a cgroup v2 directory"},
		{"missing node netns", func(c *Config) { c.NodeNetns = "/run/netns/wrn-kt-missing" }, "field NodeNetns"},
		{"missing shim", func(c *Config) { c.ShimPath = "/nonexistent-wrn-kt/shim" }, "build test/lab/kubelet/shim"},
		{"relative node-local path", func(c *Config) { c.NodeLocalPaths = []string{"etc/cni"} }, `NodeLocalPaths entry "etc/cni" is not absolute`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validConfig(t)
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for in, want := range map[string]string{
		"":                "",
		"plain":           "plain",
		"$(A)":            "1",
		"x$(A)y$(B)z":     "x1ytwoz",
		"$(MISSING)":      "$(MISSING)",
		"$$(A)":           "$(A)",
		"$$":              "$",
		"cost $5":         "cost $5",
		"trailing $":      "trailing $",
		"$(unterminated":  "$(unterminated",
		"$(A)$(A)$$$(B)$": "11$two$",
	} {
		if got := expand(in, lookup); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCommand(t *testing.T) {
	img := ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"default-arg"}}
	lookup := envLookup([]string{"NAME=web"})
	for _, tc := range []struct {
		name string
		c    corev1.Container
		want []string
	}{
		{"image defaults", corev1.Container{}, []string{"/entry", "default-arg"}},
		{"args replace Cmd", corev1.Container{Args: []string{"--name=$(NAME)"}}, []string{"/entry", "--name=web"}},
		{"command replaces both", corev1.Container{Command: []string{"/bin/x"}}, []string{"/bin/x"}},
		{"command and args", corev1.Container{Command: []string{"/bin/x", "$(NAME)"}, Args: []string{"$$(NAME)"}}, []string{"/bin/x", "web", "$(NAME)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, command(&tc.c, img, lookup)); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
		})
	}
	if got := command(&corev1.Container{}, ImageConfig{}, lookup); len(got) != 0 {
		t.Errorf("no entrypoint, no command: argv %v, want none", got)
	}
}

func TestServiceEnv(t *testing.T) {
	svcs := []corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "my-svc"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.7", Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP},
		}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 1}}}},
	}
	got := map[string]string{}
	for _, kv := range serviceEnv(svcs) {
		got[kv[0]] = kv[1]
	}
	want := map[string]string{
		"MY_SVC_SERVICE_HOST": "10.0.0.7", "MY_SVC_SERVICE_PORT": "80",
		"MY_SVC_SERVICE_PORT_HTTP": "80", "MY_SVC_SERVICE_PORT_DNS_UDP": "53",
		"MY_SVC_PORT":        "tcp://10.0.0.7:80",
		"MY_SVC_PORT_80_TCP": "tcp://10.0.0.7:80", "MY_SVC_PORT_80_TCP_PROTO": "tcp", "MY_SVC_PORT_80_TCP_PORT": "80", "MY_SVC_PORT_80_TCP_ADDR": "10.0.0.7",
		"MY_SVC_PORT_53_UDP": "udp://10.0.0.7:53", "MY_SVC_PORT_53_UDP_PROTO": "udp", "MY_SVC_PORT_53_UDP_PORT": "53", "MY_SVC_PORT_53_UDP_ADDR": "10.0.0.7",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("service env (-want +got):\n%s", diff)
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	if err := writeAtomic(dir, map[string]file{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	if read("a") != "1" || read("sub/b") != "2" {
		t.Fatalf("after the first write: a=%q sub/b=%q", read("a"), read("sub/b"))
	}
	if st, err := os.Stat(filepath.Join(dir, "sub/b")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("sub/b mode %v (%v), want 0600", st.Mode(), err)
	}
	// Same content: nothing is rewritten.
	if err := writeAtomic(dir, map[string]file{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(filepath.Join(dir, "..data")); again != first {
		t.Errorf("unchanged content rewritten: ..data %s -> %s", first, again)
	}
	// New content: a changes, sub goes, c appears; the old timestamped directory is removed.
	if err := writeAtomic(dir, map[string]file{"a": {data: []byte("changed"), mode: 0o644}, "c": {data: []byte("3"), mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	if read("a") != "changed" || read("c") != "3" {
		t.Errorf("after the update: a=%q c=%q", read("a"), read("c"))
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("removed key sub still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Errorf("old data directory %s still there (%v)", first, err)
	}
	for _, bad := range []string{"/abs", "../up", "x/../../up", "..data"} {
		if err := writeAtomic(dir, map[string]file{bad: {data: []byte("x"), mode: 0o644}}); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestResolvConf(t *testing.T) {
	w := &podWorker{k: &Kubelet{cfg: Config{ClusterDNS: netip.MustParseAddr("10.0.0.10"), ClusterDomain: "cluster.local"}}}
	ndots := "2"
	for _, tc := range []struct {
		name string
		spec corev1.PodSpec
		want string
	}{
		{"cluster first", corev1.PodSpec{}, "nameserver 10.0.0.10\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"},
		{"host network with ClusterFirstWithHostNet", corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet},
			"nameserver 10.0.0.10\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"},
		{"dnsConfig merges", corev1.PodSpec{DNSConfig: &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"}, Searches: []string{"example.com"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &ndots}, {Name: "edns0"}}}},
			"nameserver 10.0.0.10\nnameserver 1.1.1.1\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local example.com\noptions ndots:2 edns0\n"},
		{"none", corev1.PodSpec{DNSPolicy: corev1.DNSNone, DNSConfig: &corev1.PodDNSConfig{Nameservers: []string{"9.9.9.9"}}}, "nameserver 9.9.9.9\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: tc.spec}
			pod.Namespace = "ns1"
			got, err := w.resolvConf(pod)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("resolv.conf (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := w.resolvConf(&corev1.Pod{Spec: corev1.PodSpec{DNSPolicy: "Bogus"}}); err == nil || !strings.Contains(err.Error(), `dnsPolicy "Bogus" unknown`) {
		t.Errorf("bad dnsPolicy: error %v", err)
	}
}

func TestHostPath(t *testing.T) {
	root := t.TempDir()
	w := &podWorker{k: &Kubelet{cfg: Config{NodeRoot: root, NodeLocalPaths: DefaultNodeLocalPaths}}}
	host := t.TempDir() // a real host path, outside the node-local ones
	if err := os.WriteFile(filepath.Join(host, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	typ := func(t corev1.HostPathType) *corev1.HostPathType { return &t }
	for _, tc := range []struct {
		name    string
		src     corev1.HostPathVolumeSource
		want    string
		wantErr string
	}{
		{"node-local directory created", corev1.HostPathVolumeSource{Path: "/var/run/warren", Type: typ(corev1.HostPathDirectoryOrCreate)}, filepath.Join(root, "var/run/warren"), ""},
		{"node-local below a prefix", corev1.HostPathVolumeSource{Path: "/etc/cni/net.d"}, filepath.Join(root, "etc/cni/net.d"), ""},
		{"prefix is not a path prefix", corev1.HostPathVolumeSource{Path: "/etc/cnix"}, "/etc/cnix", ""},
		{"host path", corev1.HostPathVolumeSource{Path: host, Type: typ(corev1.HostPathDirectory)}, host, ""},
		{"host file", corev1.HostPathVolumeSource{Path: host + "/f", Type: typ(corev1.HostPathFile)}, host + "/f", ""},
		{"file is not a directory", corev1.HostPathVolumeSource{Path: host + "/f", Type: typ(corev1.HostPathDirectory)}, "", "is not a Directory"},
		{"missing socket", corev1.HostPathVolumeSource{Path: host + "/sock", Type: typ(corev1.HostPathSocket)}, "", "does not exist (type Socket)"},
		{"relative", corev1.HostPathVolumeSource{Path: "rel"}, "", `hostPath "rel" is not absolute`},
		{"unknown type", corev1.HostPathVolumeSource{Path: host, Type: typ("Weird")}, "", `hostPath type "Weird" unknown`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src
			got, err := w.hostPath(&src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("hostPath = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if st, err := os.Stat(filepath.Join(root, "var/run/warren")); err != nil || !st.IsDir() {
		t.Errorf("DirectoryOrCreate did not create the directory under the node root: %v", err)
	}
}
