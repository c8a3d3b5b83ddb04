//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// demoWaypoint is the demo's L7 part: the article's "only service-a may call GET /foo/bar on
// service-b" through a waypoint that a Gateway manifest alone brought up. It returns an error
// if any answer differs from the expected one.
func demoWaypoint(ctx context.Context, l *Lab, say func(string, ...any), show func(string)) error {
	say("L7: a waypoint for namespace %s (Gateway warren-waypoint), HTTPRoutes on service-b, route-level policy", L7Namespace)
	fmt.Println("   $ kubectl apply -n l7 -f test/lab/testdata/waypoint-l7.yaml   # Gateway, Servers, HTTPRoutes, GRPCRoute, policies, an 80/20 split")
	fmt.Println("   $ kubectl label ns l7 warren.dev/use-waypoint=waypoint")
	wp, err := l.SetupL7Example(ctx)
	if err != nil {
		return err
	}
	out, err := l.Kubectl(ctx, "get", "gateway,deploy,svc", "-n", L7Namespace)
	if err != nil {
		return err
	}
	show(out)
	b := l.Pod(L7Namespace, "service-b")
	var failed []string
	for _, c := range []struct{ from, method, path, want string }{
		{"service-a", "GET", "/foo/bar", "200"},
		{"service-a", "POST", "/foo/bar", "403"},
		{"service-c", "GET", "/foo/bar", "403"},
		{"service-a", "GET", "/other", "404"},
	} {
		url := fmt.Sprintf("http://%s:8080%s", b.IP, c.path)
		var got string
		// The binding reaches the ztunnels with the next push: the first call may wait for it.
		wait := time.Duration(0)
		if c.want == "200" {
			wait = 20 * time.Second
		}
		err := Eventually(ctx, wait, func() error {
			out, err := l.Exec(ctx, L7Namespace, c.from, "app", "http", "--url", url, "--method", c.method)
			got = strings.TrimSpace(out)
			if err != nil {
				got = "error: " + lastLine(err.Error())
			}
			if !strings.HasPrefix(got, c.want+" ") {
				return errors.New(got)
			}
			return nil
		})
		fmt.Printf("   %-9s %-4s %-9s -> %s\n", c.from, c.method, c.path, got)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s %s %s from %s: %q, want %s", c.method, c.path, b.IP, c.from, got, c.want))
		}
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
	log, _ := os.ReadFile(wp.LogPath)
	for _, line := range strings.Split(string(log), "\n") {
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
