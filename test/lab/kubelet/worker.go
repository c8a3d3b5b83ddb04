//go:build linux

package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podWorker runs one pod from its first sight to its teardown.
type podWorker struct {
	k               *Kubelet
	log             *slog.Logger
	uid             types.UID
	namespace, name string
	created         time.Time
	// dir holds the pod's volumes, writable layers, files and CNI state; logDir its logs.
	dir, logDir string

	changed  chan struct{} // the Pod changed, was deleted or is gone (capacity 1)
	dirty    chan struct{} // the status needs writing (capacity 1)
	stopOnce sync.Once
	stop     chan struct{} // the kubelet is stopping

	mu       sync.Mutex
	pod      *corev1.Pod // latest from the informer
	deleting bool        // deletionTimestamp set, or the object is gone
	removed  bool        // the object is gone
	stopping bool        // the kubelet is stopping: tear down, leave the object
	sb       *sandbox
	sbErr    string // last sandbox creation failure
	started  metav1.Time
	initDone bool
	failed   bool // an init container failed with restartPolicy Never
	ctrs     []*ctr
	conds    map[corev1.PodConditionType]corev1.PodCondition
	vols     map[string]*podVolume
	spec     corev1.PodSpec // the spec the pod runs with (automounted token added)
	lastEv   map[string]time.Time
}

func newPodWorker(k *Kubelet, pod *corev1.Pod) *podWorker {
	base := pod.Namespace + "_" + pod.Name + "_" + string(pod.UID)
	w := &podWorker{
		k: k, log: k.log.With("pod", pod.Namespace+"/"+pod.Name), uid: pod.UID, namespace: pod.Namespace, name: pod.Name,
		created: time.Now(),
		dir:     filepath.Join(k.cfg.StateDir, "pods", base), logDir: filepath.Join(k.cfg.StateDir, "logs", base),
		changed: make(chan struct{}, 1), dirty: make(chan struct{}, 1), stop: make(chan struct{}),
		pod: pod, deleting: pod.DeletionTimestamp != nil,
		conds: map[corev1.PodConditionType]corev1.PodCondition{}, lastEv: map[string]time.Time{},
	}
	for _, c := range pod.Status.Conditions {
		w.conds[c.Type] = c
	}
	return w
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod
	if pod.DeletionTimestamp != nil {
		w.deleting = true
	}
	w.mu.Unlock()
	signal(w.changed)
}

func (w *podWorker) gone() {
	w.mu.Lock()
	w.deleting, w.removed = true, true
	w.mu.Unlock()
	signal(w.changed)
}

func (w *podWorker) shutdown() {
	w.stopOnce.Do(func() {
		w.mu.Lock()
		w.stopping = true
		w.mu.Unlock()
		close(w.stop)
	})
}

func (w *podWorker) current() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func (w *podWorker) markDirty() { signal(w.dirty) }

// run runs the pod until it is deleted (or the kubelet stops), then tears it down.
func (w *podWorker) run(ctx context.Context) {
	life, endLife := context.WithCancel(ctx)
	defer endLife()
	go func() {
		for {
			w.mu.Lock()
			end := w.deleting || w.stopping
			w.mu.Unlock()
			if end {
				endLife()
				return
			}
			select {
			case <-w.changed:
				w.markDirty() // labels or annotations may feed downwardAPI volumes and status
			case <-w.stop:
			case <-life.Done():
				return
			}
		}
	}()
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(life) }()

	var ctrWG sync.WaitGroup
	w.mu.Lock()
	ending := w.deleting || w.stopping
	w.mu.Unlock()
	// A pod first seen while being deleted is only finished: nothing is started for it.
	if !ending && w.prepare(life) {
		ctrWG.Add(1)
		go func() { defer ctrWG.Done(); w.refreshVolumes(life) }()
		if w.runInitContainers(life) {
			for _, c := range w.ctrs {
				if c.init {
					continue
				}
				ctrWG.Add(1)
				go func() { defer ctrWG.Done(); w.runContainer(life, c) }()
			}
		}
	}
	<-life.Done()
	ctrWG.Wait() // every container loop stops its process on the way out
	<-statusDone
	w.teardown(ctx)
}

// prepare creates the sandbox and the volumes, retrying with backoff; false means the pod's
// life ended first.
func (w *podWorker) prepare(life context.Context) bool {
	pod := w.current()
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		w.log.Error("pod state dir", "err", err)
	}
	w.mu.Lock()
	w.spec = w.k.effectiveSpec(life, pod)
	w.ctrs = newContainers(w, &w.spec)
	w.mu.Unlock()
	w.markDirty()
	bo := w.k.newBackoff()
	for {
		sb, err := w.createSandbox(life, w.current())
		if err == nil {
			w.mu.Lock()
			w.sb, w.sbErr = sb, ""
			w.started = metav1.Now()
			w.mu.Unlock()
			w.markDirty()
			w.log.Info("sandbox ready", "netns", sb.netnsPath, "ip", sb.ip)
			break
		}
		if life.Err() != nil {
			return false
		}
		msg := fmt.Sprintf("Failed to create pod sandbox: %v", err)
		w.log.Warn("sandbox", "err", err)
		w.mu.Lock()
		w.sbErr = msg
		w.mu.Unlock()
		w.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", msg)
		w.markDirty()
		if !bo.wait(life) {
			return false
		}
	}
	bo = w.k.newBackoff()
	for {
		err := w.setupVolumes(life)
		if err == nil {
			return true
		}
		if life.Err() != nil {
			return false
		}
		w.log.Warn("volumes", "err", err)
		w.event(corev1.EventTypeWarning, "FailedMount", err.Error())
		if !bo.wait(life) {
			return false
		}
	}
}

// teardown stops what is left, removes the sandbox and the pod's state and, when the Pod was
// deleted gracefully, deletes the object.
func (w *podWorker) teardown(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	w.mu.Lock()
	sb, pod, removed, stopping := w.sb, w.pod, w.removed, w.stopping
	w.sb = nil
	w.mu.Unlock()
	var errs []error
	if sb != nil {
		errs = append(errs, w.removeSandbox(ctx, pod, sb))
	}
	// Nothing runs in the pod any more: its mount namespaces are gone, so its directories are
	// plain files.
	errs = append(errs, os.RemoveAll(w.dir))
	if err := errors.Join(errs...); err != nil {
		w.log.Error("teardown", "err", err)
	}
	if removed || stopping {
		w.log.Info("pod stopped")
		return
	}
	uid := w.uid
	err := w.k.cfg.Client.CoreV1().Pods(w.namespace).Delete(ctx, w.name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.log.Error("delete pod", "err", err)
		return
	}
	w.log.Info("pod deleted")
}

// gracePeriod is the pod's termination grace period, capped.
func (w *podWorker) gracePeriod() time.Duration {
	pod := w.current()
	g := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		g = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		g = *pod.DeletionGracePeriodSeconds
	}
	d := time.Duration(g) * time.Second
	return min(d, w.k.cfg.MaxGracePeriod)
}

// event records a Kubernetes Event about the pod; the same reason and message are not repeated
// within a minute.
func (w *podWorker) event(typ, reason, msg string) {
	key := reason + "\x00" + msg
	w.mu.Lock()
	if t, ok := w.lastEv[key]; ok && time.Since(t) < time.Minute {
		w.mu.Unlock()
		return
	}
	w.lastEv[key] = time.Now()
	pod := w.pod
	w.mu.Unlock()
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: fmt.Sprintf("%s.%x", pod.Name, time.Now().UnixNano())},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
		},
		Reason: reason, Message: msg, Type: typ, Count: 1, FirstTimestamp: now, LastTimestamp: now,
		Source:              corev1.EventSource{Component: "kubelet", Host: w.k.cfg.NodeName},
		ReportingController: "kubelet", ReportingInstance: w.k.cfg.NodeName,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.k.cfg.Client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		w.log.Warn("record event", "reason", reason, "err", err)
	}
}

// backoff is exponential, from 1 s up to MaxBackoff.
type backoff struct {
	next, max time.Duration
}

func (k *Kubelet) newBackoff() *backoff { return &backoff{next: time.Second, max: k.cfg.MaxBackoff} }

// peek is the next wait.
func (b *backoff) peek() time.Duration { return min(b.next, b.max) }

// wait sleeps the next backoff; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.peek()
	b.next = min(b.next*2, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (b *backoff) reset() { b.next = time.Second }
