// Command demo runs Warren's L4 mesh in one process on loopback and shows what it does: two
// ztunnels (node-1 with service-a and service-c, node-2 with service-b) under the article's
// policy, "only service-a may call service-b on 8080". It sends real traffic, shows which
// connections are allowed and which are denied (with the security events), proves the hop
// between the nodes is TLS by watching the bytes node-1 writes, and prints the certificates.
// It exits non-zero if anything does not behave as described.
//
// Run it with "make demo". The eBPF redirect is replaced by a table of original destinations
// (the same seam the redirect fills); the network-namespace lab replaces this demo later.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/ztunneltest"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const secret = "the-payload-only-the-apps-should-see"

func run(out io.Writer) error {
	p := ztunneltest.RandomNet()
	addr := func(h byte) string { return ztunneltest.IP(p, h).String() }
	authority, err := ca.New(ca.Config{})
	if err != nil {
		return err
	}
	snap := snapshot(addr)
	wire := &wireTap{}
	mesh, err := ztunneltest.New(ztunneltest.Config{
		Snapshot: snap, Signer: authority.Signer(0), Bundle: authority.Bundle(),
		WrapSockets: func(w *nodeconfig.Workload, f sockets.Factory) sockets.Factory {
			return tapped{Factory: f, tap: wire}
		},
	})
	if err != nil {
		return err
	}
	logs := map[string]*lines{"node-1": {}, "node-2": {}}
	nodes := map[string]*ztunneltest.Node{}
	for _, name := range []string{"node-1", "node-2"} {
		n, err := mesh.StartNode(name, ztunneltest.Logs{Access: logs[name], Security: logs[name]})
		if err != nil {
			return err
		}
		defer n.Stop()
		nodes[name] = n
	}
	stop, err := serveApp(netip.MustParseAddrPort(addr(3) + ":8080"))
	if err != nil {
		return err
	}
	defer stop()

	fmt.Fprintf(out, "Warren L4 mesh demo: two ztunnels on loopback (%s.0/24)\n", strings.TrimSuffix(addr(0), ".0"))
	fmt.Fprintln(out, "  node-1: service-a-0, service-c-0    node-2: service-b-0 (app on :8080)")
	fmt.Fprintln(out, "  policy: Server service-b :8080 + AuthorizationPolicy service-a-to-b (MeshTLS: sa service-a)")
	fmt.Fprintln(out)

	b8080 := netip.MustParseAddrPort(addr(3) + ":8080")
	vip := netip.MustParseAddrPort(addr(100) + ":80")
	cases := []struct {
		what  string
		dial  func() (net.Conn, error)
		allow bool
	}{
		{"service-a -> service-b:8080 (pod IP, HBONE)", func() (net.Conn, error) { return mesh.DialFrom(ztunneltest.IP(p, 2), b8080) }, true},
		{"service-a -> service-b VIP :80 (service, HBONE)", func() (net.Conn, error) { return mesh.DialFrom(ztunneltest.IP(p, 2), vip) }, true},
		{"service-c -> service-b:8080 (HBONE)", func() (net.Conn, error) { return mesh.DialFrom(ztunneltest.IP(p, 4), b8080) }, false},
		{"unmeshed client -> service-b:8080 (plaintext)", func() (net.Conn, error) { return mesh.DialPlain(ztunneltest.IP(p, 9), b8080) }, false},
	}
	var failed []string
	for _, c := range cases {
		answer, err := call(c.dial)
		allowed := err == nil && strings.HasPrefix(answer, "hello from service-b")
		verdict := "DENIED "
		if allowed {
			verdict = "ALLOWED"
		}
		detail := fmt.Sprintf("answer %q", strings.TrimSpace(answer))
		if !allowed {
			detail = fmt.Sprintf("connection closed (%v)", err)
		}
		mark := "ok"
		if allowed != c.allow {
			mark = "UNEXPECTED"
			failed = append(failed, c.what)
		}
		fmt.Fprintf(out, "  %-50s %s  %s  [%s]\n", c.what, verdict, detail, mark)
	}
	time.Sleep(100 * time.Millisecond) // access-log lines are written as connections close

	fmt.Fprintln(out, "\nnode-2 inbound access log (identity from the mTLS certificate):")
	for _, l := range logs["node-2"].find("msg", "connection closed") {
		fmt.Fprintf(out, "  %v %v  %v -> %v  src.identity=%v  up=%vB down=%vB  %v\n", l["direction"], l["mode"], l["src.addr"], l["dst.addr"], l["src.identity"], l["bytes.upstream"], l["bytes.downstream"], orEmpty(l["error"]))
	}
	fmt.Fprintln(out, "\nnode-2 security events:")
	denies := logs["node-2"].find("msg", "security event")
	for _, l := range denies {
		fmt.Fprintf(out, "  %v src=%v identity=%q dst=%v policy=%v %v\n    reason: %v\n", l["event"], l["src.addr"], l["src.identity"], l["dst.workload"], l["policy.kind"], l["policy"], l["reason"])
	}
	if len(denies) != 2 {
		failed = append(failed, fmt.Sprintf("want 2 security events on node-2, got %d", len(denies)))
	}

	fmt.Fprintln(out, "\nwhat node-1 wrote toward node-2's :15008:")
	first, total, leaked := wire.summary()
	fmt.Fprintf(out, "  %d bytes; first record type 0x%02x (0x16 = TLS handshake); payload visible on the wire: %v\n", total, first, leaked)
	if first != 0x16 || leaked {
		failed = append(failed, "the node-to-node hop is not TLS")
	}

	fmt.Fprintln(out, "\ncertificates held by node-1's ztunnel (from /config_dump):")
	dump, err := configDump(nodes["node-1"].Admin)
	if err != nil {
		return err
	}
	for _, c := range dump.Certificates {
		fmt.Fprintf(out, "  %s serial %s, valid until %s, rotates at %s (%s)\n", c.ID, c.Serial, c.NotAfter.Format(time.RFC3339), c.RotateAt.Format(time.RFC3339), c.State)
	}
	if len(failed) > 0 {
		return fmt.Errorf("unexpected results: %s", strings.Join(failed, "; "))
	}
	fmt.Fprintln(out, "\nall as expected.")
	return nil
}

func configDump(admin string) (*ztunnel.ConfigDump, error) {
	resp, err := http.Get("http://" + admin + "/config_dump")
	if err != nil {
		return nil, fmt.Errorf("get config dump: %w", err)
	}
	defer resp.Body.Close()
	var d ztunnel.ConfigDump
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	return &d, nil
}

func orEmpty(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint("error=", v)
}

// call sends the secret on a fresh connection and returns the answer.
func call(dial func() (net.Conn, error)) (string, error) {
	c, err := dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, secret+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		err = errors.New("closed without an answer")
	}
	return string(b), err
}

func snapshot(addr func(byte) string) *nodeconfig.Snapshot {
	wl := func(name, node string, host byte) *nodeconfig.Workload {
		return &nodeconfig.Workload{
			Uid: "uid-" + name, Name: name + "-0", Namespace: "default", ServiceAccount: name,
			Addresses: []string{addr(host)}, Node: node, Ready: true,
			TunnelProtocol: nodeconfig.TunnelProtocol_TUNNEL_PROTOCOL_HBONE,
			Ports:          []*nodeconfig.WorkloadPort{{Name: "http", Port: 8080}},
		}
	}
	b := wl("service-b", "node-2", 3)
	b.Servers = []string{"default/service-b"}
	return &nodeconfig.Snapshot{
		Version:   "demo-1",
		Workloads: []*nodeconfig.Workload{wl("service-a", "node-1", 2), b, wl("service-c", "node-1", 4)},
		Services: []*nodeconfig.Service{{
			Name: "service-b", Namespace: "default", Hostname: "service-b.default.svc.cluster.local",
			Addresses: []string{addr(100)}, Ports: []*nodeconfig.ServicePort{{ServicePort: 80, TargetPortName: "http"}},
			Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "uid-service-b"}},
		}},
		Servers: []*nodeconfig.Server{{
			Name: "service-b", Namespace: "default", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080},
			Authorizations: []*nodeconfig.Authorization{{
				Name: "service-a-to-b", Namespace: "default", TargetKind: nodeconfig.TargetKind_TARGET_KIND_SERVER,
				MeshTls:            &nodeconfig.MeshTLS{Identities: []string{"spiffe://cluster.local/ns/default/sa/service-a"}},
				AuthenticationRefs: []string{"MeshTLSAuthentication/default/service-a"},
			}},
		}},
	}
}

// serveApp runs service-b's app: it answers one line per connection.
func serveApp(at netip.AddrPort) (func(), error) {
	ln, err := net.Listen("tcp", at.String())
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "hello from service-b (you sent %d bytes)\n", len(line))
				}
			}()
		}
	}()
	return func() { ln.Close() }, nil
}

// lines collects JSON log lines.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) find(key, value string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, raw := range bytes.Split(l.buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(raw, &m) == nil && m[key] == value {
			out = append(out, m)
		}
	}
	return out
}

// wireTap records what the ztunnels write on the HBONE connections they dial.
type wireTap struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *wireTap) summary() (first byte, total int, leaked bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf.Bytes()
	if len(b) > 0 {
		first = b[0]
	}
	return first, len(b), bytes.Contains(b, []byte(secret))
}

type tapped struct {
	sockets.Factory
	tap *wireTap
}

func (t tapped) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := t.Factory.Dial(ctx, network, addr)
	if err != nil || !strings.HasSuffix(addr, ":15008") {
		return c, err
	}
	return &tapConn{Conn: c, tap: t.tap}, nil
}

type tapConn struct {
	net.Conn
	tap *wireTap
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.tap.mu.Lock()
	c.tap.buf.Write(p)
	c.tap.mu.Unlock()
	return c.Conn.Write(p)
}
