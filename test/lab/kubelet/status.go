//go:build linux

package kubelet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// statusLoop writes the pod's status whenever it changes, until the pod's life ends.
func (w *podWorker) statusLoop(life context.Context) {
	var last *corev1.PodStatus
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-w.dirty:
		case <-retry.C:
		}
		st, err := w.writeStatus(life, last)
		if err != nil {
			if life.Err() != nil {
				return
			}
			w.log.Warn("write status", "err", err)
			retry.Reset(time.Second)
			continue
		}
		last = st
	}
}

// writeStatus computes the status from the latest Pod the informer saw and writes it when it
// differs from last; a conflict refetches the Pod.
func (w *podWorker) writeStatus(ctx context.Context, last *corev1.PodStatus) (*corev1.PodStatus, error) {
	api := w.k.cfg.Client.CoreV1().Pods(w.namespace)
	obj := w.current().DeepCopy()
	for range 5 {
		st := w.computeStatus(obj)
		if last != nil && equality.Semantic.DeepEqual(*last, st) {
			return last, nil
		}
		obj.Status = st
		_, err := api.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err == nil {
			return &st, nil
		}
		if apierrors.IsNotFound(err) {
			return last, nil
		}
		if !apierrors.IsConflict(err) {
			return last, fmt.Errorf("update pod status: %w", err)
		}
		if obj, err = api.Get(ctx, w.name, metav1.GetOptions{}); err != nil {
			if apierrors.IsNotFound(err) {
				return last, nil
			}
			return last, fmt.Errorf("get pod: %w", err)
		}
		if obj.UID != w.uid {
			return last, nil
		}
		last = nil // the stored status is not ours: write even if ours did not change
	}
	return last, fmt.Errorf("update pod status: conflicts 5 times in a row")
}

// computeStatus is the pod's status from what the worker knows; obj is the stored Pod (its
// conditions of other owners and its qosClass are kept).
func (w *podWorker) computeStatus(obj *corev1.Pod) corev1.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := corev1.PodStatus{
		QOSClass:  obj.Status.QOSClass,
		HostIP:    w.k.cfg.NodeIP.String(),
		HostIPs:   []corev1.HostIP{{IP: w.k.cfg.NodeIP.String()}},
		StartTime: obj.Status.StartTime,
	}
	if st.StartTime == nil && !w.started.IsZero() {
		t := w.started
		st.StartTime = &t
	}
	if w.sb != nil && w.sb.ip.IsValid() {
		st.PodIP = w.sb.ip.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	for _, c := range w.ctrs {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: c.imageID,
			State: c.state, LastTerminationState: c.lastState, RestartCount: int32(c.restarts),
			Ready: c.ready, Started: new(c.started && c.state.Running != nil),
		}
		if c.id != "" {
			cs.ContainerID = "lab://" + c.id
		}
		if c.init {
			cs.Ready = c.done
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		} else {
			st.ContainerStatuses = append(st.ContainerStatuses, cs)
		}
	}
	st.Phase = w.phase()
	st.Conditions = w.conditions(obj, st)
	return st
}

// phase follows the kubelet's getPhase.
func (w *podWorker) phase() corev1.PodPhase {
	if w.failed {
		return corev1.PodFailed
	}
	if !w.initDone {
		return corev1.PodPending
	}
	var running, waiting, stopped, succeeded int
	for _, c := range w.ctrs {
		if c.init {
			continue
		}
		switch {
		case c.state.Running != nil:
			running++
		case c.state.Terminated != nil:
			stopped++
			if c.state.Terminated.ExitCode == 0 {
				succeeded++
			}
		case c.state.Waiting != nil && c.lastState.Terminated != nil:
			stopped++
		default:
			waiting++
		}
	}
	policy := w.pod.Spec.RestartPolicy
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		switch policy {
		case corev1.RestartPolicyAlways:
			return corev1.PodRunning
		case corev1.RestartPolicyOnFailure:
			if stopped == succeeded {
				return corev1.PodSucceeded
			}
			return corev1.PodRunning
		default:
			if stopped == succeeded {
				return corev1.PodSucceeded
			}
			return corev1.PodFailed
		}
	}
	return corev1.PodPending
}

func (w *podWorker) conditions(obj *corev1.Pod, st corev1.PodStatus) []corev1.PodCondition {
	now := metav1.Now()
	own := map[corev1.PodConditionType]bool{}
	var out []corev1.PodCondition
	set := func(t corev1.PodConditionType, ok bool, reason, msg string) {
		own[t] = true
		s := corev1.ConditionFalse
		if ok {
			s, reason, msg = corev1.ConditionTrue, "", ""
		}
		c := corev1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg, LastTransitionTime: now}
		if prev, ok := w.conds[t]; ok && prev.Status == s {
			c.LastTransitionTime = prev.LastTransitionTime
		}
		for _, p := range obj.Status.Conditions {
			if p.Type == t && p.Status == s && c.LastTransitionTime.Equal(&now) {
				c.LastTransitionTime = p.LastTransitionTime
			}
		}
		w.conds[t] = c
		out = append(out, c)
	}
	set(corev1.PodScheduled, true, "", "")
	set(corev1.PodReadyToStartContainers, w.sb != nil, "FailedCreatePodSandBox", w.sbErr)
	var notInit, notReady []string
	for _, c := range w.ctrs {
		if c.init && !c.done {
			notInit = append(notInit, c.spec.Name)
		}
		if !c.init && !c.ready {
			notReady = append(notReady, c.spec.Name)
		}
	}
	done := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	initReason := "ContainersNotInitialized"
	if done {
		initReason = "PodCompleted"
	}
	set(corev1.PodInitialized, w.initDone, initReason, fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(notInit, " ")))
	reason, msg := "ContainersNotReady", fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
	if done {
		reason, msg = "PodCompleted", ""
	}
	set(corev1.ContainersReady, len(notReady) == 0 && !done, reason, msg)
	var gates []string
	for _, g := range obj.Spec.ReadinessGates {
		ok := slices.ContainsFunc(obj.Status.Conditions, func(c corev1.PodCondition) bool {
			return c.Type == g.ConditionType && c.Status == corev1.ConditionTrue
		})
		if !ok {
			gates = append(gates, string(g.ConditionType))
		}
	}
	if len(notReady) == 0 && !done && len(gates) > 0 {
		reason, msg = "ReadinessGatesNotReady", fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", gates[0])
	}
	set(corev1.PodReady, len(notReady) == 0 && !done && len(gates) == 0, reason, msg)
	for _, c := range obj.Status.Conditions {
		if !own[c.Type] {
			out = append(out, c)
		}
	}
	return out
}

// info is the pod's PodInfo.
func (w *podWorker) info() PodInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	pi := PodInfo{Namespace: w.namespace, Name: w.name, UID: w.uid, Containers: map[string]ContainerInfo{}}
	if w.sb != nil {
		pi.Netns, pi.IP, pi.Cgroup = w.sb.netnsPath, w.sb.ip, w.sb.cgroup
	}
	for _, c := range w.ctrs {
		ci := ContainerInfo{Pid: c.pid, Logs: slices.Clone(c.logs), Rootfs: c.rootfs, RestartCount: c.restarts}
		if len(c.logs) > 0 {
			ci.Log = c.logs[len(c.logs)-1]
		}
		pi.Containers[c.spec.Name] = ci
	}
	return pi
}
