// Package admin is the kubectl plugin's client of the ztunnel's read-only admin endpoint (:15000):
// it finds a node's ztunnel pod (label app=warren-ztunnel in warren-system, spec.nodeName) and
// GETs admin paths through the API server's pods/proxy, so RBAC on pods/proxy is the gate and no
// port-forward is needed. It also holds the JSON shapes those paths serve (the wire contract of
// ztunnel/admin.go and ztunnel/admin_debug.go), and turns API errors into one-line messages that
// say what to do. Only cmd/kubectl-warren imports it.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Fixed names of the ztunnel DaemonSet (MISSION.md).
const (
	SystemNamespace = "warren-system"
	ZtunnelLabel    = "app=warren-ztunnel"
	AdminPort       = "15000"
)

// Admin paths.
const (
	PathConfigDump     = "/config_dump"
	PathVersion        = "/version"
	PathCertificates   = "/certificates"
	PathConnections    = "/connections"
	PathSecurityEvents = "/security_events"
)

// Client reaches ztunnels through the API server.
type Client struct {
	cs kubernetes.Interface
}

// New returns a Client using cs.
func New(cs kubernetes.Interface) *Client { return &Client{cs: cs} }

// Ztunnel is one node's ztunnel pod.
type Ztunnel struct {
	Node  string
	Pod   string
	Ready bool
}

// Ztunnels lists the ztunnel pods, sorted by node.
func (c *Client) Ztunnels(ctx context.Context) ([]Ztunnel, error) {
	pods, err := c.cs.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: ZtunnelLabel})
	if err != nil {
		return nil, Explain(err, "list", "pods", SystemNamespace)
	}
	var out []Ztunnel
	for _, p := range pods.Items {
		out = append(out, Ztunnel{Node: p.Spec.NodeName, Pod: p.Name, Ready: podReady(&p)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// ZtunnelOn returns the ztunnel pod of node.
func (c *Client) ZtunnelOn(ctx context.Context, node string) (Ztunnel, error) {
	pods, err := c.cs.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: ZtunnelLabel, FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return Ztunnel{}, Explain(err, "list", "pods", SystemNamespace)
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning {
			return Ztunnel{Node: node, Pod: p.Name, Ready: podReady(&p)}, nil
		}
	}
	return Ztunnel{}, unreachable(node, errors.New("no running pod labelled "+ZtunnelLabel+" on the node"))
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Get GETs path (with query) from node's ztunnel and decodes the JSON answer into v.
func (c *Client) Get(ctx context.Context, node, path string, query url.Values, v any) error {
	z, err := c.ZtunnelOn(ctx, node)
	if err != nil {
		return err
	}
	return c.GetPod(ctx, z, path, query, v)
}

// GetPod is Get for a known ztunnel pod.
func (c *Client) GetPod(ctx context.Context, z Ztunnel, path string, query url.Values, v any) error {
	params := map[string]string{}
	for k, vs := range query {
		if len(vs) > 0 {
			params[k] = vs[0]
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	body, err := c.cs.CoreV1().Pods(SystemNamespace).ProxyGet("http", z.Pod, AdminPort, path, params).DoRaw(ctx)
	if err != nil {
		if apierrors.IsForbidden(err) {
			return Explain(err, "get", "pods/proxy", SystemNamespace)
		}
		if apierrors.IsBadRequest(err) {
			return fmt.Errorf("ztunnel on node %s refused %s: %s", z.Node, path, strings.TrimSpace(string(body)))
		}
		return unreachable(z.Node, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("ztunnel on node %s: decode %s: %w (is the plugin older than the ztunnel? compare kubectl warren status)", z.Node, path, err)
	}
	return nil
}

func unreachable(node string, err error) error {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return fmt.Errorf("ztunnel on node %s is not reachable through the API server: %s (is the warren-ztunnel pod running? kubectl -n %s get pods -l %s -o wide)", node, msg, SystemNamespace, ZtunnelLabel)
}

// Explain turns an API error of verb on resource in namespace ns into one line saying what to
// do; errors other than forbidden are wrapped unchanged.
func Explain(err error, verb, resource, ns string) error {
	if apierrors.IsForbidden(err) {
		where, role := "in "+ns, "a Role"
		if ns == "" {
			where, role = "cluster-wide", "a ClusterRole"
		}
		return fmt.Errorf("forbidden: you cannot %s %s %s (ask for RBAC: %s allowing %q on %q %s)", verb, resource, where, role, verb, resource, where)
	}
	return fmt.Errorf("%s %s: %w", verb, resource, err)
}
