package push

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the push server; every label is the client kind (ztunnel or waypoint).
type metrics struct {
	clients   *prometheus.GaugeVec
	responses *prometheus.CounterVec
	resources *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	kind := []string{"kind"}
	m := metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_push_clients",
			Help: "Connected config push clients, by kind.",
		}, kind),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_push_responses_total",
			Help: "Config push responses sent, by client kind.",
		}, kind),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_push_resources_total",
			Help: "Resources sent in config push responses (changed or removed), by client kind.",
		}, kind),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_push_bytes_total",
			Help: "Bytes of config push responses sent (protobuf size), by client kind.",
		}, kind),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_push_nacks_total",
			Help: "Config push responses the client rejected, by client kind.",
		}, kind),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_push_latency_seconds",
			Help:    "Time from the Update that made a change until the client ACKed it, by client kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, kind),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.clients, m.responses, m.resources, m.bytes, m.nacks, m.latency} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				return m, fmt.Errorf("register metrics: %w (is a second push server using the same registry?)", err)
			}
			return m, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
