package main

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type membership struct {
	meshed         bool
	serviceAccount string
}

func membershipFromAPI(ctx context.Context, kubeconfig, ns, name string) (membership, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return membership{}, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	rc.UserAgent = "warren-cni"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return membership{}, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return decide(ctx, cs, ns, name)
}

// decide reads the pod and its namespace: a Gateway's pod (label
// gateway.networking.k8s.io/gateway-name, such as a waypoint) is never meshed; otherwise the pod's
// dataplane-mode label wins, else the namespace's (as warren-controller decides).
func decide(ctx context.Context, cs kubernetes.Interface, ns, name string) (membership, error) {
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return membership{}, fmt.Errorf("get pod: %w", err)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if _, ok := pod.Labels[labelGatewayName]; ok {
		// A Gateway's own pod: a warren waypoint speaks HBONE itself, and another
		// implementation's gateway is not ours to capture.
		return membership{}, nil
	}
	switch pod.Labels[labelDataplaneMode] {
	case modeNone:
		return membership{}, nil
	case modeAmbient:
		return membership{meshed: true, serviceAccount: sa}, nil
	}
	if pod.Spec.HostNetwork {
		return membership{}, nil
	}
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return membership{}, fmt.Errorf("get namespace: %w", err)
	}
	return membership{meshed: isAmbient(nsObj), serviceAccount: sa}, nil
}

func isAmbient(ns *corev1.Namespace) bool { return ns.Labels[labelDataplaneMode] == modeAmbient }
