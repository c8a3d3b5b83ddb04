//go:build linux

package svcproxy_test

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warren-mesh/warren/test/lab/svcproxy"
)

func TestNewRejectsBadConfig(t *testing.T) {
	// A real client of an address nothing serves: New must not contact the API server.
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	good := func() svcproxy.Config {
		return svcproxy.Config{
			Client: cs, NodeNetns: "/proc/self/ns/net", ClusterDNS: netip.MustParseAddr("10.0.0.10"),
			ClusterDomain: "cluster.local", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
	}
	for _, tt := range []struct {
		name   string
		change func(*svcproxy.Config)
		want   string // "" means New succeeds
	}{
		{"good", func(*svcproxy.Config) {}, ""},
		{"domain with a final dot", func(c *svcproxy.Config) { c.ClusterDomain = "cluster.local." }, ""},
		{"no client", func(c *svcproxy.Config) { c.Client = nil }, "Client is nil"},
		{"no logger", func(c *svcproxy.Config) { c.Log = nil }, "Log is nil"},
		{"no netns", func(c *svcproxy.Config) { c.NodeNetns = "" }, "NodeNetns is empty"},
		{"missing netns", func(c *svcproxy.Config) { c.NodeNetns = "/run/netns/wrn-svc-t-does-not-exist" }, "no such file"},
		{"netns is a directory", func(c *svcproxy.Config) { c.NodeNetns = t.TempDir() }, "is a directory"},
		{"no DNS address", func(c *svcproxy.Config) { c.ClusterDNS = netip.Addr{} }, "ClusterDNS is not set"},
		{"unspecified DNS address", func(c *svcproxy.Config) { c.ClusterDNS = netip.IPv4Unspecified() }, "not a unicast address"},
		{"loopback DNS address", func(c *svcproxy.Config) { c.ClusterDNS = netip.MustParseAddr("127.0.0.53") }, "not a unicast address"},
		{"mapped DNS address", func(c *svcproxy.Config) { c.ClusterDNS = netip.MustParseAddr("::ffff:10.0.0.10") }, "not a unicast address"},
		{"no domain", func(c *svcproxy.Config) { c.ClusterDomain = "" }, "ClusterDomain: empty"},
		{"bad domain", func(c *svcproxy.Config) { c.ClusterDomain = "cluster_local" }, "not a DNS label"},
		{"negative dial timeout", func(c *svcproxy.Config) { c.DialTimeout = -time.Second }, "DialTimeout -1s is negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.change(&cfg)
			p, err := svcproxy.New(cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New = %v, want success", err)
			case tt.want == "" && p == nil:
				t.Fatal("New returned no proxy")
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
