package waypoint

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/ztunnel/authz"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// telemetry is the waypoint's metrics and security events. Labels are bounded: route names come
// from the config, codes are classes, policies are policy objects; addresses and identities go
// to log lines only.
type telemetry struct {
	security *slog.Logger
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	authz    *prometheus.CounterVec
	notFnd   prometheus.Counter
	streams  *prometheus.CounterVec
	relayed  *prometheus.CounterVec
}

func newTelemetry(reg prometheus.Registerer, security *slog.Logger) (*telemetry, error) {
	t := &telemetry{
		security: security,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_waypoint_requests_total",
			Help: "HTTP and gRPC requests, by matched route (namespace/name, empty: none), protocol (http1, http2, grpc) and status code class (2xx..5xx).",
		}, []string{"route", "protocol", "code_class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_waypoint_request_duration_seconds",
			Help:    "Time from request to response headers and body, by matched route and protocol.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route", "protocol"}),
		authz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_waypoint_authz_decisions_total",
			Help: "Authorization decisions (L4 for opaque streams, L4+L7 per request), by decision (allow, deny, audit), kind of what decided and its name.",
		}, []string{"decision", "policy_kind", "policy"}),
		notFnd: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_waypoint_route_not_found_total",
			Help: "Requests to a destination with routes that none matched (404, gRPC 5).",
		}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_waypoint_streams_total",
			Help: "Inbound HBONE streams served, by protocol (http1, http2, tcp).",
		}, []string{"protocol"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_waypoint_tcp_bytes_total",
			Help: "Bytes relayed on opaque TCP streams, by flow (upstream: client to server).",
		}, []string{"flow"}),
	}
	for _, c := range []prometheus.Collector{t.requests, t.latency, t.authz, t.notFnd, t.streams, t.relayed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return t, nil
}

func (t *telemetry) stream(proto string) { t.streams.WithLabelValues(proto).Inc() }

func (t *telemetry) bytes(up, down int64) {
	t.relayed.WithLabelValues("upstream").Add(float64(up))
	t.relayed.WithLabelValues("downstream").Add(float64(down))
}

func (t *telemetry) notFound() { t.notFnd.Inc() }

var codeClasses = [...]string{"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"}

func (t *telemetry) request(f *forward, code int, d time.Duration) {
	proto := "http1"
	switch {
	case f.grpc:
		proto = "grpc"
	case f.info != nil && f.info.h2:
		proto = "http2"
	}
	class := "other"
	if i := code / 100; i >= 1 && i < len(codeClasses) {
		class = codeClasses[i]
	}
	name := routeName(f.match)
	t.requests.WithLabelValues(name, proto, class).Inc()
	t.latency.WithLabelValues(name, proto).Observe(d.Seconds())
}

func (t *telemetry) allowed(dec authz.Decision) {
	t.authz.WithLabelValues("allow", dec.Policy.Kind, policyName(dec.Policy)).Inc()
}

// decision records a deny or audit: one security-event line and a counter.
func (t *telemetry) decision(info *streamInfo, d destination, ep state.Endpoint, route string, dec authz.Decision) {
	verdict := "deny"
	if dec.Allow {
		verdict = "audit"
	}
	t.authz.WithLabelValues(verdict, dec.Policy.Kind, policyName(dec.Policy)).Inc()
	attrs := []slog.Attr{
		slog.String("event", verdict),
		slog.String("src.identity", info.peer.String()),
		slog.String("src.addr", info.src.String()),
		slog.String("dst", d.name),
		slog.String("dst.addr", info.authority.String()),
		slog.String("dst.workload", ep.Workload.GetNamespace()+"/"+ep.Workload.GetName()),
		slog.String("dst.port", strconv.Itoa(int(ep.Addr.Port()))),
		slog.String("route", route),
		slog.String("policy.kind", dec.Policy.Kind),
		slog.String("policy", dec.Policy.String()),
		slog.String("reason", dec.Reason),
	}
	if dec.Server != nil {
		attrs = append(attrs, slog.String("server", dec.Server.String()))
	}
	t.security.LogAttrs(context.Background(), slog.LevelWarn, "security event", attrs...)
}

// notBound records a stream for a destination this waypoint does not serve.
func (t *telemetry) notBound(info *streamInfo, err error) {
	t.authz.WithLabelValues("deny", "Waypoint", "not-bound").Inc()
	t.security.LogAttrs(context.Background(), slog.LevelWarn, "security event",
		slog.String("event", "deny"),
		slog.String("src.identity", info.peer.String()),
		slog.String("src.addr", info.src.String()),
		slog.String("dst.addr", info.authority.String()),
		slog.String("policy.kind", "Waypoint"),
		slog.String("reason", err.Error()),
	)
}

func policyName(r authz.PolicyRef) string {
	if r.Name == "" {
		return r.Default
	}
	return r.Namespace + "/" + r.Name
}
