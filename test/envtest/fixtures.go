package envtest

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ztunnelImage is what the fixtures' pods claim to run (nothing runs them: there is no kubelet).
const ztunnelImage = "ghcr.io/warren-mesh/warren-ztunnel:0.1.0"

// DaemonSet creates a ztunnel-like DaemonSet ns/name (with finalizers, if any) and returns it.
func (e *Env) DaemonSet(tb testing.TB, ns, name string, finalizers ...string) *appsv1.DaemonSet {
	tb.Helper()
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Finalizers: finalizers},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ztunnel", Image: ztunnelImage}}},
			},
		},
	}
	if err := e.Client.Create(context.Background(), ds); err != nil {
		tb.Fatalf("create DaemonSet %s/%s: %v", ns, name, err)
	}
	return ds
}

// PodOf creates pod ns/name controlled by owner (nil: a bare pod) and returns it.
func (e *Env) PodOf(tb testing.TB, ns, name string, owner *appsv1.DaemonSet) *corev1.Pod {
	tb.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ztunnel", Image: ztunnelImage}}},
	}
	if owner != nil {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "DaemonSet", Name: owner.Name, UID: owner.UID, Controller: &yes, BlockOwnerDeletion: &yes,
		}}
	}
	if err := e.Client.Create(context.Background(), p); err != nil {
		tb.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return p
}

// Delete deletes obj, failing the test on an error.
func (e *Env) Delete(tb testing.TB, obj client.Object) {
	tb.Helper()
	if err := e.Client.Delete(context.Background(), obj); err != nil {
		tb.Fatalf("delete %s: %v", obj.GetName(), err)
	}
}
