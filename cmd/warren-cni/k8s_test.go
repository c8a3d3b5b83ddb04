package main

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/test/envtest"
)

// TestDecide reads real Pods and Namespaces from a real API server: dataplane-mode labels decide,
// and a Gateway's pod (a waypoint) is never meshed, whatever its labels or namespace say.
func TestDecide(t *testing.T) {
	env := envtest.Start(t)
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ambient := env.Namespace(t)
	ns := &corev1.Namespace{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: ambient}, ns); err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{labelDataplaneMode: modeAmbient}
	if err := env.Client.Update(ctx, ns); err != nil {
		t.Fatal(err)
	}
	plain := env.Namespace(t)

	tests := []struct {
		name, ns string
		labels   map[string]string
		want     membership
	}{
		{"ambient namespace", ambient, nil, membership{meshed: true, serviceAccount: "sa"}},
		{"opted out", ambient, map[string]string{labelDataplaneMode: modeNone}, membership{}},
		{"plain namespace", plain, nil, membership{serviceAccount: "sa"}},
		{"opted in", plain, map[string]string{labelDataplaneMode: modeAmbient}, membership{meshed: true, serviceAccount: "sa"}},
		{"waypoint in an ambient namespace", ambient, map[string]string{labelGatewayName: "waypoint"}, membership{}},
		{"waypoint opted in", plain, map[string]string{labelGatewayName: "waypoint", labelDataplaneMode: modeAmbient}, membership{}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "pod-" + string(rune('a'+i)), Namespace: tc.ns, Labels: tc.labels},
				Spec:       corev1.PodSpec{ServiceAccountName: "sa", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			}
			if err := env.Client.Create(ctx, pod); err != nil {
				t.Fatal(err)
			}
			got, err := decide(ctx, cs, tc.ns, pod.Name)
			if err != nil {
				t.Fatalf("decide = %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(membership{})); diff != "" {
				t.Errorf("decide (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := decide(ctx, cs, plain, "missing"); err == nil {
		t.Error("decide(missing pod) = nil error, want one")
	}
}
