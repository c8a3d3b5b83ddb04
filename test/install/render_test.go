package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	// release and namespace of every rendering, as manifests/install is rendered.
	release   = "warren"
	namespace = "warren-system"
	buildHint = "test/tools/build.sh helm"
)

// repoRoot is the directory of the main module's go.mod.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/warren-mesh/warren\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no github.com/warren-mesh/warren go.mod above the test's directory")
		}
		dir = parent
	}
}

// need returns the path of a tool the tests run: helm from the tools cache, anything else from
// PATH. Missing, it skips the test, or fails it with CI=true.
func need(tb testing.TB, name string) string {
	tb.Helper()
	var path string
	var err error
	if name == "helm" {
		bin := os.Getenv("WARREN_TOOLS_BIN")
		if bin == "" {
			bin = filepath.Join(repoRoot(tb), ".cache", "bin")
		}
		path = filepath.Join(bin, "helm")
		_, err = os.Stat(path)
		if err != nil {
			err = fmt.Errorf("%w; build it with %s", err, buildHint)
		}
	} else {
		path, err = exec.LookPath(name)
	}
	if err != nil {
		msg := fmt.Sprintf("%s missing: %v", name, err)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip(msg + "; with CI=true this fails")
	}
	return path
}

// run runs a command in the repository root; the error carries its stderr.
func run(tb testing.TB, env []string, name string, args ...string) ([]byte, error) {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot(tb)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// helmTemplate renders the chart as make generate does, with extra helm arguments.
func helmTemplate(tb testing.TB, extra ...string) ([]byte, error) {
	tb.Helper()
	args := append([]string{"template", release, "manifests/charts/warren", "--namespace", namespace}, extra...)
	return run(tb, nil, need(tb, "helm"), args...)
}

// objects parses a YAML stream into objects keyed by objectKey.
func objects(tb testing.TB, data []byte) map[string]*unstructured.Unstructured {
	tb.Helper()
	out := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			tb.Fatalf("parse rendered manifests: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		k := objectKey(u)
		if _, dup := out[k]; dup {
			tb.Fatalf("rendered manifests hold %s twice", k)
		}
		out[k] = u
	}
}

// objectKey names an object: "group/Kind namespace/name" (group "core" for the core group).
func objectKey(u *unstructured.Unstructured) string {
	g := u.GroupVersionKind().Group
	if g == "" {
		g = "core"
	}
	return fmt.Sprintf("%s/%s %s/%s", g, u.GetKind(), u.GetNamespace(), u.GetName())
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// defaultInstall is the chart rendered as manifests/install is.
func defaultInstall(tb testing.TB) map[string]*unstructured.Unstructured {
	tb.Helper()
	out, err := helmTemplate(tb, "--set", "namespace.create=true")
	if err != nil {
		tb.Fatal(err)
	}
	return objects(tb, out)
}

// TestKustomizeMatchesChart: `kubectl kustomize manifests` (what `kubectl apply -k` applies, built
// from the committed manifests/install) is the same set of objects as the chart renders, and
// manifests/install's files hold exactly those objects.
func TestKustomizeMatchesChart(t *testing.T) {
	chart := defaultInstall(t)
	out, err := run(t, nil, need(t, "kubectl"), "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	kust := objects(t, out)
	if diff := cmp.Diff(chart, kust); diff != "" {
		t.Errorf("kubectl kustomize manifests differs from the chart (-helm template +kustomize); run make generate:\n%s", diff)
	}
	// The install files, read as kubectl apply -f reads them.
	files := map[string]*unstructured.Unstructured{}
	for _, f := range []string{"manifests/install/warren.yaml", "manifests/install/crds-warren.yaml", "manifests/install/crds-gateway-api.yaml"} {
		raw, err := os.ReadFile(filepath.Join(repoRoot(t), f))
		if err != nil {
			t.Fatal(err)
		}
		for k, o := range objects(t, raw) {
			if strings.HasPrefix(f, "manifests/install/crds-") != (o.GetKind() == "CustomResourceDefinition") {
				t.Errorf("%s is in %s: CRDs belong in manifests/install/crds-*.yaml and nothing else does", k, f)
			}
			// kubectl apply -f maps every object before it creates any: a custom resource next to
			// its CRD would fail a first install.
			if g := o.GroupVersionKind().Group; strings.HasSuffix(g, "warren.dev") || strings.HasSuffix(g, "gateway.networking.k8s.io") {
				t.Errorf("%s in %s: the manifests must hold no custom resource of the CRDs they install", k, f)
			}
			files[k] = o
		}
	}
	if diff := cmp.Diff(keys(chart), keys(files)); diff != "" {
		t.Errorf("manifests/install holds other objects than the chart renders (-chart +files):\n%s", diff)
	}
	// kubectl apply -f applies in file order: the namespace must come before what lives in it.
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests/install/warren.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if i, j := bytes.Index(raw, []byte("\nkind: Namespace\n")), bytes.Index(raw, []byte("\nkind: ServiceAccount\n")); i < 0 || j < i {
		t.Errorf("manifests/install/warren.yaml: the Namespace (at byte %d) must come before the ServiceAccounts (at %d)", i, j)
	}
}

// changes lists where b differs from a: "<object key>: <field path>", "<key>: added" or
// "<key>: removed". A list of another length is one change at the list's path.
func changes(a, b map[string]*unstructured.Unstructured) []string {
	var out []string
	for _, k := range keys(a) {
		if _, ok := b[k]; !ok {
			out = append(out, k+": removed")
		}
	}
	for _, k := range keys(b) {
		o, ok := a[k]
		if !ok {
			out = append(out, k+": added")
			continue
		}
		var paths []string
		diffPaths(o.Object, b[k].Object, "", &paths)
		for _, p := range paths {
			out = append(out, k+": "+p)
		}
	}
	sort.Strings(out)
	return out
}

func diffPaths(a, b any, path string, out *[]string) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		ks := keys(am)
		for _, k := range keys(bm) {
			if _, ok := am[k]; !ok {
				ks = append(ks, k)
			}
		}
		sort.Strings(ks)
		for _, k := range ks {
			p := k
			if path != "" {
				p = path + "." + k
			}
			diffPaths(am[k], bm[k], p, out)
		}
		return
	}
	al, alok := a.([]any)
	bl, blok := b.([]any)
	if alok && blok && len(al) == len(bl) {
		for i := range al {
			diffPaths(al[i], bl[i], fmt.Sprintf("%s[%d]", path, i), out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, path)
	}
}

// field reads a field of an object by a changes-style path (dots and [i]).
func field(tb testing.TB, o *unstructured.Unstructured, path string) any {
	tb.Helper()
	var cur any = o.Object
	for _, part := range strings.Split(path, ".") {
		name, idx, _ := strings.Cut(part, "[")
		cur = cur.(map[string]any)[name]
		if idx != "" {
			var i int
			fmt.Sscanf(idx, "%d]", &i)
			cur = cur.([]any)[i]
		}
	}
	return cur
}

const (
	controllerKey = "apps/Deployment warren-system/warren-controller"
	ztunnelKey    = "apps/DaemonSet warren-system/warren-ztunnel"
	pdbKey        = "policy/PodDisruptionBudget warren-system/warren-controller"
	container0    = "spec.template.spec.containers[0]."
)

// TestValues renders the chart with non-default values and checks that exactly the expected
// fields change, to the expected values.
func TestValues(t *testing.T) {
	base := defaultInstall(t)
	gatewayCRDs := []string{}
	for _, k := range keys(base) {
		if strings.HasPrefix(k, "apiextensions.k8s.io/CustomResourceDefinition /") && strings.HasSuffix(k, ".gateway.networking.k8s.io") {
			gatewayCRDs = append(gatewayCRDs, k+": removed")
		}
	}
	if len(gatewayCRDs) != 5 {
		t.Fatalf("default rendering has %d Gateway API CRDs, want 5: %v", len(gatewayCRDs), gatewayCRDs)
	}
	tests := []struct {
		name string
		set  []string
		// want: the changes, and the new value of each changed field (nil for added/removed).
		want map[string]any
	}{
		{
			name: "image registry and tag",
			set:  []string{"image.registry=registry.example.com:5000/mirror/warren", "image.tag=1.2.3-rc.1"},
			want: map[string]any{
				controllerKey + ": " + container0 + "image":   "registry.example.com:5000/mirror/warren/warren-controller:1.2.3-rc.1",
				controllerKey + ": " + container0 + "args[4]": "--waypoint-image=registry.example.com:5000/mirror/warren/warren-waypoint:1.2.3-rc.1",
				ztunnelKey + ": " + container0 + "image":      "registry.example.com:5000/mirror/warren/warren-ztunnel:1.2.3-rc.1",
			},
		},
		{
			name: "controller replicas",
			set:  []string{"controller.replicas=3"},
			want: map[string]any{controllerKey + ": spec.replicas": int64(3)},
		},
		{
			name: "one replica without leader election has no disruption budget",
			set:  []string{"controller.replicas=1", "controller.leaderElect=false"},
			want: map[string]any{
				controllerKey + ": spec.replicas":          int64(1),
				controllerKey + ": " + container0 + "args": nil, // --leader-elect gone: the list is shorter
				pdbKey + ": removed":                       nil,
			},
		},
		{
			name: "pod cgroup of a cgroupfs kubelet",
			set:  []string{"ztunnel.podCgroup=/sys/fs/cgroup/kubepods"},
			want: map[string]any{ztunnelKey + ": " + container0 + "args[8]": "--redirect-cgroup=/sys/fs/cgroup/kubepods"},
		},
		{
			name: "pod cgroup naming the node (expanded by the kubelet)",
			set:  []string{"ztunnel.podCgroup=/sys/fs/cgroup/wrn-lab/$(NODE_NAME)"},
			want: map[string]any{ztunnelKey + ": " + container0 + "args[8]": "--redirect-cgroup=/sys/fs/cgroup/wrn-lab/$(NODE_NAME)"},
		},
		{
			name: "default inbound policy",
			set:  []string{"defaultInboundPolicy=deny"},
			want: map[string]any{controllerKey + ": " + container0 + "args[2]": "--default-inbound-policy=deny"},
		},
		{
			name: "intermediate CA from cert-manager: read access to that one Secret",
			set:  []string{"controller.caIntermediateSecret=cert-manager/warren-intermediate"},
			want: map[string]any{
				controllerKey + ": " + container0 + "args":                                                    nil, // one more argument
				"rbac.authorization.k8s.io/Role cert-manager/warren-controller-ca-intermediate: added":        nil,
				"rbac.authorization.k8s.io/RoleBinding cert-manager/warren-controller-ca-intermediate: added": nil,
			},
		},
		{
			name: "no namespace object (helm install --create-namespace)",
			set:  []string{"namespace.create=false"},
			want: map[string]any{"core/Namespace /warren-system: removed": nil},
		},
		{
			name: "Gateway API CRDs managed elsewhere",
			set:  []string{"gatewayAPI.crds=false"},
			want: func() map[string]any {
				m := map[string]any{}
				for _, k := range gatewayCRDs {
					m[k] = nil
				}
				return m
			}(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--set", "namespace.create=true"}
			for _, s := range tc.set {
				args = append(args, "--set-string", s)
			}
			// --set-string keeps "1.2.3" a string; numbers and booleans need --set.
			for i := range args {
				if i > 0 && args[i-1] == "--set-string" && (strings.HasSuffix(args[i], "=false") || strings.HasSuffix(args[i], "=true") || strings.Contains(args[i], "replicas=")) {
					args[i-1] = "--set"
				}
			}
			out, err := helmTemplate(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			got := objects(t, out)
			if diff := cmp.Diff(keys(tc.want), changes(base, got)); diff != "" {
				t.Errorf("changed fields (-want +got):\n%s", diff)
			}
			for change, want := range tc.want {
				if want == nil {
					continue
				}
				key, path, _ := strings.Cut(change, ": ")
				if o := got[key]; o != nil {
					if v := field(t, o, path); fmt.Sprint(v) != fmt.Sprint(want) {
						t.Errorf("%s %s = %#v, want %#v", key, path, v, want)
					}
				}
			}
		})
	}
}

// TestBadValues: values the chart cannot honour fail the rendering with an error naming them.
func TestBadValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // substrings of the error
	}{
		{"unknown key", []string{"--set", "controller.replica=2"}, []string{"/controller", "replica"}},
		{"unknown top-level key", []string{"--set", "ztunnels.podCgroup=/sys/fs/cgroup"}, []string{"ztunnels"}},
		{"tag with a space", []string{"--set-string", "image.tag=1.0 beta"}, []string{"/image/tag", "does not match pattern"}},
		{"registry with a scheme", []string{"--set", "image.registry=https://ghcr.io/warren-mesh"}, []string{"/image/registry", "does not match pattern"}},
		{"zero replicas", []string{"--set", "controller.replicas=0"}, []string{"/controller/replicas", "minimum"}},
		{"replicas as a string", []string{"--set-string", "controller.replicas=two"}, []string{"/controller/replicas", "integer"}},
		{"replicas without an election", []string{"--set", "controller.replicas=2", "--set", "controller.leaderElect=false"}, []string{"controller.replicas > 1 needs controller.leaderElect=true"}},
		{"unknown default policy", []string{"--set", "defaultInboundPolicy=allow-all"}, []string{"/defaultInboundPolicy", "all-unauthenticated"}},
		{"relative pod cgroup", []string{"--set", "ztunnel.podCgroup=kubepods.slice"}, []string{"/ztunnel/podCgroup", "does not match pattern"}},
		{"pod cgroup outside cgroupfs", []string{"--set", "ztunnel.podCgroup=/var/lib/kubepods"}, []string{"/ztunnel/podCgroup"}},
		{"cluster network not a CIDR", []string{"--set", "clusterNetworks={10.0.0.0}"}, []string{"/clusterNetworks/0", "does not match pattern"}},
		{"uppercase trust domain", []string{"--set", "trustDomain=Cluster.Local"}, []string{"/trustDomain", "does not match pattern"}},
		{"certificate TTL without a unit", []string{"--set-string", "controller.workloadCertTTL=24"}, []string{"/controller/workloadCertTTL"}},
		{"intermediate CA without a namespace", []string{"--set", "controller.caIntermediateSecret=my-ca"}, []string{"/controller/caIntermediateSecret"}},
		{"pull policy typo", []string{"--set", "image.pullPolicy=Sometimes"}, []string{"/image/pullPolicy", "IfNotPresent"}},
		{"extra argument that is not a flag", []string{"--set", "ztunnel.extraArgs={oops}"}, []string{"/ztunnel/extraArgs/0"}},
		{"grace period too short to drain", []string{"--set", "ztunnel.terminationGracePeriodSeconds=1"}, []string{"/ztunnel/terminationGracePeriodSeconds", "minimum"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, tc.args...)
			if err == nil {
				t.Fatalf("helm template %v succeeded (%d bytes); want an error", tc.args, len(out))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestKustomizeOverlay builds the example overlay (testdata/overlay: other registry and tags, the
// cgroupfs pod cgroup) and checks that exactly those fields change.
func TestKustomizeOverlay(t *testing.T) {
	kubectl := need(t, "kubectl")
	baseOut, err := run(t, nil, kubectl, "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, nil, kubectl, "kustomize", "test/install/testdata/overlay")
	if err != nil {
		t.Fatal(err)
	}
	got := objects(t, out)
	want := map[string]any{
		controllerKey + ": " + container0 + "image":   "registry.example.com/warren/warren-controller:0.1.1",
		controllerKey + ": " + container0 + "args[4]": "--waypoint-image=registry.example.com/warren/warren-waypoint:0.1.1",
		ztunnelKey + ": " + container0 + "image":      "registry.example.com/warren/warren-ztunnel:0.1.1",
		ztunnelKey + ": " + container0 + "args[8]":    "--redirect-cgroup=/sys/fs/cgroup/kubepods",
	}
	if diff := cmp.Diff(keys(want), changes(objects(t, baseOut), got)); diff != "" {
		t.Errorf("changed fields (-want +got):\n%s", diff)
	}
	for change, w := range want {
		key, path, _ := strings.Cut(change, ": ")
		if v := field(t, got[key], path); v != w {
			t.Errorf("%s %s = %v, want %v", key, path, v, w)
		}
	}
}

// TestContract checks the rendered defaults against the names and flags every other part of
// Warren relies on (the shared install contract).
func TestContract(t *testing.T) {
	objs := defaultInstall(t)
	for _, k := range []string{
		"core/Namespace /warren-system",
		"core/ServiceAccount warren-system/warren-controller",
		"core/ServiceAccount warren-system/warren-ztunnel",
		"core/Service warren-system/warren-controller",
		controllerKey, ztunnelKey, pdbKey,
		"rbac.authorization.k8s.io/ClusterRole /warren-controller",
		"rbac.authorization.k8s.io/ClusterRole /warren-ztunnel",
		"rbac.authorization.k8s.io/Role warren-system/warren-controller",
		"rbac.authorization.k8s.io/Role warren-system/warren-ztunnel",
		"admissionregistration.k8s.io/ValidatingAdmissionPolicy /authorizationpolicies.policy.warren.dev",
	} {
		if objs[k] == nil {
			t.Errorf("missing %s", k)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	str := func(o *unstructured.Unstructured, path string) string { return fmt.Sprint(field(t, o, path)) }
	ds, dep := objs[ztunnelKey], objs[controllerKey]
	checks := []struct{ what, got, want string }{
		{"controller replicas", str(dep, "spec.replicas"), "2"},
		{"controller image", str(dep, container0+"image"), "ghcr.io/warren-mesh/warren-controller:0.1.0"},
		{"ztunnel image", str(ds, container0+"image"), "ghcr.io/warren-mesh/warren-ztunnel:0.1.0"},
		{"ztunnel container", str(ds, container0+"name"), "ztunnel"},
		{"ztunnel hostNetwork", str(ds, "spec.template.spec.hostNetwork"), "true"},
		{"ztunnel dnsPolicy", str(ds, "spec.template.spec.dnsPolicy"), "ClusterFirstWithHostNet"},
		{"ztunnel priority", str(ds, "spec.template.spec.priorityClassName"), "system-node-critical"},
		{"ztunnel update", str(ds, "spec.updateStrategy.rollingUpdate.maxUnavailable"), "1"},
		{"pdb", str(objs[pdbKey], "spec.minAvailable"), "1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %s, want %s", c.what, c.got, c.want)
		}
	}
	args := func(o *unstructured.Unstructured) []string {
		var out []string
		for _, a := range field(t, o, container0+"args").([]any) {
			out = append(out, a.(string))
		}
		return out
	}
	for _, a := range []string{
		"--controller=warren-controller.warren-system.svc:15012", "--ca-addr=warren-controller.warren-system.svc:15013",
		"--ca-root-file=/var/run/secrets/warren/ca.crt", "--token-file=/var/run/secrets/tokens/warren-ca",
		"--node-agent-socket=/var/run/warren/node-agent.sock", "--pod-state-dir=/var/run/warren/pods",
		"--redirect-cgroup=/sys/fs/cgroup/kubepods.slice", "--cni-install", "--cni-net-dir=/host/etc/cni/net.d",
		"--cni-bin-dir=/host/opt/cni/bin", "--cni-host-net-dir=/etc/cni/net.d", "--cni-binary=/usr/local/bin/warren-cni",
	} {
		if !slices.Contains(args(ds), a) {
			t.Errorf("ztunnel args %q lack %s", args(ds), a)
		}
	}
	for _, a := range []string{"--leader-elect", "--waypoint-image=ghcr.io/warren-mesh/warren-waypoint:0.1.0"} {
		if !slices.Contains(args(dep), a) {
			t.Errorf("controller args %q lack %s", args(dep), a)
		}
	}
	mounts := map[string]string{}
	for _, v := range field(t, ds, "spec.template.spec.volumes").([]any) {
		vm := v.(map[string]any)
		if hp, ok := vm["hostPath"].(map[string]any); ok {
			mounts[vm["name"].(string)] = hp["path"].(string)
		}
	}
	got := map[string]string{}
	for _, m := range field(t, ds, container0+"volumeMounts").([]any) {
		mm := m.(map[string]any)
		if host, ok := mounts[mm["name"].(string)]; ok {
			got[host] = mm["mountPath"].(string)
		}
	}
	want := map[string]string{
		"/etc/cni/net.d": "/host/etc/cni/net.d", "/opt/cni/bin": "/host/opt/cni/bin", "/var/run/warren": "/var/run/warren",
		"/var/run/netns": "/var/run/netns", "/sys/fs/bpf": "/sys/fs/bpf", "/sys/fs/cgroup": "/sys/fs/cgroup",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ztunnel host paths (host -> mount) (-want +got):\n%s", diff)
	}
	var ports []string
	for _, p := range field(t, objs["core/Service warren-system/warren-controller"], "spec.ports").([]any) {
		pm := p.(map[string]any)
		ports = append(ports, fmt.Sprintf("%s %v", pm["name"], pm["port"]))
	}
	if diff := cmp.Diff([]string{"grpc-push 15012", "grpc-ca 15013", "http-metrics 15014"}, ports); diff != "" {
		t.Errorf("controller Service ports (-want +got):\n%s", diff)
	}
}

// TestHelmLint: the chart passes helm lint --strict (warnings fail) with its defaults and with
// the values the lab and the examples use.
func TestHelmLint(t *testing.T) {
	for _, set := range [][]string{
		nil,
		{"--set", "namespace.create=true", "--set", "ztunnel.podCgroup=/sys/fs/cgroup/wrn-lab/$(NODE_NAME)", "--set", "ztunnel.accessLog=true"},
		{"--set", "controller.replicas=1", "--set", "controller.leaderElect=false", "--set", "gatewayAPI.crds=false"},
		{"--set", "controller.caIntermediateSecret=cert-manager/warren-intermediate", "--set", "clusterNetworks={10.0.0.0/8,fd00::/8}"},
	} {
		args := append([]string{"lint", "--strict", "manifests/charts/warren", "--namespace", namespace}, set...)
		if out, err := run(t, nil, need(t, "helm"), args...); err != nil {
			t.Errorf("helm %v: %v\n%s", args, err, out)
		}
	}
}
