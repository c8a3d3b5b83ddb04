//go:build linux

package kubelet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// shimSpec mirrors the shim's Spec (test/lab/kubelet/shim).
type shimSpec struct {
	Netns    string       `json:"netns,omitempty"`
	Hostname string       `json:"hostname,omitempty"`
	Root     string       `json:"root,omitempty"`
	Overlay  *shimOverlay `json:"overlay,omitempty"`
	Mounts   []shimMount  `json:"mounts,omitempty"`
	Dir      string       `json:"dir,omitempty"`
	Env      []string     `json:"env,omitempty"`
	Argv     []string     `json:"argv"`
}

type shimOverlay struct {
	Lower string `json:"lower"`
	Upper string `json:"upper"`
	Work  string `json:"work"`
}

type shimMount struct {
	Type        string `json:"type"`
	Source      string `json:"source,omitempty"`
	Target      string `json:"target"`
	ReadOnly    bool   `json:"readOnly,omitempty"`
	Propagation string `json:"propagation,omitempty"`
}

// ctr is one container of a pod; its fields are guarded by the worker's mu.
type ctr struct {
	spec   corev1.Container
	init   bool
	cgroup string

	state     corev1.ContainerState
	lastState corev1.ContainerState
	restarts  int
	ready     bool
	started   bool
	id        string // containerID without the scheme
	imageID   string
	pid       int
	logs      []string
	rootfs    string
	env       []string
	done      bool // an init container that completed

	proc    *os.Process
	exited  chan struct{} // closed when the current process is reaped
	startCh chan struct{} // closed when the current attempt counts as started
	kill    chan string   // a probe asks for a restart (the reason)
}

func newContainers(w *podWorker, spec *corev1.PodSpec) []*ctr {
	var cs []*ctr
	add := func(c corev1.Container, init bool) {
		reason := "ContainerCreating"
		if !init && len(spec.InitContainers) > 0 {
			reason = "PodInitializing"
		}
		cs = append(cs, &ctr{spec: c, init: init, state: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}})
	}
	for _, c := range spec.InitContainers {
		add(c, true)
	}
	for _, c := range spec.Containers {
		add(c, false)
	}
	return cs
}

// outcome is how one attempt of a container ended.
type outcome int

const (
	exited      outcome = iota // the process ran and exited (or was killed)
	notStarted                 // image or configuration failure: retry without counting a restart
	startFailed                // the runtime could not start it (StartError, counts as a restart)
	lifeEnded                  // the pod is being torn down
)

// runInitContainers runs the init containers in order to completion; false when the pod
// cannot go on (a failure under restartPolicy Never, or the pod's life ended).
func (w *podWorker) runInitContainers(life context.Context) bool {
	for _, c := range w.ctrs {
		if !c.init {
			continue
		}
		bo := w.k.newBackoff()
		for {
			out, code := w.runOnce(life, c)
			if out == lifeEnded || life.Err() != nil {
				return false
			}
			if out == exited && code == 0 {
				w.mu.Lock()
				c.done = true
				w.mu.Unlock()
				break
			}
			if out != notStarted && w.current().Spec.RestartPolicy == corev1.RestartPolicyNever {
				w.mu.Lock()
				w.failed = true
				w.mu.Unlock()
				w.markDirty()
				return false
			}
			if !w.backOff(life, c, out, bo) {
				return false
			}
		}
	}
	w.mu.Lock()
	w.initDone = true
	for _, c := range w.ctrs {
		if !c.init && c.state.Waiting != nil && c.state.Waiting.Reason == "PodInitializing" {
			c.state.Waiting.Reason = "ContainerCreating"
		}
	}
	w.mu.Unlock()
	w.markDirty()
	return true
}

// runContainer runs a container and restarts it as the pod's restartPolicy says.
func (w *podWorker) runContainer(life context.Context, c *ctr) {
	bo := w.k.newBackoff()
	for {
		began := time.Now()
		out, code := w.runOnce(life, c)
		if out == lifeEnded || life.Err() != nil {
			return
		}
		if out == exited || out == startFailed {
			policy := w.current().Spec.RestartPolicy
			if policy == corev1.RestartPolicyNever || policy == corev1.RestartPolicyOnFailure && code == 0 && out == exited {
				w.markDirty()
				return
			}
			if time.Since(began) > 2*w.k.cfg.MaxBackoff {
				bo.reset() // it ran long enough: the next crash starts a fresh backoff
			}
		}
		if !w.backOff(life, c, out, bo) {
			return
		}
	}
}

// backOff shows the container waiting (CrashLoopBackOff, ImagePullBackOff, or the
// configuration error it had) and sleeps the backoff.
func (w *podWorker) backOff(life context.Context, c *ctr, out outcome, bo *backoff) bool {
	w.mu.Lock()
	switch out {
	case exited, startFailed:
		c.lastState = c.state
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %v restarting failed container=%s pod=%s_%s(%s)", bo.peek(), c.spec.Name, w.name, w.namespace, w.uid),
		}}
		c.restarts++
	case notStarted:
		if wt := c.state.Waiting; wt != nil && wt.Reason == "ErrImagePull" {
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
				Reason: "ImagePullBackOff", Message: fmt.Sprintf("Back-off pulling image %q: %s", c.spec.Image, wt.Message),
			}}
		}
	}
	w.mu.Unlock()
	w.markDirty()
	return bo.wait(life)
}

// runOnce makes one attempt: resolve the image, build the configuration, start the process,
// probe it, and wait for it to end (or stop it when the pod's life ends).
func (w *podWorker) runOnce(life context.Context, c *ctr) (outcome, int) {
	k := w.k
	waiting := func(reason, msg string) {
		w.mu.Lock()
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
		w.mu.Unlock()
		w.markDirty()
	}
	rootfs, img, err := k.cfg.Images.Rootfs(life, c.spec.Image)
	if err != nil {
		if life.Err() != nil {
			return lifeEnded, 0
		}
		msg := fmt.Sprintf("Failed to pull image %q: %v", c.spec.Image, err)
		waiting("ErrImagePull", msg)
		w.event(corev1.EventTypeWarning, "Failed", msg)
		return notStarted, 0
	}
	spec, err := w.containerSpec(life, c, rootfs, img)
	if err != nil {
		if life.Err() != nil {
			return lifeEnded, 0
		}
		waiting("CreateContainerConfigError", err.Error())
		w.event(corev1.EventTypeWarning, "Failed", "Error: "+err.Error())
		return notStarted, 0
	}
	w.mu.Lock()
	attempt := c.restarts
	w.mu.Unlock()
	logPath := filepath.Join(w.logDir, c.spec.Name, fmt.Sprintf("%d.log", attempt))
	layer := filepath.Join(w.dir, "containers", c.spec.Name, fmt.Sprint(attempt))
	prevLayer := filepath.Join(w.dir, "containers", c.spec.Name, fmt.Sprint(attempt-1))
	_ = os.RemoveAll(prevLayer) // a restarted container starts from a fresh writable layer
	_ = os.RemoveAll(layer)
	for _, d := range []string{filepath.Dir(logPath), layer + "/upper", layer + "/work", layer + "/merged"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			waiting("CreateContainerError", fmt.Sprintf("container state: %v", err))
			return notStarted, 0
		}
	}
	spec.Root = layer + "/merged"
	spec.Overlay = &shimOverlay{Lower: rootfs, Upper: layer + "/upper", Work: layer + "/work"}
	// A fresh cgroup per attempt: a cgroup that was killed (cgroup.kill) must not be reused,
	// some kernels kill every process later cloned into it.
	cgroup := filepath.Join(w.sandbox().cgroup, fmt.Sprintf("%s-%d", c.spec.Name, attempt))
	if err := os.Mkdir(cgroup, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		waiting("CreateContainerError", fmt.Sprintf("container cgroup: %v", err))
		return notStarted, 0
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		waiting("CreateContainerError", fmt.Sprintf("container log: %v", err))
		return notStarted, 0
	}
	defer logf.Close()
	cgfd, err := os.Open(cgroup)
	if err != nil {
		waiting("CreateContainerError", fmt.Sprintf("container cgroup: %v", err))
		return notStarted, 0
	}
	defer cgfd.Close()
	var uts uintptr
	if spec.Hostname != "" {
		uts = syscall.CLONE_NEWUTS
	}
	cmd, err := k.shimCommand(spec, uts)
	if err != nil {
		waiting("CreateContainerError", err.Error())
		return notStarted, 0
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if c.spec.Stdin {
		cmd.Stdin = nil // no attach in the lab: stdin is /dev/null
	}
	cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgfd.Fd())
	id := randomID()
	startedAt := metav1.Now()
	startErr, err := startShim(cmd)
	w.mu.Lock()
	c.id, c.imageID, c.cgroup, c.env, c.rootfs = id, img.ID, cgroup, spec.Env, layer+"/upper"
	if c.imageID == "" {
		c.imageID = c.spec.Image
	}
	c.logs = append(c.logs, logPath)
	w.mu.Unlock()
	if startErr != "" || err != nil {
		msg := startErr
		if err != nil {
			msg = err.Error()
		}
		now := metav1.Now()
		w.mu.Lock()
		c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 128, Reason: "StartError", Message: msg, StartedAt: metav1.Unix(0, 0), FinishedAt: now, ContainerID: "lab://" + id,
		}}
		w.mu.Unlock()
		w.event(corev1.EventTypeWarning, "Failed", "Error: "+msg)
		w.markDirty()
		return startFailed, 128
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	w.mu.Lock()
	c.proc, c.pid, c.exited = cmd.Process, cmd.Process.Pid, done
	c.startCh, c.kill = make(chan struct{}), make(chan string, 1)
	c.started = c.spec.StartupProbe == nil
	c.ready = c.started && c.spec.ReadinessProbe == nil && !c.init
	if c.started {
		close(c.startCh)
	}
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}}
	killc := c.kill
	w.mu.Unlock()
	w.markDirty()
	w.log.Info("container started", "container", c.spec.Name, "pid", cmd.Process.Pid, "attempt", attempt, "log", logPath)
	w.event(corev1.EventTypeNormal, "Started", "Started container "+c.spec.Name)

	probeCtx, stopProbes := context.WithCancel(life)
	probesDone := make(chan struct{})
	go func() { defer close(probesDone); w.runProbes(probeCtx, c) }()
	reason := ""
	select {
	case <-done:
	case <-life.Done():
		w.stopProcess(c, cmd.Process, cgroup, done, w.gracePeriod())
	case reason = <-killc:
		w.event(corev1.EventTypeNormal, "Killing", fmt.Sprintf("Container %s %s, will be restarted", c.spec.Name, reason))
		w.stopProcess(c, cmd.Process, cgroup, done, w.probeGrace(c))
	}
	stopProbes()
	<-probesDone
	// Whatever the main process left behind goes with it, and so does its cgroup (exec'd
	// processes may still hold it; the pod's teardown removes it then).
	if err := killCgroup(cgroup, 5*time.Second); err != nil {
		w.log.Warn("container cgroup", "err", err)
	}
	_ = removeCgroupTree(cgroup)
	code := exitCode(waitErr)
	finished := metav1.Now()
	w.mu.Lock()
	c.proc, c.pid, c.ready = nil, 0, false
	r := "Completed"
	if code != 0 {
		r = "Error"
	}
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: r, StartedAt: startedAt, FinishedAt: finished, ContainerID: "lab://" + id,
	}}
	w.mu.Unlock()
	w.markDirty()
	w.log.Info("container exited", "container", c.spec.Name, "code", code, "killed", reason)
	if life.Err() != nil {
		return lifeEnded, code
	}
	return exited, code
}

// stopProcess sends SIGTERM, waits up to grace, then kills the container's cgroup.
func (w *podWorker) stopProcess(c *ctr, p *os.Process, cgroup string, done chan struct{}, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	w.log.Info("grace period over, killing", "container", c.spec.Name, "grace", grace)
	_ = killCgroup(cgroup, 5*time.Second)
	_ = p.Kill()
	<-done
}

func (w *podWorker) probeGrace(c *ctr) time.Duration {
	for _, p := range []*corev1.Probe{c.spec.LivenessProbe, c.spec.StartupProbe} {
		if p != nil && p.TerminationGracePeriodSeconds != nil {
			return min(time.Duration(*p.TerminationGracePeriodSeconds)*time.Second, w.k.cfg.MaxGracePeriod)
		}
	}
	return w.gracePeriod()
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 128
}

func (w *podWorker) sandbox() *sandbox {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sb
}

// containerSpec is the shim's spec for c: namespaces, mounts, environment, command.
func (w *podWorker) containerSpec(ctx context.Context, c *ctr, rootfs string, img ImageConfig) (shimSpec, error) {
	pod := w.current()
	sb := w.sandbox()
	env, err := w.containerEnv(ctx, pod, &c.spec, img, sb)
	if err != nil {
		return shimSpec{}, err
	}
	lookup := envLookup(env)
	argv := command(&c.spec, img, lookup)
	if len(argv) == 0 {
		return shimSpec{}, fmt.Errorf("container %s: no command: the image has no Entrypoint/Cmd and the container no command/args", c.spec.Name)
	}
	if _, err := os.Stat(rootfs); err != nil {
		return shimSpec{}, fmt.Errorf("image root filesystem: %w", err)
	}
	if strings.ContainsAny(rootfs+w.dir, ",:") {
		return shimSpec{}, fmt.Errorf("image root filesystem %s or pod directory %s has a comma or colon, which overlayfs options cannot carry", rootfs, w.dir)
	}
	files, err := w.podFiles(pod, sb)
	if err != nil {
		return shimSpec{}, err
	}
	privileged := c.spec.SecurityContext != nil && c.spec.SecurityContext.Privileged != nil && *c.spec.SecurityContext.Privileged
	mounts := []shimMount{
		{Type: "proc", Target: "/proc"},
		{Type: "sysfs", Target: "/sys", ReadOnly: !privileged},
		{Type: "bind", Source: "/dev", Target: "/dev", Propagation: "private"},
		{Type: "bind", Source: files.resolv, Target: "/etc/resolv.conf", Propagation: "private"},
		{Type: "bind", Source: files.hosts, Target: "/etc/hosts", Propagation: "private"},
		{Type: "bind", Source: files.hostname, Target: "/etc/hostname", Propagation: "private"},
	}
	w.mu.Lock()
	vols := w.vols
	w.mu.Unlock()
	for _, vm := range c.spec.VolumeMounts {
		v := vols[vm.Name]
		if v == nil {
			return shimSpec{}, fmt.Errorf("volume mount %s: no volume %q in the pod", vm.MountPath, vm.Name)
		}
		src := v.path
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expand(vm.SubPathExpr, lookup)
		}
		if sub != "" {
			if filepath.IsAbs(sub) || slices.Contains(strings.Split(filepath.ToSlash(sub), "/"), "..") {
				return shimSpec{}, fmt.Errorf("volume mount %s: subPath %q must be relative and must not contain a .. element", vm.MountPath, sub)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Lstat(src); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return shimSpec{}, fmt.Errorf("volume mount %s: subPath: %w", vm.MountPath, err)
				}
			}
		}
		prop := "private"
		if vm.MountPropagation != nil {
			switch *vm.MountPropagation {
			case corev1.MountPropagationHostToContainer:
				prop = "slave"
			case corev1.MountPropagationBidirectional:
				prop = "shared"
			}
		}
		mounts = append(mounts, shimMount{Type: "bind", Source: src, Target: filepath.Clean(vm.MountPath), ReadOnly: vm.ReadOnly || v.readOnly, Propagation: prop})
	}
	slices.SortStableFunc(mounts, func(a, b shimMount) int {
		return strings.Count(a.Target, "/") - strings.Count(b.Target, "/")
	})
	dir := c.spec.WorkingDir
	if dir == "" {
		dir = img.WorkingDir
	}
	hostname := files.hostnameValue
	return shimSpec{Netns: sb.netnsPath, Hostname: hostname, Mounts: mounts, Dir: dir, Env: env, Argv: argv}, nil
}

// command is the image's Entrypoint and Cmd overridden by the container's command and args,
// as Kubernetes does; $(VAR) in command and args expands from the container's environment.
func command(c *corev1.Container, img ImageConfig, lookup func(string) (string, bool)) []string {
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = expandAll(c.Command, lookup)
		argv = append(argv, expandAll(c.Args, lookup)...)
	case len(c.Args) > 0:
		argv = append(slices.Clone(img.Entrypoint), expandAll(c.Args, lookup)...)
	default:
		argv = append(slices.Clone(img.Entrypoint), img.Cmd...)
	}
	return argv
}

func expandAll(ss []string, lookup func(string) (string, bool)) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = expand(s, lookup)
	}
	return out
}

// expand replaces $(VAR) with VAR's value when defined; $$ is a literal $; anything else stays.
func expand(s string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func envLookup(env []string) func(string) (string, bool) {
	m := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// exec runs argv in a running container with nsenter (Go cannot join a mount namespace from a
// multi-threaded process).
func (w *podWorker) exec(ctx context.Context, container string, argv []string, stdin io.Reader) ([]byte, []byte, error) {
	if len(argv) == 0 {
		return nil, nil, errors.New("exec: empty command")
	}
	w.mu.Lock()
	var c *ctr
	for _, x := range w.ctrs {
		if x.spec.Name == container {
			c = x
		}
	}
	if c == nil || c.pid == 0 {
		w.mu.Unlock()
		return nil, nil, fmt.Errorf("exec in %s/%s: container %q is not running", w.namespace, w.name, container)
	}
	pid, env, cgroup := c.pid, c.env, c.cgroup
	w.mu.Unlock()
	return execIn(ctx, pid, env, cgroup, argv, stdin)
}

func execIn(ctx context.Context, pid int, env []string, cgroup string, argv []string, stdin io.Reader) ([]byte, []byte, error) {
	args := append([]string{"--target", fmt.Sprint(pid), "--mount", "--net", "--uts", "--root", "--wd", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = env
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cg, err := os.Open(cgroup)
	if err != nil {
		return nil, nil, fmt.Errorf("exec: container cgroup: %w", err)
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("exec %s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}
