// Package envtest starts a real Kubernetes control plane (kube-apiserver and
// etcd, no controllers or kubelet) for tests, with Warren's CRDs and the
// pinned Gateway API CRDs from manifests/crds installed, and hands back a client.
// It also applies the hand-written admission policies in
// manifests/crds/admission (ValidatingAdmissionPolicies for the checks CRD
// validation rules cannot express); they take effect a moment after Start
// returns, so tests of them retry (see [Eventually]).
// It wraps controller-runtime's envtest with the binaries test/tools/build.sh
// builds into <repo>/.cache/bin.
//
// Only tests import this package.
//
// When the binaries are missing, Start skips the test with the command that
// builds them; with CI=true it fails instead, so CI never passes by skipping.
package envtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	policyv1alpha1 "github.com/warren-mesh/warren/api/policy/v1alpha1"
)

const (
	// modulePath identifies the repository root's go.mod.
	modulePath = "github.com/warren-mesh/warren"
	// binEnv overrides the binary directory, as it does for test/tools/build.sh.
	binEnv = "WARREN_TOOLS_BIN"
	// buildHint is how to get the binaries.
	buildHint = "test/tools/build.sh (or make envtest-bins)"
)

// Env is a running control plane. Start stops it when the test ends.
type Env struct {
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Client is a client for Scheme's kinds.
	Client client.Client
	// Scheme holds client-go's built-in kinds, policy.warren.dev/v1alpha1 and
	// gateway.networking.k8s.io/v1.
	Scheme *runtime.Scheme
	// Environment is the underlying controller-runtime environment, for
	// AddUser and the like.
	Environment *crenvtest.Environment
	// StartupTime is how long the control plane took to start, CRDs included.
	StartupTime time.Duration
}

// Start starts a control plane for tb and stops it at cleanup. Starting takes
// a few seconds, so start one per test function and share it among subtests.
func Start(tb testing.TB) *Env {
	tb.Helper()
	root, err := repoRoot()
	if err != nil {
		tb.Fatalf("envtest: %v", err)
	}
	bin := os.Getenv(binEnv)
	if bin == "" {
		bin = filepath.Join(root, ".cache", "bin")
	}
	apiserver, etcd := filepath.Join(bin, "kube-apiserver"), filepath.Join(bin, "etcd")
	for _, p := range []string{apiserver, etcd} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("envtest: control-plane binary %s missing (%v); build it with %s", p, err, buildHint)
			if os.Getenv("CI") == "true" {
				tb.Fatal(msg)
			}
			tb.Skip(msg + "; with CI=true this fails")
		}
	}

	scheme, err := newScheme()
	if err != nil {
		tb.Fatalf("envtest: %v", err)
	}
	env := &crenvtest.Environment{
		Scheme:                   scheme,
		BinaryAssetsDirectory:    bin,
		ErrorIfCRDPathMissing:    true,
		CRDDirectoryPaths:        []string{filepath.Join(root, "manifests", "crds"), filepath.Join(root, "manifests", "crds", "gateway-api")},
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.GetAPIServer().Path = apiserver
	env.ControlPlane.Etcd = &crenvtest.Etcd{Path: etcd}

	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		// Stop whatever half-started; its error adds nothing to err.
		_ = env.Stop()
		tb.Fatalf("envtest: start control plane from %s: %v (a refused CRD means a bad marker in api/: fix it and run make generate; a process that did not start may be a stale binary: rebuild with %s)", bin, err, buildHint)
	}
	elapsed := time.Since(start)
	tb.Cleanup(func() {
		if err := env.Stop(); err != nil {
			tb.Errorf("envtest: stop control plane: %v", err)
		}
	})
	tb.Logf("envtest: control plane started in %v", elapsed.Round(time.Millisecond))

	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		tb.Fatalf("envtest: client for %s: %v", cfg.Host, err)
	}
	if err := applyManifests(c, filepath.Join(root, "manifests", "crds", "admission")); err != nil {
		tb.Fatalf("envtest: %v", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, Environment: env, StartupTime: elapsed}
}

// applyManifests creates every object in the YAML files of dir.
func applyManifests(c client.Client, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return fmt.Errorf("list manifests in %s: %w", dir, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read manifest: %w", err)
		}
		for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
			var u unstructured.Unstructured
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				return fmt.Errorf("parse %s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := c.Create(context.Background(), &u); err != nil {
				return fmt.Errorf("apply %s %s from %s: %w", u.GetKind(), u.GetName(), f, err)
			}
		}
	}
	return nil
}

// Eventually calls f every 100ms until it returns nil or timeout passes, then
// fails tb with f's last error. Use it for effects the API server applies
// asynchronously, such as a new ValidatingAdmissionPolicy.
func Eventually(tb testing.TB, timeout time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("envtest: still failing after %v: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Namespace creates a namespace with a fresh name for one test and returns
// its name. envtest runs no namespace controller, so it is never deleted;
// names never collide.
func (e *Env) Namespace(tb testing.TB) string {
	tb.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		tb.Fatalf("envtest: create namespace: %v", err)
	}
	return ns.Name
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for name, add := range map[string]func(*runtime.Scheme) error{
		"client-go":                    clientgoscheme.AddToScheme,
		policyv1alpha1.GroupName:       policyv1alpha1.AddToScheme,
		"gateway.networking.k8s.io/v1": gatewayv1.Install,
	} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("register %s kinds: %w", name, err)
		}
	}
	return s, nil
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the main module's root.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		mod, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(mod, []byte("module "+modulePath+"\n")) {
			return d, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find repository root: %w", err)
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("find repository root: no go.mod of module %s above %s; run the test inside the repository", modulePath, dir)
		}
	}
}
