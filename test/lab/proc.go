//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Proc is a background process the lab started; its output goes to LogPath.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (p *Proc) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// spawn starts bin with args. With netnsPath it runs under nsenter --net= (not ip netns exec,
// which remounts /sys); with cgroupDir it is cloned straight into that cgroup (so it is there
// before its first instruction).
func spawn(name, logPath, bin string, args []string, netnsPath, cgroupDir string, env []string) (*Proc, error) {
	argv := append([]string{bin}, args...)
	if netnsPath != "" {
		argv = append([]string{"nsenter", "--net=" + netnsPath, "--"}, argv...)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := &exec.Cmd{Path: path, Args: argv, Stdout: logf, Stderr: logf, Env: append(os.Environ(), env...)}
	// Own process group: a Ctrl-C in the terminal reaches the supervisor only, which tears down
	// in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cgroupDir != "" {
		d, err := os.Open(cgroupDir)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(d.Fd())
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// startProcess starts a host-side process (no netns) owned by the lab, logging to
// <state>/logs/<name>.log and recorded in the pids file.
func (l *Lab) startProcess(name, bin string, args, env []string) (*Proc, error) {
	p, err := spawn(name, filepath.Join(l.cfg.StateDir, "logs", name+".log"), bin, args, "", "", env)
	if err != nil {
		return nil, err
	}
	l.writePid(name, p.Pid(), bin)
	l.mu.Lock()
	l.procs[name] = p
	l.mu.Unlock()
	return p, nil
}

// runIn runs a command to completion in a network namespace ("": the lab's own) (and cgroup, if not empty) and
// returns its stdout; the error carries stderr.
func runIn(ctx context.Context, netnsPath, cgroupDir string, stdin []byte, env []string, bin string, args ...string) ([]byte, error) {
	argv := append([]string{"nsenter", "--net=" + netnsPath, "--", bin}, args...)
	if netnsPath == "" { // the lab's own (host) network namespace
		argv = append([]string{bin}, args...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if cgroupDir != "" {
		d, err := os.Open(cgroupDir)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(d.Fd())}
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ip runs the ip command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on hybrid hosts).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) > 0 && fs[0] == "cgroup2" {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// cgroupDir is the lab's parent cgroup <cgroup2 mount>/wrn-lab ("" if there is no cgroup2).
func (l *Lab) cgroupDir() string {
	if l.cgroupRoot != "" {
		return l.cgroupRoot
	}
	m, err := cgroup2Mount()
	if err != nil {
		return ""
	}
	return filepath.Join(m, "wrn-lab")
}

// killCgroupTree kills every process in the cgroup subtree (cgroup.kill) and waits until it is
// empty.
func killCgroupTree(dir string) error {
	if dir == "" || filepath.Base(dir) != "wrn-lab" && !strings.Contains(dir, "/wrn-lab/") {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || bytes.Contains(b, []byte("populated 0")) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still populated after kill", dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroupTree removes the cgroup directory and its children, deepest first.
func removeCgroupTree(dir string) error {
	if dir == "" || filepath.Base(dir) != "wrn-lab" && !strings.Contains(dir, "/wrn-lab/") {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	slices.Reverse(dirs)
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
