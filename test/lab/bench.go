//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/big"

	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cmdBench is "lab bench": the lab with the mesh, a client pod on node-1 and a server pod on
// node-2 in a plain namespace (case direct) and in an ambient one (case warren), plus peer mTLS
// tunnels (stunnel4, HAProxy) between the plain pods with their client hop in node-1's netns and
// their server hop in node-2's. Every test runs across every case in each repetition, the case
// order rotating; the table shows medians. The load tool is test/bench/load.
func cmdBench(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	state := fs.String("state", "/tmp/wrn-lab", "state directory")
	reps := fs.Int("reps", 3, "repetitions")
	bulkDur := fs.Duration("bulk", 10*time.Second, "duration of each bulk test")
	rrDur := fs.Duration("rr", 10*time.Second, "duration of the 1000 rps test")
	maxDur := fs.Duration("max", 5*time.Second, "duration of the max-rate test")
	connDur := fs.Duration("connrate", 5*time.Second, "duration of the new-connections test")
	idleConns := fs.Int("idle-conns", 10000, "idle proxied connections for the ztunnel memory test (0: skip)")
	peersFlag := fs.String("peers", "stunnel,haproxy,gotunnel", "peer tunnels to measure (stunnel, haproxy, gotunnel; empty: none)")
	withWaypoint := fs.Bool("waypoint", true, "also measure Warren with a waypoint on the path (L7)")
	profileDir := fs.String("profile", "", "after the measured repetitions, profile both ztunnels (CPU and allocations) during bulk, 1000 rps and new-connection phases; raw profiles go to this directory, `go tool pprof -top` summaries to <out>/profile")
	out := fs.String("out", "bench/results", "results directory (latest.md, latest.json), relative to the repository root")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	cmdline := "go run ./test/lab bench " + strings.Join(args, " ")
	logf, err := os.Create(filepath.Join(os.TempDir(), "wrn-lab-bench.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Printf("bench: lab up (progress log %s)\n", logf.Name())
	l, err := Up(ctx, Config{StateDir: *state, WarrenCNI: "auto", WithZtunnel: true, Log: logf}, 2, true, nil)
	if err != nil {
		return fmt.Errorf("%w (progress log: %s)", err, logf.Name())
	}
	defer func() {
		t := time.Now()
		if terr := l.Teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		}
		fmt.Printf("bench: lab down in %v\n", time.Since(t).Round(time.Millisecond))
	}()
	b := &bench{l: l, log: logf}
	if err := b.setup(ctx, splitList(*peersFlag), *withWaypoint); err != nil {
		return err
	}
	res := &BenchResults{Command: cmdline, Machine: machine(), Started: start.UTC().Format(time.RFC3339), Reps: *reps, LoadStart: loadavg()}
	for _, c := range b.cases {
		res.Cases = append(res.Cases, c.name)
	}
	// Idle memory of fresh proxies.
	for _, c := range b.cases {
		if len(c.pids) > 0 {
			res.add(c.name, "rss_idle_mib", rssMiB(c.pids))
		}
	}
	res.ZtunnelIdleMiB = perProcMiB(b.warren().pids)

	type test struct {
		name string
		run  func(c *benchCase) error
	}
	tests := []test{
		{"bulk1", func(c *benchCase) error { return b.bulk(ctx, res, c, 1, *bulkDur) }},
		{"bulk8", func(c *benchCase) error { return b.bulk(ctx, res, c, 8, *bulkDur) }},
		{"rr1000", func(c *benchCase) error { return b.rr(ctx, res, c, 1000, *rrDur) }},
		{"rrmax", func(c *benchCase) error { return b.rr(ctx, res, c, 0, *maxDur) }},
		{"connrate", func(c *benchCase) error { return b.connrate(ctx, res, c, *connDur) }},
	}
	for r := 0; r < *reps; r++ {
		order := slices.Clone(b.cases)
		k := r % len(order)
		order = append(order[k:], order[:k]...)
		for _, t := range tests {
			for _, c := range order {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Printf("bench: rep %d/%d %-8s %-8s ", r+1, *reps, t.name, c.name)
				ts := time.Now()
				if err := t.run(c); err != nil {
					return fmt.Errorf("%s %s: %w", t.name, c.name, err)
				}
				fmt.Printf("(%v)\n", time.Since(ts).Round(100*time.Millisecond))
			}
		}
	}
	dir := *out
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(l.cfg.Root, dir)
	}
	if *profileDir != "" {
		if err := b.profile(ctx, *profileDir, filepath.Join(dir, "profile"), *bulkDur, *rrDur, *connDur); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	if *idleConns > 0 {
		for _, c := range b.cases {
			if len(c.pids) == 0 || c.name == "waypoint" { // the idle test measures the tunnels
				continue
			}
			if err := b.idle(ctx, res, c, *idleConns); err != nil {
				fmt.Printf("bench: idle-connection test (%s) failed: %v\n", c.name, err)
				res.Notes = append(res.Notes, fmt.Sprintf("idle-connection test (%s) failed: %v", c.name, err))
			}
		}
	}
	res.Seconds = time.Since(start).Seconds() // without teardown
	res.LoadEnd = loadavg()
	res.Profiles = b.profiles
	res.summarize()
	md := res.markdown()
	fmt.Println()
	fmt.Print(md)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nbench: wrote %s/latest.md and latest.json; total %v\n", dir, time.Since(start).Round(time.Second))
	return nil
}

func appendOnce(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

type benchCase struct {
	name      string
	clientNS  string // the client pod is <clientNS>/client
	bulk, rr  string // addresses the client dials
	pids      []int  // the proxy processes (both hops); none for direct
	peerProcs []*Proc
}

type bench struct {
	l       *Lab
	log     io.Writer
	loadBin string
	// gotunnelBin is the Go peer tunnel, built when the gotunnel peer is measured.
	gotunnelBin string
	cases       []*benchCase
	// profiles are the pprof summaries written, relative to the results directory.
	profiles []string
}

func (b *bench) warren() *benchCase {
	for _, c := range b.cases {
		if c.name == "warren" {
			return c
		}
	}
	return nil
}

const (
	benchPlainNS = "bench-direct"
	benchMeshNS  = "bench-mesh"
)

func (b *bench) setup(ctx context.Context, peers []string, withWaypoint bool) error {
	l := b.l
	bin, err := l.GoBuild(ctx, "./test/bench/load", "warren-bench-load")
	if err != nil {
		return err
	}
	b.loadBin = bin
	if err := l.EnsureNamespace(ctx, benchPlainNS, nil); err != nil {
		return err
	}
	if err := l.EnsureNamespace(ctx, benchMeshNS, map[string]string{LabelDataplaneMode: "ambient"}); err != nil {
		return err
	}
	servers := map[string]*Pod{}
	for _, ns := range []string{benchPlainNS, benchMeshNS} {
		for _, ps := range []PodSpec{
			{Node: "node-1", Namespace: ns, Name: "client", ServiceAccount: "client", Labels: map[string]string{"app": "client"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "client"}},
			{Node: "node-2", Namespace: ns, Name: "server", ServiceAccount: "server", Labels: map[string]string{"app": "server"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "server"}},
		} {
			p, err := l.AddPod(ctx, ps)
			if err != nil {
				return err
			}
			if ps.Name == "server" {
				// our sink/echo server, a second process of the pod
				if _, err := spawn(p.Key()+"-load", filepath.Join(l.cfg.StateDir, "logs", "bench-"+ns+"-server.log"), bin, []string{"server"}, p.NetnsPath, p.Cgroup, nil); err != nil {
					return err
				}
				servers[ns] = p
			}
		}
	}
	plain, mesh := servers[benchPlainNS], servers[benchMeshNS]
	var zp []int
	for _, n := range []string{"node-1", "node-2"} {
		zp = append(zp, l.Ztunnel(n).proc.Pid())
	}
	b.cases = []*benchCase{
		{name: "direct", clientNS: benchPlainNS, bulk: hostPort(plain.IP, 9000), rr: hostPort(plain.IP, 9001)},
		{name: "warren", clientNS: benchMeshNS, bulk: hostPort(mesh.IP, 9000), rr: hostPort(mesh.IP, 9001), pids: zp},
	}
	if withWaypoint {
		wc, err := b.benchWaypointCase(ctx, bin)
		if err != nil {
			return fmt.Errorf("waypoint case: %w", err)
		}
		b.cases = append(b.cases, wc)
	}
	if len(peers) > 0 {
		pcs, err := b.startPeers(ctx, peers, plain)
		if err != nil {
			return err
		}
		b.cases = append(b.cases, pcs...)
	}
	// Every path answers before measuring.
	for _, c := range b.cases {
		if err := Eventually(ctx, 30*time.Second, func() error {
			_, err := b.client(ctx, c, "rr", "--to", c.rr, "--rate", "0", "--duration", "300ms", "--warmup", "0s")
			return err
		}); err != nil {
			return fmt.Errorf("case %s does not answer: %w", c.name, err)
		}
	}
	// The mesh case really goes through the ztunnels: the server's ztunnel logged it.
	if _, _, ok := l.FindLog("node-2", "access", map[string]string{"dst.addr": hostPort(mesh.IP, 9001)}); !ok {
		return fmt.Errorf("case warren: no access-log line for %s in node-2's ztunnel log: not meshed?", hostPort(mesh.IP, 9001))
	}
	fmt.Printf("bench: cases %s ready (client pods on node-1, server pods on node-2: direct %s, warren %s)\n",
		strings.Join(caseNames(b.cases), ", "), plain.IP, mesh.IP)
	return nil
}

func caseNames(cs []*benchCase) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.name)
	}
	return out
}

func hostPort(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// client runs the load tool in the case's client pod and decodes its JSON answer.
func (b *bench) client(ctx context.Context, c *benchCase, args ...string) (map[string]float64, error) {
	out, err := b.l.Exec(ctx, c.clientNS, "client", b.loadBin, args...)
	if err != nil {
		return nil, err
	}
	var m map[string]float64
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return nil, fmt.Errorf("load output %q: %w", out, err)
	}
	return m, nil
}

func (b *bench) bulk(ctx context.Context, res *BenchResults, c *benchCase, streams int, d time.Duration) error {
	cpu0 := cpuSeconds(c.pids)
	m, err := b.client(ctx, c, "bulk", "--to", c.bulk, "--streams", strconv.Itoa(streams), "--duration", d.String())
	if err != nil {
		return err
	}
	cpu := cpuSeconds(c.pids) - cpu0
	fig := fmt.Sprintf("bulk%d", streams)
	res.add(c.name, fig+"_gbps", m["gbps"])
	if len(c.pids) > 0 && m["bytes"] > 0 {
		res.add(c.name, fig+"_cpu_s_per_gb", cpu/(m["bytes"]/1e9))
	}
	fmt.Printf("%.2f Gbit/s ", m["gbps"])
	return nil
}

func (b *bench) rr(ctx context.Context, res *BenchResults, c *benchCase, rate int, d time.Duration) error {
	cpu0 := cpuSeconds(c.pids)
	stop := make(chan struct{})
	peak := make(chan float64, 1)
	go func() { // RSS sampled every 500 ms
		mx := 0.0
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				peak <- mx
				return
			case <-t.C:
				mx = math.Max(mx, rssMiB(c.pids))
			}
		}
	}()
	m, err := b.client(ctx, c, "rr", "--to", c.rr, "--rate", strconv.Itoa(rate), "--conns", "4", "--duration", d.String())
	close(stop)
	rss := <-peak
	if err != nil {
		return err
	}
	if m["errors"] > 0 {
		return fmt.Errorf("%v request errors", m["errors"])
	}
	cpu := cpuSeconds(c.pids) - cpu0
	if rate > 0 {
		res.add(c.name, "rr1000_p50_us", m["p50us"])
		res.add(c.name, "rr1000_p90_us", m["p90us"])
		res.add(c.name, "rr1000_p99_us", m["p99us"])
		res.add(c.name, "rr1000_send_p50_us", m["sendP50us"])
		res.add(c.name, "rr1000_late_p99_us", m["lateP99us"])
		res.add(c.name, "rr1000_rps", m["rps"])
		if len(c.pids) > 0 {
			res.add(c.name, "rr1000_rss_mib", rss)
			// includes the 0.5 s warm-up: requests = rps * (duration + warm-up)
			reqs := m["rps"] * (d.Seconds() + 0.5)
			res.add(c.name, "rr1000_cpu_s_per_1000req", cpu/reqs*1000)
			res.add(c.name, "rr1000_cpu_cores", cpu/(d.Seconds()+0.5))
		}
		fmt.Printf("p50 %.0f p90 %.0f p99 %.0f us ", m["p50us"], m["p90us"], m["p99us"])
	} else {
		res.add(c.name, "rrmax_rps", m["rps"])
		res.add(c.name, "rrmax_p50_us", m["p50us"])
		res.add(c.name, "rrmax_p90_us", m["p90us"])
		res.add(c.name, "rrmax_p99_us", m["p99us"])
		fmt.Printf("%.0f req/s ", m["rps"])
	}
	return nil
}

func (b *bench) connrate(ctx context.Context, res *BenchResults, c *benchCase, d time.Duration) error {
	cpu0 := cpuSeconds(c.pids)
	m, err := b.client(ctx, c, "connrate", "--to", c.rr, "--workers", "8", "--duration", d.String())
	if err != nil {
		return err
	}
	cpu := cpuSeconds(c.pids) - cpu0
	res.add(c.name, "conn_per_s", m["cps"])
	res.add(c.name, "conn_errors", m["errors"])
	if len(c.pids) > 0 && m["conns"] > 0 {
		res.add(c.name, "conn_cpu_ms", cpu/m["conns"]*1000)
	}
	fmt.Printf("%.0f conn/s ", m["cps"])
	return nil
}

// idle opens n connections from the case's client pod to its server's sink through the case's
// proxies and reads the proxies' RSS while they are open.
func (b *bench) idle(ctx context.Context, res *BenchResults, c *benchCase, n int) error {
	for _, pid := range c.pids { // each hop needs ~n descriptors, or 2n
		lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			// without CAP_SYS_RESOURCE the hard limit stays; raise the soft one to it
			var old unix.Rlimit
			_ = unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old)
			old.Cur = old.Max
			_ = unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil)
			res.Notes = appendOnce(res.Notes, fmt.Sprintf("could not raise the proxies' RLIMIT_NOFILE hard limit (%v); it stays at %d", err, old.Max))
		}
	}
	runtime.GC()
	before := perProcMiB(c.pids)
	p := b.l.Pod(c.clientNS, "client")
	fmt.Printf("bench: opening %d idle connections through %s... ", n, c.name)
	t := time.Now()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+p.NetnsPath, "--", b.loadBin, "idle", "--to", c.bulk, "--conns", strconv.Itoa(n))
	cg, err := os.Open(p.Cgroup)
	if err != nil {
		return err
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = b.log
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("idle client: %w", err)
	}
	var m struct {
		Open       int    `json:"open"`
		Failed     int    `json:"failed"`
		FirstError string `json:"firstError"`
	}
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return fmt.Errorf("idle client output %q: %w", line, err)
	}
	time.Sleep(3 * time.Second) // let both ztunnels settle
	after := perProcMiB(c.pids)
	fmt.Printf("%d open, %d failed in %v\n", m.Open, m.Failed, time.Since(t).Round(100*time.Millisecond))
	ir := &IdleResult{Case: c.name, Conns: m.Open, Failed: m.Failed, FirstError: m.FirstError, BeforeMiB: before, AfterMiB: after}
	for i := range before {
		if m.Open > 0 {
			ir.KiBPerConn = append(ir.KiBPerConn, (after[i]-before[i])*1024/float64(m.Open))
		}
	}
	res.Idle = append(res.Idle, ir)
	res.add(c.name, "idle_rss_mib", sum(after))
	if m.Open > 0 {
		res.add(c.name, "idle_kib_per_conn", (sum(after)-sum(before))*1024/float64(m.Open))
	}
	return nil
}

// ---- peers ----

// startPeers generates a throwaway CA with ECDSA P-256 certificates and starts each peer's two
// hops: the client hop in node-1's netns listening on node-1's pod gateway address, the server
// hop in node-2's netns on its inter-node address, requiring and verifying client certificates,
// TLS 1.3 with TLS_AES_128_GCM_SHA256 (X25519 where the tool lets us pin it).
func (b *bench) startPeers(ctx context.Context, peers []string, server *Pod) ([]*benchCase, error) {
	l := b.l
	dir := filepath.Join(l.cfg.StateDir, "bench-peers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := writeCerts(dir); err != nil {
		return nil, err
	}
	cg := filepath.Join(l.cgroupDir(), "bench-peers") // not under a node: no redirect here
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return nil, err
	}
	n1, n2 := l.Node("node-1"), l.Node("node-2")
	gw := n1.PodCIDR.Addr().Next() // the bridge's address, the pods' gateway
	var out []*benchCase
	for i, peer := range peers {
		base := 19000 + 1000*i
		c := &benchCase{name: peer, clientNS: benchPlainNS, bulk: hostPort(gw, base), rr: hostPort(gw, base+1)}
		type hop struct {
			name, netns, conf string
			args              []string // gotunnel: flags instead of a config file
		}
		var hops []hop
		switch peer {
		case "stunnel":
			if _, err := exec.LookPath("stunnel4"); err != nil {
				return nil, fmt.Errorf("peer stunnel: %w (apt-get install stunnel4)", err)
			}
			common := fmt.Sprintf("foreground = yes\npid =\ndebug = 3\nsyslog = no\noutput = %s\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n", filepath.Join(l.cfg.StateDir, "logs", "bench-stunnel.log"))
			tls := fmt.Sprintf("CAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\ncurves = X25519\n", filepath.Join(dir, "ca.pem"))
			cli, srv := common, common
			for j, port := range []int{9000, 9001} {
				cli += fmt.Sprintf("[c%d]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\ncheckHost = bench-peer\n%s",
					j, hostPort(gw, base+j), hostPort(n2.IP, base+100+j), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"), tls)
				srv += fmt.Sprintf("[s%d]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nrequireCert = yes\n%s",
					j, hostPort(n2.IP, base+100+j), hostPort(server.IP, port), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), tls)
			}
			hops = []hop{{name: "client", netns: n1.NetnsPath, conf: cli}, {name: "server", netns: n2.NetnsPath, conf: srv}}
		case "haproxy":
			if _, err := exec.LookPath("haproxy"); err != nil {
				return nil, fmt.Errorf("peer haproxy: %w (apt-get install haproxy)", err)
			}
			global := "global\n  nbthread 2\n  maxconn 9500\n  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n" +
				"  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n" +
				"defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"
			cli, srv := global, global
			for j, port := range []int{9000, 9001} {
				cli += fmt.Sprintf("listen c%d\n  bind %s\n  server s %s ssl crt %s ca-file %s verify required verifyhost bench-peer\n",
					j, hostPort(gw, base+j), hostPort(n2.IP, base+100+j), filepath.Join(dir, "client-full.pem"), filepath.Join(dir, "ca.pem"))
				srv += fmt.Sprintf("listen s%d\n  bind %s ssl crt %s ca-file %s verify required curves X25519\n  server s %s\n",
					j, hostPort(n2.IP, base+100+j), filepath.Join(dir, "server-full.pem"), filepath.Join(dir, "ca.pem"), hostPort(server.IP, port))
			}
			hops = []hop{{name: "client", netns: n1.NetnsPath, conf: cli}, {name: "server", netns: n2.NetnsPath, conf: srv}}
		case "gotunnel":
			bin, err := l.GoBuild(ctx, "./test/bench/gotunnel", "warren-bench-gotunnel")
			if err != nil {
				return nil, err
			}
			b.gotunnelBin = bin
			cli := []string{"--mode", "client", "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client.key"),
				"--ca", filepath.Join(dir, "ca.pem"), "--server-name", "bench-peer"}
			srv := []string{"--mode", "server", "--cert", filepath.Join(dir, "server.pem"), "--key", filepath.Join(dir, "server.key"),
				"--ca", filepath.Join(dir, "ca.pem")}
			for j, port := range []int{9000, 9001} {
				cli = append(cli, "--route", hostPort(gw, base+j)+"="+hostPort(n2.IP, base+100+j))
				srv = append(srv, "--route", hostPort(n2.IP, base+100+j)+"="+hostPort(server.IP, port))
			}
			hops = []hop{{name: "client", netns: n1.NetnsPath, args: cli}, {name: "server", netns: n2.NetnsPath, args: srv}}
		default:
			return nil, fmt.Errorf("unknown peer %q (stunnel, haproxy, gotunnel)", peer)
		}
		for _, h := range hops {
			conf := filepath.Join(dir, peer+"-"+h.name+".conf")
			if err := os.WriteFile(conf, []byte(h.conf+strings.Join(h.args, " ")), 0o600); err != nil {
				return nil, err
			}
			var bin string
			var args []string
			switch peer {
			case "stunnel":
				bin, args = "stunnel4", []string{conf}
			case "haproxy":
				bin, args = "haproxy", []string{"-db", "-f", conf}
			case "gotunnel":
				bin, args = b.gotunnelBin, h.args
			}
			name := "bench-" + peer + "-" + h.name
			p, err := spawn(name, filepath.Join(l.cfg.StateDir, "logs", name+".log"), bin, args, h.netns, cg, nil)
			if err != nil {
				return nil, err
			}
			c.peerProcs = append(c.peerProcs, p)
			c.pids = append(c.pids, p.Pid())
		}
		time.Sleep(300 * time.Millisecond)
		for _, p := range c.peerProcs {
			if p.Exited() {
				return nil, fmt.Errorf("peer %s exited at start; see %s", p.Name, p.LogPath)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// writeCerts writes ca.pem, server.{pem,key}, client.{pem,key} and haproxy's combined
// *-full.pem: ECDSA P-256, both leaves with DNS name bench-peer.
func writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "warren-bench throwaway CA"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	pemCert := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemCert(caDER), 0o644); err != nil {
		return err
	}
	for i, name := range []string{"server", "client"} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		eku := x509.ExtKeyUsageServerAuth
		if name == "client" {
			eku = x509.ExtKeyUsageClientAuth
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "bench-peer-" + name},
			DNSNames: []string{"bench-peer"}, NotBefore: now, NotAfter: now.Add(48 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return err
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		kp := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
		for f, data := range map[string][]byte{name + ".pem": pemCert(der), name + ".key": kp, name + "-full.pem": append(pemCert(der), kp...)} {
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- /proc ----

// cpuSeconds is utime+stime of the processes (all threads), in seconds.
func cpuSeconds(pids []int) float64 {
	var ticks float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 (state) on
		if len(f) > 12 {
			u, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			ticks += u + st
		}
	}
	return ticks / 100 // USER_HZ
}

func rssKiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				x, _ := strconv.ParseFloat(f[0], 64)
				return x
			}
		}
	}
	return 0
}

func rssMiB(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += rssKiB(p)
	}
	return t / 1024
}

func perProcMiB(pids []int) []float64 {
	var out []float64
	for _, p := range pids {
		out = append(out, rssKiB(p)/1024)
	}
	return out
}

// ---- results ----

type Machine struct {
	Nproc  int    `json:"nproc"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	MemGiB string `json:"mem"`
	Go     string `json:"go"`
	Peers  string `json:"peers,omitempty"`
}

func machine() Machine {
	m := Machine{Nproc: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemGiB = fmt.Sprintf("%.1f GiB", float64(si.Totalram)*float64(si.Unit)/(1<<30))
	}
	var vs []string
	if out, err := exec.Command("stunnel4", "-version").CombinedOutput(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "stunnel ") {
				vs = append(vs, strings.Fields(line)[0]+" "+strings.Fields(line)[1])
				break
			}
		}
	}
	if out, err := exec.Command("haproxy", "-v").Output(); err == nil {
		f := strings.Fields(string(out))
		if len(f) > 2 {
			vs = append(vs, "HAProxy "+f[2])
		}
	}
	m.Peers = strings.Join(vs, ", ")
	return m
}

type IdleResult struct {
	Case       string    `json:"case"`
	Conns      int       `json:"conns"`
	Failed     int       `json:"failed"`
	FirstError string    `json:"firstError,omitempty"`
	BeforeMiB  []float64 `json:"rssBeforeMiB"` // per process (hop)
	AfterMiB   []float64 `json:"rssAfterMiB"`
	KiBPerConn []float64 `json:"kibPerConn"`
}

type BenchResults struct {
	Command string   `json:"command"`
	Machine Machine  `json:"machine"`
	Started string   `json:"started"`
	Seconds float64  `json:"seconds"`
	Reps    int      `json:"reps"`
	Cases   []string `json:"cases"`
	// Samples[case][figure] holds one value per repetition.
	Samples        map[string]map[string][]float64 `json:"samples"`
	ZtunnelIdleMiB []float64                       `json:"ztunnelIdleRssMiB"`
	Idle           []*IdleResult                   `json:"idle,omitempty"`
	Notes          []string                        `json:"notes,omitempty"`
	// LoadStart and LoadEnd are /proc/loadavg at the start and end: other engineers compile on
	// the same cores during a run.
	LoadStart string `json:"loadavgStart"`
	LoadEnd   string `json:"loadavgEnd"`
	// Summary[figure][case] holds the median with its ratios to direct and to the best peer.
	Summary map[string]map[string]Cell `json:"summary"`
	// Profiles lists the pprof summaries written by --profile, relative to the results directory.
	Profiles []string `json:"profiles,omitempty"`
}

func (r *BenchResults) add(c, fig string, v float64) {
	if r.Samples == nil {
		r.Samples = map[string]map[string][]float64{}
	}
	if r.Samples[c] == nil {
		r.Samples[c] = map[string][]float64{}
	}
	r.Samples[c][fig] = append(r.Samples[c][fig], v)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return math.NaN()
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type figure struct {
	key, label string
	higher     bool // higher is better
	digits     int
}

var figures = []figure{
	{"bulk1_gbps", "Bulk, 1 stream (Gbit/s)", true, 2},
	{"bulk8_gbps", "Bulk, 8 streams (Gbit/s)", true, 2},
	{"rr1000_p50_us", "p50 @1000 rps, 4 keep-alive conns, from scheduled send (µs)", false, 0},
	{"rr1000_p90_us", "p90 @1000 rps (µs)", false, 0},
	{"rr1000_p99_us", "p99 @1000 rps (µs)", false, 0},
	{"rr1000_send_p50_us", "p50 @1000 rps from actual send (µs)", false, 0},
	{"rrmax_rps", "Max req/s (4 keep-alive conns)", true, 0},
	{"rrmax_p50_us", "p50 at max rate (µs)", false, 0},
	{"rrmax_p90_us", "p90 at max rate (µs)", false, 0},
	{"rrmax_p99_us", "p99 at max rate (µs)", false, 0},
	{"conn_per_s", "New conns/s (8 workers, 1 req per conn)", true, 0},
	{"bulk1_cpu_s_per_gb", "Proxy CPU-s per GB, 1 stream (both hops)", false, 2},
	{"bulk8_cpu_s_per_gb", "Proxy CPU-s per GB, 8 streams", false, 2},
	{"rr1000_cpu_s_per_1000req", "Proxy CPU-s per 1000 requests @1000 rps", false, 3},
	{"conn_cpu_ms", "Proxy CPU per new conn (ms)", false, 2},
	{"rss_idle_mib", "Proxy RSS idle, fresh, both hops (MiB)", false, 1},
	{"rr1000_rss_mib", "Proxy RSS @1000 rps, both hops (MiB, max sample)", false, 1},
	{"idle_rss_mib", "Proxy RSS with the idle proxied conns open, both hops (MiB; count below)", false, 1},
	{"idle_kib_per_conn", "Proxy RSS per idle proxied conn, both hops (KiB)", false, 1},
}

func (r *BenchResults) markdown() string {
	var sb strings.Builder
	m := r.Machine
	fmt.Fprintf(&sb, "# Warren benchmark\n\n")
	fmt.Fprintf(&sb, "- Command: `%s` (as root, from the repository root)\n", strings.TrimSpace(r.Command))
	fmt.Fprintf(&sb, "- Machine: nproc=%d, CPU %q, kernel %s, %s RAM, %s; peers: %s\n", m.Nproc, m.CPU, m.Kernel, m.MemGiB, m.Go, m.Peers)
	fmt.Fprintf(&sb, "- Load average (1, 5, 15 min) at start %s, at end %s: other engineers were compiling and testing on the same 2 cores during the run; only ratios within this run are meaningful.\n", r.LoadStart, r.LoadEnd)
	fmt.Fprintf(&sb, "- Started %s, took %.0f s. %d repetitions, interleaved (each test across all cases per repetition, case order rotating); cells: median [min–max] over the repetitions, ×ratio of medians to direct.\n", r.Started, r.Seconds, r.Reps)
	fmt.Fprintf(&sb, "- Topology: client pod on node-1, server pod on node-2 (lab netns, veth). direct: plain namespace; warren: ambient namespace (eBPF redirect + ztunnel node-1 → HBONE mTLS → ztunnel node-2); peers: client hop in node-1's netns, server hop in node-2's, TLS 1.3 TLS_AES_128_GCM_SHA256 (gotunnel: Go's crypto/tls choice, AES-128-GCM on AES-NI), X25519, ECDSA P-256 throwaway CA, client certs required, one TLS connection per proxied connection (Warren pools HBONE); waypoint: the warren path with a waypoint (warren-waypoint on node-2, L7: HTTP requests parsed, routed, authorized, forwarded; bulk relayed as opaque TCP), its proxy figures adding the waypoint to both ztunnels. Load: test/bench/load. \"Proxy\" figures add up both hops (both ztunnels), user+system CPU from /proc/PID/stat.\n\n")
	peers := []string{}
	for _, c := range r.Cases {
		if isPeer(c) {
			peers = append(peers, c)
		}
	}
	fmt.Fprintf(&sb, "| Figure |")
	for _, c := range r.Cases {
		fmt.Fprintf(&sb, " %s |", c)
	}
	fmt.Fprintf(&sb, " warren ÷ best peer |\n|---|")
	for range r.Cases {
		sb.WriteString("---|")
	}
	sb.WriteString("---|\n")
	for _, f := range figures {
		fmt.Fprintf(&sb, "| %s |", f.label)
		direct := median(r.Samples["direct"][f.key])
		for _, c := range r.Cases {
			v := r.Samples[c][f.key]
			if len(v) == 0 {
				sb.WriteString(" – |")
				continue
			}
			md := median(v)
			cell := fmtNum(md, f.digits)
			if len(v) > 1 {
				cell += " [" + fmtNum(slices.Min(v), f.digits) + "–" + fmtNum(slices.Max(v), f.digits) + "]"
			}
			if c != "direct" && !math.IsNaN(direct) && direct != 0 {
				cell += fmt.Sprintf(" ×%.2f", md/direct)
			}
			fmt.Fprintf(&sb, " %s |", cell)
		}
		best, bestName := math.NaN(), ""
		for _, p := range peers {
			v := median(r.Samples[p][f.key])
			if math.IsNaN(v) {
				continue
			}
			if math.IsNaN(best) || (f.higher && v > best) || (!f.higher && v < best) {
				best, bestName = v, p
			}
		}
		w := median(r.Samples["warren"][f.key])
		if math.IsNaN(best) || math.IsNaN(w) || best == 0 {
			sb.WriteString(" – |\n")
		} else {
			fmt.Fprintf(&sb, " ×%.2f (%s) |\n", w/best, bestName)
		}
	}
	sb.WriteString("\n")
	fmt.Fprintf(&sb, "- ztunnel RSS idle, fresh, per process (node-1, node-2): %s MiB\n", fmtList(r.ZtunnelIdleMiB))
	for _, i := range r.Idle {
		fmt.Fprintf(&sb, "- %s: %d idle proxied connections open (%d failed): RSS per process (client hop, server hop) %s → %s MiB, i.e. %s KiB per connection\n",
			i.Case, i.Conns, i.Failed, fmtList(i.BeforeMiB), fmtList(i.AfterMiB), fmtList(i.KiBPerConn))
		if i.FirstError != "" {
			fmt.Fprintf(&sb, "  - first error: %s\n", i.FirstError)
		}
	}
	var errs []string
	for _, c := range r.Cases {
		if e := r.Samples[c]["conn_errors"]; len(e) > 0 && slices.Max(e) > 0 {
			errs = append(errs, fmt.Sprintf("%s: %v", c, e))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(&sb, "- connection errors in the new-connections test: %s\n", strings.Join(errs, "; "))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&sb, "- %s\n", n)
	}
	if len(r.Profiles) > 0 {
		fmt.Fprintf(&sb, "- Profiles of both ztunnels (`--profile`, an extra unmeasured pass of the warren case; `go tool pprof -top`; allocation profiles sample one allocation per 512 KiB, so an empty one means less than about that was allocated in the phase): %s\n", strings.Join(r.Profiles, ", "))
	}
	return sb.String()
}

// Cell is one case's value of one figure.
type Cell struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// RatioToDirect is median ÷ direct's median (absent for figures direct has none of).
	RatioToDirect float64 `json:"ratioToDirect,omitempty"`
	// RatioToBestPeer is median ÷ the best peer's median; BestPeer names it.
	RatioToBestPeer float64 `json:"ratioToBestPeer,omitempty"`
	BestPeer        string  `json:"bestPeer,omitempty"`
}

// isPeer reports whether a case is a peer tunnel (not the baseline, not Warren itself).
func isPeer(c string) bool { return c != "direct" && c != "warren" && c != "waypoint" }

// summarize fills Summary from Samples.
func (r *BenchResults) summarize() {
	r.Summary = map[string]map[string]Cell{}
	for _, f := range figures {
		best, bestName := math.NaN(), ""
		for _, c := range r.Cases {
			if !isPeer(c) {
				continue
			}
			v := median(r.Samples[c][f.key])
			if !math.IsNaN(v) && (math.IsNaN(best) || (f.higher && v > best) || (!f.higher && v < best)) {
				best, bestName = v, c
			}
		}
		direct := median(r.Samples["direct"][f.key])
		row := map[string]Cell{}
		for _, c := range r.Cases {
			v := r.Samples[c][f.key]
			if len(v) == 0 {
				continue
			}
			cell := Cell{Median: median(v), Min: slices.Min(v), Max: slices.Max(v)}
			if !math.IsNaN(direct) && direct != 0 {
				cell.RatioToDirect = cell.Median / direct
			}
			if !math.IsNaN(best) && best != 0 && c != "direct" {
				cell.RatioToBestPeer, cell.BestPeer = cell.Median/best, bestName
			}
			row[c] = cell
		}
		if len(row) > 0 {
			r.Summary[f.key] = row
		}
	}
}

func sum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func fmtNum(v float64, digits int) string { return strconv.FormatFloat(v, 'f', digits, 64) }

func fmtList(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmtNum(x, 1))
	}
	return strings.Join(s, ", ")
}
