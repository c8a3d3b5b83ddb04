//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
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

	say("lab up: kube-apiserver + etcd, warren-controller, node-1 and node-2, one warren-ztunnel per node")
	logf, err := os.Create(filepath.Join(os.TempDir(), "wrn-lab-demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	l, err := Up(ctx, Config{StateDir: *state, WarrenCNI: "auto", WithZtunnel: true, Log: logf}, 2, true, nil)
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
	for _, n := range []string{"node-1", "node-2"} {
		z := l.Ztunnel(n)
		fmt.Printf("   warren-ztunnel %s: pid %d, ready on %s, node agent %s\n", n, z.proc.Pid(), z.ReadyAddr, z.Socket)
	}
	fmt.Printf("   up in %v\n", time.Since(start).Round(time.Millisecond))

	say("label namespace default ambient, then start the pods (warren-cni enrolls them at creation)")
	fmt.Println("   $ kubectl label ns default warren.dev/dataplane-mode=ambient")
	if err := l.EnsureNamespace(ctx, "default", nil); err != nil {
		return err
	}
	out, err := l.SetNamespaceAmbient(ctx, "default", true)
	if err != nil {
		return err
	}
	show(out)
	for _, ps := range defaultPods {
		if _, err := l.AddPod(ctx, ps); err != nil {
			return err
		}
	}
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

	fmt.Printf(`
== summary
   service-a -> service-b   allowed, mTLS (HBONE, TCP 15008), server side saw %s
   service-c -> service-b   denied on node-2 (Server default/service-b: service-c is not in service-a-to-b), security event logged
   wire node-1 <-> node-2   only TCP 15008; the marker never appears in plaintext
   app view                 getpeername shows %s:8080 (the original destination)
   L7 via waypoint          GET /foo/bar: service-a 200, service-c 403; POST 403; unrouted 404; gRPC PermissionDenied for service-c
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
