//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
)

// plugin runs the real kubectl with the freshly built kubectl-warren first on PATH, and keeps a
// transcript of every command and its output (written to $WARREN_PLUGIN_TRANSCRIPT at the end
// when set).
type plugin struct {
	t          *testing.T
	path       string // PATH with the plugin's directory first
	kubeconfig string

	mu         sync.Mutex
	transcript bytes.Buffer
}

// newPlugin builds cmd/kubectl-warren into a temporary directory.
func newPlugin(ctx context.Context, t *testing.T, root, kubeconfig string) *plugin {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "kubectl-warren"), "./cmd/kubectl-warren")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build kubectl-warren: %v\n%s", err, out)
	}
	p := &plugin{t: t, path: dir + string(os.PathListSeparator) + os.Getenv("PATH"), kubeconfig: kubeconfig}
	// kubectl finds the plugin on PATH, as a user's shell would.
	if out, err := p.cmd(ctx, "", "plugin", "list"); err != nil || !strings.Contains(out, filepath.Join(dir, "kubectl-warren")) {
		t.Fatalf("kubectl plugin list does not show the plugin in %s: %q %v", dir, out, err)
	}
	t.Cleanup(func() {
		if path := os.Getenv("WARREN_PLUGIN_TRANSCRIPT"); path != "" {
			p.mu.Lock()
			defer p.mu.Unlock()
			if err := os.WriteFile(path, p.transcript.Bytes(), 0o644); err != nil {
				t.Errorf("transcript: %v", err)
			}
		}
	})
	return p
}

// cmd runs kubectl args with kubeconfig (default: the lab's admin) and returns stdout; on a
// non-zero exit the error holds stderr.
func (p *plugin) cmd(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	if kubeconfig == "" {
		kubeconfig = p.kubeconfig
	}
	c := exec.CommandContext(ctx, "kubectl", args...)
	c.Env = append(os.Environ(), "PATH="+p.path, "KUBECONFIG="+kubeconfig)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), err
}

// run runs "kubectl warren args", records it in the transcript and returns stdout and stderr.
func (p *plugin) run(ctx context.Context, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	if kubeconfig == "" {
		kubeconfig = p.kubeconfig
	}
	c := exec.CommandContext(ctx, "kubectl", append([]string{"warren"}, args...)...)
	c.Env = append(os.Environ(), "PATH="+p.path, "KUBECONFIG="+kubeconfig)
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err = c.Run()
	p.mu.Lock()
	env := ""
	if kubeconfig != p.kubeconfig {
		env = "KUBECONFIG=" + filepath.Base(kubeconfig) + " "
	}
	fmt.Fprintf(&p.transcript, "$ %skubectl warren %s\n%s%s", env, strings.Join(args, " "), o.String(), e.String())
	if err != nil {
		fmt.Fprintf(&p.transcript, "[exit: %v]\n", err)
	}
	p.transcript.WriteString("\n")
	p.mu.Unlock()
	return o.String(), e.String(), err
}

// ok runs a command that must succeed and returns its stdout.
func (p *plugin) ok(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := p.run(ctx, "", args...)
	if err != nil {
		t.Fatalf("kubectl warren %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs a command that must fail with exactly one line on stderr containing every want.
func (p *plugin) fails(ctx context.Context, t *testing.T, kubeconfig string, args []string, want ...string) string {
	t.Helper()
	out, errOut, err := p.run(ctx, kubeconfig, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("kubectl warren %s: exit %v, want 1\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	line := strings.TrimSuffix(errOut, "\n")
	if out != "" || line == "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "error: ") {
		t.Errorf("kubectl warren %s: want nothing on stdout and one \"error: \" line on stderr, got stdout %q stderr %q", strings.Join(args, " "), out, errOut)
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("kubectl warren %s: error %q does not say %q", strings.Join(args, " "), line, w)
		}
	}
	return line
}

// whyDecision is the part of `why -o json` the lab checks.
type whyDecision struct {
	Verdict    string `json:"verdict"`
	PolicyKind string `json:"policyKind"`
	Policy     string `json:"policy"`
	Server     string `json:"server"`
	Checks     []struct {
		Policy          string   `json:"policy"`
		Result          string   `json:"result"`
		Authentications []string `json:"authentications"`
	} `json:"checks"`
}

// TestLabPlugin drives `kubectl warren` (the real kubectl, the plugin built from this tree) against
// the lab's live pods and ztunnels: every command, `why` checked against real connections for
// the article's cases, and the bad inputs (unknown pod, pod outside the mesh, a node whose
// ztunnel is down, a user without pods/proxy rights), each a one-line error that says what to
// do, with the plugin working again right after.
func TestLabPlugin(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	l, err := Up(ctx, Config{StateDir: t.TempDir(), WarrenCNI: "auto", WithZtunnel: true, Log: testWriter{t}}, 2, true, nil)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	if err := l.EnsureNamespace(ctx, "default", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetNamespaceAmbient(ctx, "default", true); err != nil {
		t.Fatal(err)
	}
	server := func(node, ns, name string) PodSpec {
		return PodSpec{Node: node, Namespace: ns, Name: name, ServiceAccount: name, Labels: map[string]string{"app": name},
			AppArgs: []string{"server", "--listen", ":8080", "--name", name}}
	}
	for _, ps := range []PodSpec{
		server("node-1", "default", "service-a"), server("node-2", "default", "service-b"), server("node-1", "default", "service-c"),
		server("node-1", "plain", "plain-x"),
	} {
		if _, err := l.AddPod(ctx, ps); err != nil {
			t.Fatalf("add pod: %v", err)
		}
	}
	if err := l.EnsureNamespace(ctx, "team-w", nil); err != nil {
		t.Fatal(err)
	}
	p := newPlugin(ctx, t, l.cfg.Root, l.Kubeconfig)
	t.Logf("lab with ztunnels, 4 pods and the plugin up in %v", time.Since(start).Round(time.Millisecond))

	// The article's policy, in force on node-2 once service-c is refused.
	if out, err := l.Kubectl(ctx, "apply", "-n", "default", "-f", l.ArticleYAML()); err != nil {
		t.Fatalf("apply: %v %s", err, out)
	}
	err = Eventually(ctx, 30*time.Second, func() error {
		if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "let me in"); err == nil {
			return fmt.Errorf("service-c still reaches service-b: %q", out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := Eventually(ctx, 20*time.Second, func() error {
		_, err := l.Call(ctx, "default/service-a", "default/service-b", 8080, "allowed")
		return err
	}); err != nil {
		t.Fatalf("service-a -> service-b under the article's policy: %v", err)
	}

	t.Run("Identity", func(t *testing.T) {
		out := p.ok(ctx, t, "identity", "-n", "default", "service-a")
		for _, want := range []string{"POD:           default/service-a", "NODE:          node-1", "SPIFFE ID:     " + SpiffeID("default", "service-a"), "STATE:         valid", "ISSUER CHAIN:"} {
			if !strings.Contains(out, want) {
				t.Errorf("identity: no %q in\n%s", want, out)
			}
		}
		out = p.ok(ctx, t, "identity", "-n", "default", "-l", "app=service-b", "-o", "json")
		var ids []struct {
			Pod, Node string
			SPIFFEID  string `json:"spiffeID"`
		}
		if err := json.Unmarshal([]byte(out), &ids); err != nil || len(ids) != 1 || ids[0].Node != "node-2" || ids[0].SPIFFEID != SpiffeID("default", "service-b") {
			t.Errorf("identity -l app=service-b -o json: %+v %v\n%s", ids, err, out)
		}
	})

	// Why agrees with the live ztunnel on the article's cases: the same verdict for a real
	// connection from the same client, naming the Server, the AuthorizationPolicy and the
	// authentication.
	t.Run("WhyAgreesWithLiveZtunnel", func(t *testing.T) {
		for _, tc := range []struct {
			name, src, from string
			verdict, kind   string
			result          string
		}{
			{"service-a allowed", "service-a", "default/service-a", "allow", "AuthorizationPolicy", "matched"},
			{"service-c denied", "service-c", "default/service-c", "deny", "Server", "failed"},
			{"unmeshed denied", "plain/plain-x", "plain/plain-x", "deny", "Server", "failed"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				table := p.ok(ctx, t, "why", "-n", "default", tc.src, "service-b:8080")
				for _, want := range []string{"DECISION:     " + strings.ToUpper(tc.verdict), "SERVER:       default/service-b",
					"default/service-a-to-b", "MeshTLSAuthentication/default/service-a"} {
					if !strings.Contains(table, want) {
						t.Errorf("why %s: no %q in\n%s", tc.src, want, table)
					}
				}
				var ds []whyDecision
				if err := json.Unmarshal([]byte(p.ok(ctx, t, "why", "-n", "default", tc.src, "service-b:8080", "-o", "json")), &ds); err != nil || len(ds) != 1 {
					t.Fatalf("why -o json: %+v %v", ds, err)
				}
				d := ds[0]
				if d.Verdict != tc.verdict || d.PolicyKind != tc.kind || d.Server != "default/service-b" ||
					len(d.Checks) != 1 || d.Checks[0].Policy != "default/service-a-to-b" || d.Checks[0].Result != tc.result {
					t.Errorf("why %s: %+v; want %s by %s, check %s", tc.src, d, tc.verdict, tc.kind, tc.result)
				}
				live := "deny"
				if out, err := l.Call(ctx, tc.from, "default/service-b", 8080, "why"); err == nil && strings.Contains(out, "hello from service-b") {
					live = "allow"
				}
				if live != d.Verdict {
					t.Errorf("why says %s for %s -> service-b:8080, the live ztunnel did %s", d.Verdict, tc.from, live)
				}
				if live == "deny" {
					// Refused by node-2's ztunnel (a security event), not lost on the way.
					ns, name, _ := strings.Cut(tc.from, "/")
					from := l.Pod(ns, name).IP.String() + ":"
					want := map[string]string{"event": "deny", "src.addr": from, "dst.workload": "default/service-b"}
					if err := Eventually(ctx, 5*time.Second, func() error {
						if _, _, ok := l.FindLog("node-2", "security", want); !ok {
							return fmt.Errorf("no security event %v on node-2", want)
						}
						return nil
					}); err != nil {
						t.Error(err)
					}
				}
			})
		}
	})

	t.Run("Policy", func(t *testing.T) {
		out := p.ok(ctx, t, "policy", "-n", "default", "service-b", "8080")
		for _, want := range []string{"SERVER:         default/service-b (port 8080)", "ACCESS POLICY:  deny", "default/service-a-to-b", SpiffeID("default", "service-a"), "ztunnel"} {
			if !strings.Contains(out, want) {
				t.Errorf("policy 8080: no %q in\n%s", want, out)
			}
		}
		if out := p.ok(ctx, t, "policy", "default/service-a", "8080"); !strings.Contains(out, "none covers the port") {
			t.Errorf("policy service-a 8080 (no Server): %s", out)
		}
	})

	t.Run("Status", func(t *testing.T) {
		out := p.ok(ctx, t, "status")
		for _, want := range [][]string{{"default", "ambient", "3", "3"}, {"plain", "-", "1", "0"},
			{"node-1", "warren-ztunnel-node-1", "true"}, {"node-2", "warren-ztunnel-node-2", "true"}} {
			if !hasRow(out, want...) {
				t.Errorf("status: no row starting %q in\n%s", want, out)
			}
		}
	})

	t.Run("ZtunnelConfig", func(t *testing.T) {
		for _, tc := range []struct {
			kind string
			want []string
		}{
			{"workloads", []string{"service-a", "service-b", "service-c", "node-1", "node-2"}},
			{"services", nil},
			{"policies", []string{"default/service-b", "service-a-to-b"}},
			{"certificates", []string{SpiffeID("default", "service-a"), SpiffeID("default", "service-b"), "valid"}},
			{"connections", nil},
		} {
			out := p.ok(ctx, t, "ztunnel-config", tc.kind)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("ztunnel-config %s: no %q in\n%s", tc.kind, w, out)
				}
			}
		}
		out := p.ok(ctx, t, "zc", "workloads", "--node", "node-2")
		if !hasRow(out, "node-2", "default", "service-b", l.Pod("default", "service-b").IP.String(), "node-2", "HBONE", "sa/service-b") {
			t.Errorf("zc workloads --node node-2: no row for service-b in\n%s", out)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if !strings.HasPrefix(line, "node-2 ") {
				t.Errorf("zc workloads --node node-2 shows another node's view: %q", line)
			}
		}
	})

	t.Run("AuthzSince", func(t *testing.T) {
		if _, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "denied again"); err == nil {
			t.Fatal("service-c reached service-b")
		}
		err := Eventually(ctx, 10*time.Second, func() error {
			out, errOut, err := p.run(ctx, "", "authz", "-n", "default", "--since", "2m")
			if err != nil {
				return fmt.Errorf("%v: %s", err, errOut)
			}
			for _, want := range []string{"deny", SpiffeID("default", "service-c"), "default/service-b", "Server default/service-b"} {
				if !strings.Contains(out, want) {
					return fmt.Errorf("authz --since 2m: no %q in\n%s", want, out)
				}
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("Namespace", func(t *testing.T) {
		if out := p.ok(ctx, t, "namespace", "enable", "team-w"); !strings.Contains(out, "namespace/team-w joined the mesh") {
			t.Errorf("enable: %s", out)
		}
		if got, _ := l.Kubectl(ctx, "get", "ns", "team-w", "-o", "jsonpath={.metadata.labels.warren\\.dev/dataplane-mode}"); got != "ambient" {
			t.Errorf("after enable, label = %q", got)
		}
		if out := p.ok(ctx, t, "namespace", "disable", "team-w"); !strings.Contains(out, "namespace/team-w left the mesh") {
			t.Errorf("disable: %s", out)
		}
		if got, _ := l.Kubectl(ctx, "get", "ns", "team-w", "-o", "jsonpath={.metadata.labels}"); strings.Contains(got, LabelDataplaneMode) {
			t.Errorf("after disable, labels = %q", got)
		}
		p.fails(ctx, t, "", []string{"namespace", "enable", "no-such-ns"}, "namespace no-such-ns not found", "kubectl get namespaces")
	})

	t.Run("Waypoint", func(t *testing.T) {
		if out := p.ok(ctx, t, "waypoint", "apply", "-n", "team-w", "--enroll-namespace"); !strings.Contains(out, "applied in namespace team-w") || !strings.Contains(out, "namespace/team-w uses waypoint waypoint") {
			t.Errorf("apply: %s", out)
		}
		out := p.ok(ctx, t, "waypoint", "list", "-n", "team-w")
		if !strings.Contains(out, "waypoint") || !strings.Contains(out, "namespace/team-w") {
			t.Errorf("list: %s", out)
		}
		if out := p.ok(ctx, t, "waypoint", "list", "-A"); !strings.Contains(out, "team-w") {
			t.Errorf("list -A: %s", out)
		}
		if out := p.ok(ctx, t, "waypoint", "delete", "-n", "team-w"); !strings.Contains(out, "deleted from namespace team-w") || !strings.Contains(out, "no longer uses waypoint") {
			t.Errorf("delete: %s", out)
		}
		p.fails(ctx, t, "", []string{"waypoint", "delete", "-n", "team-w"}, "waypoint team-w/waypoint not found", "kubectl warren waypoint list -n team-w")
	})

	t.Run("BadInputs", func(t *testing.T) {
		p.fails(ctx, t, "", []string{"identity", "-n", "default", "no-such-pod"}, "pod default/no-such-pod not found", "check the name and -n")
		p.fails(ctx, t, "", []string{"why", "-n", "default", "service-a", "no-such-pod:8080"}, "pod default/no-such-pod not found")
		p.fails(ctx, t, "", []string{"identity", "plain/plain-x"}, "pod plain/plain-x is not in the mesh", "kubectl warren namespace enable plain")
		p.fails(ctx, t, "", []string{"policy", "plain/plain-x", "8080"}, "is not in the mesh", "kubectl warren namespace enable plain")
		p.fails(ctx, t, "", []string{"why", "-n", "default", "service-a", "service-b"}, "has no port", "DEST:PORT")
		// Nothing broke: the same plugin answers right after.
		p.ok(ctx, t, "identity", "-n", "default", "service-a")
	})

	t.Run("ZtunnelDown", func(t *testing.T) {
		if err := l.KillZtunnel("node-2"); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				if err := l.RestartZtunnel(ctx, "node-2"); err != nil {
					t.Errorf("restart ztunnel: %v", err)
				}
			}
		}()
		p.fails(ctx, t, "", []string{"identity", "-n", "default", "service-b"}, "ztunnel on node node-2 is not reachable", "is the warren-ztunnel pod running?")
		p.fails(ctx, t, "", []string{"why", "-n", "default", "service-a", "service-b:8080"}, "ztunnel on node node-2 is not reachable")
		// status reports the dead ztunnel in its table and keeps going.
		if out := p.ok(ctx, t, "status"); !hasRow(out, "node-2", "warren-ztunnel-node-2", "unreachable:") || !hasRow(out, "node-1", "warren-ztunnel-node-1", "true") {
			t.Errorf("status with node-2's ztunnel down:\n%s", out)
		}
		// node-1 still answers.
		p.ok(ctx, t, "identity", "-n", "default", "service-a")
		restarted = true
		if err := l.RestartZtunnel(ctx, "node-2"); err != nil {
			t.Fatalf("restart ztunnel: %v", err)
		}
		err := Eventually(ctx, 30*time.Second, func() error {
			_, errOut, err := p.run(ctx, "", "identity", "-n", "default", "service-b")
			if err != nil {
				return fmt.Errorf("%v: %s", err, errOut)
			}
			return nil
		})
		if err != nil {
			t.Errorf("identity after the ztunnel restarted: %v", err)
		}
	})

	t.Run("NoPodsProxyRights", func(t *testing.T) {
		// A user who may read pods and namespaces but not pods/proxy.
		cr := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "warren-plugin-test-viewer"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list"}}},
		}
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "warren-plugin-test-viewer"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "viewer"}},
		}
		if err := l.Client.Create(ctx, cr); err != nil {
			t.Fatal(err)
		}
		if err := l.Client.Create(ctx, crb); err != nil {
			t.Fatal(err)
		}
		user, err := l.env.AddUser(crenvtest.User{Name: "viewer"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := user.KubeConfig()
		if err != nil {
			t.Fatal(err)
		}
		kcPath := filepath.Join(t.TempDir(), "viewer.kubeconfig")
		if err := os.WriteFile(kcPath, kc, 0o600); err != nil {
			t.Fatal(err)
		}
		// The user can see pods (RBAC took effect) ...
		if _, err := p.cmd(ctx, kcPath, "get", "pods", "-n", "default"); err != nil {
			t.Fatalf("viewer cannot list pods: %v", err)
		}
		// ... but not the ztunnels' admin endpoint.
		p.fails(ctx, t, kcPath, []string{"identity", "-n", "default", "service-a"},
			"forbidden: you cannot get pods/proxy in warren-system", "ask for RBAC")
		p.fails(ctx, t, kcPath, []string{"ztunnel-config", "certificates"}, "forbidden: you cannot get pods/proxy in warren-system")
		p.fails(ctx, t, kcPath, []string{"namespace", "enable", "team-w"}, "forbidden: you cannot patch namespaces cluster-wide")
		// The admin still can.
		p.ok(ctx, t, "identity", "-n", "default", "service-a")
	})
}

// hasRow reports whether a line of a table starts with the cells want (split on runs of spaces).
func hasRow(table string, want ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(want) && slices.Equal(f[:len(want)], want) {
			return true
		}
	}
	return false
}
