//go:build linux

package netns_test

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/warren-mesh/warren/test/netns"
)

func TestMain(m *testing.M) { netns.Main(m) }

func TestCgroup2Mount(t *testing.T) {
	netns.RequireRoot(t)
	p, err := netns.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p + "/cgroup.procs"); err != nil {
		t.Fatalf("Cgroup2Mount() = %s: %v", p, err)
	}
}

// TestNamespacesLinksCgroupsAndHelpers builds two namespaces joined by a veth, runs a helper
// process in a cgroup in one of them that connects to a server in the other, and checks that
// everything is gone after cleanup.
func TestNamespacesLinksCgroupsAndHelpers(t *testing.T) {
	netns.RequireRoot(t)
	var nsPaths []string
	var cgPath string
	t.Run("build", func(t *testing.T) {
		a, b := netns.New(t), netns.New(t)
		nsPaths = []string{a.Path, b.Path}
		netns.Veth(t,
			a, []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24"), netip.MustParsePrefix("fd99::2/64")},
			b, []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24"), netip.MustParsePrefix("fd99::1/64")})
		if a.Cookie(t) == b.Cookie(t) {
			t.Fatal("two namespaces have the same cookie")
		}
		cg := netns.NewCgroup(t).Child(t)
		cgPath = cg.Path

		ln := b.Listen(t, "tcp", ":80")
		netns.Serve(ln, func(c net.Conn) string { return "hello " + c.RemoteAddr().String() })

		for _, dst := range []string{"10.99.0.1:80", "[fd99::1]:80"} {
			res := a.Dial(t, cg, netip.MustParseAddrPort(dst), netns.DialOptions{})
			if res.Err != "" {
				t.Fatalf("Dial(%s): %s", dst, res.Err)
			}
			if root, _ := netns.Cgroup2Mount(); root+res.Cgroup != cg.Path {
				t.Errorf("helper ran in cgroup %s, want %s", res.Cgroup, cg.Path)
			}
			if res.Peer.String() != dst || !strings.HasPrefix(res.Reply, "hello "+res.Local.String()) {
				t.Errorf("Dial(%s) = %+v, want peer %s and a reply naming the local address", dst, res, dst)
			}
		}

		// In-process dial from inside a namespace.
		c, err := a.DialIn(t.Context(), netip.MustParseAddrPort("10.99.0.1:80"), netns.DialOptions{Mark: 0x539})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()

		// The helper process ran in the cgroup.
		procs, err := os.ReadFile(cg.Path + "/cgroup.procs")
		if err != nil {
			t.Fatal(err)
		}
		if len(strings.TrimSpace(string(procs))) != 0 {
			t.Errorf("cgroup still has processes: %q", procs)
		}
	})
	for _, p := range append(nsPaths, cgPath) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after cleanup (err %v)", p, err)
		}
	}
}
