package install

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// apiServer is a fresh kube-apiserver + etcd with nothing installed, as a new cluster has.
type apiServer struct {
	cfg        *rest.Config
	c          client.Client
	kubeconfig string
}

// startAPIServer starts a control plane from the binaries test/tools/build.sh builds (the same
// as test/envtest, but without Warren's CRDs: installing them is what these tests test).
func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	bin := os.Getenv("WARREN_TOOLS_BIN")
	if bin == "" {
		bin = filepath.Join(repoRoot(t), ".cache", "bin")
	}
	apiserver, etcd := filepath.Join(bin, "kube-apiserver"), filepath.Join(bin, "etcd")
	for _, p := range []string{apiserver, etcd} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("control-plane binary %s missing (%v); build it with test/tools/build.sh kube-apiserver etcd", p, err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg + "; with CI=true this fails")
		}
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, policyv1alpha1.AddToScheme, gatewayv1.Install} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	env := &crenvtest.Environment{
		Scheme:                   scheme,
		BinaryAssetsDirectory:    bin,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.GetAPIServer().Path = apiserver
	env.ControlPlane.Etcd = &crenvtest.Etcd{Path: etcd}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return &apiServer{cfg: cfg, c: c, kubeconfig: kc}
}

// kubectl runs kubectl against the API server and returns its stdout.
func (s *apiServer) kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := run(t, []string{"KUBECONFIG=" + s.kubeconfig}, need(t, "kubectl"), args...)
	return string(out), err
}

func (s *apiServer) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.kubectl(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// impersonating writes a kubeconfig that acts as user (kubectl --as, for a program).
func (s *apiServer) impersonating(t *testing.T, user string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(s.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = user
	}
	path := filepath.Join(t.TempDir(), "kubeconfig-as")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitFor polls f every 100ms until it returns "" or timeout passes, then fails with its answer.
func waitFor(t *testing.T, timeout time.Duration, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after %v", what, msg, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// applyLines maps "kind/name" to kubectl apply's verdict (created, configured, unchanged...).
func applyLines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			m[f[0]] = strings.Join(f[1:], " ")
		}
	}
	return m
}

// TestKubectlInstallUpgradeUninstall installs Warren on a fresh API server the way the README
// says (kubectl apply -f manifests/install), checks a server-side dry run, that a
// re-apply changes nothing, that an upgrade to a new tag changes only the workloads, that the
// RBAC is least privilege and sufficient for warren-controller, and that uninstalling removes
// everything.
func TestKubectlInstallUpgradeUninstall(t *testing.T) {
	s := startAPIServer(t)
	ctx := context.Background()

	// A server-side dry run of everything; the namespace must exist for the objects in it
	// (a dry run creates nothing), and the CRDs for the server to accept them once.
	s.mustKubectl(t, "create", "namespace", namespace)
	out := s.mustKubectl(t, "apply", "--dry-run=server", "-f", "manifests/install")
	if n := strings.Count(out, "(server dry run)"); n < 25 {
		t.Errorf("server dry run reported %d objects, want every object of manifests/install:\n%s", n, out)
	}

	// The install: one command.
	out = s.mustKubectl(t, "apply", "-f", "manifests/install")
	t.Logf("kubectl apply -f manifests/install:\n%s", out)
	first := applyLines(out)
	for _, k := range []string{"deployment.apps/warren-controller", "daemonset.apps/warren-ztunnel", "clusterrole.rbac.authorization.k8s.io/warren-controller", "customresourcedefinition.apiextensions.k8s.io/httproutes.gateway.networking.k8s.io", "customresourcedefinition.apiextensions.k8s.io/servers.policy.warren.dev"} {
		if first[k] != "created" {
			t.Errorf("%s: %q, want created", k, first[k])
		}
	}

	// Re-applying the same version is a no-op: kubectl diff sees nothing, and no object is
	// written (kubectl apply may still say "configured" for kinds it patches as JSON merge
	// patches, which the server then finds empty).
	if out, err := s.kubectl(t, "diff", "-f", "manifests/install"); err != nil {
		t.Errorf("kubectl diff after the install: %v\n%s", err, out)
	}
	versions := func() string {
		return s.mustKubectl(t, "get", "-f", "manifests/install", "-o", `jsonpath={range .items[*]}{.kind}/{.metadata.name} {.metadata.resourceVersion}{"\n"}{end}`)
	}
	before := versions()
	s.mustKubectl(t, "apply", "-f", "manifests/install")
	if diff := cmp.Diff(before, versions()); diff != "" {
		t.Errorf("re-applying manifests/install wrote objects (-before +after resourceVersion):\n%s", diff)
	}

	// An upgrade: the same chart at another tag changes the workloads only.
	upgraded, err := helmTemplate(t, "--set", "namespace.create=true", "--set", "image.tag=0.2.0")
	if err != nil {
		t.Fatal(err)
	}
	up := filepath.Join(t.TempDir(), "upgrade.yaml")
	if err := os.WriteFile(up, upgraded, 0o644); err != nil {
		t.Fatal(err)
	}
	var changed []string
	for k, v := range applyLines(s.mustKubectl(t, "apply", "--server-side", "--force-conflicts", "-f", up)) {
		if v != "serverside-applied" && v != "unchanged" {
			t.Errorf("upgrade: %s %s", k, v)
		}
		_ = k
	}
	var dep appsv1.Deployment
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-controller"}, &dep); err != nil {
		t.Fatal(err)
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/warren-mesh/warren-controller:0.2.0" {
		t.Errorf("after the upgrade the controller runs %s", img)
	}
	if dep.Generation != 2 {
		changed = append(changed, fmt.Sprintf("deployment generation %d", dep.Generation))
	}
	if len(changed) > 0 {
		t.Errorf("upgrade: %v, want generation 2 (one spec change)", changed)
	}

	t.Run("rbac least privilege", func(t *testing.T) { checkAccess(t, s) })
	t.Run("controller runs under its service account", func(t *testing.T) { runControllerAsItsAccount(t, s) })

	// Uninstall. envtest runs no namespace controller or garbage collector: the objects are
	// gone and the namespace stays Terminating.
	out = s.mustKubectl(t, "delete", "--wait=false", "-f", "manifests/install")
	t.Logf("kubectl delete -f manifests/install:\n%s", out)
	for _, args := range [][]string{
		{"get", "clusterroles,clusterrolebindings,gatewayclasses,validatingadmissionpolicies", "-l", "app.kubernetes.io/part-of=warren", "-o", "name"},
		{"get", "-n", namespace, "deployments,daemonsets,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets", "-o", "name"},
	} {
		waitFor(t, 30*time.Second, "uninstall", func() string {
			out, err := s.kubectl(t, args...)
			if err != nil {
				if strings.Contains(err.Error(), "could not find the requested resource") || strings.Contains(err.Error(), "doesn't have a resource type") {
					return "" // the GatewayClass CRD is gone too
				}
				return err.Error()
			}
			if strings.TrimSpace(out) != "" {
				return "left: " + strings.Join(strings.Fields(out), " ")
			}
			return ""
		})
	}
	waitFor(t, 30*time.Second, "CRDs removed", func() string {
		out, err := s.kubectl(t, "get", "crds", "-o", "name")
		if err != nil {
			return err.Error()
		}
		if strings.Contains(out, "warren.dev") || strings.Contains(out, "gateway.networking.k8s.io") {
			return "left: " + strings.Join(strings.Fields(out), " ")
		}
		return ""
	})
}

// checkAccess asks the API server what each ServiceAccount may do.
func checkAccess(t *testing.T, s *apiServer) {
	ctx := context.Background()
	const (
		ctl = "system:serviceaccount:warren-system:warren-controller"
		zt  = "system:serviceaccount:warren-system:warren-ztunnel"
	)
	type access struct {
		user, verb, group, resource, sub, ns, name string
		allowed                                    bool
	}
	tests := []access{
		// The ztunnel: pods and namespaces by name (warren-cni's membership check, with the
		// ztunnel's token), its DaemonSet (uninstall or restart?). Nothing else.
		{zt, "get", "", "pods", "", namespace, "warren-ztunnel-abcde", true},
		{zt, "get", "", "pods", "", "team-a", "app", true},
		{zt, "get", "", "namespaces", "", "", "team-a", true},
		{zt, "get", "apps", "daemonsets", "", namespace, "warren-ztunnel", true},
		{zt, "list", "", "pods", "", namespace, "", false},
		{zt, "watch", "", "pods", "", "", "", false},
		{zt, "list", "", "namespaces", "", "", "", false},
		{zt, "get", "apps", "daemonsets", "", "kube-system", "kube-proxy", false},
		{zt, "update", "", "namespaces", "", "", "team-a", false},
		{zt, "get", "", "secrets", "", namespace, "warren-ca-root", false},
		{zt, "list", "", "secrets", "", "", "", false},
		{zt, "get", "", "configmaps", "", namespace, "warren-ca-root", false},
		{zt, "get", "", "nodes", "", "", "node-1", false},
		{zt, "update", "apps", "daemonsets", "", namespace, "warren-ztunnel", false},
		{zt, "delete", "", "pods", "", namespace, "warren-ztunnel-abcde", false},
		{zt, "create", "authentication.k8s.io", "tokenreviews", "", "", "", false},
		// The controller: watch the mesh, write status and waypoints, review tokens, its CA
		// Secret and Lease in its own namespace.
		{ctl, "list", "", "pods", "", "", "", true},
		{ctl, "watch", "discovery.k8s.io", "endpointslices", "", "", "", true},
		{ctl, "watch", "policy.warren.dev", "servers", "", "", "", true},
		{ctl, "update", "policy.warren.dev", "authorizationpolicies", "status", "team-a", "p", true},
		{ctl, "update", "gateway.networking.k8s.io", "httproutes", "status", "team-a", "r", true},
		{ctl, "update", "gateway.networking.k8s.io", "gatewayclasses", "status", "", "warren-waypoint", true},
		{ctl, "create", "gateway.networking.k8s.io", "gatewayclasses", "", "", "", true},
		{ctl, "update", "gateway.networking.k8s.io", "gatewayclasses", "", "", "someone-elses", false},
		{ctl, "delete", "gateway.networking.k8s.io", "gatewayclasses", "", "", "warren-waypoint", false},
		{ctl, "create", "apps", "deployments", "", "team-a", "", true},
		{ctl, "create", "authentication.k8s.io", "tokenreviews", "", "", "", true},
		{ctl, "get", "", "secrets", "", namespace, "warren-ca-root", true},
		{ctl, "create", "", "secrets", "", namespace, "", true},
		{ctl, "update", "coordination.k8s.io", "leases", "", namespace, "warren-controller", true},
		{ctl, "get", "", "secrets", "", namespace, "someone-elses", false},
		{ctl, "get", "", "secrets", "", "team-a", "db-password", false},
		{ctl, "list", "", "secrets", "", namespace, "", false},
		{ctl, "update", "", "secrets", "", namespace, "warren-ca-root", false},
		{ctl, "create", "", "secrets", "", "team-a", "", false},
		{ctl, "update", "coordination.k8s.io", "leases", "", namespace, "someone-elses", false},
		{ctl, "update", "coordination.k8s.io", "leases", "", "kube-system", "kube-scheduler", false},
		{ctl, "update", "policy.warren.dev", "servers", "", "team-a", "s", false},
		{ctl, "delete", "apps", "deployments", "", "team-a", "w", false},
		{ctl, "delete", "", "pods", "", "team-a", "p", false},
		{ctl, "create", "", "pods", "", "team-a", "", false},
		{ctl, "get", "", "nodes", "", "", "node-1", false},
		{ctl, "create", "", "serviceaccounts", "token", "team-a", "w", false},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s %s %s/%s %s/%s", strings.TrimPrefix(tc.user, "system:serviceaccount:"), tc.verb, tc.resource, tc.sub, tc.ns, tc.name)
		sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:   tc.user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.sub, Namespace: tc.ns, Name: tc.name,
			},
		}}
		if err := s.c.Create(ctx, sar); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sar.Status.Allowed != tc.allowed {
			t.Errorf("%s: allowed = %v, want %v (%s)", name, sar.Status.Allowed, tc.allowed, sar.Status.Reason)
		}
	}
}

// freePorts returns n loopback addresses nobody listens on.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// runControllerAsItsAccount runs the real warren-controller binary, with the manifests' flags
// (--leader-elect), as system:serviceaccount:warren-system:warren-controller, and drives every
// path that writes: the CA Secret and roots ConfigMap, the Lease, the GatewayClass (created,
// then Accepted), policy status, a waypoint Gateway (its objects and status), and a ztunnel's
// token review. No request may be forbidden.
func runControllerAsItsAccount(t *testing.T, s *apiServer) {
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "warren-controller")
	if _, err := run(t, nil, "go", "build", "-o", bin, "./cmd/warren-controller"); err != nil {
		t.Fatal(err)
	}
	addrs := freePorts(t, 3)
	cmd := exec.Command(bin,
		"--kubeconfig", s.impersonating(t, "system:serviceaccount:warren-system:warren-controller"),
		"--leader-elect", "--namespace", namespace, "--plaintext",
		"--push-addr", addrs[0], "--ca-addr", addrs[1], "--metrics-addr", addrs[2],
		"--waypoint-image", "ghcr.io/warren-mesh/warren-waypoint:0.1.0", "--log-level", "debug")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("warren-controller exited with %v after SIGTERM", err)
			}
		case <-time.After(40 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("warren-controller did not exit within 40s of SIGTERM")
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("warren-controller log:\n%s", logs.String())
		}
	})

	get := func(path string) (int, error) {
		resp, err := http.Get("http://" + addrs[2] + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	waitFor(t, 60*time.Second, "/readyz", func() string {
		select {
		case err := <-exited:
			t.Fatalf("warren-controller exited: %v\n%s", err, logs.String())
		default:
		}
		code, err := get("/readyz")
		if err != nil {
			return err.Error()
		}
		if code != http.StatusOK {
			return fmt.Sprintf("HTTP %d", code)
		}
		return ""
	})
	if code, err := get("/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz: %d %v", code, err)
	}

	// Leader: the Lease, the CA roots.
	waitFor(t, 30*time.Second, "the Lease and the roots", func() string {
		var l coordinationv1.Lease
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-controller"}, &l); err != nil {
			return err.Error()
		}
		if ptr.Deref(l.Spec.HolderIdentity, "") == "" {
			return "no holder"
		}
		var cm corev1.ConfigMap
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-ca-root"}, &cm); err != nil {
			return err.Error()
		}
		if !strings.Contains(cm.Data["ca.crt"], "BEGIN CERTIFICATE") {
			return "no roots in the ConfigMap"
		}
		return ""
	})
	var sec corev1.Secret
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-ca-root"}, &sec); err != nil {
		t.Errorf("CA root Secret: %v", err)
	}

	// Status, waypoint objects, GatewayClass.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}
	ap := &policyv1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "to-nowhere", Namespace: "team-a"},
		Spec:       policyv1alpha1.AuthorizationPolicySpec{TargetRef: policyv1alpha1.TargetReference{Group: policyv1alpha1.GroupName, Kind: "Server", Name: "nope"}},
	}
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "team-a"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "warren-waypoint", Listeners: []gatewayv1.Listener{{
			Name: "mesh", Port: 15008, Protocol: "HBONE",
		}}},
	}
	for _, o := range []client.Object{ns, ap, gw} {
		if err := s.c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "status and waypoint objects", func() string {
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(ap), ap); err != nil {
			return err.Error()
		}
		if c := meta.FindStatusCondition(ap.Status.Conditions, policyv1alpha1.ConditionResolvedRefs); c == nil {
			return "no ResolvedRefs on the AuthorizationPolicy"
		}
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &corev1.Service{}, &appsv1.Deployment{}} {
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: "waypoint"}, o); err != nil {
				return fmt.Sprintf("waypoint %T: %v", o, err)
			}
		}
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: "waypoint-ca-root"}, &corev1.ConfigMap{}); err != nil {
			return "waypoint roots: " + err.Error()
		}
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(gw), gw); err != nil {
			return err.Error()
		}
		if c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionAccepted)); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Sprintf("Gateway Accepted = %+v", c)
		}
		var gc gatewayv1.GatewayClass
		if err := s.c.Get(ctx, client.ObjectKey{Name: "warren-waypoint"}, &gc); err != nil {
			return err.Error()
		}
		if c := meta.FindStatusCondition(gc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted)); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Sprintf("GatewayClass Accepted = %+v", c)
		}
		return ""
	})

	// A ztunnel subscribes: the token review and the pod lookups run as the controller.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "warren-ztunnel-node-1", Namespace: namespace},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "warren-ztunnel", Containers: []corev1.Container{{Name: "ztunnel", Image: "x"}}},
	}
	for _, o := range []client.Object{node, pod} {
		if err := s.c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{"warren-ca"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "warren-ztunnel", Namespace: namespace}}
	if err := s.c.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatal(err)
	}
	store := state.NewStore(nil)
	cs, err := configstream.New(configstream.Config{
		Target: addrs[0], Node: "node-1", Store: store,
		Token:      func() (string, error) { return tr.Status.Token, nil },
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	csCtx, csCancel := context.WithCancel(ctx)
	csDone := make(chan error, 1)
	go func() { csDone <- cs.Run(csCtx) }()
	waitFor(t, 30*time.Second, "the ztunnel gets config", func() string {
		if store.Load() == nil {
			return fmt.Sprintf("no config (stream status %+v)", cs.Status())
		}
		return ""
	})
	csCancel()
	<-csDone

	stop()
	var forbidden []string
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(strings.ToLower(l), "forbidden") {
			forbidden = append(forbidden, l)
		}
	}
	if diff := cmp.Diff([]string(nil), slices.Compact(forbidden)); diff != "" {
		t.Errorf("warren-controller was refused requests under its ServiceAccount (the chart's RBAC lacks them):\n%s", diff)
	}
}

// TestHelmInstallUpgradeUninstall installs the chart with helm on a fresh API server (the CRDs
// are templates of the release), upgrades it to another tag and pod cgroup, and uninstalls it.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	s := startAPIServer(t)
	ctx := context.Background()
	helm := need(t, "helm")
	env := []string{"KUBECONFIG=" + s.kubeconfig, "HELM_CACHE_HOME=" + t.TempDir(), "HELM_CONFIG_HOME=" + t.TempDir(), "HELM_DATA_HOME=" + t.TempDir()}
	h := func(args ...string) string {
		t.Helper()
		out, err := run(t, env, helm, args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	t.Log(h("install", release, "manifests/charts/warren", "--namespace", namespace, "--create-namespace"))
	var dep appsv1.Deployment
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-controller"}, &dep); err != nil {
		t.Fatalf("controller Deployment after helm install: %v", err)
	}
	t.Log(h("upgrade", release, "manifests/charts/warren", "--namespace", namespace, "--set", "image.tag=0.2.0", "--set", "ztunnel.podCgroup=/sys/fs/cgroup/kubepods"))
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-controller"}, &dep); err != nil {
		t.Fatal(err)
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/warren-mesh/warren-controller:0.2.0" {
		t.Errorf("controller image after the upgrade: %s", img)
	}
	var ds appsv1.DaemonSet
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "warren-ztunnel"}, &ds); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--redirect-cgroup=/sys/fs/cgroup/kubepods") {
		t.Errorf("ztunnel args after the upgrade: %q", ds.Spec.Template.Spec.Containers[0].Args)
	}
	t.Log(h("uninstall", release, "--namespace", namespace))
	waitFor(t, 30*time.Second, "helm uninstall", func() string {
		var left []string
		for _, o := range []client.Object{&appsv1.Deployment{}, &appsv1.DaemonSet{}, &corev1.Service{}, &corev1.ServiceAccount{}} {
			name := "warren-controller"
			if _, ok := o.(*appsv1.DaemonSet); ok {
				name = "warren-ztunnel"
			}
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, o); !apierrors.IsNotFound(err) {
				left = append(left, fmt.Sprintf("%T %s (%v)", o, name, err))
			}
		}
		out, err := s.kubectl(t, "get", "crds", "-o", "name")
		if err != nil {
			return err.Error()
		}
		if strings.Contains(out, "warren.dev") || strings.Contains(out, "gateway.networking.k8s.io") {
			left = append(left, strings.Fields(out)...)
		}
		if len(left) > 0 {
			return "left: " + strings.Join(left, ", ")
		}
		return ""
	})
}
