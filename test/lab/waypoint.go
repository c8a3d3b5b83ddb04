//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// RunWaypoint plays the Deployment controller, scheduler and kubelet for the waypoint Gateway
// ns/gw: it waits for the Deployment warren-controller made for the Gateway, runs one pod of
// its template on node (the template's container, args and env; its projected token and
// ConfigMap volumes written where the args point; the control plane reached through a
// forwarder in the pod, as pods reach it through a Service in a real cluster), waits until the
// waypoint answers ready, writes the Deployment's status and the waypoint Service's
// EndpointSlice, and waits until the controller reports the Gateway Programmed.
func (l *Lab) RunWaypoint(ctx context.Context, ns, gw, node string) (*Pod, error) {
	if l.PushAddr == "" {
		return nil, errors.New("run waypoint: warren-controller not started")
	}
	var dep appsv1.Deployment
	if err := Eventually(ctx, 30*time.Second, func() error {
		return l.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: gw}, &dep)
	}); err != nil {
		return nil, fmt.Errorf("run waypoint %s/%s: the controller made no Deployment: %w", ns, gw, err)
	}
	bin, err := l.GoBuild(ctx, "./cmd/warren-waypoint", "warren-waypoint")
	if err != nil {
		return nil, err
	}
	tmpl := dep.Spec.Template
	if len(tmpl.Spec.Containers) != 1 {
		return nil, fmt.Errorf("run waypoint %s/%s: template has %d containers, want 1", ns, gw, len(tmpl.Spec.Containers))
	}
	ctr := tmpl.Spec.Containers[0]
	name := gw + "-" + randomID()[:5]
	volRoot := filepath.Join(l.cfg.StateDir, "volumes", ns+"-"+name)
	// Mount paths become directories of the lab; arguments naming them follow.
	mounts := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.MountPath] = filepath.Join(volRoot, m.Name)
	}
	args := make([]string, len(ctr.Args))
	for i, a := range ctr.Args {
		args[i] = a
		for mp, dir := range mounts {
			args[i] = strings.Replace(args[i], mp, dir, 1)
		}
	}
	var env []string
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.namespace":
				v = ns
			case "metadata.name":
				v = name
			case "spec.serviceAccountName":
				v = tmpl.Spec.ServiceAccountName
			case "spec.nodeName":
				v = node
			default:
				return nil, fmt.Errorf("run waypoint %s/%s: env %s: fieldRef %s is not supported by the lab", ns, gw, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	spec := PodSpec{
		Node: node, Namespace: ns, Name: name, ServiceAccount: tmpl.Spec.ServiceAccountName,
		Labels: tmpl.Labels, Bin: bin, Image: ctr.Image, AppArgs: args, Env: env,
		Helpers: [][]string{{"forward", "--listen", l.PushAddr + "," + l.CAAddr, "--to", l.PushAddr + "," + l.CAAddr,
			"--to-netns", fmt.Sprintf("/proc/%d/ns/net", os.Getpid())}},
		Object: func(p *corev1.Pod) {
			p.Spec = *tmpl.Spec.DeepCopy()
			p.Spec.NodeName = node
		},
		BeforeStart: func(ctx context.Context, p *Pod) error {
			return l.writeVolumes(ctx, p, &tmpl.Spec, ctr, volRoot)
		},
	}
	pod, err := l.AddPod(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("run waypoint %s/%s: %w", ns, gw, err)
	}
	if err := Eventually(ctx, 60*time.Second, func() error {
		out, err := l.Exec(ctx, ns, name, "app", "http", "--url", "http://127.0.0.1:15021/healthz/ready", "--timeout", "2s")
		if !strings.HasPrefix(out, "200 ") {
			return fmt.Errorf("readiness %q, %v", out, err)
		}
		return nil
	}); err != nil {
		return pod, fmt.Errorf("run waypoint %s/%s: not ready (see %s): %w", ns, gw, pod.LogPath, err)
	}
	if err := l.writeDeploymentReady(ctx, &dep); err != nil {
		return pod, err
	}
	if err := l.SyncEndpoints(ctx, ns); err != nil {
		return pod, err
	}
	var g gatewayv1.Gateway
	if err := Eventually(ctx, 30*time.Second, func() error {
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: gw}, &g); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)) || len(g.Status.Addresses) == 0 {
			return errors.New("not Programmed yet")
		}
		return nil
	}); err != nil {
		return pod, fmt.Errorf("run waypoint %s/%s: the Gateway is not Programmed (conditions %+v): %w", ns, gw, g.Status.Conditions, err)
	}
	l.logf("waypoint %s/%s: pod %s on %s, ip %s, Gateway address %s", ns, gw, name, node, pod.IP, g.Status.Addresses[0].Value)
	return pod, nil
}

// writeVolumes materializes the template's volumes for pod p under root/<volume>: projected
// ServiceAccount tokens bound to the pod and ConfigMaps.
func (l *Lab) writeVolumes(ctx context.Context, p *Pod, spec *corev1.PodSpec, ctr corev1.Container, root string) error {
	for _, v := range spec.Volumes {
		if !slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name }) {
			continue
		}
		dir := filepath.Join(root, v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		switch {
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				t := src.ServiceAccountToken
				if t == nil {
					return fmt.Errorf("volume %s: only serviceAccountToken projections are supported by the lab", v.Name)
				}
				tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
					Audiences: []string{t.Audience}, ExpirationSeconds: new(int64(24 * 3600)),
					BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: types.UID(p.UID)},
				}}
				sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: spec.ServiceAccountName}}
				if err := l.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
					return fmt.Errorf("volume %s: token: %w", v.Name, err)
				}
				if err := os.WriteFile(filepath.Join(dir, t.Path), []byte(tr.Status.Token), 0o600); err != nil {
					return err
				}
			}
		case v.ConfigMap != nil:
			var cm corev1.ConfigMap
			if err := l.Client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: v.ConfigMap.Name}, &cm); err != nil {
				return fmt.Errorf("volume %s: configmap %s: %w", v.Name, v.ConfigMap.Name, err)
			}
			for k, val := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, k), []byte(val), 0o644); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("volume %s: only projected tokens and ConfigMaps are supported by the lab", v.Name)
		}
	}
	return nil
}

// writeDeploymentReady reports one ready, available, up-to-date replica.
func (l *Lab) writeDeploymentReady(ctx context.Context, dep *appsv1.Deployment) error {
	var cur appsv1.Deployment
	if err := l.Client.Get(ctx, client.ObjectKeyFromObject(dep), &cur); err != nil {
		return err
	}
	now := metav1.Now()
	cur.Status = appsv1.DeploymentStatus{
		ObservedGeneration: cur.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
		Conditions: []appsv1.DeploymentCondition{{
			Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable",
			LastUpdateTime: now, LastTransitionTime: now,
		}},
	}
	if err := l.Client.Status().Update(ctx, &cur); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("deployment %s/%s status: %w", dep.Namespace, dep.Name, err)
	}
	return nil
}

// L7Namespace is the namespace of the lab's L7 example (SetupL7Example).
const L7Namespace = "l7"

// SetupL7Example sets up the seed article's L7 example through a waypoint, as a user would:
// namespace l7 ambient; service-a and service-c (node-1, clients), service-b (node-2: HTTP on
// 8080, gRPC health on 9090), v1 (node-2) and v2 (node-1) behind Services; an unmeshed pod
// plain/outsider; then `kubectl apply` of testdata/waypoint-l7.yaml (the waypoint Gateway,
// service-b's Servers, HTTPRoutes and a GRPCRoute, the route-level policies, and an 80/20
// split), the waypoint's pod (RunWaypoint on node-2), and the binding label on the namespace.
// It returns the waypoint's pod.
func (l *Lab) SetupL7Example(ctx context.Context) (*Pod, error) {
	const ns = L7Namespace
	for _, n := range []string{ns, "plain"} {
		if err := l.EnsureNamespace(ctx, n, nil); err != nil {
			return nil, err
		}
	}
	if _, err := l.SetNamespaceAmbient(ctx, ns, true); err != nil {
		return nil, err
	}
	pod := func(node, ns, name string, args []string, helpers ...[]string) PodSpec {
		return PodSpec{Node: node, Namespace: ns, Name: name, ServiceAccount: name, Labels: map[string]string{"app": name},
			AppArgs: args, Helpers: helpers}
	}
	httpd := func(name string) []string { return []string{"http-server", "--listen", ":8080", "--name", name} }
	idle := []string{"server", "--listen", ":7000"}
	for _, ps := range []PodSpec{
		pod("node-1", ns, "service-a", idle),
		pod("node-1", ns, "service-c", idle),
		pod("node-2", ns, "service-b", httpd("service-b"), []string{"grpc-server", "--listen", ":9090"}),
		pod("node-2", ns, "v1", httpd("v1")),
		pod("node-1", ns, "v2", httpd("v2")),
		pod("node-1", "plain", "outsider", idle),
	} {
		if _, err := l.AddPod(ctx, ps); err != nil {
			return nil, err
		}
	}
	if out, err := l.Kubectl(ctx, "apply", "-n", ns, "-f", l.L7YAML()); err != nil {
		return nil, fmt.Errorf("kubectl apply: %w\n%s", err, out)
	}
	if err := l.SyncEndpoints(ctx, ns); err != nil {
		return nil, err
	}
	wp, err := l.RunWaypoint(ctx, ns, "waypoint", "node-2")
	if err != nil {
		return wp, err
	}
	if out, err := l.Kubectl(ctx, "label", "--overwrite", "ns", ns, "warren.dev/use-waypoint=waypoint"); err != nil {
		return wp, fmt.Errorf("bind waypoint: %w\n%s", err, out)
	}
	return wp, nil
}

// L7YAML is the L7 example's manifest (test/lab/testdata/waypoint-l7.yaml).
func (l *Lab) L7YAML() string {
	return filepath.Join(l.cfg.Root, "test", "lab", "testdata", "waypoint-l7.yaml")
}
