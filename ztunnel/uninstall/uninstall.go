// Package uninstall decides, when warren-ztunnel exits, between a restart or an upgrade (keep
// the node's CNI chaining and eBPF redirect pins, so captured pods fail closed until the next
// ztunnel adopts them) and an uninstall (remove them, so pods go back to plain networking), and
// carries the decision out.
//
// Construct a Policy with New, run Verify in the background from the start (it checks that the
// reads the decision needs are allowed), and call OnExit once the ztunnel has stopped.
// Only cmd/warren-ztunnel imports it.
package uninstall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Mode is what --uninstall-on-exit says.
type Mode string

// Modes.
const (
	// Auto uninstalls only when the DaemonSet that owns the ztunnel's pod, or its namespace, is
	// gone or being deleted (asking the API server).
	Auto Mode = "auto"
	// Always uninstalls on every exit.
	Always Mode = "always"
	// Never keeps everything on every exit.
	Never Mode = "never"
)

// ParseMode parses auto, always or never.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Auto, Always, Never:
		return m, nil
	}
	return "", fmt.Errorf("%q: want auto, always or never", s)
}

// CheckTimeout bounds the API calls that decide between upgrade and uninstall; the pod's
// termination grace period must leave room for it.
const CheckTimeout = 10 * time.Second

// verifyRetry is how long Verify waits between attempts.
const verifyRetry = 5 * time.Second

// Config of a Policy.
type Config struct {
	// Mode is auto, always or never.
	Mode Mode
	// Client reads the ztunnel's pod, its DaemonSet and namespace (Auto only). Nil: one is made
	// from Kubeconfig, or from the in-cluster config when Kubeconfig is empty.
	Client     kubernetes.Interface
	Kubeconfig string
	// Namespace and Pod name the ztunnel's pod (from $POD_NAMESPACE and $POD_NAME). Auto
	// without them cannot tell an upgrade from an uninstall, so it keeps everything.
	Namespace, Pod string
	// Log gets the decision and what was removed.
	Log *slog.Logger
}

// Policy applies a Mode. Its ServiceAccount needs get on pods and on daemonsets.apps in its
// namespace, and get on namespaces.
type Policy struct {
	mode           Mode
	client         kubernetes.Interface
	clientErr      error // why client is nil (Auto)
	namespace, pod string
	log            *slog.Logger
	verified       atomic.Bool // the reads worked since start
}

// New makes a Policy. In Auto mode a missing pod name or API client is not an error: it is
// logged, and every exit then keeps Warren installed.
func New(cfg Config) (*Policy, error) {
	if cfg.Log == nil {
		return nil, errors.New("new uninstall policy: log is required")
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, fmt.Errorf("new uninstall policy: mode %w", err)
	}
	p := &Policy{mode: cfg.Mode, client: cfg.Client, namespace: cfg.Namespace, pod: cfg.Pod, log: cfg.Log}
	if p.mode != Auto {
		return p, nil
	}
	if p.pod == "" || p.namespace == "" {
		p.client, p.clientErr = nil, errors.New("--pod-name/--pod-namespace ($POD_NAME/$POD_NAMESPACE) are not set")
	} else if p.client == nil {
		p.client, p.clientErr = newClient(cfg.Kubeconfig)
	}
	if p.clientErr != nil {
		p.log.Warn("on exit, Warren will stay installed on this node whatever happens to the DaemonSet", "reason", p.clientErr.Error())
	}
	return p, nil
}

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	var c kubernetes.Interface
	if err == nil {
		rc.UserAgent = "warren-ztunnel"
		rc.Timeout = CheckTimeout
		c, err = kubernetes.NewForConfig(rc)
	}
	if err != nil {
		return nil, fmt.Errorf("no API client (--kubeconfig or in-cluster config): %w", err)
	}
	return c, nil
}

// Verify checks, until it works or ctx ends, that the reads Decide needs are allowed (run it in
// the background: the start does not wait for the API server); it logs the first failure. A
// read refused at exit that worked here means an uninstall (see Decide).
func (p *Policy) Verify(ctx context.Context) {
	if p.client == nil {
		return
	}
	for logged := false; ; {
		vctx, cancel := context.WithTimeout(ctx, CheckTimeout)
		err := verifyAccess(vctx, p.client, p.namespace, p.pod)
		cancel()
		if err == nil {
			p.verified.Store(true)
			if logged {
				p.log.Info("reading my pod and DaemonSet works now: the exit check can tell an upgrade from an uninstall")
			}
			return
		}
		if !logged {
			p.log.Warn("cannot read my pod and DaemonSet (RBAC: get pods and daemonsets.apps in my namespace); retrying. Until it works, an exit keeps Warren installed unless the DaemonSet is seen gone", "error", err.Error())
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(verifyRetry):
		}
	}
}

// Decide says whether to uninstall, and why (for the log). Always and Never decide alone; Auto
// asks the API server, within CheckTimeout. ctx must outlive the ztunnel's run (the decision is
// made after it ends).
func (p *Policy) Decide(ctx context.Context) (uninstall bool, reason string) {
	switch p.mode {
	case Always:
		return true, "--uninstall-on-exit=always"
	case Never:
		return false, "--uninstall-on-exit=never"
	}
	if p.client == nil {
		return false, fmt.Sprintf("cannot tell an upgrade from an uninstall: %v", p.clientErr)
	}
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	return decide(ctx, p.client, p.namespace, p.pod, p.verified.Load())
}

// OnExit removes Warren from the node if Decide says so: the CNI chaining first (inst, nil when
// the ztunnel does not install warren-cni; so that no new pod asks for a node agent that is
// gone), then the eBPF redirect rd and its pins at pinPath ("" when not pinned; captured pods
// connect directly again). Otherwise it keeps both and logs why.
func (p *Policy) OnExit(ctx context.Context, inst *cniinstall.Installer, rd *redirect.Redirector, pinPath string) error {
	uninstall, reason := p.Decide(ctx)
	if !uninstall {
		p.log.Info("exiting without uninstalling: the CNI chaining and the eBPF redirect pins stay, captured pods fail closed until the next ztunnel", "reason", reason)
		return nil
	}
	p.log.Info("uninstalling Warren from this node", "reason", reason)
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
			p.log.Info("removed the eBPF redirect pins: captured pods connect directly again", "path", pinPath)
		} else {
			p.log.Info("detached the eBPF redirect")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}

// decide says whether this ztunnel, as it exits, should remove Warren from its node (the CNI
// chaining and the eBPF redirect pins): only when the DaemonSet that owns its pod is gone or
// being deleted, or its namespace is being deleted (which may delete the pods first; reading the
// namespace needs get on namespaces, which warren-cni's lookups need anyway). Otherwise (the
// DaemonSet is there: a restart, an eviction or a rolling upgrade) everything stays, so captured
// pods fail closed until the next ztunnel adopts them. Whenever it cannot tell (the API server is
// unreachable, the pod or its owner cannot be read, the pod has no DaemonSet owner) it keeps
// everything: an uninstall by mistake would let captured pods talk in plaintext. reason says
// why, for the log.
//
// One exception: if the same reads succeeded when the ztunnel started (verifiedAtStart) and are
// now refused as unauthorized or forbidden, its ServiceAccount or RBAC was deleted since, which
// is what uninstalling Warren does (a namespace deletion, or helm uninstall deleting the
// RoleBinding as it deletes the DaemonSet); keeping the chaining then would leave a warren-cni
// entry whose token no longer works, failing every new pod on the node.
func decide(ctx context.Context, c kubernetes.Interface, namespace, pod string, verifiedAtStart bool) (uninstall bool, reason string) {
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

// verifyAccess makes the reads decide needs (its pod, its DaemonSet); nil means they work.
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
