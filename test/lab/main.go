//go:build linux

// Command lab runs Warren's local lab: a real Kubernetes control plane (etcd + kube-apiserver
// via controller-runtime's envtest), warren-controller, and simulated nodes and pods made of
// network namespaces and cgroups, wired by the real reference CNI plugins the way a kubelet
// and its container runtime do it. Root only.
//
//	go run ./test/lab demo                the whole story (mesh up, article policy, allow/deny,
//	                                      capture of the wire), then teardown; exit 1 on a failed check
//	go run ./test/lab up [--with-ztunnel=true|false] [--warren-cni auto|off|PATH] [--state DIR]
//	    starts everything and stays in the foreground as the lab's supervisor; Ctrl-C or
//	    SIGTERM tears it all down
//	go run ./test/lab status              what runs (from <state>/lab.json) and kubectl get
//	go run ./test/lab exec NS/POD -- CMD  runs CMD in the pod's netns and cgroup ("app" is
//	                                      the sample app: exec default/service-a -- app client --to IP:8080)
//	go run ./test/lab down                removes what a crashed "up" left behind
//
// Topology: node-1 and node-2 are network namespaces wrn-lab-node1/2 joined by a veth
// (10.99.0.1/24 <-> 10.99.0.2/24); each has a bridge wrn-lab-br0 for its pods (10.244.1.0/24,
// 10.244.2.0/24) made by the bridge + host-local plugins; pods are network namespaces
// wrn-lab-<namespace>-<pod> with cgroups <cgroup2>/wrn-lab/node<i>/<namespace>_<pod>.
// Everything on the host is named wrn-lab-*; state, logs and the kubeconfig live in the state
// directory (default /tmp/wrn-lab).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "up":
		err = cmdUp(ctx, os.Args[2:])
	case "down":
		err = cmdDown(os.Args[2:])
	case "status":
		err = cmdStatus(ctx, os.Args[2:])
	case "exec":
		err = cmdExec(ctx, os.Args[2:])
	case "demo":
		err = cmdDemo(ctx, os.Args[2:])
	case "bench":
		err = cmdBench(ctx, os.Args[2:])
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lab demo | up [--with-ztunnel=false] [--warren-cni auto|off|PATH] [--state DIR] | status | exec NS/POD -- CMD... | down  (see go doc ./test/lab)")
}

// Scenario pods of the default scenario.
var defaultPods = []PodSpec{
	{Node: "node-1", Namespace: "default", Name: "service-a", ServiceAccount: "service-a", Labels: map[string]string{"app": "service-a"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "service-a"}},
	{Node: "node-2", Namespace: "default", Name: "service-b", ServiceAccount: "service-b", Labels: map[string]string{"app": "service-b"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "service-b"}},
	{Node: "node-1", Namespace: "default", Name: "service-c", ServiceAccount: "service-c", Labels: map[string]string{"app": "service-c"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "service-c"}},
}

// Up brings a lab up: control plane, controller (unless noController), nodes 1..nodes joined
// pairwise in a chain, and the given pods. On error it tears down what it started.
func Up(ctx context.Context, cfg Config, nodes int, withController bool, pods []PodSpec) (*Lab, error) {
	if err := preflight(cfg.StateDir); err != nil {
		return nil, err
	}
	l, err := New(cfg)
	if err != nil {
		return nil, err
	}
	err = func() error {
		if err := l.StartControlPlane(ctx); err != nil {
			return err
		}
		if withController {
			if err := l.StartController(ctx); err != nil {
				return err
			}
		}
		names, err := l.addNodeChain(ctx, nodes)
		if err != nil {
			return err
		}
		if cfg.WithZtunnel {
			for _, n := range names {
				if err := l.StartZtunnel(ctx, n); err != nil {
					return err
				}
			}
		}
		for _, ps := range pods {
			if _, err := l.AddPod(ctx, ps); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		return nil, errors.Join(err, l.Teardown())
	}
	return l, nil
}

// addNodeChain adds nodes 1..nodes, each joined to the one before, and returns their names.
func (l *Lab) addNodeChain(ctx context.Context, nodes int) ([]string, error) {
	var prev *Node
	var names []string
	for i := 1; i <= nodes; i++ {
		n, err := l.AddNode(ctx, i)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			if err := l.ConnectNodes(prev, n); err != nil {
				return nil, err
			}
		}
		prev = n
		names = append(names, n.Name)
	}
	return names, nil
}

// preflight refuses to start over a lab that is still running or left behind.
func preflight(stateDir string) error {
	if stateDir == "" {
		stateDir = "/tmp/wrn-lab"
	}
	if st, err := LoadState(stateDir); err == nil && st.SupervisorPid > 0 && syscall.Kill(st.SupervisorPid, 0) == nil {
		return fmt.Errorf("a lab is already running (supervisor pid %d); stop it with Ctrl-C there or kill %d", st.SupervisorPid, st.SupervisorPid)
	}
	if ns, _ := labNetns(); len(ns) > 0 {
		return fmt.Errorf("leftovers of an earlier lab (network namespaces %s); run: go run ./test/lab down", strings.Join(ns, ", "))
	}
	return nil
}

func cmdUp(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	warrenCNI := fs.String("warren-cni", "auto", "warren-cni plugin to chain after bridge: auto (.cache/bin/warren-cni if built), off, or a path")
	withZtunnel := fs.Bool("with-ztunnel", true, "start warren-ztunnel on every node (before the pods) and chain warren-cni to its node agent")
	cluster := fs.Bool("cluster", true, "the lab as a cluster (kube-controller-manager, kube-scheduler, a kubelet per node) with Warren installed from manifests/charts/warren; false: the lab starts Warren's processes itself (--with-ztunnel, --warren-cni)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cluster {
		return upCluster(ctx, *state)
	}
	start := time.Now()
	l, err := Up(ctx, Config{StateDir: *state, WarrenCNI: *warrenCNI, WithZtunnel: *withZtunnel}, 2, true, defaultPods)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("lab: tearing down...")
		t := time.Now()
		if err := l.Teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "lab: teardown:", err)
		}
		fmt.Printf("lab: down in %v\n", time.Since(t).Round(time.Millisecond))
	}()
	b := l.Pod("default", "service-b")
	out, err := l.Exec(ctx, "default", "service-a", "app", "client", "--to", b.IP.String()+":8080", "--msg", "ping across nodes")
	if err != nil {
		return fmt.Errorf("cross-node check service-a -> service-b: %w", err)
	}
	fmt.Printf("\ncheck: service-a (node-1) -> service-b %s:8080 (node-2), namespace default not ambient yet: %s", b.IP, out)
	mesh := "Mesh data plane: off (--with-ztunnel=false)."
	if *withZtunnel {
		mesh = "Mesh data plane: warren-ztunnel on node-1 and node-2 (logs " + filepath.Join(l.StateDir(), "logs") + "/warren-ztunnel-node-*.log).\n" +
			"  kubectl label ns default warren.dev/dataplane-mode=ambient     # enrolls the running pods\n" +
			"  kubectl apply -n default -f test/lab/testdata/article.yaml"
	}
	fmt.Printf(`
Warren lab up in %v (state and logs in %s).

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl get pods -A -o wide
  go run ./test/lab exec default/service-a -- app client --to %s:8080 --msg hi
  go run ./test/lab exec default/service-a -- ip addr
  nsenter --net=/run/netns/wrn-lab-node1 tcpdump -ni to-node2     # the inter-node wire

warren-controller: push %s, CA %s (root in ConfigMap warren-system/warren-ca-root).
%s
Ctrl-C (or SIGTERM to pid %d) tears everything down.
`, time.Since(start).Round(time.Millisecond), l.StateDir(), l.Kubeconfig, b.IP, l.PushAddr, l.CAAddr, mesh, os.Getpid())
	<-ctx.Done()
	return nil
}

func cmdDown(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if st, err := LoadState(*state); err == nil && st.SupervisorPid > 0 && syscall.Kill(st.SupervisorPid, 0) == nil {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", st.SupervisorPid)); exe != "" {
			fmt.Printf("lab: supervisor pid %d still runs: sending SIGTERM and waiting for its teardown\n", st.SupervisorPid)
			_ = syscall.Kill(st.SupervisorPid, syscall.SIGTERM)
			for i := 0; i < 600 && syscall.Kill(st.SupervisorPid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	n, err := killRecordedPids(*state, syscall.SIGKILL)
	if err != nil {
		return err
	}
	if n > 0 {
		fmt.Printf("lab: killed %d leftover processes\n", n)
		time.Sleep(200 * time.Millisecond)
	}
	cg := ""
	if m, err := cgroup2Mount(); err == nil {
		cg = m + "/wrn-lab"
	}
	if err := cleanupHost(cg, *state); err != nil {
		return err
	}
	fmt.Println("lab: down (network namespaces wrn-lab-*, cgroup wrn-lab, processes removed)")
	return nil
}

func cmdStatus(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	st, err := LoadState(*state)
	if err != nil {
		ns, _ := labNetns()
		return fmt.Errorf("no lab running (%v); leftover network namespaces: %v", err, ns)
	}
	alive := st.SupervisorPid > 0 && syscall.Kill(st.SupervisorPid, 0) == nil
	fmt.Printf("supervisor pid %d (running: %v)\nAPI server %s\nexport KUBECONFIG=%s\ncontroller push %s CA %s\n",
		st.SupervisorPid, alive, st.APIServer, st.Kubeconfig, st.PushAddr, st.CAAddr)
	for _, n := range st.Nodes {
		fmt.Printf("node %s: netns %s ip %s podCIDR %s cgroup %s links %v\n", n.Name, n.Netns, n.IP, n.PodCIDR, n.Cgroup, n.Links)
	}
	for _, p := range st.Pods {
		fmt.Printf("pod %s on %s: ip %s netns %s pid %d log %s\n", p.Key(), p.Node, p.IP, p.Netns, p.Pid, p.LogPath)
	}
	if alive {
		out, err := kubectl(ctx, st.Kubeconfig, "get", "nodes,pods", "-A", "-o", "wide")
		fmt.Print(out)
		return err
	}
	return nil
}

func cmdExec(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) < 2 {
		return errors.New("usage: exec NS/POD -- CMD [ARGS...]")
	}
	target, cmd := rest[0], rest[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	st, err := LoadState(*state)
	if err != nil {
		return fmt.Errorf("no lab running: %w", err)
	}
	if !strings.Contains(target, "/") {
		target = "default/" + target
	}
	p := st.Pods[target]
	if len(cmd) == 0 {
		return errors.New("exec: no command")
	}
	if cmd[0] == "app" {
		cmd[0] = st.AppBinary
	}
	if st.Cluster {
		// The pod runs under a kubelet of the supervisor: enter its network namespace.
		ns, name, _ := strings.Cut(target, "/")
		p = &Pod{NetnsPath: filepath.Join("/run/netns", prefix+ns+"-"+name)}
		if _, err := os.Stat(p.NetnsPath); err != nil {
			return fmt.Errorf("no pod %s running in the lab cluster (%w)", target, err)
		}
	} else if p == nil {
		return fmt.Errorf("no pod %s in the lab", target)
	}
	out, err := runIn(ctx, p.NetnsPath, p.Cgroup, nil, nil, cmd[0], cmd[1:]...)
	os.Stdout.Write(out)
	return err
}

// upCluster is "lab up" as a cluster: Warren installed from its chart, the demo's workloads
// and the article's policy applied; it stays up until ctx ends.
func upCluster(ctx context.Context, state string) error {
	start := time.Now()
	l, err := ClusterUp(ctx, Config{StateDir: state}, 2)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("lab: tearing down...")
		t := time.Now()
		if err := l.Teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "lab: teardown:", err)
		}
		fmt.Printf("lab: down in %v\n", time.Since(t).Round(time.Millisecond))
	}()
	if err := l.BuildWarrenImages(ctx, WarrenVersion); err != nil {
		return err
	}
	if out, err := l.InstallWarren(ctx, WarrenVersion); err != nil {
		return fmt.Errorf("install warren: %w\n%s", err, out)
	}
	if _, err := l.SetNamespaceAmbient(ctx, "default", true); err != nil {
		return err
	}
	if out, err := l.ApplyWorkloads(ctx, "l4-workloads.yaml", "default"); err != nil {
		return fmt.Errorf("workloads: %w\n%s", err, out)
	}
	b := l.Pod("default", "service-b")
	fmt.Printf(`
Warren lab cluster up in %v (state and logs in %s), Warren %s installed from manifests/charts/warren.

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl get pods -A -o wide
  kubectl apply -n default -f test/lab/testdata/article.yaml
  go run ./test/lab exec default/service-a -- app client --to %s:8080 --msg hi
  go run ./test/lab exec default/service-c -- app client --to %s:8080 --msg hi
  nsenter --net=/run/netns/wrn-lab-node1 tcpdump -ni to-node2     # the inter-node wire

Kubelet logs: %s/logs/kubelet-node-*.log; container logs under %s/nodes/<node>/kubelet.
Ctrl-C (or SIGTERM to pid %d) tears everything down.
`, time.Since(start).Round(time.Millisecond), l.StateDir(), WarrenVersion, l.Kubeconfig, b.IP, b.IP, l.StateDir(), l.StateDir(), os.Getpid())
	<-ctx.Done()
	return nil
}
