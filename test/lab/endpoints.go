//go:build linux

package main

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// SyncEndpoints does the EndpointSlice controller's job for the Services of namespace ns (the
// lab runs no kube-controller-manager): one IPv4 slice "<service>-lab" per Service with a
// selector, listing its running pods with an address, ready as their Ready condition says.
func (l *Lab) SyncEndpoints(ctx context.Context, ns string) error {
	var svcs corev1.ServiceList
	if err := l.Client.List(ctx, &svcs, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("sync endpoints in %s: %w", ns, err)
	}
	var pods corev1.PodList
	if err := l.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("sync endpoints in %s: %w", ns, err)
	}
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		if err := l.syncSlice(ctx, svc, pods.Items); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) syncSlice(ctx context.Context, svc *corev1.Service, pods []corev1.Pod) error {
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name + "-lab",
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   "warren-lab",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, sp := range svc.Spec.Ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{
			Name: new(sp.Name), Port: new(sp.TargetPort.IntVal), Protocol: new(sp.Protocol),
		})
	}
	for i := range pods {
		p := &pods[i]
		if !sel.Matches(labels.Set(p.Labels)) || p.Status.PodIP == "" || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		ready := slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
			return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		})
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: new(ready)},
			NodeName:   new(p.Spec.NodeName),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	var cur discoveryv1.EndpointSlice
	err := l.Client.Get(ctx, client.ObjectKeyFromObject(es), &cur)
	switch {
	case apierrors.IsNotFound(err):
		err = l.Client.Create(ctx, es)
	case err == nil:
		cur.Endpoints, cur.Ports, cur.Labels = es.Endpoints, es.Ports, es.Labels
		err = l.Client.Update(ctx, &cur)
	}
	if err != nil {
		return fmt.Errorf("endpoint slice %s/%s: %w", es.Namespace, es.Name, err)
	}
	return nil
}
