package waypoint_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestBetweenZtunnels: the whole ambient path with real ztunnels: client app -> its ztunnel
// (node-0, the client's certificate) -> waypoint (routes, L7 authz with the client's real
// identity) -> the destination's ztunnel (node-1, which admits only the waypoint for pods bound
// to it) -> app.
func TestBetweenZtunnels(t *testing.T) {
	e := newEnv(t, envOptions{ztunnels: true})
	b0 := e.addr(hostB0, 8080)
	tests := []struct {
		name   string
		client byte
		method string
		dst    string
		path   string
		want   int
		pod    string
	}{
		{"article GET from a", hostClientA, "GET", b0, "/foo/bar", 200, "b-0"},
		{"article POST from a", hostClientA, "POST", b0, "/foo/bar", 403, ""},
		{"article GET from c", hostClientC, "GET", b0, "/foo/bar", 403, ""},
		{"article unrouted path", hostClientA, "GET", b0, "/other", 404, ""},
		{"service route with rewrite", hostClientC, "GET", e.addr(vipWeb, 80), "/hdr/x", 200, "web-"},
	}
	for _, tt := range tests {
		code, ec, _ := get(t, e.viaZtunnel(tt.client, tt.dst), tt.method, tt.path, nil)
		if code != tt.want || !strings.HasPrefix(ec.Pod, tt.pod) {
			t.Errorf("%s: %s %s%s = %d from %q, want %d from %s*", tt.name, tt.method, tt.dst, tt.path, code, ec.Pod, tt.want, tt.pod)
		}
	}
	// The waypoint saw the clients' own identities and addresses (Forwarded from the source
	// ztunnel).
	var got []string
	for _, ev := range e.securityEvents(t) {
		got = append(got, fmt.Sprintf("%v %v %v", ev["event"], ev["src.identity"], ev["src.addr"]))
	}
	want := []string{
		fmt.Sprintf("deny %s %s", idA, e.ip(hostClientA)),
		fmt.Sprintf("deny %s %s", idC, e.ip(hostClientC)),
	}
	for i, g := range got {
		got[i] = g[:strings.LastIndex(g, ":")] // drop the client's port
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("security events (-want +got):\n%s", diff)
	}
}
