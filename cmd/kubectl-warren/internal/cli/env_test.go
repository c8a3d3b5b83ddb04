package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/cli"
	"github.com/warren-mesh/warren/test/envtest"
)

// kubeconfigFor writes a kubeconfig of a new envtest user and returns its path.
func kubeconfigFor(t testing.TB, env *envtest.Env, u crenvtest.User) string {
	t.Helper()
	au, err := env.Environment.AddUser(u, nil)
	if err != nil {
		t.Fatalf("add user %s: %v", u.Name, err)
	}
	kc, err := au.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), u.Name+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// must runs the plugin and fails the test unless it succeeds; it returns stdout.
func must(t testing.TB, args ...string) string {
	t.Helper()
	code, stdout, stderr := run(t, args...)
	if code != 0 || stderr != "" {
		t.Fatalf("kubectl warren %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

// fails runs the plugin and checks it fails with one line on stderr that contains want.
func fails(t testing.TB, want string, args ...string) {
	t.Helper()
	code, stdout, stderr := run(t, args...)
	line := strings.TrimSuffix(stderr, "\n")
	if code != 1 || stdout != "" || strings.Contains(line, "\n") || !strings.Contains(line, want) {
		t.Errorf("kubectl warren %s: exit %d, stdout %q, stderr %q; want one line containing %q", strings.Join(args, " "), code, stdout, stderr, want)
	}
}

// TestCommandsAgainstAPIServer runs namespace enable|disable, waypoint apply|list|delete (with
// --enroll-namespace) and the RBAC-forbidden paths against a real kube-apiserver, and checks the
// objects they leave with a separate client.
func TestCommandsAgainstAPIServer(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	admin := "--kubeconfig=" + kubeconfigFor(t, env, crenvtest.User{Name: "admin", Groups: []string{"system:masters"}})
	ns := env.Namespace(t)
	labels := func(name string) map[string]string {
		t.Helper()
		var n corev1.Namespace
		if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, &n); err != nil {
			t.Fatal(err)
		}
		return n.Labels
	}

	t.Run("NamespaceEnableDisable", func(t *testing.T) {
		if out := must(t, "namespace", "enable", ns, admin); out != "namespace/"+ns+" joined the mesh (warren.dev/dataplane-mode=ambient)\n" {
			t.Errorf("enable: %q", out)
		}
		if got := labels(ns)[cli.LabelDataplaneMode]; got != "ambient" {
			t.Errorf("after enable: label %q", got)
		}
		must(t, "namespace", "enable", ns, admin) // again: no change, no error
		if out := must(t, "namespace", "disable", ns, admin); !strings.Contains(out, "left the mesh") {
			t.Errorf("disable: %q", out)
		}
		if _, ok := labels(ns)[cli.LabelDataplaneMode]; ok {
			t.Errorf("after disable: labels %v", labels(ns))
		}
		must(t, "namespace", "disable", ns, admin) // disabling twice is fine too
		fails(t, "namespace no-such-ns not found (kubectl get namespaces)", "namespace", "enable", "no-such-ns", admin)
		if _, ok := labels(ns)["kubernetes.io/metadata.name"]; !ok {
			t.Errorf("the namespace's other labels went away: %v", labels(ns))
		}
	})

	t.Run("Waypoint", func(t *testing.T) {
		out := must(t, "waypoint", "apply", "-n", ns, admin)
		if want := "gateway.gateway.networking.k8s.io/waypoint applied in namespace " + ns + " (class warren-waypoint, listener mesh 15008/HBONE)\n"; out != want {
			t.Errorf("apply: %q, want %q", out, want)
		}
		var gw gatewayv1.Gateway
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "waypoint"}, &gw); err != nil {
			t.Fatal(err)
		}
		// The API server defaults allowedRoutes (from: Same); everything else is what apply sent.
		if diff := cmp.Diff(cli.Gateway(ns, "waypoint").Spec, gw.Spec, cmpopts.IgnoreFields(gatewayv1.Listener{}, "AllowedRoutes")); diff != "" {
			t.Errorf("gateway spec (-want +got):\n%s", diff)
		}
		if _, ok := labels(ns)[cli.LabelUseWaypoint]; ok {
			t.Errorf("apply without --enroll-namespace labelled the namespace: %v", labels(ns))
		}
		// A changed spec is put back by apply (the update path), and the namespace is bound.
		gw.Spec.Listeners[0].Port = 15009
		if err := env.Client.Update(ctx, &gw); err != nil {
			t.Fatal(err)
		}
		out = must(t, "waypoint", "apply", "-n", ns, "--enroll-namespace", admin)
		if !strings.HasSuffix(out, "namespace/"+ns+" uses waypoint waypoint (warren.dev/use-waypoint=waypoint)\n") {
			t.Errorf("apply --enroll-namespace: %q", out)
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "waypoint"}, &gw); err != nil || gw.Spec.Listeners[0].Port != 15008 {
			t.Errorf("after apply, listener %+v %v; want port 15008 back", gw.Spec.Listeners, err)
		}
		if got := labels(ns)[cli.LabelUseWaypoint]; got != "waypoint" {
			t.Errorf("after --enroll-namespace: label %q", got)
		}
		// A service bound by label shows in the list; a Gateway of another class does not.
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b", Labels: map[string]string{cli.LabelUseWaypoint: "waypoint"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
		other := cli.Gateway(ns, "ingress")
		other.Spec.GatewayClassName = "nginx"
		for _, o := range []client.Object{svc, other} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		type waypoint struct {
			Namespace, Name, Programmed string
			BoundBy                     []string
		}
		var ws []waypoint
		if err := json.Unmarshal([]byte(must(t, "waypoint", "list", "-n", ns, "-o", "json", admin)), &ws); err != nil {
			t.Fatal(err)
		}
		want := []waypoint{{Namespace: ns, Name: "waypoint", Programmed: "Unknown", BoundBy: []string{"namespace/" + ns, "service/b"}}}
		if diff := cmp.Diff(want, ws); diff != "" {
			t.Errorf("list (-want +got):\n%s", diff)
		}
		if out := must(t, "waypoint", "list", "-A", admin); !strings.Contains(out, ns+"  waypoint") {
			t.Errorf("list -A:\n%s", out)
		}
		// Another namespace has none.
		if out := must(t, "waypoint", "list", "-n", "default", "-o", "json", admin); out != "[]\n" {
			t.Errorf("list -n default: %q", out)
		}

		out = must(t, "waypoint", "delete", "-n", ns, admin)
		if !strings.Contains(out, "deleted from namespace "+ns) || !strings.Contains(out, "no longer uses waypoint waypoint") {
			t.Errorf("delete: %q", out)
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "waypoint"}, &gw); !apierrors.IsNotFound(err) {
			t.Errorf("after delete, get gateway: %v", err)
		}
		if _, ok := labels(ns)[cli.LabelUseWaypoint]; ok {
			t.Errorf("after delete, namespace labels %v", labels(ns))
		}
		fails(t, "waypoint "+ns+"/waypoint not found (kubectl warren waypoint list -n "+ns+")", "waypoint", "delete", "-n", ns, admin)
		// The other Gateway is untouched.
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(other), &gw); err != nil {
			t.Errorf("gateway of another class: %v", err)
		}
	})

	t.Run("Forbidden", func(t *testing.T) {
		nobody := "--kubeconfig=" + kubeconfigFor(t, env, crenvtest.User{Name: "nobody"})
		fails(t, `forbidden: you cannot patch namespaces cluster-wide (ask for RBAC: a ClusterRole allowing "patch" on "namespaces" cluster-wide)`, "namespace", "enable", ns, nobody)
		fails(t, "forbidden: you cannot apply gateways.gateway.networking.k8s.io in "+ns, "waypoint", "apply", "-n", ns, nobody)
		fails(t, "forbidden: you cannot list gateways.gateway.networking.k8s.io in "+ns, "waypoint", "list", "-n", ns, nobody)
		fails(t, "forbidden: you cannot list namespaces cluster-wide", "status", nobody)

		// A user who may read pods but not pods/proxy is stopped at the ztunnel's admin endpoint.
		viewer := crenvtest.User{Name: "viewer"}
		cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list"}}}}
		crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "viewer"},
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: viewer.Name}}}
		sys := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "warren-system"}}
		zt := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "warren-system", Name: "warren-ztunnel-node-1", Labels: map[string]string{"app": "warren-ztunnel"}},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "ztunnel", Image: "warren-ztunnel"}}}}
		for _, o := range []client.Object{cr, crb, sys, zt} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		zt.Status.Phase = corev1.PodRunning
		if err := env.Client.Status().Update(ctx, zt); err != nil {
			t.Fatal(err)
		}
		kc := "--kubeconfig=" + kubeconfigFor(t, env, viewer)
		envtest.Eventually(t, 10*time.Second, func() error { // RBAC caches take a moment
			_, _, stderr := run(t, "ztunnel-config", "certificates", "--node", "node-1", kc)
			if !strings.Contains(stderr, "pods/proxy") {
				return errors.New(stderr)
			}
			return nil
		})
		fails(t, `forbidden: you cannot get pods/proxy in warren-system (ask for RBAC: a Role allowing "get" on "pods/proxy" in warren-system)`,
			"ztunnel-config", "certificates", "--node", "node-1", kc)

		// Nothing else broke: the admin still works.
		must(t, "namespace", "enable", ns, admin)
		must(t, "waypoint", "list", "-n", ns, admin)
	})
}
