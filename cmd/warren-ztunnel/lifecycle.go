package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/ztunnel/cniinstall"
)

// --uninstall-on-exit values.
const (
	exitAuto   = "auto"
	exitAlways = "always"
	exitNever  = "never"
)

// exitCheckTimeout bounds the API calls that decide between upgrade and uninstall; the pod's
// termination grace period must leave room for it.
const exitCheckTimeout = 10 * time.Second

// decideOnExit says whether this ztunnel, as it exits, should remove Warren from its node (the
// CNI chaining and the eBPF redirect pins): only when the DaemonSet that owns its pod is gone or
// being deleted, or its namespace is being deleted (which may delete the pods first; reading the
// namespace needs get on namespaces, which warren-cni's lookups need anyway). Otherwise (the DaemonSet is there: a restart, an eviction or a rolling upgrade)
// everything stays, so captured pods fail closed until the next ztunnel adopts them. Whenever it
// cannot tell (the API server is unreachable, the pod or its owner cannot be read, the pod has
// no DaemonSet owner) it keeps everything: an uninstall by mistake would let captured pods talk
// in plaintext. reason says why, for the log.
//
// One exception: if the same reads succeeded when the ztunnel started (verifiedAtStart) and are
// now refused as unauthorized or forbidden, its ServiceAccount or RBAC was deleted since, which
// is what uninstalling Warren does (a namespace deletion, or helm uninstall deleting the
// RoleBinding as it deletes the DaemonSet); keeping the chaining then would leave a warren-cni
// entry whose token no longer works, failing every new pod on the node.
func decideOnExit(ctx context.Context, c kubernetes.Interface, namespace, pod string, verifiedAtStart bool) (uninstall bool, reason string) {
	p, err := c.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		if lostAccess(err) && verifiedAtStart {
			return true, fmt.Sprintf("reading my pod %s/%s worked at start and is now refused (%v): my ServiceAccount or its RBAC was deleted, as an uninstall does", namespace, pod, err)
		}
		return false, fmt.Sprintf("cannot read my pod %s/%s, so cannot tell an upgrade from an uninstall: %v", namespace, pod, err)
	}
	ref := metav1.GetControllerOf(p)
	if ref == nil || ref.Kind != "DaemonSet" || !isAppsGroup(ref.APIVersion) {
		return false, fmt.Sprintf("my pod %s/%s is not controlled by a DaemonSet", namespace, pod)
	}
	ds, err := c.AppsV1().DaemonSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, fmt.Sprintf("DaemonSet %s/%s is gone", namespace, ref.Name)
	case err != nil && lostAccess(err) && verifiedAtStart:
		return true, fmt.Sprintf("reading DaemonSet %s/%s worked at start and is now refused (%v): my ServiceAccount or its RBAC was deleted, as an uninstall does", namespace, ref.Name, err)
	case err != nil:
		return false, fmt.Sprintf("cannot read DaemonSet %s/%s, so cannot tell an upgrade from an uninstall: %v", namespace, ref.Name, err)
	case ds.DeletionTimestamp != nil:
		return true, fmt.Sprintf("DaemonSet %s/%s is being deleted", namespace, ref.Name)
	case ds.UID != ref.UID:
		return false, fmt.Sprintf("DaemonSet %s/%s was replaced by a new one, which takes over", namespace, ref.Name)
	}
	// Deleting the namespace may delete the pods before the DaemonSet.
	if nsObj, err := c.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); err == nil && nsObj.DeletionTimestamp != nil {
		return true, fmt.Sprintf("namespace %s is being deleted", namespace)
	}
	return false, fmt.Sprintf("DaemonSet %s/%s is still there (a restart or an upgrade)", namespace, ref.Name)
}

func lostAccess(err error) bool { return apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) }

// verifyAccess makes the reads decideOnExit needs (its pod, its DaemonSet); nil means they work.
func verifyAccess(ctx context.Context, c kubernetes.Interface, namespace, pod string) error {
	p, err := c.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get my pod: %w", err)
	}
	ref := metav1.GetControllerOf(p)
	if ref == nil || ref.Kind != "DaemonSet" || !isAppsGroup(ref.APIVersion) {
		return fmt.Errorf("my pod %s/%s is not controlled by a DaemonSet", namespace, pod)
	}
	if _, err := c.AppsV1().DaemonSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get my DaemonSet: %w", err)
	}
	return nil
}

func isAppsGroup(apiVersion string) bool {
	gv, err := schema.ParseGroupVersion(apiVersion)
	return err == nil && gv.Group == "apps"
}

// exitPolicy applies --uninstall-on-exit: always and never decide alone; auto asks the API
// server (decideOnExit). c is nil when no client could be made (reason in clientErr).
type exitPolicy struct {
	mode           string
	client         kubernetes.Interface
	clientErr      error
	namespace, pod string
	verified       atomic.Bool // verifyAccess succeeded since start
}

func newExitPolicy(o options) *exitPolicy {
	p := &exitPolicy{mode: o.uninstallOnExit, namespace: o.podNamespace, pod: o.podName}
	if p.mode != exitAuto {
		return p
	}
	if p.pod == "" || p.namespace == "" {
		p.clientErr = errors.New("--pod-name/--pod-namespace ($POD_NAME/$POD_NAMESPACE) are not set")
		return p
	}
	var rc *rest.Config
	var err error
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err == nil {
		rc.UserAgent = "warren-ztunnel"
		rc.Timeout = exitCheckTimeout
		p.client, err = kubernetes.NewForConfig(rc)
	}
	if err != nil {
		p.clientErr = fmt.Errorf("no API client (--kubeconfig or in-cluster config): %w", err)
	}
	return p
}

// verify checks, until it works or ctx ends, that the reads decideOnExit needs are allowed
// (without blocking the start on the API server); it logs the first failure.
func (p *exitPolicy) verify(ctx context.Context, log *slog.Logger) {
	if p.client == nil {
		return
	}
	for logged := false; ; {
		vctx, cancel := context.WithTimeout(ctx, exitCheckTimeout)
		err := verifyAccess(vctx, p.client, p.namespace, p.pod)
		cancel()
		if err == nil {
			p.verified.Store(true)
			if logged {
				log.Info("reading my pod and DaemonSet works now: the exit check can tell an upgrade from an uninstall")
			}
			return
		}
		if !logged {
			log.Warn("cannot read my pod and DaemonSet (RBAC: get pods and daemonsets.apps in my namespace); retrying. Until it works, an exit keeps Warren installed unless the DaemonSet is seen gone", "error", err.Error())
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

func (p *exitPolicy) decide() (uninstall bool, reason string) {
	switch p.mode {
	case exitAlways:
		return true, "--uninstall-on-exit=always"
	case exitNever:
		return false, "--uninstall-on-exit=never"
	}
	if p.client == nil {
		return false, fmt.Sprintf("cannot tell an upgrade from an uninstall: %v", p.clientErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), exitCheckTimeout)
	defer cancel()
	return decideOnExit(ctx, p.client, p.namespace, p.pod, p.verified.Load())
}

// onExit removes Warren from the node if the policy says so: the CNI chaining first (so that no
// new pod asks for a node agent that is gone), then the eBPF redirect (captured pods connect
// directly again). Otherwise it keeps both and says why.
func onExit(p *exitPolicy, inst *cniinstall.Installer, rd *redirect.Redirector, pinPath string, log *slog.Logger) error {
	uninstall, reason := p.decide()
	if !uninstall {
		log.Info("exiting without uninstalling: the CNI chaining and the eBPF redirect pins stay, captured pods fail closed until the next ztunnel", "reason", reason)
		return nil
	}
	log.Info("uninstalling Warren from this node", "reason", reason)
	var errs []error
	if inst != nil {
		if err := inst.Uninstall(); err != nil {
			errs = append(errs, err)
		}
	}
	if rd != nil {
		if err := rd.Uninstall(); err != nil {
			errs = append(errs, err)
		} else if pinPath != "" {
			log.Info("removed the eBPF redirect pins: captured pods connect directly again", "path", pinPath)
		} else {
			log.Info("detached the eBPF redirect")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}

// logInstallerEvent logs what the CNI installer did.
func logInstallerEvent(log *slog.Logger) func(cniinstall.Event) {
	return func(e cniinstall.Event) {
		attrs := []any{"event", string(e.Kind), "path", e.Path}
		if e.Detail != "" {
			attrs = append(attrs, "detail", e.Detail)
		}
		if e.Err != nil {
			log.Warn("cni install: "+string(e.Kind), append(attrs, "error", e.Err.Error())...)
			return
		}
		log.Info("cni install: "+string(e.Kind), attrs...)
	}
}

// serveReadiness serves GET /healthz/ready on addr: 200 when every check passes, else 503 with
// every failure.
func serveReadiness(addr string, checks ...func() error) (*http.Server, net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("readiness: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		var msgs []string
		for _, c := range checks {
			if err := c(); err != nil {
				msgs = append(msgs, err.Error())
			}
		}
		if len(msgs) > 0 {
			http.Error(w, strings.Join(msgs, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, ln.Addr(), nil
}
