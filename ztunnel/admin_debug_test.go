package ztunnel_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// getJSON GETs an admin path, checks the status, that no private key is in the answer, and
// decodes it into v (nil: only the status is checked); it returns the body.
func getJSON(t testing.TB, admin, path string, wantStatus int, v any) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s = %d %s; want %d", path, resp.StatusCode, body, wantStatus)
	}
	if strings.Contains(string(body), "PRIVATE KEY") {
		t.Fatalf("GET %s contains a private key", path)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return string(body)
}

func TestAdminDebugEndpoints(t *testing.T) {
	t.Parallel()
	p := randomNet()
	m := newMesh(t, articleSnapshot(p))
	n1 := m.startNode("node-1")
	n2 := m.startNode("node-2")
	startApp(t, netip.MustParseAddrPort(ip(p, 3)+":8080"), "b")
	dstB := netip.MustParseAddrPort(ip(p, 3) + ":8080")
	before := time.Now()

	// One allowed (service-a) and one denied (service-c) connection to service-b.
	c, err := m.dialFrom(ip(p, 2), dstB)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(c, "hi"); err != nil || got != "hello from b: hi\n" {
		t.Fatalf("service-a -> service-b = %q, %v", got, err)
	}
	c.Close()
	c, err = m.dialFrom(ip(p, 4), dstB)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(c, "hi")
	c.Close()
	waitFor(t, func() bool { return len(n2.security.lines(map[string]string{"event": "deny"})) == 1 }, "one deny event")

	t.Run("SecurityEvents", func(t *testing.T) {
		var ev ztunnel.SecurityEvents
		getJSON(t, n2.Admin, "/security_events?since=10m", http.StatusOK, &ev)
		if ev.Node != "node-2" || len(ev.Events) != 1 {
			t.Fatalf("events %+v; want node-2 with one deny", ev)
		}
		e := ev.Events[0]
		e.Src = e.Src[:strings.LastIndex(e.Src, ":")]
		want := ztunnelEvent(ip(p, 4), ip(p, 3))
		if diff := cmp.Diff(want, e, cmpIgnoreTimeAndReason); diff != "" {
			t.Errorf("event (-want +got):\n%s", diff)
		}
		if e.Time.Before(before.Add(-time.Second)) || !strings.Contains(e.Reason, "service-c not in meshtls") {
			t.Errorf("event time %v reason %q", e.Time, e.Reason)
		}
		// A window after the event holds nothing; an RFC 3339 time works too.
		getJSON(t, n2.Admin, "/security_events?since="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), http.StatusOK, &ev)
		if len(ev.Events) != 0 {
			t.Errorf("events in the future window: %+v", ev.Events)
		}
	})
	t.Run("BadSince", func(t *testing.T) {
		for _, s := range []string{"yesterday", "-5m", "2026-13-01"} {
			body := getJSON(t, n2.Admin, "/security_events?since="+s, http.StatusBadRequest, nil)
			if !strings.Contains(body, "want a duration") && !strings.Contains(body, "must not be negative") {
				t.Errorf("since=%s: %q; want an error saying what to write", s, body)
			}
		}
		// Nothing else broke.
		getJSON(t, n2.Admin, "/security_events", http.StatusOK, nil)
	})
	t.Run("Certificates", func(t *testing.T) {
		var cs ztunnel.Certificates
		getJSON(t, n1.Admin, "/certificates", http.StatusOK, &cs)
		if len(cs.Certificates) != 2 {
			t.Fatalf("node-1 certificates: %+v; want service-a and service-c", cs)
		}
		for _, c := range cs.Certificates {
			if len(c.Decoded) < 1 || c.Serial == "" || c.Decoded[0].Serial != c.Serial || c.RotateAt.IsZero() {
				t.Fatalf("certificate %s: %+v", c.ID, c)
			}
			leaf := c.Decoded[0]
			if diff := cmp.Diff([]string{c.ID}, leaf.URIs); diff != "" || leaf.IsCA || !leaf.NotAfter.Equal(c.NotAfter) || leaf.Issuer == "" {
				t.Errorf("leaf of %s: %+v", c.ID, leaf)
			}
		}
	})
	t.Run("Version", func(t *testing.T) {
		var v ztunnel.VersionInfo
		getJSON(t, n2.Admin, "/version", http.StatusOK, &v)
		if diff := cmp.Diff(ztunnel.VersionInfo{Node: "node-2", ConfigVersion: "v1", Ready: true, Workloads: 1}, v); diff != "" {
			t.Errorf("version (-want +got):\n%s", diff)
		}
	})
	t.Run("Connections", func(t *testing.T) {
		var cs ztunnel.Connections
		getJSON(t, n2.Admin, "/connections", http.StatusOK, &cs)
		if len(cs.Workloads) != 1 || cs.Workloads[0].Identity != td+"/ns/default/sa/service-b" {
			t.Errorf("workloads %+v", cs.Workloads)
		}
		var ok, denied bool
		for _, r := range cs.Recent {
			if r.Direction != "inbound" {
				continue
			}
			switch r.SrcIdentity {
			case td + "/ns/default/sa/service-a":
				ok = r.Error == "" && r.Upstream == 3 && r.Dst == dstB.String() && !r.Start.IsZero()
			case td + "/ns/default/sa/service-c":
				denied = r.Error != ""
			}
		}
		if !ok || !denied {
			t.Errorf("recent connections %+v; want service-a's (3 bytes up, no error) and service-c's (denied)", cs.Recent)
		}
	})
}

var cmpIgnoreTimeAndReason = cmp.FilterPath(func(p cmp.Path) bool {
	s := p.String()
	return s == "Time" || s == "Reason"
}, cmp.Ignore())

func ztunnelEvent(src, dst string) telemetry.EventRecord {
	return telemetry.EventRecord{
		Type: telemetry.Deny, Src: src, SrcIdentity: td + "/ns/default/sa/service-c", DstWorkload: "default/service-b-0",
		Dst: dst + ":8080", PolicyKind: "Server", Policy: "default/service-b", Server: "default/service-b",
	}
}
