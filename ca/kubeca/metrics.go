package kubeca

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/ca"
)

// metrics of the CSR service. Labels are bounded: result is issued, denied
// or error, reason one of the reason* constants. Identities, accounts and
// nodes go to log lines only.
type metrics struct {
	csrs *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, c *ca.CA) (metrics, error) {
	m := metrics{
		csrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ca_csr_total",
			Help: "Certificate signing requests, by result (issued, denied, error) and reason (ok for issued; why it was denied or failed).",
		}, []string{"result", "reason"}),
	}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "warren_ca_signing_certificate_expiry_timestamp_seconds",
		Help: "When the CA's signing chain expires (Unix seconds): no certificate outlives it, so rotate the CA well before.",
	}, func() float64 { return float64(c.NotAfter().Unix()) })
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.csrs, expiry} {
		if err := reg.Register(col); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				return m, fmt.Errorf("register metrics: %w (is a second ca service using the same registry?)", err)
			}
			return m, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
