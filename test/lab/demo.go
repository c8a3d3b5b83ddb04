//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/warren-mesh/warren/test/images/oci"
)

// cmdDemo is "lab demo": the whole story on a fresh lab, then teardown. Every step checks what
// it shows; the first failed expectation ends the demo with an error (exit status 1).
func cmdDemo(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	step := 0
	say := func(format string, a ...any) {
		step++
		fmt.Printf("\n== %d. %s\n", step, fmt.Sprintf(format, a...))
	}
	show := func(s string) {
		for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
			fmt.Println("   " + line)
		}
	}

	say("lab up as a cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler; node-1 and node-2, each with a lab kubelet and a service proxy + cluster DNS")
	logf, err := os.Create(filepath.Join(os.TempDir(), "wrn-lab-demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	l, err := ClusterUp(ctx, Config{StateDir: *state, Log: logf}, 2)
	if err != nil {
		return fmt.Errorf("%w (progress log: %s)", err, logf.Name())
	}
	defer func() {
		fmt.Println("\n== teardown")
		t := time.Now()
		if terr := l.Teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		}
		fmt.Printf("   lab down in %v\n", time.Since(t).Round(time.Millisecond))
	}()
	out, err := l.Kubectl(ctx, "get", "nodes", "-o", "wide")
	if err != nil {
		return err
	}
	fmt.Println("   $ kubectl get nodes -o wide")
	show(out)
	fmt.Printf("   up in %v\n", time.Since(start).Round(time.Millisecond))

	say("make images: Warren's OCI images (no Docker), which the lab's kubelets pull from bin/images/oci")
	if err := l.BuildWarrenImages(ctx, WarrenVersion); err != nil {
		return err
	}
	lay, err := oci.Open(l.WarrenImagesDir())
	if err != nil {
		return err
	}
	refs, err := lay.Images()
	if err != nil {
		return err
	}
	refs = slices.DeleteFunc(refs, func(r string) bool { return !strings.HasSuffix(r, ":"+WarrenVersion) })
	show(strings.Join(refs, "\n"))

	say("install Warren from manifests/ with kubectl, as on kind")
	fmt.Printf("   $ helm template warren manifests/charts/warren -n %s --set namespace.create=true --set ztunnel.podCgroup=%s/'$(NODE_NAME)' --set ztunnel.accessLog=true | kubectl apply -f -\n", SystemNamespace, l.cgroupDir())
	t0 := time.Now()
	out, err = l.InstallWarren(ctx, WarrenVersion)
	if err != nil {
		return fmt.Errorf("install: %w\n%s\n%s", err, out, l.describe(ctx))
	}
	show(out)
	fmt.Printf("   rolled out in %v\n", time.Since(t0).Round(time.Millisecond))
	if out, err = l.Kubectl(ctx, "-n", SystemNamespace, "get", "daemonset,deployment,pods", "-o", "wide"); err != nil {
		return err
	}
	fmt.Printf("   $ kubectl -n %s get daemonset,deployment,pods -o wide\n", SystemNamespace)
	show(out)
	conf, err := os.ReadFile(filepath.Join(l.nodeRoot("node-1"), "etc/cni/net.d/10-wrn-lab.conflist"))
	if err != nil {
		return err
	}
	fmt.Printf("   node-1 /etc/cni/net.d/10-wrn-lab.conflist plugins after install: %s\n", strings.Join(pluginTypes(conf), " -> "))
	if !slices.Contains(pluginTypes(conf), "warren-cni") {
		return errors.New("the ztunnel DaemonSet did not chain warren-cni into node-1's CNI config")
	}

	say("label namespace default ambient, then create the pods (warren-cni enrolls them at creation)")
	fmt.Println("   $ kubectl label ns default warren.dev/dataplane-mode=ambient")
	out, err = l.SetNamespaceAmbient(ctx, "default", true)
	if err != nil {
		return err
	}
	show(out)
	fmt.Println("   $ kubectl apply -f test/lab/testdata/cluster/l4-workloads.yaml")
	if out, err = l.ApplyWorkloads(ctx, "l4-workloads.yaml", "default"); err != nil {
		return fmt.Errorf("workloads: %w\n%s\n%s", err, out, l.describe(ctx))
	}
	show(out)
	out, err = l.Kubectl(ctx, "get", "pods", "-n", "default", "-o", "wide")
	if err != nil {
		return err
	}
	fmt.Println("   $ kubectl get pods -o wide")
	show(out)
	b := l.Pod("default", "service-b")

	say("apply the article's L4 policy: only service-a may call service-b on 8080")
	fmt.Println("   $ kubectl apply -n default -f test/lab/testdata/article.yaml")
	if out, err = l.Kubectl(ctx, "apply", "-n", "default", "-f", l.ArticleYAML()); err != nil {
		return err
	}
	show(out)

	say("service-a (node-1) -> service-b %s:8080 (node-2): allowed", b.IP)
	fmt.Printf("   $ lab exec default/service-a -- app client --to %s:8080 --msg 'hello b' --show-peer\n", b.IP)
	var answer string
	if err := Eventually(ctx, 30*time.Second, func() error {
		answer, err = l.Call(ctx, "default/service-a", "default/service-b", 8080, "hello b", "--show-peer")
		return err
	}); err != nil {
		return fmt.Errorf("service-a -> service-b should be allowed: %w", err)
	}
	show(answer)
	if !strings.Contains(answer, "hello from service-b: hello b") || !strings.Contains(answer, "peer: "+b.IP.String()+":8080") {
		return fmt.Errorf("unexpected answer %q", answer)
	}
	var access string
	if err := Eventually(ctx, 5*time.Second, func() error {
		var ok bool
		if _, access, ok = l.FindLog("node-2", "access", map[string]string{"direction": "inbound", "src.identity": SpiffeID("default", "service-a"), "dst.addr": b.IP.String() + ":8080"}); !ok {
			return errors.New("no inbound access-log line for service-a on node-2")
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Println("   node-2 ztunnel access log (the server side saw service-a's SPIFFE ID over mTLS):")
	show(access)

	say("service-c (node-1) -> service-b %s:8080: denied", b.IP)
	fmt.Printf("   $ lab exec default/service-c -- app client --to %s:8080 --msg 'hello b'\n", b.IP)
	var denyErr error
	if err := Eventually(ctx, 30*time.Second, func() error {
		out, denyErr = l.Call(ctx, "default/service-c", "default/service-b", 8080, "hello b")
		if denyErr == nil {
			return fmt.Errorf("service-c got an answer: %q", out)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("service-c -> service-b should be denied: %w", err)
	}
	fmt.Println("   client error: " + lastLine(denyErr.Error()))
	var sec string
	if err := Eventually(ctx, 5*time.Second, func() error {
		var ok bool
		if _, sec, ok = l.FindLog("node-2", "security", map[string]string{"event": "deny", "src.identity": SpiffeID("default", "service-c")}); !ok {
			return errors.New("no security event for service-c in node-2's ztunnel log")
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Println("   node-2 ztunnel security event:")
	show(sec)

	n1 := l.Node("node-1")
	say("the wire: capture on node-1's link to node-2 while service-a sends a marker")
	marker := fmt.Sprintf("WARREN-MARKER-%d", time.Now().UnixNano())
	fmt.Printf("   (AF_PACKET capture of %s in netns %s; marker %q)\n", n1.Links["node-2"], n1.Netns, marker)
	capt, err := StartCapture(n1.NetnsPath, n1.Links["node-2"])
	if err != nil {
		return err
	}
	out, err = l.Call(ctx, "default/service-a", "default/service-b", 8080, marker)
	time.Sleep(300 * time.Millisecond)
	capt.Stop()
	if err != nil {
		return fmt.Errorf("marker call: %w", err)
	}
	show(out)
	pcap := filepath.Join(os.TempDir(), "wrn-lab-demo.pcap")
	if err := capt.WritePcap(pcap); err != nil {
		return err
	}
	sum := capt.Summary()
	fmt.Printf("   %d frames captured (written to %s; read with tcpdump -nr)\n", sum.Packets, pcap)
	ports := make([]int, 0, len(sum.TCPByPort))
	for p := range sum.TCPByPort {
		ports = append(ports, int(p))
	}
	slices.Sort(ports)
	for _, p := range ports {
		fmt.Printf("   TCP port %-5d %3d segments, %5d payload bytes\n", p, sum.TCPByPort[uint16(p)], sum.PayloadByPort[uint16(p)])
	}
	flows := make([]string, 0, len(sum.Flows))
	for f := range sum.Flows {
		flows = append(flows, f)
	}
	slices.Sort(flows)
	for _, f := range flows {
		fmt.Println("   flow " + f)
	}
	has := capt.Contains([]byte(marker))
	fmt.Printf("   marker in the capture: %v\n", has)
	switch {
	case sum.TCPByPort[15008] == 0:
		return errors.New("no TCP port 15008 (HBONE) traffic on the inter-node link")
	case sum.TCPByPort[8080] != 0:
		return errors.New("plaintext port 8080 traffic on the inter-node link")
	case has:
		return errors.New("the marker crossed the inter-node link in plaintext")
	}

	if err := demoWaypoint(ctx, l, say, show); err != nil {
		return err
	}

	say("uninstall Warren: the ztunnels see their DaemonSet go and remove the CNI chaining and the eBPF redirect")
	fmt.Println("   $ helm template warren manifests/charts/warren ... | kubectl delete -f -")
	t0 = time.Now()
	if out, err = l.UninstallWarren(ctx, WarrenVersion); err != nil {
		return fmt.Errorf("uninstall: %w\n%s\n%s", err, out, l.describe(ctx))
	}
	fmt.Printf("   namespace %s gone %v after the delete\n", SystemNamespace, time.Since(t0).Round(time.Millisecond))
	if err := l.WaitUninstalled(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("uninstall left things behind:\n  %w", err)
	}
	conf, err = os.ReadFile(filepath.Join(l.nodeRoot("node-1"), "etc/cni/net.d/10-wrn-lab.conflist"))
	if err != nil {
		return err
	}
	fmt.Printf("   node-1 CNI plugins: %s; no eBPF program on the nodes' pod cgroups or in pod netns; no pins; no warren.dev or Gateway API CRDs\n", strings.Join(pluginTypes(conf), " -> "))
	out, err = l.Call(ctx, "default/service-c", "default/service-b", 8080, "plain again")
	if err != nil {
		return fmt.Errorf("service-c -> service-b after uninstall (plain networking): %w", err)
	}
	fmt.Println("   service-c -> service-b, plain TCP again (no mesh, no policy):")
	show(out)

	fmt.Printf(`
== summary
   service-a -> service-b   allowed, mTLS (HBONE, TCP 15008), server side saw %s
   service-c -> service-b   denied on node-2 (Server default/service-b: service-c is not in service-a-to-b), security event logged
   wire node-1 <-> node-2   only TCP 15008; the marker never appears in plaintext
   app view                 getpeername shows %s:8080 (the original destination)
   L7 via waypoint          GET /foo/bar: service-a 200, service-c 403; POST 403; unrouted 404; gRPC PermissionDenied for service-c
   install / uninstall      from manifests/charts/warren with kubectl; uninstall left no CNI line, eBPF program, pin or CRD
   total %v
`, SpiffeID("default", "service-a"), b.IP, time.Since(start).Round(time.Millisecond))
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, ": app: "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// pluginTypes lists the "type" of every plugin of a CNI conflist, in order.
func pluginTypes(conflist []byte) []string {
	var c struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if json.Unmarshal(conflist, &c) != nil {
		return nil
	}
	out := make([]string, 0, len(c.Plugins))
	for _, p := range c.Plugins {
		out = append(out, p.Type)
	}
	return out
}
