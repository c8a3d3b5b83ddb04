// Package identity is the ztunnel's workload certificate manager: for each
// workload identity on the node it generates an ECDSA P-256 key (which never
// leaves the process), asks a CA to sign a CSR for it, caches the resulting
// X.509-SVID and renews it at half-life, with jittered exponential backoff
// while the CA fails. A still-valid certificate keeps being served while
// renewal retries (fail static).
//
// The [Manager] does not authenticate to the CA or speak any wire protocol:
// that is the [Signer]'s job. In a cluster the signer is a [GRPCSigner],
// which calls warren-controller's CSR service (api/caservice) with the node
// agent's ServiceAccount token. The package does not log; state is
// reported through [Manager.Certificates]. It may be imported by ztunnel
// and waypoint packages and by cmd/ binaries.
package identity

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
)

// Signer is the CA seam: it signs a DER-encoded PKCS #10 CSR for id and
// returns the chain, leaf first. In standalone mode and tests it is a local
// CA ((*ca.CA).Signer, ca/catest); in a cluster it is the CSR client.
type Signer interface {
	Sign(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error)
}

// Defaults applied by [New] to zero [Config] fields.
const (
	DefaultConcurrency    = 8
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 150 * time.Second
	DefaultRequestTimeout = 30 * time.Second
)

// Config configures a [Manager]. Only Signer is required.
type Config struct {
	// Signer signs CSRs. Required.
	Signer Signer

	// TrustDomain, if set, makes the manager refuse identities outside it
	// without asking the CA. Zero: any trust domain is passed to the CA.
	TrustDomain spiffeid.TrustDomain

	// Bundle, if set, is the trust bundle every issued chain must verify
	// against. Zero: the chain's shape is checked but not its signatures.
	Bundle x509bundle.Source

	// Concurrency is the maximum number of CSRs in flight. Default: 8.
	Concurrency int

	// MinBackoff and MaxBackoff bound the wait after a failed CSR: the n-th
	// consecutive failure waits d + Jitter(d), where d = MinBackoff·2^(n-1),
	// never more than MaxBackoff. Defaults: 500ms and 150s.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// RequestTimeout bounds each CSR, including the wait for a free slot.
	// Default: 30s.
	RequestTimeout time.Duration

	// Now returns the current time. Default: time.Now.
	Now func() time.Time

	// Jitter returns a random duration in [0, d). Default: uniform random.
	// Tests may return 0 for exact backoff steps.
	Jitter func(d time.Duration) time.Duration

	// Registerer, if set, gets the manager's metrics: CSRs by result, the
	// number of identities whose renewal is failing, and the earliest
	// certificate expiry.
	Registerer prometheus.Registerer
}

// Manager issues, caches and rotates workload certificates. Create it with
// [New]; rotation needs [Manager.Run]. It is safe for concurrent use.
type Manager struct {
	signer     Signer
	td         spiffeid.TrustDomain
	bundle     x509bundle.Source
	minBackoff time.Duration
	maxBackoff time.Duration
	timeout    time.Duration
	now        func() time.Time
	jitter     func(time.Duration) time.Duration

	sem     chan struct{} // one token per CSR in flight
	wake    chan struct{} // pokes Run when the schedule may have changed
	running atomic.Bool

	mu      sync.Mutex
	entries map[spiffeid.ID]*entry

	csrs *prometheus.CounterVec
}

// entry is the state of one identity. Guarded by Manager.mu.
type entry struct {
	id       spiffeid.ID
	svid     *x509svid.SVID // current certificate; nil until the first success
	rotateAt time.Time      // when to renew svid
	inflight *call          // the CSR in flight, if any
	failures int            // consecutive failures
	lastErr  error
	retryAt  time.Time // when to retry after lastErr
}

// call is one CSR shared by every caller waiting for it.
type call struct {
	done chan struct{}
	svid *x509svid.SVID
	err  error
}

// New returns a Manager. It fails if cfg.Signer is nil or a field is out of
// range.
func New(cfg Config) (*Manager, error) {
	m := &Manager{
		signer:     cfg.Signer,
		td:         cfg.TrustDomain,
		bundle:     cfg.Bundle,
		minBackoff: cmp.Or(cfg.MinBackoff, DefaultMinBackoff),
		maxBackoff: cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff),
		timeout:    cmp.Or(cfg.RequestTimeout, DefaultRequestTimeout),
		now:        cfg.Now,
		jitter:     cfg.Jitter,
		wake:       make(chan struct{}, 1),
		entries:    make(map[spiffeid.ID]*entry),
	}
	concurrency := cmp.Or(cfg.Concurrency, DefaultConcurrency)
	switch {
	case m.signer == nil:
		return nil, errors.New("new identity manager: no signer (set Config.Signer)")
	case concurrency < 0:
		return nil, fmt.Errorf("new identity manager: negative concurrency %d", concurrency)
	case m.minBackoff < 0 || m.maxBackoff < m.minBackoff:
		return nil, fmt.Errorf("new identity manager: backoff range %v..%v is invalid", m.minBackoff, m.maxBackoff)
	case m.timeout < 0:
		return nil, fmt.Errorf("new identity manager: negative request timeout %v", m.timeout)
	}
	m.sem = make(chan struct{}, concurrency)
	m.csrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_ztunnel_csr_total",
		Help: "Certificate signing requests sent to the CA, by result (issued or failed).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{
			m.csrs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "warren_ztunnel_certificates_failing",
				Help: "Identities whose last certificate request failed (a still-valid certificate keeps serving meanwhile).",
			}, func() float64 { return float64(m.failing()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "warren_ztunnel_certificate_expiry_timestamp_seconds",
				Help: "When the earliest-expiring workload certificate held expires (Unix time; 0 with none).",
			}, m.earliestExpiry),
		} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("new identity manager: register metrics: %w", err)
			}
		}
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.jitter == nil {
		m.jitter = func(d time.Duration) time.Duration {
			if d <= 0 {
				return 0
			}
			return mrand.N(d)
		}
	}
	return m, nil
}

// SVID returns the current certificate for id, fetching one if there is
// none or it has expired. Concurrent callers for the same id share one CSR.
// After a failed CSR, callers without a valid certificate get the last
// error until the backoff elapses. The returned SVID is shared: callers must
// not modify it.
//
// Calling SVID registers id with the manager: it is renewed by Run until
// Forget(id).
func (m *Manager) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if err := m.checkID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	e := m.entryLocked(id)
	now := m.now()
	if e.valid(now) {
		svid := e.svid
		m.mu.Unlock()
		return svid, nil
	}
	c := e.inflight
	if c == nil {
		if e.lastErr != nil && now.Before(e.retryAt) {
			err := e.lastErr
			retryAt := e.retryAt
			m.mu.Unlock()
			return nil, fmt.Errorf("%w (next attempt at %s)", err, retryAt.UTC().Format(time.RFC3339))
		}
		c = m.startLocked(context.WithoutCancel(ctx), e, false, nil)
	}
	m.mu.Unlock()
	select {
	case <-c.done:
		return c.svid, c.err
	case <-ctx.Done():
		return nil, fmt.Errorf("fetch svid for %s: %w", id, ctx.Err())
	}
}

// Prefetch starts fetching a certificate for id in the background, for a
// workload that just appeared on the node, and registers id for rotation.
// It does nothing if a valid certificate is cached, a CSR is in flight, or
// a failed CSR is backing off. It returns an error only for an id the
// manager would never fetch.
func (m *Manager) Prefetch(id spiffeid.ID) error {
	if err := m.checkID(id); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entryLocked(id)
	now := m.now()
	if e.valid(now) || e.inflight != nil || (e.lastErr != nil && now.Before(e.retryAt)) {
		return nil
	}
	m.startLocked(context.Background(), e, false, nil)
	return nil
}

// Forget drops id's key and certificate and stops rotating it, for a
// workload that left the node. A CSR in flight completes for its waiters
// but is not cached.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
	m.poke()
}

// Source returns an x509svid.Source for id. Each GetX509SVID call returns
// the current certificate (fetching it if needed, bounded by
// Config.RequestTimeout), so TLS configs built on it pick up rotated
// certificates at the next handshake.
func (m *Manager) Source(id spiffeid.ID) x509svid.Source {
	return source{m: m, id: id}
}

type source struct {
	m  *Manager
	id spiffeid.ID
}

func (s source) GetX509SVID() (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.m.timeout)
	defer cancel()
	return s.m.SVID(ctx, s.id)
}

// Run renews every registered certificate at half-life
// (NotBefore + (NotAfter-NotBefore)/2) and retries failed CSRs after their
// backoff, with at most Config.Concurrency CSRs in flight; renewals only
// take free slots, so on-demand fetches are not queued behind them. It
// blocks until ctx is done, waits for its CSRs to end, and returns nil. It
// returns an error if the manager is already running.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("run identity manager: already running")
	}
	defer m.running.Store(false)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		next := m.rotateDue(ctx, &wg)
		var timer *time.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			timer = time.NewTimer(next.Sub(m.now()))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case <-m.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// rotateDue starts a CSR for every entry whose renewal or retry is due, as
// long as slots are free, and returns when the next one falls due (zero if
// none is scheduled). Entries left waiting for a slot are picked up when a
// CSR ends and pokes Run.
func (m *Manager) rotateDue(ctx context.Context, wg *sync.WaitGroup) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	type dueEntry struct {
		e  *entry
		at time.Time
	}
	var due []dueEntry
	var next time.Time
	for _, e := range m.entries {
		if e.inflight != nil {
			continue
		}
		at := e.nextAttempt()
		if !at.After(now) {
			due = append(due, dueEntry{e, at})
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	slices.SortFunc(due, func(a, b dueEntry) int { return a.at.Compare(b.at) })
	for _, d := range due {
		select {
		case m.sem <- struct{}{}:
			m.startLocked(ctx, d.e, true, wg)
		default:
			return next // all slots busy; a finishing CSR pokes Run
		}
	}
	return next
}

// nextAttempt is when e should next be fetched, ignoring any CSR in flight.
func (e *entry) nextAttempt() time.Time {
	switch {
	case e.lastErr != nil:
		return e.retryAt
	case e.svid != nil:
		return e.rotateAt
	default:
		return time.Time{} // never fetched: due now
	}
}

func (e *entry) valid(now time.Time) bool {
	return e.svid != nil && now.Before(e.svid.Certificates[0].NotAfter)
}

func (m *Manager) checkID(id spiffeid.ID) error {
	if !m.td.IsZero() && !id.MemberOf(m.td) {
		return fmt.Errorf("fetch svid for %s: not in trust domain %q", id, m.td.Name())
	}
	if _, _, err := ca.ParseWorkloadID(id); err != nil {
		return fmt.Errorf("fetch svid: %w", err)
	}
	return nil
}

func (m *Manager) entryLocked(id spiffeid.ID) *entry {
	e, ok := m.entries[id]
	if !ok {
		e = &entry{id: id}
		m.entries[id] = e
		m.poke()
	}
	return e
}

// startLocked starts a CSR for e. haveSlot says whether the caller already
// holds a concurrency token; wg, if set, tracks the goroutine.
func (m *Manager) startLocked(ctx context.Context, e *entry, haveSlot bool, wg *sync.WaitGroup) *call {
	c := &call{done: make(chan struct{})}
	e.inflight = c
	if wg != nil {
		wg.Add(1)
	}
	go func() {
		if wg != nil {
			defer wg.Done()
		}
		svid, err := m.fetch(ctx, e.id, haveSlot)
		m.finish(e, c, svid, err)
	}()
	return c
}

func (m *Manager) fetch(ctx context.Context, id spiffeid.ID, haveSlot bool) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	if !haveSlot {
		select {
		case m.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("fetch svid for %s: waiting for a free csr slot (%d in flight): %w", id, cap(m.sem), ctx.Err())
		}
	}
	defer func() { <-m.sem }()
	svid, err := m.issue(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("fetch svid for %s: %w", id, err)
	}
	return svid, nil
}

// issue generates a key, has the CSR signed and checks the answer.
func (m *Manager) issue(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	chain, err := m.signer.Sign(ctx, id, csr)
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	if len(chain) == 0 {
		return nil, errors.New("ca returned an empty chain")
	}
	leaf := chain[0]
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("ca returned a leaf without a spiffe id: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("ca returned a certificate for %s (misconfigured signer?)", got)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("ca returned a certificate for another key (misconfigured signer?)")
	}
	now := m.now()
	if !now.Before(leaf.NotAfter) || !leaf.NotBefore.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("ca returned a certificate valid %s..%s, already expired (clock skew between node and ca?)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if m.bundle != nil {
		if _, _, err := x509svid.Verify(chain, m.bundle, x509svid.WithTime(now)); err != nil {
			return nil, fmt.Errorf("ca returned a chain that does not verify against the trust bundle (ca rotated?): %w", err)
		}
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func (m *Manager) finish(e *entry, c *call, svid *x509svid.SVID, err error) {
	if err != nil {
		m.csrs.WithLabelValues("failed").Inc()
	} else {
		m.csrs.WithLabelValues("issued").Inc()
	}
	m.mu.Lock()
	now := m.now()
	e.inflight = nil
	if err != nil {
		e.failures++
		e.lastErr = err
		e.retryAt = now.Add(m.backoff(e.failures))
	} else {
		e.svid = svid
		e.failures = 0
		e.lastErr = nil
		e.retryAt = time.Time{}
		e.rotateAt = rotateAt(svid.Certificates[0], now.Add(m.minBackoff))
	}
	c.svid, c.err = svid, err
	m.mu.Unlock()
	close(c.done)
	m.poke()
}

// failing counts the identities whose last CSR failed.
func (m *Manager) failing() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.entries {
		if e.failures > 0 {
			n++
		}
	}
	return n
}

// earliestExpiry is the Unix time of the first NotAfter among the held certificates.
func (m *Manager) earliestExpiry() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first time.Time
	for _, e := range m.entries {
		if e.svid == nil {
			continue
		}
		if na := e.svid.Certificates[0].NotAfter; first.IsZero() || na.Before(first) {
			first = na
		}
	}
	if first.IsZero() {
		return 0
	}
	return float64(first.Unix())
}

// rotateAt returns the half-life of cert, but not before notBefore, so a CA
// issuing very short certificates cannot make Run spin.
func rotateAt(cert *x509.Certificate, notBefore time.Time) time.Time {
	half := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
	if half.Before(notBefore) {
		return notBefore
	}
	return half
}

// backoff returns the wait after the given number of consecutive failures.
func (m *Manager) backoff(failures int) time.Duration {
	d := m.minBackoff
	for i := 1; i < failures && d < m.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, m.maxBackoff)
	return min(d+m.jitter(d), m.maxBackoff)
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// CertificateInfo describes one identity's certificate for /config_dump.
// It never contains private keys.
type CertificateInfo struct {
	ID string `json:"id"`
	// State is "valid", "renewing" (a CSR is in flight while a valid
	// certificate is served), "pending" (no valid certificate yet),
	// "expired" or "failed: <error>" (the last CSR failed; a still-valid
	// certificate, if any, is served meanwhile).
	State     string    `json:"state"`
	Serial    string    `json:"serial,omitempty"` // hex
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// RotateAt is when the next CSR is due: the half-life, or the end of
	// the backoff after a failure.
	RotateAt time.Time `json:"rotateAt,omitzero"`
	// Failures counts consecutive failed CSRs.
	Failures int `json:"failures,omitempty"`
	// Chain is the public certificate chain, one PEM block per element,
	// leaf first.
	Chain []string `json:"chain,omitempty"`
}

// Certificates reports every registered identity, sorted by ID.
func (m *Manager) Certificates() []CertificateInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	out := make([]CertificateInfo, 0, len(m.entries))
	for _, e := range m.entries {
		info := CertificateInfo{ID: e.id.String(), Failures: e.failures}
		switch {
		case e.inflight != nil && e.valid(now):
			info.State = "renewing"
		case e.inflight != nil:
			info.State = "pending"
		case e.lastErr != nil:
			info.State = "failed: " + e.lastErr.Error()
		case e.valid(now):
			info.State = "valid"
		case e.svid != nil:
			info.State = "expired"
		default:
			info.State = "pending"
		}
		if e.inflight == nil {
			info.RotateAt = e.nextAttempt()
		}
		if e.svid != nil {
			leaf := e.svid.Certificates[0]
			info.Serial = leaf.SerialNumber.Text(16)
			info.NotBefore = leaf.NotBefore
			info.NotAfter = leaf.NotAfter
			for _, c := range e.svid.Certificates {
				info.Chain = append(info.Chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
			}
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b CertificateInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
