//go:build linux

package kubelet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// sandbox is a pod's network namespace, address and cgroup.
type sandbox struct {
	// id is the sandbox id the CNI plugins see (CNI_CONTAINERID, K8S_POD_INFRA_CONTAINER_ID).
	id string
	// netns is the named network namespace (""  for hostNetwork pods) and netnsPath its file.
	netns, netnsPath string
	ip               netip.Addr
	cgroup           string
	// cni is true when the CNI chain's ADD ran (DEL is due).
	cni bool
}

// cniNetnsDir is where named network namespaces live, on the host and inside the CNI view.
const cniNetnsDir = "/var/run/netns"

func randomID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// netnsName is <prefix><namespace>-<name>, shortened with a hash when too long for a file name.
func (k *Kubelet) netnsName(pod *corev1.Pod) string {
	n := k.cfg.NetnsPrefix + pod.Namespace + "-" + pod.Name
	if len(n) > 200 {
		n = n[:180] + "-" + string(pod.UID)[:8]
	}
	return n
}

// createSandbox makes the pod's cgroup and, unless hostNetwork, its network namespace wired by
// the CNI chain. On failure it undoes what it did.
func (w *podWorker) createSandbox(ctx context.Context, pod *corev1.Pod) (sb *sandbox, err error) {
	k := w.k
	sb = &sandbox{id: randomID(), cgroup: filepath.Join(k.cfg.CgroupParent, "pod"+string(pod.UID))}
	defer func() {
		if err != nil {
			err = errors.Join(err, w.removeSandbox(context.WithoutCancel(ctx), pod, sb))
			sb = nil
		}
	}()
	if err := os.Mkdir(sb.cgroup, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return sb, fmt.Errorf("create pod cgroup: %w", err)
	}
	if pod.Spec.HostNetwork {
		sb.netnsPath, sb.ip = k.cfg.NodeNetns, k.cfg.NodeIP
		if sb.netnsPath == "" {
			sb.netnsPath = "/proc/1/ns/net"
		}
		return sb, nil
	}
	name := k.netnsName(pod)
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
		return sb, fmt.Errorf("network namespace %s already exists (an old pod of the same name still terminating, or a leftover of an earlier lab)", name)
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return sb, fmt.Errorf("create network namespace %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	sb.netns, sb.netnsPath = name, filepath.Join("/run/netns", name)
	sb.cni = true
	ip, err := w.cniAdd(ctx, pod, sb)
	if err != nil {
		return sb, err
	}
	sb.ip = ip
	return sb, nil
}

// removeSandbox runs CNI DEL, deletes the network namespace and removes the pod's cgroup tree
// (whose processes must be gone). It keeps going past errors.
func (w *podWorker) removeSandbox(ctx context.Context, pod *corev1.Pod, sb *sandbox) error {
	var errs []error
	if sb.cni {
		errs = append(errs, w.cniDel(ctx, pod, sb))
	}
	if sb.netns != "" {
		if _, err := os.Stat(sb.netnsPath); err == nil {
			if out, err := exec.Command("ip", "netns", "del", sb.netns).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete network namespace %s: %w: %s", sb.netns, err, bytes.TrimSpace(out)))
			}
		}
	}
	errs = append(errs, killCgroup(sb.cgroup, 5*time.Second), removeCgroupTree(sb.cgroup))
	return errors.Join(errs...)
}

// cniState is what ADD leaves for DEL: the sandbox and the chain's final result.
type cniState struct {
	ID     string          `json:"id"`
	Netns  string          `json:"netns"`
	Result json.RawMessage `json:"result,omitempty"`
	List   json.RawMessage `json:"list,omitempty"`
}

func (w *podWorker) cniStatePath() string { return filepath.Join(w.dir, "cni.json") }

// loadConfList reads the first network configuration (lexically: *.conf, *.conflist, *.json)
// of <NodeRoot>/etc/cni/net.d, a single-plugin .conf turned into a list.
func (k *Kubelet) loadConfList() (map[string]any, string, error) {
	dir := filepath.Join(k.cfg.NodeRoot, "etc/cni/net.d")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("read CNI config dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".conf" || ext == ".conflist" || ext == ".json") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, "", fmt.Errorf("network plugin not ready: no CNI configuration in %s", dir)
	}
	path := filepath.Join(dir, names[0])
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read CNI config: %w", err)
	}
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		return nil, "", fmt.Errorf("CNI config %s is not JSON: %w", path, err)
	}
	if _, ok := conf["plugins"]; !ok {
		if _, ok := conf["type"]; !ok {
			return nil, "", fmt.Errorf("CNI config %s has neither plugins nor type", path)
		}
		conf = map[string]any{"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": []any{conf}}
	}
	if _, ok := conf["plugins"].([]any); !ok {
		return nil, "", fmt.Errorf("CNI config %s: plugins is not a list", path)
	}
	return conf, path, nil
}

func loopbackConf() map[string]any {
	return map[string]any{"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
}

// pluginConf is one plugin's configuration from the list, with its name, version and the
// previous result.
func pluginConf(list map[string]any, plugin any, prev json.RawMessage) (map[string]any, error) {
	p, ok := plugin.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("CNI plugin entry %v is not an object", plugin)
	}
	conf := map[string]any{}
	for k, v := range p {
		conf[k] = v
	}
	conf["name"], conf["cniVersion"] = list["name"], list["cniVersion"]
	if len(prev) > 0 {
		conf["prevResult"] = prev
	}
	return conf, nil
}

// cniAdd runs loopback, then every plugin of the node's network, and records the result for
// DEL. It returns the pod's IPv4 address (or the first one).
func (w *podWorker) cniAdd(ctx context.Context, pod *corev1.Pod, sb *sandbox) (netip.Addr, error) {
	if _, err := w.execPlugin(ctx, "ADD", pod, sb, loopbackConf()); err != nil {
		return netip.Addr{}, err
	}
	list, _, err := w.k.loadConfList()
	if err != nil {
		return netip.Addr{}, err
	}
	listRaw, _ := json.Marshal(list)
	state := cniState{ID: sb.id, Netns: sb.netns, List: listRaw}
	if err := writeJSON(w.cniStatePath(), state); err != nil {
		return netip.Addr{}, err
	}
	var prev json.RawMessage
	for _, pl := range list["plugins"].([]any) {
		conf, err := pluginConf(list, pl, prev)
		if err != nil {
			return netip.Addr{}, err
		}
		out, err := w.execPlugin(ctx, "ADD", pod, sb, conf)
		if err != nil {
			return netip.Addr{}, err
		}
		prev = json.RawMessage(out)
	}
	state.Result = prev
	if err := writeJSON(w.cniStatePath(), state); err != nil {
		return netip.Addr{}, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(prev, &res); err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result is not JSON: %w: %s", err, prev)
	}
	var addrs []netip.Addr
	for _, a := range res.IPs {
		if p, err := netip.ParsePrefix(a.Address); err == nil {
			addrs = append(addrs, p.Addr())
		}
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("CNI result has no IP address: %s", prev)
	}
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int { return boolCmp(b.Is4(), a.Is4()) })
	return addrs[0], nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	default:
		return -1
	}
}

// cniDel runs DEL for the node's current network (the one ADD used when there is none now)
// in reverse order with the cached result, then loopback's.
func (w *podWorker) cniDel(ctx context.Context, pod *corev1.Pod, sb *sandbox) error {
	var state cniState
	if raw, err := os.ReadFile(w.cniStatePath()); err == nil {
		_ = json.Unmarshal(raw, &state)
	}
	list, _, err := w.k.loadConfList()
	if err != nil {
		if len(state.List) == 0 {
			return fmt.Errorf("CNI DEL: %w", err)
		}
		if err := json.Unmarshal(state.List, &list); err != nil {
			return fmt.Errorf("CNI DEL: cached network: %w", err)
		}
	}
	var errs []error
	plugins, _ := list["plugins"].([]any)
	for i := len(plugins) - 1; i >= 0; i-- {
		conf, err := pluginConf(list, plugins[i], state.Result)
		if err == nil {
			_, err = w.execPlugin(ctx, "DEL", pod, sb, conf)
		}
		errs = append(errs, err)
	}
	_, err = w.execPlugin(ctx, "DEL", pod, sb, loopbackConf())
	errs = append(errs, err)
	if err := os.Remove(w.cniStatePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// execPlugin runs one CNI plugin as a runtime on the node does, in the node's view: its
// network namespace, chrooted into NodeRoot with the host's /proc, /sys, /dev and netns
// directory, configuration on stdin, the result on stdout.
func (w *podWorker) execPlugin(ctx context.Context, cmd string, pod *corev1.Pod, sb *sandbox, conf map[string]any) ([]byte, error) {
	k := w.k
	typ, _ := conf["type"].(string)
	if typ == "" || strings.ContainsAny(typ, "/") {
		return nil, fmt.Errorf("CNI plugin type %q is not a plugin name", typ)
	}
	if _, err := os.Stat(filepath.Join(k.cfg.NodeRoot, "opt/cni/bin", typ)); err != nil {
		return nil, fmt.Errorf("CNI plugin %q not found in %s: %w", typ, filepath.Join(k.cfg.NodeRoot, "opt/cni/bin"), err)
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + sb.id, "CNI_NETNS=" + filepath.Join(cniNetnsDir, sb.netns),
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + pod.Namespace + ";K8S_POD_NAME=" + pod.Name +
			";K8S_POD_INFRA_CONTAINER_ID=" + sb.id + ";K8S_POD_UID=" + string(pod.UID),
	}
	spec := shimSpec{
		Netns: k.cfg.NodeNetns,
		Root:  k.cfg.NodeRoot,
		Mounts: []shimMount{
			{Type: "bind", Source: "/proc", Target: "/proc"},
			{Type: "bind", Source: "/sys", Target: "/sys"},
			{Type: "bind", Source: "/dev", Target: "/dev"},
			{Type: "bind", Source: "/run/netns", Target: "/run/netns"},
			{Type: "bind", Source: "/run/netns", Target: cniNetnsDir},
		},
		Dir:  "/",
		Env:  env,
		Argv: []string{"/opt/cni/bin/" + typ},
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c, err := k.shimCommand(spec, 0)
	if err != nil {
		return nil, err
	}
	c.Stdin, c.Stdout, c.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	startErr, err := runShim(ctx, c)
	if startErr != "" {
		return nil, fmt.Errorf("CNI plugin %s %s: %s", typ, cmd, startErr)
	}
	if err != nil {
		var perr struct {
			Code    int    `json:"code"`
			Msg     string `json:"msg"`
			Details string `json:"details"`
		}
		msg := strings.TrimSpace(stdout.String())
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Msg != "" {
			msg = perr.Msg
			if perr.Details != "" {
				msg += ": " + perr.Details
			}
		}
		if s := strings.TrimSpace(stderr.String()); s != "" {
			msg += " (stderr: " + s + ")"
		}
		return nil, fmt.Errorf("CNI plugin %s %s failed: %s (%w)", typ, cmd, msg, err)
	}
	return stdout.Bytes(), nil
}

// shimCommand is the shim with spec, in a new mount namespace (and UTS namespace with
// extraFlags), not yet started.
func (k *Kubelet) shimCommand(spec shimSpec, extraFlags uintptr) (*exec.Cmd, error) {
	arg, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("shim spec: %w", err)
	}
	c := exec.Command(k.cfg.ShimPath, string(arg))
	c.Env = []string{}
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | extraFlags, Setpgid: true}
	return c, nil
}

// runShim starts c with a status pipe on fd 3 and waits for it. startErr is the shim's own
// failure (before the exec), err the payload's.
func runShim(ctx context.Context, c *exec.Cmd) (startErr string, err error) {
	startErr, err = startShim(c)
	if startErr != "" || err != nil {
		return startErr, err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return "", err
	case <-ctx.Done():
		_ = c.Process.Kill()
		<-done
		return "", ctx.Err()
	}
}

// startShim starts c and returns once the shim has exec'd its payload (startErr empty) or
// failed before (startErr says why; the process is reaped).
func startShim(c *exec.Cmd) (startErr string, err error) {
	r, wr, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("status pipe: %w", err)
	}
	defer r.Close()
	c.ExtraFiles = []*os.File{wr}
	err = c.Start()
	wr.Close()
	if err != nil {
		return "", fmt.Errorf("start shim: %w", err)
	}
	var msg bytes.Buffer
	_, _ = msg.ReadFrom(r)
	if msg.Len() > 0 {
		_ = c.Wait()
		return msg.String(), nil
	}
	return "", nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// killCgroup kills every process of the cgroup tree (cgroup.kill) and waits until it is empty.
func killCgroup(dir string, wait time.Duration) error {
	ev, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) || bytes.Contains(ev, []byte("populated 0")) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || bytes.Contains(b, []byte("populated 0")) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still populated %v after kill", dir, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroupTree removes the cgroup directory and its children, deepest first.
func removeCgroupTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
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
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
