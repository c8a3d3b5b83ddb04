package cniinstall

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warren-mesh/warren/test/envtest"
)

// TestKubeconfigAuthenticates writes the plugin's kubeconfig from a real ServiceAccount token
// and loads it as warren-cni does (clientcmd.BuildConfigFromFlags): the API server must accept
// the CA and authenticate the request as the ServiceAccount.
func TestKubeconfigAuthenticates(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	admin, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "warren-ztunnel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "warren-ztunnel", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	f := newFixture(t)
	f.cfg.APIServer = env.Config.Host
	project(t, f.cfg.ServiceAccountDir, "2", map[string]string{"token": tr.Status.Token + "\n", "ca.crt": string(env.Config.CAData)})
	copyTestdata(t, f.cfg.NetDir, "10-bridge.conflist")
	inst, _ := f.start(t)
	eventually(t, "ready", inst.Ready)

	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(f.cfg.NetDir, KubeconfigName))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// The ServiceAccount has no RBAC here: a 403 naming it proves TLS and authentication worked.
	_, err = cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	want := "system:serviceaccount:" + ns + ":warren-ztunnel"
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("get namespace with the plugin's kubeconfig = %v; want forbidden for %s", err, want)
	}
	if rc.BearerToken != tr.Status.Token {
		t.Errorf("kubeconfig token = %q; want the ServiceAccount's token without its trailing newline", rc.BearerToken)
	}
}
