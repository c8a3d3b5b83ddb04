//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLabMesh runs the whole mesh on one lab (control plane, warren-controller, two nodes, a
// warren-ztunnel per node, pods wired by bridge + host-local + warren-cni) and checks, in
// order: cross-node and same-node traffic through the mesh with the client's SPIFFE ID on the
// server side, the article's policy, getpeername, the wire, a non-ambient namespace, enrolling
// and un-enrolling running pods, a ztunnel crash and restart, and the controller going away.
// Subtests share the lab and run in order; a later one may rely on an earlier one's state.
func TestLabMesh(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	l, err := Up(ctx, Config{StateDir: t.TempDir(), WarrenCNI: "auto", WithZtunnel: true, Log: testWriter{t}}, 2, true, nil)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		for _, n := range []string{"node-1", "node-2"} {
			if _, err := os.Stat(labPinDir(n)); !os.IsNotExist(err) {
				t.Errorf("after teardown, pin directory %s: %v", labPinDir(n), err)
			}
		}
	})
	if err := l.EnsureNamespace(ctx, "default", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetNamespaceAmbient(ctx, "default", true); err != nil {
		t.Fatal(err)
	}
	server := func(node, ns, name string) PodSpec {
		return PodSpec{Node: node, Namespace: ns, Name: name, ServiceAccount: name, Labels: map[string]string{"app": name},
			AppArgs: []string{"server", "--listen", ":8080", "--name", name}}
	}
	for _, ps := range []PodSpec{
		server("node-1", "default", "service-a"), server("node-2", "default", "service-b"), server("node-1", "default", "service-c"),
		server("node-1", "plain", "plain-x"), server("node-2", "plain", "plain-y"),
		server("node-1", "late", "late-c"), server("node-2", "late", "late-s"),
	} {
		if _, err := l.AddPod(ctx, ps); err != nil {
			t.Fatalf("add pod: %v", err)
		}
	}
	t.Logf("lab with ztunnels and 7 pods up in %v", time.Since(start).Round(time.Millisecond))
	ip := func(key string) string {
		ns, name, _ := strings.Cut(key, "/")
		return l.Pod(ns, name).IP.String()
	}
	// reach calls from -> to:8080 until it answers (config and enrollment propagate).
	reach := func(t *testing.T, from, to, msg string, extra ...string) string {
		t.Helper()
		var out string
		err := Eventually(ctx, 20*time.Second, func() error {
			var err error
			out, err = l.Call(ctx, from, to, 8080, msg, extra...)
			return err
		})
		if err != nil {
			t.Fatalf("%s -> %s: %v", from, to, err)
		}
		_, name, _ := strings.Cut(to, "/")
		if want := "hello from " + name + ": " + msg; !strings.Contains(out, want) {
			t.Fatalf("%s -> %s: %q, want %q", from, to, out, want)
		}
		return out
	}
	// inbound waits for the access-log line of node's ztunnel for a connection to dst from
	// srcIP with identity id.
	inbound := func(t *testing.T, node, srcIP, dst, id string) {
		t.Helper()
		want := map[string]string{"direction": "inbound", "src.addr": srcIP + ":", "dst.addr": ip(dst) + ":8080", "src.identity": id}
		err := Eventually(ctx, 5*time.Second, func() error {
			if _, _, ok := l.FindLog(node, "access", want); !ok {
				return fmt.Errorf("no access-log line %v on %s", want, node)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// accessLines counts node's access-log lines that mention addr.
	accessLines := func(node, addr string) int {
		lines, raw := l.ZtunnelLog(node, "access")
		n := 0
		for i := range lines {
			if strings.Contains(raw[i], `"`+addr+`:`) {
				n++
			}
		}
		return n
	}

	t.Run("CrossNode", func(t *testing.T) {
		reach(t, "default/service-a", "default/service-b", "across")
		inbound(t, "node-2", ip("default/service-a"), "default/service-b", SpiffeID("default", "service-a"))
	})
	t.Run("SameNode", func(t *testing.T) {
		reach(t, "default/service-a", "default/service-c", "next door")
		inbound(t, "node-1", ip("default/service-a"), "default/service-c", SpiffeID("default", "service-a"))
	})
	t.Run("Getpeername", func(t *testing.T) {
		out := reach(t, "default/service-a", "default/service-b", "who", "--show-peer", "--show-local")
		if want := "peer: " + ip("default/service-b") + ":8080\n"; !strings.HasPrefix(out, want) {
			t.Errorf("client saw %q, want first line %q (the original destination)", out, want)
		}
		// getsockname shows the pod's own address (the redirect sends the connect to
		// <pod IP>:15001, so the kernel picks the pod IP as the source), and the outbound
		// ztunnel sees the same client address.
		var local string
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "local: "); ok {
				local = v
			}
		}
		if !strings.HasPrefix(local, ip("default/service-a")+":") {
			t.Fatalf("client saw %q, want a line \"local: %s:<port>\" (the pod's own address)", out, ip("default/service-a"))
		}
		want := map[string]string{"direction": "outbound", "src.addr": local, "dst.addr": ip("default/service-b") + ":8080"}
		err := Eventually(ctx, 5*time.Second, func() error {
			ll, _, ok := l.FindLog("node-1", "access", want)
			if !ok {
				return fmt.Errorf("no access-log line %v on node-1", want)
			}
			if got := fmt.Sprint(ll["src.addr"]); got != local {
				return fmt.Errorf("outbound src.addr = %s, want %s", got, local)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	t.Run("ArticlePolicy", func(t *testing.T) {
		if out, err := l.Kubectl(ctx, "apply", "-n", "default", "-f", l.ArticleYAML()); err != nil {
			t.Fatalf("apply: %v %s", err, out)
		}
		err := Eventually(ctx, 20*time.Second, func() error {
			if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "let me in"); err == nil {
				return fmt.Errorf("service-c still reaches service-b: %q", out)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		reach(t, "default/service-a", "default/service-b", "allowed")
		want := map[string]string{"event": "deny", "src.identity": SpiffeID("default", "service-c"), "dst.workload": "default/service-b"}
		if _, _, ok := l.FindLog("node-2", "security", want); !ok {
			t.Errorf("no security event %v in node-2's ztunnel log", want)
		}
		// Not covered by the Server: service-c still reaches service-a on the same node.
		reach(t, "default/service-c", "default/service-a", "unrestricted")
	})
	t.Run("WireHasNoPlaintext", func(t *testing.T) {
		n1 := l.Node("node-1")
		c, err := StartCapture(n1.NetnsPath, n1.Links["node-2"])
		if err != nil {
			t.Fatal(err)
		}
		meshed, plain := "MESHED-MARKER-"+randomID()[:12], "PLAIN-MARKER-"+randomID()[:12]
		reach(t, "default/service-a", "default/service-b", meshed)
		// Positive control: the same capture sees a non-meshed pod's payload.
		reach(t, "plain/plain-x", "plain/plain-y", plain)
		time.Sleep(200 * time.Millisecond)
		c.Stop()
		sum := c.Summary()
		if c.Contains([]byte(meshed)) {
			t.Errorf("meshed marker %q crossed the inter-node link in plaintext", meshed)
		}
		if !c.Contains([]byte(plain)) {
			t.Errorf("control: plaintext marker of the non-meshed pods not seen; the capture is blind (%+v)", sum)
		}
		if sum.TCPByPort[15008] == 0 {
			t.Errorf("no TCP 15008 on the link: %+v", sum)
		}
		for f := range sum.Flows {
			if strings.Contains(f, ip("default/service-b")+":8080") {
				t.Errorf("meshed pod's port 8080 on the wire: %s", f)
			}
		}
	})
	t.Run("NonAmbientUntouched", func(t *testing.T) {
		reach(t, "plain/plain-x", "plain/plain-y", "bypass")
		time.Sleep(300 * time.Millisecond)
		for _, node := range []string{"node-1", "node-2"} {
			if n := accessLines(node, ip("plain/plain-x")); n != 0 {
				t.Errorf("%s's ztunnel logged %d connections of the non-ambient pod plain-x", node, n)
			}
		}
	})
	t.Run("EnrollAndUnenrollRunningPods", func(t *testing.T) {
		c, s := l.Pod("late", "late-c"), l.Pod("late", "late-s")
		pids := []int{c.Pid, s.Pid}
		reach(t, "late/late-c", "late/late-s", "before")
		if n := accessLines("node-2", c.IP.String()); n != 0 {
			t.Fatalf("late-c traffic went through the ztunnel before the label (%d lines)", n)
		}
		if _, err := l.SetNamespaceAmbient(ctx, "late", true); err != nil {
			t.Fatal(err)
		}
		err := Eventually(ctx, 20*time.Second, func() error {
			if _, err := l.Call(ctx, "late/late-c", "late/late-s", 8080, "enrolled"); err != nil {
				return err
			}
			if _, _, ok := l.FindLog("node-2", "access", map[string]string{"src.addr": c.IP.String() + ":", "src.identity": SpiffeID("late", "late-c")}); !ok {
				return errors.New("late-c's connection not in node-2's access log yet")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after labelling namespace late ambient: %v", err)
		}
		if _, err := l.SetNamespaceAmbient(ctx, "late", false); err != nil {
			t.Fatal(err)
		}
		err = Eventually(ctx, 20*time.Second, func() error {
			before := accessLines("node-2", c.IP.String())
			if _, err := l.Call(ctx, "late/late-c", "late/late-s", 8080, "unenrolled"); err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond)
			if after := accessLines("node-2", c.IP.String()); after != before {
				return errors.New("late-c's connections still go through node-2's ztunnel")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after un-labelling namespace late: %v", err)
		}
		for i, pid := range pids {
			if syscall.Kill(pid, 0) != nil || []*Pod{c, s}[i].Pid != pid {
				t.Errorf("pod process %d was restarted or died", pid)
			}
		}
	})
	t.Run("ZtunnelCrashAndRestart", func(t *testing.T) {
		reach(t, "default/service-a", "default/service-b", "before crash")
		if err := l.KillZtunnel("node-1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		n1 := l.Node("node-1")
		capt, err := StartCapture(n1.NetnsPath, n1.Links["node-2"])
		if err != nil {
			t.Fatal(err)
		}
		marker := "CRASH-MARKER-" + randomID()[:12]
		out, err := l.Call(ctx, "default/service-a", "default/service-b", 8080, marker)
		time.Sleep(200 * time.Millisecond)
		capt.Stop()
		// The plaintext connect always crosses; whether the payload does depends on whether the
		// client writes before node-2's ztunnel resets the connection.
		sum := capt.Summary()
		finding(t, sum.TCPByPort[8080] > 0, fmt.Sprintf("with node-1's ztunnel killed, service-a connects in plaintext across the wire to service-b:8080 (TCP segments by port %v, payload marker on the wire: %v); node-2's ztunnel does not deliver it", sum.TCPByPort, capt.Contains([]byte(marker))))
		if err == nil {
			t.Errorf("FINDING: with node-1's ztunnel killed, service-a still reaches service-b (%q): "+
				"the eBPF links died with the process and the pod connects directly, in plaintext", strings.TrimSpace(out))
		}
		out, err = l.Call(ctx, "default/service-c", "default/service-b", 8080, "while down")
		if err == nil {
			t.Errorf("FINDING: with node-1's ztunnel killed, service-c (denied by policy) reaches service-b (%q)", strings.TrimSpace(out))
		}
		out, err = l.Call(ctx, "default/service-a", "default/service-c", 8080, "same node while down")
		finding(t, err == nil, fmt.Sprintf("with node-1's ztunnel killed, service-a reaches service-c on the same node directly, outside the mesh (%q)", strings.TrimSpace(out)))
		if err := l.RestartZtunnel(ctx, "node-1"); err != nil {
			t.Fatal(err)
		}
		reach(t, "default/service-a", "default/service-b", "after restart")
		inbound(t, "node-2", ip("default/service-a"), "default/service-b", SpiffeID("default", "service-a"))
		if _, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "after restart"); err == nil {
			t.Errorf("service-c reaches service-b after the ztunnel restart")
		}
	})
	t.Run("ControllerDownKeepsTrafficAndPolicy", func(t *testing.T) {
		if err := l.StopController(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		reach(t, "default/service-a", "default/service-b", "controller gone")
		reach(t, "default/service-a", "default/service-c", "controller gone, same node")
		if out, err := l.Call(ctx, "default/service-c", "default/service-b", 8080, "controller gone"); err == nil {
			t.Errorf("service-c reaches service-b with the controller down: %q", out)
		}
	})
}

// knownPlaintextFallback recorded a defect, now fixed: the eBPF programs were bpf_links owned
// by the ztunnel process, not pinned, so when the process died the redirect went with it and its
// pods connected directly. The ztunnel now pins them (--bpf-pin-path) and they stay attached, so
// the checks that showed it are plain assertions of "no plaintext fallback". While true, they
// log a KNOWN FINDING instead of failing, and fail if the behaviour is gone.
const knownPlaintextFallback = false

// finding checks a fail-closed expectation: bad is true when the defect shows.
func finding(t *testing.T, bad bool, what string) {
	t.Helper()
	switch {
	case bad && knownPlaintextFallback:
		t.Logf("KNOWN FINDING (knownPlaintextFallback): %s", what)
	case bad:
		t.Errorf("no plaintext fallback violated: %s", what)
	case knownPlaintextFallback:
		t.Errorf("fixed? the known plaintext fallback did not show (%s); set knownPlaintextFallback = false", what)
	}
}
