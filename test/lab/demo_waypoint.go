//go:build linux

package main

import (
	"context"
	"fmt"
	"strings"
)

// demoWaypoint is the demo's L7 part: the article's "only service-a may call GET /foo/bar on
// service-b" through a waypoint that a Gateway manifest alone brought up. It returns an error
// if any answer differs from the expected one.
func demoWaypoint(ctx context.Context, l *Lab, say func(string, ...any), show func(string)) error {
	say("L7: a waypoint for namespace %s (Gateway warren-waypoint), HTTPRoutes on service-b, route-level policy", L7Namespace)
	fmt.Println("   $ kubectl create ns l7 && kubectl label ns l7 warren.dev/dataplane-mode=ambient")
	fmt.Println("   $ kubectl apply -f test/lab/testdata/cluster/l7-workloads.yaml")
	fmt.Println("   $ kubectl apply -n l7 -f test/lab/testdata/waypoint-l7.yaml   # Gateway, Servers, HTTPRoutes, GRPCRoute, policies, an 80/20 split")
	fmt.Println("   $ kubectl label ns l7 warren.dev/use-waypoint=waypoint")
	if err := l.SetupClusterL7(ctx); err != nil {
		return fmt.Errorf("%w\n%s", err, l.describe(ctx))
	}
	out, err := l.Kubectl(ctx, "get", "gateway,deploy,svc", "-n", L7Namespace)
	if err != nil {
		return err
	}
	show(out)
	b := l.Pod(L7Namespace, "service-b")
	var failed []string
	for _, c := range l7Cases {
		var got string
		err := Eventually(ctx, c.wait, func() error {
			var err error
			got, err = l.checkL7(ctx, c)
			return err
		})
		got = strings.ReplaceAll(got, "\n", " | ")
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s %s %s from %s: %q, want %s", c.method, c.path, b.IP, c.from, got, c.want))
		}
		fmt.Printf("   %-9s %-4s %-9s -> %s\n", c.from, c.method, c.path, got)
	}
	for _, c := range []struct{ from, want string }{{"service-a", "OK"}, {"service-c", "PermissionDenied"}} {
		out, err := l.Exec(ctx, L7Namespace, c.from, "app", "grpc", "--to", fmt.Sprintf("%s:9090", b.IP))
		got := strings.TrimSpace(out)
		fmt.Printf("   %-9s gRPC grpc.health.v1.Health/Check -> %s\n", c.from, got)
		if err != nil || !strings.HasPrefix(got, c.want) {
			failed = append(failed, fmt.Sprintf("gRPC from %s: %q, %v; want %s", c.from, got, err, c.want))
		}
	}
	fmt.Println("   waypoint security event:")
	log, _ := l.waypointLog(ctx)
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"security event"`) && strings.Contains(line, "service-c") {
			show(line)
			break
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("L7 example: %s", strings.Join(failed, "; "))
	}
	return nil
}
