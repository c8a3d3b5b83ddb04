//go:build linux

package svcproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/warren-mesh/warren/test/envtest"
	"github.com/warren-mesh/warren/test/lab/svcproxy"
	"github.com/warren-mesh/warren/test/netns"
)

var (
	clusterDNS = netip.MustParseAddr("10.0.0.10")
	// ClusterIPs picked by the test (envtest's range is 10.0.0.0/24), away from the DNS address.
	webIP   = netip.MustParseAddr("10.0.0.50")
	emptyIP = netip.MustParseAddr("10.0.0.52")
	busyIP  = netip.MustParseAddr("10.0.0.53")
)

// tbWriter sends log lines to the test log.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fetch connects to addr from inside ns and returns what the server sent before closing.
func fetch(ns *netns.NS, addr netip.AddrPort) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.DialIn(ctx, addr, netns.DialOptions{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// wantFetch waits until fetching addr from ns returns want.
func wantFetch(tb testing.TB, ns *netns.NS, addr netip.AddrPort, want string) {
	tb.Helper()
	envtest.Eventually(tb, 15*time.Second, func() error {
		got, err := fetch(ns, addr)
		if err != nil || got != want {
			return fmt.Errorf("fetch %s from %s = %q, %v; want %q", addr, ns.Name, got, err, want)
		}
		return nil
	})
}

// fetchN fetches addr n times and counts the replies.
func fetchN(tb testing.TB, ns *netns.NS, addr netip.AddrPort, n int) map[string]int {
	tb.Helper()
	got := map[string]int{}
	for range n {
		r, err := fetch(ns, addr)
		if err != nil {
			tb.Fatalf("fetch %s: %v", addr, err)
		}
		got[r]++
	}
	return got
}

// loAddrs returns the addresses on lo inside ns.
func loAddrs(tb testing.TB, ns *netns.NS) []netip.Addr {
	tb.Helper()
	var out []netip.Addr
	err := ns.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		as, err := lo.Addrs()
		if err != nil {
			return err
		}
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out = append(out, p.Addr())
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("addresses of lo in %s: %v", ns.Name, err)
	}
	return out
}

// resolverIn is Go's own DNS client asking the cluster DNS from inside ns; stream forces TCP.
func resolverIn(ns *netns.NS, stream bool) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		if stream {
			network = "tcp"
		}
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, netip.AddrPortFrom(clusterDNS, 53).String())
			return err
		})
		return c, err
	}}
}

// cluster is the test's API server objects.
type cluster struct {
	cs kubernetes.Interface
	ns string
}

func (c cluster) service(tb testing.TB, name string, clusterIP netip.Addr, ports ...corev1.ServicePort) {
	tb.Helper()
	ip := corev1.ClusterIPNone
	if clusterIP.IsValid() {
		ip = clusterIP.String()
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: ip, Ports: ports},
	}
	if _, err := c.cs.CoreV1().Services(c.ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create service %s: %v", name, err)
	}
}

// slice creates or replaces the EndpointSlice name of Service svc.
func (c cluster) slice(tb testing.TB, name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) {
	tb.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: c.ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
	api := c.cs.DiscoveryV1().EndpointSlices(c.ns)
	ctx := context.Background()
	old, err := api.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, es, metav1.CreateOptions{})
	case err == nil:
		es.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, es, metav1.UpdateOptions{})
	}
	if err != nil {
		tb.Fatalf("write endpointslice %s: %v", name, err)
	}
}

func port(name string, p int32) []discoveryv1.EndpointPort {
	return []discoveryv1.EndpointPort{{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)}}
}

func ready(addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
}

// TestProxy runs a proxy for a node netns against a real API server: Services and
// EndpointSlices written by the test, backends in a pod netns behind a veth, and a loopback
// backend in the test's own netns.
func TestProxy(t *testing.T) {
	netns.RequireRoot(t)
	env := envtest.Start(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := cluster{cs: cs, ns: env.Namespace(t)}

	// node: the node's netns (hostNetwork pods live here); pod: a pod netns whose default route
	// leads to the node, holding the backends on two addresses.
	node, pod := netns.New(t), netns.New(t)
	netns.Veth(t, node, []netip.Prefix{netip.MustParsePrefix("10.98.0.1/24")},
		pod, []netip.Prefix{netip.MustParsePrefix("10.98.0.2/24"), netip.MustParsePrefix("10.98.0.3/24")})
	pod.IP(t, "route", "add", "default", "via", "10.98.0.1")
	for addr, reply := range map[string]string{"10.98.0.2:8080": "b1", "10.98.0.3:8080": "b2", "10.98.0.2:9090": "admin"} {
		netns.Serve(pod.Listen(t, "tcp4", addr), func(net.Conn) string { return reply })
	}

	p, err := svcproxy.New(svcproxy.Config{
		Client: cs, NodeNetns: node.Path, ClusterDNS: clusterDNS, ClusterDomain: "cluster.local",
		Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	stop := func() error {
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("Run did not return 30s after its context ended")
		}
	}
	t.Cleanup(func() {
		if !stopped {
			if err := stop(); err != nil {
				t.Error(err)
			}
		}
	})

	web80, web81 := netip.AddrPortFrom(webIP, 80), netip.AddrPortFrom(webIP, 81)
	c.service(t, "web", webIP,
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
		corev1.ServicePort{Name: "admin", Port: 81, TargetPort: intstr.FromString("admin")})

	t.Run("connection reaches the endpoint from the node netns", func(t *testing.T) {
		c.slice(t, "web-1", "web", port("http", 8080), ready("10.98.0.2"))
		wantFetch(t, node, web80, "b1")
	})

	t.Run("round robin over ready endpoints", func(t *testing.T) {
		c.slice(t, "web-1", "web", port("http", 8080), ready("10.98.0.2"), ready("10.98.0.3"))
		wantFetch(t, node, web80, "b2") // the update has arrived once b2 answers
		if got := fetchN(t, node, web80, 4); !cmp.Equal(got, map[string]int{"b1": 2, "b2": 2}) {
			t.Errorf("4 connections went to %v, want 2 to each endpoint", got)
		}
	})

	t.Run("traffic follows the endpoints", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			eps  []discoveryv1.Endpoint
			want string
		}{
			{"b1 only", []discoveryv1.Endpoint{ready("10.98.0.2")}, "b1"},
			{"b1 not ready", []discoveryv1.Endpoint{
				{Addresses: []string{"10.98.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}}, ready("10.98.0.3")}, "b2"},
			{"b2 terminating", []discoveryv1.Endpoint{
				ready("10.98.0.2"), {Addresses: []string{"10.98.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}}}, "b1"},
		} {
			c.slice(t, "web-1", "web", port("http", 8080), tc.eps...)
			// Round robin over the previous endpoints would send one of 4 connections elsewhere.
			envtest.Eventually(t, 15*time.Second, func() error {
				if got := fetchN(t, node, web80, 4); !cmp.Equal(got, map[string]int{tc.want: 4}) {
					return fmt.Errorf("%s: 4 connections went to %v, want all to %s", tc.name, got, tc.want)
				}
				return nil
			})
		}
	})

	t.Run("a dead endpoint is skipped for the next one", func(t *testing.T) {
		// Two slices of the Service: one whose endpoint refuses (nothing on 7777), one that works.
		c.slice(t, "web-1", "web", port("http", 7777), ready("10.98.0.2"))
		c.slice(t, "web-2", "web", port("http", 8080), ready("10.98.0.3"))
		wantFetch(t, node, web80, "b2")
		if got := fetchN(t, node, web80, 4); !cmp.Equal(got, map[string]int{"b2": 4}) {
			t.Errorf("4 connections went to %v, want all to b2", got)
		}
		c.slice(t, "web-2", "web", port("http", 8080))
	})

	t.Run("named targetPort resolves through the slice's port of that name", func(t *testing.T) {
		c.slice(t, "web-1", "web", append(port("http", 8080), port("admin", 9090)...), ready("10.98.0.2"))
		wantFetch(t, node, web81, "admin")
		wantFetch(t, node, web80, "b1")
	})

	t.Run("a pod behind the node reaches the ClusterIP", func(t *testing.T) {
		wantFetch(t, pod, web80, "b1")
	})

	t.Run("no ready endpoint closes the connection at once", func(t *testing.T) {
		c.service(t, "empty", emptyIP, corev1.ServicePort{Name: "http", Port: 80})
		c.slice(t, "empty-1", "empty", port("http", 8080),
			discoveryv1.Endpoint{Addresses: []string{"10.98.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}})
		addr := netip.AddrPortFrom(emptyIP, 80)
		// Wait for the listener: until then the address is missing and the dial fails.
		envtest.Eventually(t, 15*time.Second, func() error {
			_, err := node.DialIn(context.Background(), addr, netns.DialOptions{})
			return err
		})
		start := time.Now()
		got, err := fetch(node, addr)
		if got != "" || time.Since(start) > time.Second {
			t.Errorf("fetch %s = %q, %v after %v; want nothing, closed within 1s", addr, got, err, time.Since(start))
		}
	})

	t.Run("dns", func(t *testing.T) {
		c.service(t, "db", netip.Addr{}, corev1.ServicePort{Name: "pg", Port: 5432})
		c.slice(t, "db-1", "db", port("pg", 5432), ready("10.98.0.3"), ready("10.98.0.2"),
			discoveryv1.Endpoint{Addresses: []string{"10.98.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}})
		webName := "web." + c.ns + ".svc.cluster.local."
		for _, tc := range []struct {
			name   string
			from   *netns.NS
			stream bool
		}{{"udp from the node", node, false}, {"tcp from the node", node, true}, {"udp from a pod", pod, false}} {
			t.Run(tc.name, func(t *testing.T) {
				r := resolverIn(tc.from, tc.stream)
				ctx := context.Background()
				got, err := r.LookupHost(ctx, webName)
				if err != nil || !cmp.Equal(got, []string{webIP.String()}) {
					t.Errorf("LookupHost(%s) = %v, %v; want [%s]", webName, got, err, webIP)
				}
				envtest.Eventually(t, 15*time.Second, func() error {
					got, err := r.LookupHost(ctx, "db."+c.ns+".svc.cluster.local.")
					slices.Sort(got)
					if err != nil || !cmp.Equal(got, []string{"10.98.0.2", "10.98.0.3"}) {
						return fmt.Errorf("headless LookupHost = %v, %v; want the two ready endpoints", got, err)
					}
					return nil
				})
				_, err = r.LookupHost(ctx, "nope."+c.ns+".svc.cluster.local.")
				var de *net.DNSError
				if !errors.As(err, &de) || !de.IsNotFound {
					t.Errorf("LookupHost(unknown service) error = %v, want not found (NXDOMAIN)", err)
				}
				start := time.Now()
				got, err = r.LookupHost(ctx, "example.com.")
				if err == nil || time.Since(start) > 2*time.Second {
					t.Errorf("LookupHost(example.com.) = %v, %v after %v; want an error within 2s", got, err, time.Since(start))
				}
			})
		}
	})

	t.Run("a removed port's listener closes; the others stay", func(t *testing.T) {
		svc, err := cs.CoreV1().Services(c.ns).Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Ports = svc.Spec.Ports[:1]
		if _, err := cs.CoreV1().Services(c.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		envtest.Eventually(t, 15*time.Second, func() error {
			if _, err := fetch(node, web81); err == nil {
				return fmt.Errorf("%s still accepts", web81)
			}
			return nil
		})
		wantFetch(t, node, web80, "b1")
	})

	t.Run("deleting the Service removes its listener and address", func(t *testing.T) {
		if err := cs.CoreV1().Services(c.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		envtest.Eventually(t, 15*time.Second, func() error {
			if slices.Contains(loAddrs(t, node), webIP) {
				return fmt.Errorf("%s still on lo", webIP)
			}
			return nil
		})
		if got, err := fetch(node, web80); err == nil {
			t.Errorf("fetch %s after delete = %q, want an error", web80, got)
		}
		if !slices.Contains(loAddrs(t, node), emptyIP) {
			t.Errorf("%s (another Service) left lo too", emptyIP)
		}
	})

	t.Run("Run twice fails", func(t *testing.T) {
		if err := p.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "Run called twice") {
			t.Errorf("second Run = %v, want an error saying it was called twice", err)
		}
	})

	t.Run("a listener that cannot bind is retried", func(t *testing.T) {
		// Something else holds busyIP:80 in the node netns when the Service appears.
		node.IP(t, "addr", "add", busyIP.String()+"/32", "dev", "lo")
		busy := node.Listen(t, "tcp4", netip.AddrPortFrom(busyIP, 80).String())
		netns.Serve(busy, func(net.Conn) string { return "squatter" })
		c.service(t, "busy", busyIP, corev1.ServicePort{Name: "http", Port: 80})
		c.slice(t, "busy-1", "busy", port("http", 8080), ready("10.98.0.3"))
		wantFetch(t, node, netip.AddrPortFrom(busyIP, 80), "squatter")
		busy.Close()
		wantFetch(t, node, netip.AddrPortFrom(busyIP, 80), "b2")
	})

	t.Run("a taken DNS port fails Run with a clear error", func(t *testing.T) {
		other := netns.New(t)
		other.IP(t, "addr", "add", clusterDNS.String()+"/32", "dev", "lo")
		var squat net.PacketConn
		if err := other.Do(func() (err error) {
			squat, err = net.ListenPacket("udp4", netip.AddrPortFrom(clusterDNS, 53).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer squat.Close()
		p2, err := svcproxy.New(svcproxy.Config{Client: cs, NodeNetns: other.Path, ClusterDNS: clusterDNS, ClusterDomain: "cluster.local", Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = p2.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "dns: listen udp 10.0.0.10:53") || ctx.Err() != nil {
			t.Errorf("Run with the DNS port taken = %v, want an error naming the DNS address at once", err)
		}
	})

	t.Run("run end removes everything", func(t *testing.T) {
		if err := stop(); err != nil {
			t.Fatalf("Run = %v", err)
		}
		for _, a := range loAddrs(t, node) {
			if !a.IsLoopback() {
				t.Errorf("address %s left on lo", a)
			}
		}
		for _, addr := range []netip.AddrPort{netip.AddrPortFrom(emptyIP, 80), netip.AddrPortFrom(clusterDNS, 53)} {
			if got, err := fetch(node, addr); err == nil {
				t.Errorf("fetch %s after Run ended = %q, want an error", addr, got)
			}
		}
	})
}
