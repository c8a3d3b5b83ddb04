//go:build linux

package main

import (
	"context"
	"fmt"
	"path/filepath"
)

// benchWaypointNS is the waypoint case's namespace: ambient, bound to its own waypoint.
const benchWaypointNS = "bench-waypoint"

// benchWaypointCase sets up the "waypoint" case: the same client (node-1) and server (node-2)
// pods in an ambient namespace bound to a warren-waypoint Gateway whose pod runs on node-2,
// so that each request goes ztunnel -> waypoint (L7: the HTTP/1.1 requests are parsed, routed,
// authorized and forwarded; bulk streams are sniffed as opaque TCP and relayed) -> ztunnel. Its
// proxy processes are both ztunnels and the waypoint.
func (b *bench) benchWaypointCase(ctx context.Context, loadBin string) (*benchCase, error) {
	l := b.l
	ns := benchWaypointNS
	if err := l.EnsureNamespace(ctx, ns, map[string]string{LabelDataplaneMode: "ambient"}); err != nil {
		return nil, err
	}
	var server *Pod
	for _, ps := range []PodSpec{
		{Node: "node-1", Namespace: ns, Name: "client", ServiceAccount: "client", Labels: map[string]string{"app": "client"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "client"}},
		{Node: "node-2", Namespace: ns, Name: "server", ServiceAccount: "server", Labels: map[string]string{"app": "server"}, AppArgs: []string{"server", "--listen", ":8080", "--name", "server"}},
	} {
		p, err := l.AddPod(ctx, ps)
		if err != nil {
			return nil, err
		}
		if ps.Name == "server" {
			if _, err := spawn(p.Key()+"-load", filepath.Join(l.cfg.StateDir, "logs", "bench-"+ns+"-server.log"), loadBin, []string{"server"}, p.NetnsPath, p.Cgroup, nil); err != nil {
				return nil, err
			}
			server = p
		}
	}
	gw := filepath.Join(l.cfg.Root, "test", "lab", "testdata", "waypoint-gateway.yaml")
	if out, err := l.Kubectl(ctx, "apply", "-n", ns, "-f", gw); err != nil {
		return nil, fmt.Errorf("kubectl apply %s: %w\n%s", gw, err, out)
	}
	wp, err := l.RunWaypoint(ctx, ns, "waypoint", "node-2")
	if err != nil {
		return nil, err
	}
	if out, err := l.Kubectl(ctx, "label", "--overwrite", "ns", ns, "warren.dev/use-waypoint=waypoint"); err != nil {
		return nil, fmt.Errorf("bind waypoint: %w\n%s", err, out)
	}
	pids := []int{wp.Pid}
	for _, n := range []string{"node-1", "node-2"} {
		pids = append(pids, l.Ztunnel(n).proc.Pid())
	}
	return &benchCase{name: "waypoint", clientNS: ns, bulk: hostPort(server.IP, 9000), rr: hostPort(server.IP, 9001), pids: pids}, nil
}
