//go:build linux

package redirect_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/test/netns"
)

// requireBPFFS makes sure a bpf filesystem is mounted at /sys/fs/bpf: it mounts one if
// /sys/fs/bpf is an empty directory that is not a mount point, and skips (fails under CI=true)
// otherwise.
func requireBPFFS(tb testing.TB) {
	tb.Helper()
	const dir = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		netns.SkipOrFail(tb, "statfs %s: %v", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return
	}
	ents, err := os.ReadDir(dir)
	var d, p unix.Stat_t
	if err != nil || len(ents) != 0 || unix.Stat(dir, &d) != nil || unix.Stat(filepath.Dir(dir), &p) != nil || d.Dev != p.Dev {
		netns.SkipOrFail(tb, "%s is not a bpf filesystem and not an empty directory to mount one on", dir)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		netns.SkipOrFail(tb, "mount bpffs on %s: %v", dir, err)
	}
}

func TestNewPinPathNeedsBPFFS(t *testing.T) {
	requireRedirect(t)
	cg := netns.NewCgroup(t)
	_, err := redirect.New(redirect.Config{CgroupPath: cg.Path, PinPath: filepath.Join(t.TempDir(), "pins")})
	if err == nil || !strings.Contains(err.Error(), "bpffs must be mounted") {
		t.Errorf("New(PinPath not on bpffs) = %v, want an error saying bpffs must be mounted", err)
	}
}

// ztunnelSim is what a ztunnel process holds in a pod: its outbound and inbound listeners. Closing
// it is what the process dying does to them.
type ztunnelSim struct{ lns []net.Listener }

func (z *ztunnelSim) close() {
	for _, ln := range z.lns {
		ln.Close()
	}
}

// TestPinnedSurvivesProcess: with PinPath, a Redirector closed without Uninstall (the ztunnel
// process ending) leaves the pod captured and failing closed; the next Redirector adopts the pins
// and the pod is redirected again; Uninstall removes everything.
func TestPinnedSurvivesProcess(t *testing.T) {
	requireRedirect(t)
	requireBPFFS(t)
	pin := filepath.Join("/sys/fs/bpf", "wrn-redirect-test-"+strconv.Itoa(os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pin) })

	parent := netns.NewCgroup(t)
	podCg := parent.Child(t)
	pod, remote := netns.New(t), netns.New(t)
	netns.Veth(t,
		pod, []netip.Prefix{netip.PrefixFrom(podIP, 24)},
		remote, []netip.Prefix{netip.PrefixFrom(remoteIP, 24)})
	netns.Serve(remote.Listen(t, "tcp", ":80"), func(net.Conn) string { return "direct" })
	netns.Serve(pod.Listen(t, "tcp", ":8080"), func(net.Conn) string { return "app" })
	cookie := pod.Cookie(t)
	dst := netip.AddrPortFrom(remoteIP, 80)
	pod8080 := netip.AddrPortFrom(podIP, 8080)

	start := func(r *redirect.Redirector) (*ztunnelSim, *redirect.Inbound) {
		t.Helper()
		z := &ztunnelSim{}
		out := pod.Listen(t, "tcp", ":15001")
		netns.Serve(out, func(c net.Conn) string {
			orig, err := r.OriginalDst(c)
			if err != nil {
				return "proxy error: " + err.Error()
			}
			return "proxied " + orig.String()
		})
		hbone, plain := pod.Listen(t, "tcp", ":15008"), pod.Listen(t, "tcp", ":15006")
		netns.Serve(hbone, func(net.Conn) string { return "hbone" })
		netns.Serve(plain, func(net.Conn) string { return "plaintext" })
		z.lns = []net.Listener{out, hbone, plain}
		in, err := r.AttachInbound(hbone, plain)
		if err != nil {
			t.Fatalf("AttachInbound() = %v", err)
		}
		if err := r.Enroll(cookie, podIP); err != nil {
			t.Fatal(err)
		}
		return z, in
	}
	inbound := func() (string, error) {
		c, err := remote.DialIn(t.Context(), pod8080, netns.DialOptions{})
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		return string(b), err
	}
	captured := func(when string) {
		t.Helper()
		if got := pod.Dial(t, podCg, dst, netns.DialOptions{}); got.Reply != "proxied "+dst.String() {
			t.Errorf("%s: outbound %+v, want proxied", when, got)
		}
		if got, err := inbound(); got != "plaintext" {
			t.Errorf("%s: inbound %q, %v, want plaintext", when, got, err)
		}
	}
	failsClosed := func(when string) {
		t.Helper()
		if got := pod.Dial(t, podCg, dst, netns.DialOptions{}); got.Reply != "" || !strings.Contains(got.Err, "refused") {
			t.Errorf("%s: outbound %+v, want connection refused", when, got)
		}
		if got, err := inbound(); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: inbound %q, %v, want connection refused", when, got, err)
		}
	}

	r1, err := redirect.New(redirect.Config{CgroupPath: parent.Path, PinPath: pin})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	z1, _ := start(r1)
	captured("first ztunnel")
	for _, p := range []string{"enrolled", "orig_by_peer", "link_wrn_connect4", filepath.Join("pods", strconv.FormatUint(cookie, 10))} {
		if _, err := os.Stat(filepath.Join(pin, p)); err != nil {
			t.Errorf("pin: %v", err)
		}
	}

	podPin := filepath.Join(pin, "pods", strconv.FormatUint(cookie, 10))
	linkIDs := func() []link.ID {
		t.Helper()
		var ids []link.ID
		for _, p := range []string{filepath.Join(pin, "link_wrn_connect4"), filepath.Join(pin, "link_wrn_sockops"), podPin} {
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, info.ID)
		}
		return ids
	}
	before := linkIDs()

	// The process ends without Uninstall: its descriptors and listeners close.
	if err := r1.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	z1.close()
	failsClosed("no ztunnel")

	r2, err := redirect.New(redirect.Config{CgroupPath: parent.Path, PinPath: pin})
	if err != nil {
		t.Fatalf("New() adopting the pins = %v", err)
	}
	defer r2.Close()
	if got, err := r2.Enrolled(); err != nil || len(got) != 1 || got[0] != cookie {
		t.Errorf("Enrolled() after adoption = %v, %v, want [%d]", got, err, cookie)
	}
	z2, in2 := start(r2)
	defer z2.close()
	captured("second ztunnel")
	// Adopted with link.Update: the same links, never detached.
	if after := linkIDs(); !slices.Equal(before, after) {
		t.Errorf("pinned link IDs %v after adoption, want the same as before %v", after, before)
	}

	// Un-enrolling the pod removes its pinned inbound link.
	if err := r2.Unenroll(cookie); err != nil {
		t.Fatal(err)
	}
	if err := in2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(pin, "pods", strconv.FormatUint(cookie, 10))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod pin after Inbound.Close: %v, want it removed", err)
	}
	if got, err := inbound(); got != "app" {
		t.Errorf("un-enrolled: inbound %q, %v, want app", got, err)
	}

	// Enrolled again, then uninstalled: everything is detached and the pins are gone.
	if _, err := r2.AttachInbound(z2.lns[1], z2.lns[2]); err != nil {
		t.Fatal(err)
	}
	if err := r2.Enroll(cookie, podIP); err != nil {
		t.Fatal(err)
	}
	captured("re-enrolled")
	if err := r2.Uninstall(); err != nil {
		t.Fatalf("Uninstall() = %v", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Uninstall: %s: %v, want removed", pin, err)
	}
	if got := pod.Dial(t, podCg, dst, netns.DialOptions{}); got.Reply != "direct" {
		t.Errorf("after Uninstall: outbound %+v, want direct", got)
	}
	if got, err := inbound(); got != "app" {
		t.Errorf("after Uninstall: inbound %q, %v, want app", got, err)
	}
}

// TestNewReplacesIncompatiblePins: maps pinned by an older version with another layout (the
// enrolled map's value was only the port) are replaced, not refused, and the enrolled pods carry
// over (redirected to loopback until enrolled again with their addresses).
func TestNewReplacesIncompatiblePins(t *testing.T) {
	requireRedirect(t)
	requireBPFFS(t)
	pin := filepath.Join("/sys/fs/bpf", "wrn-redirect-compat-"+strconv.Itoa(os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pin) })
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "enrolled", Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	const cookie = uint64(4242)
	if err := old.Put(cookie, uint32(0x3a99)); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(pin, "enrolled")); err != nil {
		t.Fatal(err)
	}
	r, err := redirect.New(redirect.Config{CgroupPath: netns.NewCgroup(t).Path, PinPath: pin})
	if err != nil {
		t.Fatalf("New() over an incompatible pin = %v", err)
	}
	defer r.Uninstall()
	if got, err := r.Enrolled(); err != nil || len(got) != 1 || got[0] != cookie {
		t.Errorf("Enrolled() after migration = %v, %v, want [%d]", got, err, cookie)
	}
	if err := r.Enroll(cookie, podIP); err != nil {
		t.Errorf("Enroll() after migration = %v", err)
	}
}
