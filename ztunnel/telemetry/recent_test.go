package telemetry_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// clock is a manual clock for the history's timestamps.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTelemetry(tb testing.TB, events, conns int, c *clock) (*telemetry.Telemetry, *bytes.Buffer) {
	tb.Helper()
	var buf bytes.Buffer
	tel, err := telemetry.New(telemetry.Config{
		SecurityLog: slog.New(slog.NewJSONHandler(&buf, nil)), Registerer: prometheus.NewRegistry(),
		RecentEvents: events, RecentConnections: conns, Now: c.now,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return tel, &buf
}

func TestRecentEvents(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := &clock{t: t0}
	tel, log := newTelemetry(t, 3, 0, c)
	for i := range 5 {
		c.t = t0.Add(time.Duration(i) * time.Minute)
		tel.SecurityEvent(telemetry.Event{
			Type: telemetry.Deny, Src: netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:4000", i+1)),
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/c", DstWorkload: "default/b",
			Dst: netip.MustParseAddrPort("10.0.1.2:8080"), PolicyKind: "Server", Policy: "default/b",
			Server: "default/b", Reason: fmt.Sprintf("reason %d", i),
		})
	}
	if n := strings.Count(log.String(), "security event"); n != 5 {
		t.Errorf("%d log lines, want 5: the history does not replace the log", n)
	}
	for _, tc := range []struct {
		name    string
		since   time.Time
		reasons []string
	}{
		{"all kept: the newest 3, oldest first", time.Time{}, []string{"reason 2", "reason 3", "reason 4"}},
		{"since is inclusive", t0.Add(3 * time.Minute), []string{"reason 3", "reason 4"}},
		{"nothing after the last", t0.Add(time.Hour), []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := []string{}
			for _, e := range tel.RecentEvents(tc.since) {
				got = append(got, e.Reason)
			}
			if diff := cmp.Diff(tc.reasons, got); diff != "" {
				t.Errorf("reasons (-want +got):\n%s", diff)
			}
		})
	}
	want := telemetry.EventRecord{
		Time: t0.Add(4 * time.Minute), Type: telemetry.Deny, Src: "10.0.0.5:4000",
		SrcIdentity: "spiffe://cluster.local/ns/default/sa/c", DstWorkload: "default/b", Dst: "10.0.1.2:8080",
		PolicyKind: "Server", Policy: "default/b", Server: "default/b", Reason: "reason 4",
	}
	got := tel.RecentEvents(t0.Add(4 * time.Minute))
	if diff := cmp.Diff([]telemetry.EventRecord{want}, got); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}
}

func TestRecentConnections(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := &clock{t: t0}
	tel, _ := newTelemetry(t, 0, 2, c)
	conn := func(port uint16, err error) telemetry.Connection {
		return telemetry.Connection{
			Direction: telemetry.Inbound, Mode: telemetry.HBONE,
			Src: netip.MustParseAddrPort("10.0.0.1:" + fmt.Sprint(port)), Dst: netip.MustParseAddrPort("10.0.1.2:8080"),
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/a", DstIdentity: "spiffe://cluster.local/ns/default/sa/b",
			Upstream: 10, Downstream: 20, Duration: 2 * time.Second, Err: err,
		}
	}
	tel.Closed(conn(1, nil))
	c.t = t0.Add(time.Minute)
	tel.Closed(conn(2, errors.New("reset")))
	c.t = t0.Add(2 * time.Minute)
	tel.Closed(conn(3, nil))
	got := tel.RecentConnections(time.Time{})
	want := []telemetry.ConnectionRecord{
		{Start: t0.Add(time.Minute - 2*time.Second), Direction: "inbound", Mode: "hbone", Src: "10.0.0.1:2", Dst: "10.0.1.2:8080",
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/a", DstIdentity: "spiffe://cluster.local/ns/default/sa/b",
			Upstream: 10, Downstream: 20, Duration: 2 * time.Second, Error: "reset"},
		{Start: t0.Add(2*time.Minute - 2*time.Second), Direction: "inbound", Mode: "hbone", Src: "10.0.0.1:3", Dst: "10.0.1.2:8080",
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/a", DstIdentity: "spiffe://cluster.local/ns/default/sa/b",
			Upstream: 10, Downstream: 20, Duration: 2 * time.Second},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("connections (-want +got):\n%s", diff)
	}
}

func TestNewRejectsNegativeHistory(t *testing.T) {
	for _, tc := range []struct{ events, conns int }{{-1, 0}, {0, -1}} {
		_, err := telemetry.New(telemetry.Config{
			SecurityLog: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
			RecentEvents: tc.events, RecentConnections: tc.conns,
		})
		if err == nil || !strings.Contains(err.Error(), "must not be negative") {
			t.Errorf("events %d conns %d: err %v, want a clear error", tc.events, tc.conns, err)
		}
	}
	// Nothing else broke: a valid config still works on the same registry kind.
	if _, err := telemetry.New(telemetry.Config{SecurityLog: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()}); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func BenchmarkClosed(b *testing.B) {
	tel, _ := newTelemetry(b, 0, 0, &clock{t: time.Now()})
	c := telemetry.Connection{Direction: telemetry.Inbound, Mode: telemetry.HBONE,
		Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.1.2:8080")}
	b.ReportAllocs()
	for b.Loop() {
		tel.Closed(c)
	}
}
