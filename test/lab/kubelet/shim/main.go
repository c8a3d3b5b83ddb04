//go:build linux

// Command shim is the lab kubelet's container runtime in one exec: started by
// test/lab/kubelet in a fresh mount namespace (CLONE_NEWNS, and CLONE_NEWUTS when it sets a
// hostname), it reads a JSON Spec from its first argument, makes every mount a slave of the
// host's (host mounts propagate in, its own never propagate out), joins a network namespace,
// mounts an overlay root and bind mounts, chroots, and execs the payload, so the payload's pid
// is the shim's pid.
//
// Only the lab kubelet runs it (it builds the binary); nothing imports it. Failures before the
// exec are written to fd 3 when the parent passes a pipe there (the parent reports them as a
// start error), and to stderr; the exit code is then 128.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Spec is what the kubelet asks for. It is mirrored by the kubelet package's shimSpec.
type Spec struct {
	// Netns is the network namespace file to join ("": stay in the parent's).
	Netns string `json:"netns,omitempty"`
	// Hostname is set in the (new) UTS namespace when not empty.
	Hostname string `json:"hostname,omitempty"`
	// Root is the directory to chroot into ("": no chroot).
	Root string `json:"root,omitempty"`
	// Overlay, when set, is mounted on Root first (the container's writable layer).
	Overlay *Overlay `json:"overlay,omitempty"`
	// Mounts are done after the overlay, in order, with targets inside Root.
	Mounts []Mount `json:"mounts,omitempty"`
	// Dir is the working directory inside Root (created when missing).
	Dir string `json:"dir,omitempty"`
	// Env is the payload's whole environment.
	Env []string `json:"env,omitempty"`
	// Argv is the payload; Argv[0] without a slash is looked up in Env's PATH inside Root.
	Argv []string `json:"argv"`
}

// Overlay is an overlayfs: Lower read-only (the image), Upper and Work on the node's disk.
type Overlay struct {
	Lower string `json:"lower"`
	Upper string `json:"upper"`
	Work  string `json:"work"`
}

// Mount is one mount inside the new root.
type Mount struct {
	// Type is bind (Source is a host path, bound recursively), proc or sysfs (fresh
	// instances; sysfs shows the joined network namespace's devices).
	Type   string `json:"type"`
	Source string `json:"source,omitempty"`
	// Target is an absolute path inside Root; symbolic links in it resolve inside Root.
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Propagation is private, slave (the default: host mounts appear) or shared.
	Propagation string `json:"propagation,omitempty"`
}

func main() {
	// Namespace changes below are per thread until the exec: stay on this one.
	runtime.LockOSThread()
	var status *os.File
	if _, err := unix.FcntlInt(3, unix.F_GETFD, 0); err == nil {
		unix.CloseOnExec(3)
		status = os.NewFile(3, "status")
	}
	err := run(os.Args[1:])
	// run returns only on failure.
	msg := fmt.Sprintf("shim: %v", err)
	fmt.Fprintln(os.Stderr, msg)
	if status != nil {
		_, _ = status.WriteString(msg)
	}
	os.Exit(128)
}

func run(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: shim '<json spec>'")
	}
	var spec Spec
	if err := json.Unmarshal([]byte(args[0]), &spec); err != nil {
		return fmt.Errorf("parse spec: %w", err)
	}
	if len(spec.Argv) == 0 {
		return errors.New("spec has no argv")
	}
	if err := ownMountNamespace(); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / rslave: %w", err)
	}
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("set hostname (parent must clone a UTS namespace): %w", err)
		}
	}
	if spec.Netns != "" {
		fd, err := unix.Open(spec.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns: %w", err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join netns %s: %w", spec.Netns, err)
		}
		_ = unix.Close(fd)
	}
	if o := spec.Overlay; o != nil {
		if spec.Root == "" {
			return errors.New("overlay without root")
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", o.Lower, o.Upper, o.Work)
		if err := unix.Mount("overlay", spec.Root, "overlay", 0, opts); err != nil {
			return fmt.Errorf("mount overlay root (%s): %w", opts, err)
		}
	}
	// Bind sources are host paths, gone after the chroot: clone them into detached trees now and
	// attach them once inside, where symbolic links in the targets resolve within the root.
	trees := make([]int, len(spec.Mounts))
	dirs := make([]bool, len(spec.Mounts))
	for i, m := range spec.Mounts {
		trees[i], dirs[i] = -1, true
		if m.Type != "bind" {
			continue
		}
		st, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("bind mount source: %w", err)
		}
		dirs[i] = st.IsDir()
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("clone mount tree %s: %w", m.Source, err)
		}
		if m.ReadOnly {
			attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
				return fmt.Errorf("make %s read-only: %w", m.Source, err)
			}
		}
		trees[i] = fd
	}
	if spec.Root != "" {
		if err := unix.Chroot(spec.Root); err != nil {
			return fmt.Errorf("chroot %s: %w", spec.Root, err)
		}
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	for i, m := range spec.Mounts {
		if err := mountOne(m, trees[i], dirs[i]); err != nil {
			return err
		}
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	path, err := lookPath(spec.Argv[0], spec.Env)
	if err != nil {
		return err
	}
	if err := unix.Exec(path, spec.Argv, spec.Env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// ownMountNamespace refuses to run in the parent's mount namespace: making / rslave there would
// change the host's mounts.
func ownMountNamespace() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("read mount namespace: %w", err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return fmt.Errorf("read parent's mount namespace: %w", err)
	}
	if self == parent {
		return errors.New("refusing to run in the parent's mount namespace: start the shim with CLONE_NEWNS")
	}
	return nil
}

func mountOne(m Mount, tree int, dir bool) error {
	if !filepath.IsAbs(m.Target) {
		return fmt.Errorf("mount target %q is not absolute", m.Target)
	}
	if err := mountpoint(m.Target, dir); err != nil {
		return err
	}
	switch m.Type {
	case "bind":
		if err := unix.MoveMount(tree, "", unix.AT_FDCWD, m.Target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach %s at %s: %w", m.Source, m.Target, err)
		}
		_ = unix.Close(tree)
	case "proc":
		if err := unix.Mount("proc", m.Target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount proc at %s: %w", m.Target, err)
		}
	case "sysfs":
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("sysfs", m.Target, "sysfs", flags, ""); err != nil {
			return fmt.Errorf("mount sysfs at %s: %w", m.Target, err)
		}
	default:
		return fmt.Errorf("mount type %q unknown (bind, proc, sysfs)", m.Type)
	}
	prop := map[string]uintptr{"": unix.MS_SLAVE, "slave": unix.MS_SLAVE, "private": unix.MS_PRIVATE, "shared": unix.MS_SHARED}[m.Propagation]
	if prop == 0 {
		return fmt.Errorf("mount propagation %q unknown (private, slave, shared)", m.Propagation)
	}
	if err := unix.Mount("", m.Target, "", unix.MS_REC|prop, ""); err != nil {
		return fmt.Errorf("set propagation %s on %s: %w", m.Propagation, m.Target, err)
	}
	return nil
}

// mountpoint creates target as a directory, or as an empty file when the source is not one.
func mountpoint(target string, dir bool) error {
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	if dir {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("mount point: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	return f.Close()
}

// lookPath finds name in env's PATH (inside the new root).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in PATH %s", name, path)
}
