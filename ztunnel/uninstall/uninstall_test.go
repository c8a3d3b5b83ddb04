package uninstall

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/warren-mesh/warren/test/envtest"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no log", Config{Mode: Never}, "new uninstall policy: log is required"},
		{"bad mode", Config{Mode: "sometimes", Log: discard()}, `new uninstall policy: mode "sometimes": want auto, always or never`},
		{"empty mode", Config{Log: discard()}, `new uninstall policy: mode "": want auto, always or never`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || err.Error() != tc.want {
				t.Fatalf("New(%+v) = %v; want %q", tc.cfg, err, tc.want)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"auto", "always", "never"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", s, m, err, s)
		}
	}
	for _, s := range []string{"", "Auto", "sometimes"} {
		if _, err := ParseMode(s); err == nil || !strings.Contains(err.Error(), "want auto, always or never") {
			t.Errorf("ParseMode(%q) = %v; want an error", s, err)
		}
	}
}

func TestPolicyWithoutAPI(t *testing.T) {
	tests := []struct {
		name          string
		cfg           Config
		wantUninstall bool
		wantReason    string
		wantWarn      bool
	}{
		{"always", Config{Mode: Always}, true, "--uninstall-on-exit=always", false},
		{"never", Config{Mode: Never, Pod: "p", Namespace: "n"}, false, "--uninstall-on-exit=never", false},
		{"auto without POD_NAME", Config{Mode: Auto, Namespace: "n"}, false, "--pod-name/--pod-namespace ($POD_NAME/$POD_NAMESPACE) are not set", true},
		{"auto with a bad kubeconfig", Config{Mode: Auto, Pod: "p", Namespace: "n", Kubeconfig: "/nonexistent/kubeconfig"}, false, "no API client", true},
		{"auto outside a cluster", Config{Mode: Auto, Pod: "p", Namespace: "n"}, false, "no API client (--kubeconfig or in-cluster config)", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBERNETES_SERVICE_HOST", "")
			var log bytes.Buffer
			tc.cfg.Log = slog.New(slog.NewTextHandler(&log, nil))
			p, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, reason := p.Decide(context.Background())
			if got != tc.wantUninstall || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("Decide() = %v, %q; want %v, %q", got, reason, tc.wantUninstall, tc.wantReason)
			}
			if warned := strings.Contains(log.String(), "Warren will stay installed on this node whatever happens"); warned != tc.wantWarn {
				t.Errorf("New logged the no-client warning: %v; want %v\n%s", warned, tc.wantWarn, log.String())
			}
		})
	}
}

// OnExit with nothing to remove: the decision is logged either way.
func TestOnExitLogsDecision(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		want string
	}{
		{Never, "exiting without uninstalling"},
		{Always, "uninstalling Warren from this node"},
	} {
		var log bytes.Buffer
		p, err := New(Config{Mode: tc.mode, Log: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.OnExit(context.Background(), nil, nil, ""); err != nil {
			t.Errorf("OnExit(%s) = %v", tc.mode, err)
		}
		if !strings.Contains(log.String(), tc.want) || !strings.Contains(log.String(), "--uninstall-on-exit="+string(tc.mode)) {
			t.Errorf("OnExit(%s) logged %q; want %q with the reason", tc.mode, log.String(), tc.want)
		}
	}
}

// cluster is the API objects of ztunnel pods: their DaemonSets and the pods they control.
type cluster struct {
	env *envtest.Env
	ns  string
}

func (c cluster) daemonSet(t testing.TB, name string, finalizers ...string) *appsv1.DaemonSet {
	t.Helper()
	return c.env.DaemonSet(t, c.ns, name, finalizers...)
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

func clientset(t testing.TB, rc *rest.Config) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestDecision runs the upgrade-versus-uninstall decision against a real API server.
func TestDecision(t *testing.T) {
	env := envtest.Start(t)
	c := cluster{env: env, ns: env.Namespace(t)}
	admin := clientset(t, env.Config)

	present := c.daemonSet(t, "present")
	c.pod(t, "present-x", present)
	gone := c.daemonSet(t, "gone")
	c.pod(t, "gone-x", gone)
	c.delete(t, gone)
	deleting := c.daemonSet(t, "deleting", "warren.dev/test-hold")
	c.pod(t, "deleting-x", deleting)
	c.delete(t, deleting)
	t.Cleanup(func() {
		// Let the held DaemonSet go.
		_ = env.Client.Patch(context.Background(), &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "deleting", Namespace: c.ns}},
			client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
	})
	replaced := c.daemonSet(t, "replaced")
	c.pod(t, "replaced-x", replaced)
	c.delete(t, replaced)
	c.daemonSet(t, "replaced")
	c.pod(t, "bare", nil)
	// A namespace being deleted (envtest runs no namespace controller: it stays Terminating).
	dying := cluster{env: env, ns: env.Namespace(t)}
	dying.pod(t, "dying-x", dying.daemonSet(t, "dying"))
	if err := admin.CoreV1().Namespaces().Delete(context.Background(), dying.ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// A client that reaches nothing, and one whose user may not read anything.
	unreachable := clientset(t, &rest.Config{Host: "https://127.0.0.1:1", Timeout: 2 * time.Second, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	nobody, err := env.Environment.AddUser(crenvtest.User{Name: "nobody"}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	forbidden := clientset(t, nobody.Config())
	// One that may read pods but not DaemonSets (RBAC half deleted).
	podReader, err := env.Environment.AddUser(crenvtest.User{Name: "pod-reader"}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []client.Object{
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: c.ns},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: c.ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "pod-reader"}}},
	} {
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
	halfForbidden := clientset(t, podReader.Config())
	envtest.Eventually(t, 10*time.Second, func() error { // the RBAC authorizer's cache
		_, err := halfForbidden.CoreV1().Pods(c.ns).Get(context.Background(), "present-x", metav1.GetOptions{})
		return err
	})

	tests := []struct {
		name          string
		c             kubernetes.Interface
		pod           string
		wantUninstall bool
		wantReason    string
	}{
		{"DaemonSet present", admin, "present-x", false, "DaemonSet " + c.ns + "/present is still there"},
		{"DaemonSet deleted", admin, "gone-x", true, "DaemonSet " + c.ns + "/gone is gone"},
		{"DaemonSet being deleted", admin, "deleting-x", true, "DaemonSet " + c.ns + "/deleting is being deleted"},
		{"DaemonSet replaced", admin, "replaced-x", false, "replaced by a new one"},
		{"bare pod", admin, "bare", false, "is not controlled by a DaemonSet"},
		{"namespace being deleted", admin, "dying-x", true, "namespace " + dying.ns + " is being deleted"},
		{"pod not found", admin, "nope", false, "cannot read my pod"},
		{"API unreachable", unreachable, "gone-x", false, "cannot read my pod"},
		{"no permission", forbidden, "present-x", false, "forbidden"},
		{"permission lost since start", forbidden, "present-x", true, "worked at start and is now refused"},
		{"unreachable since start", unreachable, "present-x", false, "cannot read my pod"},
		{"DaemonSet unreadable", halfForbidden, "present-x", false, "cannot read DaemonSet"},
		{"DaemonSet unreadable since start", halfForbidden, "present-x", true, "reading DaemonSet " + c.ns + "/present worked at start and is now refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), CheckTimeout)
			defer cancel()
			verified := strings.HasSuffix(tc.name, "since start")
			ns := c.ns
			if tc.pod == "dying-x" {
				ns = dying.ns
			}
			got, reason := decide(ctx, tc.c, ns, tc.pod, verified)
			if got != tc.wantUninstall || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("decide(%s) = %v, %q; want %v, %q", tc.pod, got, reason, tc.wantUninstall, tc.wantReason)
			}
		})
	}

	t.Run("verifyAccess", func(t *testing.T) {
		ctx := context.Background()
		if err := verifyAccess(ctx, admin, c.ns, "gone-x"); err != nil {
			t.Errorf("verifyAccess with the DaemonSet gone = %v; want nil (the read is allowed)", err)
		}
		for _, tc := range []struct {
			c    kubernetes.Interface
			pod  string
			want string
		}{
			{forbidden, "present-x", "get my pod"},
			{admin, "bare", "not controlled by a DaemonSet"},
			{unreachable, "present-x", "get my pod"},
			{halfForbidden, "present-x", "get my DaemonSet"},
		} {
			if err := verifyAccess(ctx, tc.c, c.ns, tc.pod); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("verifyAccess(%s) = %v; want an error containing %q", tc.pod, err, tc.want)
			}
		}
	})

	// Through the Policy: what Verify saw at start decides what a refusal at exit means.
	t.Run("Policy", func(t *testing.T) {
		for _, tc := range []struct {
			name          string
			verifyWith    kubernetes.Interface
			wantVerified  bool
			wantUninstall bool
		}{
			{"not verified at start", halfForbidden, false, false},
			{"verified at start", admin, true, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p, err := New(Config{Mode: Auto, Client: tc.verifyWith, Namespace: c.ns, Pod: "present-x", Log: discard()})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				p.Verify(ctx) // returns when verified, or at ctx's end
				cancel()
				if got := p.verified.Load(); got != tc.wantVerified {
					t.Fatalf("verified after Verify = %v; want %v", got, tc.wantVerified)
				}
				// At exit the DaemonSet cannot be read any more.
				p.client = halfForbidden
				got, reason := p.Decide(context.Background())
				if got != tc.wantUninstall {
					t.Errorf("Decide() = %v, %q; want %v", got, reason, tc.wantUninstall)
				}
			})
		}
	})
}
