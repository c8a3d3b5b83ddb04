// Package telemetry is the ztunnel's observability: one access-log line per proxied connection
// at close, one security-event line per deny, audit hit or revocation, the Prometheus metrics
// behind them, and a bounded in-memory history of recent security events and closed connections
// for the admin endpoint (kubectl warren authz, ztunnel-config connections). Loggers and the
// metrics registry are injected; nothing is global.
//
// Labels are bounded: direction, mode, decision, policy kind and the deciding policy's name (one
// per policy object). Addresses and identities go to log lines only, never to labels.
//
// The ztunnel's proxies (ztunnel/inbound, ztunnel/outbound) import it; so may the waypoint.
package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Direction of a proxied connection as seen from the workload.
type Direction string

const (
	Inbound  Direction = "inbound"
	Outbound Direction = "outbound"
)

// Mode is how a connection was carried.
type Mode string

const (
	// HBONE: inside HTTP/2 CONNECT over mTLS.
	HBONE Mode = "hbone"
	// Plaintext: an inbound connection from a client outside the mesh.
	Plaintext Mode = "plaintext"
	// Passthrough: an outbound connection to a destination outside the mesh.
	Passthrough Mode = "passthrough"
)

// Telemetry records connections and security events.
type Telemetry struct {
	access   *slog.Logger
	security *slog.Logger
	m        metrics
	now      func() time.Time
	events   *ring[EventRecord]
	conns    *ring[recentConn]
}

type metrics struct {
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	authz    *prometheus.CounterVec
	revoked  *prometheus.CounterVec
}

// Config of Telemetry.
type Config struct {
	// AccessLog receives one line per connection at close; nil disables the access log.
	AccessLog *slog.Logger
	// SecurityLog receives one line per security event; required.
	SecurityLog *slog.Logger
	// Registerer gets the metrics; required.
	Registerer prometheus.Registerer
	// RecentEvents and RecentConnections bound the in-memory history of security events and
	// closed connections; zero means DefaultRecentEvents and DefaultRecentConnections, negative
	// is an error.
	RecentEvents, RecentConnections int
	// Now stamps the history; nil means time.Now.
	Now func() time.Time
}

// New registers the metrics and returns a Telemetry.
func New(cfg Config) (*Telemetry, error) {
	if cfg.SecurityLog == nil || cfg.Registerer == nil {
		return nil, fmt.Errorf("new telemetry: a security logger and a metrics registerer are required")
	}
	if cfg.RecentEvents < 0 || cfg.RecentConnections < 0 {
		return nil, fmt.Errorf("new telemetry: history sizes must not be negative (events %d, connections %d)", cfg.RecentEvents, cfg.RecentConnections)
	}
	if cfg.RecentEvents == 0 {
		cfg.RecentEvents = DefaultRecentEvents
	}
	if cfg.RecentConnections == 0 {
		cfg.RecentConnections = DefaultRecentConnections
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ztunnel_connections_opened_total",
			Help: "Proxied TCP connections opened, by direction and mode.",
		}, []string{"direction", "mode"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ztunnel_connections_closed_total",
			Help: "Proxied TCP connections closed, by direction, mode and outcome (ok or error).",
		}, []string{"direction", "mode", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ztunnel_bytes_total",
			Help: "Bytes proxied, by direction, mode and flow (upstream: client to server; downstream: server to client).",
		}, []string{"direction", "mode", "flow"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_ztunnel_connection_duration_seconds",
			Help:    "Lifetime of proxied connections.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"direction", "mode"}),
		authz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ztunnel_authz_decisions_total",
			Help: "L4 authorization decisions, by decision (allow, deny, audit), the kind of what decided (AuthorizationPolicy, Server, Default, Probe) and its name.",
		}, []string{"decision", "policy_kind", "policy"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ztunnel_connections_revoked_total",
			Help: "Open connections closed because a policy change no longer allows them.",
		}, []string{"policy_kind", "policy"}),
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.bytes, m.duration, m.authz, m.revoked} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("new telemetry: register metrics: %w", err)
		}
	}
	return &Telemetry{
		access: cfg.AccessLog, security: cfg.SecurityLog, m: m, now: cfg.Now,
		events: newRing[EventRecord](cfg.RecentEvents), conns: newRing[recentConn](cfg.RecentConnections),
	}, nil
}

// Opened counts a new proxied connection.
func (t *Telemetry) Opened(d Direction, m Mode) {
	t.m.opened.WithLabelValues(string(d), string(m)).Inc()
}

// Connection describes one proxied connection at close, for the access log.
type Connection struct {
	Direction Direction
	Mode      Mode
	// Src and Dst are the client's address and the original destination.
	Src, Dst netip.AddrPort
	// SrcIdentity and DstIdentity are SPIFFE IDs, empty when not in the mesh.
	SrcIdentity, DstIdentity string
	// DstWorkload is "namespace/name" of the destination workload or service, if known.
	DstWorkload string
	// Via is the next hop when it is not Dst (a pod's HBONE port or a waypoint).
	Via netip.AddrPort
	// Upstream and Downstream count bytes client->server and server->client.
	Upstream, Downstream int64
	Duration             time.Duration
	Err                  error
}

// Closed counts a closed connection and writes its access-log line.
func (t *Telemetry) Closed(c Connection) {
	d, m := string(c.Direction), string(c.Mode)
	outcome := "ok"
	if c.Err != nil {
		outcome = "error"
	}
	t.m.closed.WithLabelValues(d, m, outcome).Inc()
	t.m.bytes.WithLabelValues(d, m, "upstream").Add(float64(c.Upstream))
	t.m.bytes.WithLabelValues(d, m, "downstream").Add(float64(c.Downstream))
	t.m.duration.WithLabelValues(d, m).Observe(c.Duration.Seconds())
	t.conns.add(recentConn{c: c, closed: t.now()})
	if t.access == nil {
		return
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("direction", d),
		slog.String("mode", m),
		slog.String("src.addr", c.Src.String()),
		slog.String("dst.addr", c.Dst.String()),
	)
	if c.SrcIdentity != "" {
		attrs = append(attrs, slog.String("src.identity", c.SrcIdentity))
	}
	if c.DstIdentity != "" {
		attrs = append(attrs, slog.String("dst.identity", c.DstIdentity))
	}
	if c.DstWorkload != "" {
		attrs = append(attrs, slog.String("dst.workload", c.DstWorkload))
	}
	if c.Via.IsValid() {
		attrs = append(attrs, slog.String("via", c.Via.String()))
	}
	attrs = append(attrs,
		slog.Int64("bytes.upstream", c.Upstream),
		slog.Int64("bytes.downstream", c.Downstream),
		slog.Duration("duration", c.Duration),
	)
	if c.Err != nil {
		attrs = append(attrs, slog.String("error", c.Err.Error()))
	}
	t.access.LogAttrs(context.Background(), slog.LevelInfo, "connection closed", attrs...)
}

// EventType is the kind of a security event.
type EventType string

const (
	// Deny: a connection or request was refused by policy.
	Deny EventType = "deny"
	// Audit: allowed by an audit policy, which asks for a record of it.
	Audit EventType = "audit"
	// Revoke: an open connection was closed because a policy change no longer allows it.
	Revoke EventType = "revoke"
)

// Event is one security event.
type Event struct {
	Type EventType
	// Src is the client's address; SrcIdentity its SPIFFE ID (empty: no mTLS).
	Src         netip.AddrPort
	SrcIdentity string
	// DstWorkload is "namespace/name"; Dst the address and port it was reached on.
	DstWorkload string
	Dst         netip.AddrPort
	// PolicyKind and Policy say what decided ("AuthorizationPolicy" "default/a-to-b",
	// "Default" "deny"); Server is the Server that covered the port, if any.
	PolicyKind, Policy, Server string
	Reason                     string
}

// SecurityEvent writes the event's line and counts it.
func (t *Telemetry) SecurityEvent(e Event) {
	switch e.Type {
	case Revoke:
		t.m.revoked.WithLabelValues(e.PolicyKind, e.Policy).Inc()
	default:
		t.m.authz.WithLabelValues(string(e.Type), e.PolicyKind, e.Policy).Inc()
	}
	t.events.add(EventRecord{
		Time: t.now(), Type: e.Type, Src: addrString(e.Src), SrcIdentity: e.SrcIdentity,
		DstWorkload: e.DstWorkload, Dst: addrString(e.Dst), PolicyKind: e.PolicyKind, Policy: e.Policy,
		Server: e.Server, Reason: e.Reason,
	})
	level := slog.LevelWarn
	if e.Type == Audit {
		level = slog.LevelInfo
	}
	attrs := []slog.Attr{
		slog.String("event", string(e.Type)),
		slog.String("src.addr", e.Src.String()),
		slog.String("src.identity", e.SrcIdentity),
		slog.String("dst.workload", e.DstWorkload),
		slog.String("dst.addr", e.Dst.String()),
		slog.Int("dst.port", int(e.Dst.Port())),
		slog.String("policy.kind", e.PolicyKind),
		slog.String("policy", e.Policy),
	}
	if e.Server != "" {
		attrs = append(attrs, slog.String("server", e.Server))
	}
	attrs = append(attrs, slog.String("reason", e.Reason))
	t.security.LogAttrs(context.Background(), level, "security event", attrs...)
}

// Allowed counts an allow decision (no log line: allows are the hot path).
func (t *Telemetry) Allowed(policyKind, policy string) {
	t.m.authz.WithLabelValues("allow", policyKind, policy).Inc()
}
