//lint:file-ignore SA1019 The brief names golang.org/x/net/http2 (h2c on inner HBONE streams); net/http's own HTTP/2 cannot serve or dial pre-established unencrypted connections the same way.

// Package waypoint is Warren's shared L7 proxy: it accepts HBONE streams that source ztunnels send
// to it for destinations bound with warren.dev/use-waypoint, finds the destination (a Service VIP
// or a pod), detects or looks up the protocol, and then either relays opaque TCP after an L4
// authorization, or serves HTTP/1.1, HTTP/2 and gRPC: each request is routed by the HTTPRoutes and
// GRPCRoutes of the config (waypoint/route), authorized with the client's real identity (the
// HBONE peer certificate) against the destination endpoint's Server, including authorizations
// that target the matched route (ztunnel/authz), and forwarded over pooled HBONE connections that
// present the waypoint's own certificate to the chosen endpoint's ztunnel.
//
// Construct with New (which binds the HBONE, admin, metrics and readiness ports and fails fast),
// then Run until the context ends. cmd/warren-waypoint and tests import it; nothing else should.
package waypoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/hbone"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/pool"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// Defaults of the Config limits.
const (
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultDetectTimeout     = 5 * time.Second
	DefaultConnectTimeout    = 10 * time.Second
)

// Config of a waypoint.
type Config struct {
	// Identity is the waypoint's own SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>): it serves HBONE
	// with it and forwards with it. Required.
	Identity spiffeid.ID
	// Identities, when set, issues and rotates the waypoint's certificate (Run runs it); SVID
	// is then Identities.Source(Identity) unless set.
	Identities *identity.Manager
	// SVID is the waypoint's certificate source (a static certificate in tests and standalone
	// mode). Required unless Identities is set.
	SVID x509svid.Source
	// Bundle has the mesh's trust anchors. Required.
	Bundle x509bundle.Source
	// Store holds the config; the caller (config stream or file watcher) swaps snapshots in.
	Store *state.Store
	// HBONEAddr is where HBONE is served, usually ":15008". Ignored when HBONEListener is set.
	HBONEAddr     string
	HBONEListener net.Listener
	// AdminAddr, MetricsAddr and ReadyAddr are the debug ports; empty disables each. The usual
	// values are ":15000", ":15020" and ":15021".
	AdminAddr, MetricsAddr, ReadyAddr string
	// Registry receives the metrics and is what /metrics serves. Required.
	Registry *prometheus.Registry
	// Log is the component log; SecurityLog gets security events (nil: Log). Required: Log.
	Log, SecurityLog *slog.Logger
	// Dial opens plain TCP connections (to HBONE ports, and to endpoints outside the mesh).
	// Nil uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// EndpointHBONEPort is the port endpoints' ztunnels accept HBONE on; zero means 15008.
	EndpointHBONEPort uint16
	// MaxHeaderBytes bounds request headers (431 beyond); zero means 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout closes clients that do not send a request's headers in time; zero
	// means 10s. IdleTimeout closes idle client connections; zero means 5m.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// DetectTimeout is how long protocol detection waits for the client's first bytes before
	// treating the stream as opaque TCP (server-first protocols); zero means 5s.
	DetectTimeout time.Duration
	// ConnectTimeout bounds opening a stream to an endpoint; zero means 10s.
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds inbound TLS handshakes; zero means 10s.
	HandshakeTimeout time.Duration
	// Pool tunes the outbound HBONE pool (Dial and Epoch are set by the waypoint).
	Pool pool.Config
	// Rand picks weighted backends; nil uses a random source. Tests set a seeded one.
	Rand func() uint64
}

// Waypoint is one running waypoint proxy.
type Waypoint struct {
	cfg  Config
	log  *slog.Logger
	tel  *telemetry
	hb   *hbone.Server
	ln   net.Listener
	pool *pool.Pool

	h1    *http.Server  // serves HTTP/1.1 on inner streams
	h2    *http2.Server // serves HTTP/2 (h2c) on inner streams
	proxy http.Handler
	up    *upstream

	cur   atomic.Pointer[compiled]
	unsub func()

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ports  []served

	mu      sync.Mutex
	streams int // open inbound streams
	rnd     *rand.Rand
}

type served struct {
	srv *http.Server
	ln  net.Listener
}

// New validates cfg and binds the waypoint's ports.
func New(cfg Config) (*Waypoint, error) {
	if cfg.Identities != nil && cfg.SVID == nil {
		cfg.SVID = cfg.Identities.Source(cfg.Identity)
	}
	switch {
	case cfg.Identity.IsZero():
		return nil, errors.New("new waypoint: Identity is required (the waypoint's own SPIFFE ID)")
	case cfg.SVID == nil || cfg.Bundle == nil || cfg.Store == nil || cfg.Registry == nil || cfg.Log == nil:
		return nil, errors.New("new waypoint: svid (or identities), bundle, store, registry and log are required")
	case cfg.HBONEListener == nil && cfg.HBONEAddr == "":
		return nil, errors.New("new waypoint: HBONEAddr (usually :15008) or HBONEListener is required")
	}
	if cfg.SecurityLog == nil {
		cfg.SecurityLog = cfg.Log
	}
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = d.DialContext
	}
	cfg.EndpointHBONEPort = cmpOr(cfg.EndpointHBONEPort, nodeconfig.DefaultHBONEPort)
	cfg.MaxHeaderBytes = cmpOr(cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	cfg.ReadHeaderTimeout = cmpOr(cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	cfg.IdleTimeout = cmpOr(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.DetectTimeout = cmpOr(cfg.DetectTimeout, DefaultDetectTimeout)
	cfg.ConnectTimeout = cmpOr(cfg.ConnectTimeout, DefaultConnectTimeout)

	tel, err := newTelemetry(cfg.Registry, cfg.SecurityLog)
	if err != nil {
		return nil, fmt.Errorf("new waypoint: %w", err)
	}
	w := &Waypoint{cfg: cfg, log: cfg.Log, tel: tel, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	w.ctx, w.cancel = context.WithCancel(context.Background())

	pcfg := cfg.Pool
	pcfg.Dial = w.dialHBONE
	pcfg.Epoch = func(context.Context, pool.Key) (string, error) {
		svid, err := cfg.SVID.GetX509SVID()
		if err != nil {
			return "", fmt.Errorf("waypoint certificate: %w", err)
		}
		return svid.Certificates[0].SerialNumber.String(), nil
	}
	if w.pool, err = pool.New(pcfg); err != nil {
		return nil, fmt.Errorf("new waypoint: %w", err)
	}
	w.up = newUpstream(w)
	w.proxy = w.newProxy()
	w.h1 = &http.Server{
		Handler:           http.HandlerFunc(w.serveHTTP),
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          log.New(io.Discard, "", 0), // per-connection errors are the client's
		ConnContext:       connContext,
		ConnState:         connState,
	}
	w.h2 = &http2.Server{
		IdleTimeout:      cfg.IdleTimeout,
		MaxReadFrameSize: 1 << 20,
	}

	td := cfg.Identity.TrustDomain()
	hb, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig:        hbone.ServerTLSConfig(cfg.SVID, cfg.Bundle, tlsconfig.AuthorizeMemberOf(td)),
		Handler:          w.handleStream,
		HandshakeTimeout: cfg.HandshakeTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("new waypoint: %w", err)
	}
	w.hb = hb
	w.recompile(cfg.Store.Load())
	w.unsub = cfg.Store.Subscribe(func(_, cur *state.View) { w.recompile(cur) })

	w.ln = cfg.HBONEListener
	if w.ln == nil {
		if w.ln, err = net.Listen("tcp", cfg.HBONEAddr); err != nil {
			w.unsub()
			return nil, fmt.Errorf("new waypoint: hbone port: %w (is another waypoint running here?)", err)
		}
	}
	if err := w.bindPorts(); err != nil {
		w.unsub()
		w.ln.Close()
		for _, p := range w.ports {
			p.ln.Close()
		}
		return nil, err
	}
	return w, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Run serves until ctx ends, then drains: HBONE connections get GOAWAY and open streams finish
// or are closed after the hbone shutdown timeout.
func (w *Waypoint) Run(ctx context.Context) error {
	defer w.cancel()
	defer w.unsub()
	errc := make(chan error, 2)
	if w.cfg.Identities != nil {
		if err := w.cfg.Identities.Prefetch(w.cfg.Identity); err != nil {
			return fmt.Errorf("waypoint identity: %w", err)
		}
		go func() {
			if err := w.cfg.Identities.Run(w.ctx); err != nil {
				errc <- fmt.Errorf("identity manager: %w", err)
			}
		}()
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.pool.Run(w.ctx)
	}()
	for _, p := range w.ports {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				w.log.Error("debug port stopped", "addr", p.ln.Addr().String(), "error", err)
			}
		}()
	}
	hbDone := make(chan error, 1)
	go func() { hbDone <- w.hb.Serve(ctx, w.ln) }()
	w.log.Info("waypoint serving", "identity", w.cfg.Identity.String(), "hbone", w.ln.Addr().String())
	var err error
	select {
	case <-ctx.Done():
		// Idle HTTP/1.1 client connections close now, requests in flight finish; HBONE sends
		// GOAWAY and waits for its streams (hbone.ServerConfig.ShutdownTimeout).
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		go func() { _ = w.h1.Shutdown(sctx) }()
		err = <-hbDone
		cancel()
	case err = <-hbDone:
	case err = <-errc:
	}
	w.log.Info("draining")
	w.ln.Close()
	for _, p := range w.ports {
		p.srv.Close()
	}
	w.cancel()
	w.wg.Wait()
	w.up.close()
	w.pool.Close()
	return err
}

// Addrs returns the bound HBONE address followed by the admin, metrics and readiness addresses
// (disabled ones omitted), so tests can bind ":0".
func (w *Waypoint) Addrs() []net.Addr {
	out := []net.Addr{w.ln.Addr()}
	for _, p := range w.ports {
		out = append(out, p.ln.Addr())
	}
	return out
}

// Ready reports whether the waypoint has a config and a certificate.
func (w *Waypoint) Ready() error {
	if w.cfg.Store.Load() == nil {
		return errors.New("no config yet")
	}
	if _, err := w.cfg.SVID.GetX509SVID(); err != nil {
		return fmt.Errorf("no certificate: %w", err)
	}
	return nil
}

// ConfigDump is what /config_dump serves: the config, route compile errors, the waypoint's
// certificates (public parts only), and pool state.
type ConfigDump struct {
	Identity     string                     `json:"identity"`
	Version      string                     `json:"version"`
	Config       json.RawMessage            `json:"config,omitempty"`
	RouteErrors  []string                   `json:"routeErrors,omitempty"`
	Certificates []identity.CertificateInfo `json:"certificates,omitempty"`
	OpenStreams  int                        `json:"openStreams"`
	Pool         pool.Stats                 `json:"pool"`
}

// Dump returns the current ConfigDump.
func (w *Waypoint) Dump() (ConfigDump, error) {
	d := ConfigDump{Identity: w.cfg.Identity.String(), Pool: w.pool.Stats()}
	w.mu.Lock()
	d.OpenStreams = w.streams
	w.mu.Unlock()
	if w.cfg.Identities != nil {
		d.Certificates = w.cfg.Identities.Certificates()
	}
	if c := w.cur.Load(); c != nil {
		d.Version = c.view.Version()
		for _, e := range c.routeErrs {
			d.RouteErrors = append(d.RouteErrors, e.Error())
		}
		raw, err := protojson.Marshal(c.view.Snapshot())
		if err != nil {
			return d, fmt.Errorf("dump config: %w", err)
		}
		d.Config = raw
	}
	return d, nil
}

func (w *Waypoint) bindPorts() error {
	admin := http.NewServeMux()
	admin.HandleFunc("GET /config_dump", func(rw http.ResponseWriter, r *http.Request) {
		d, err := w.Dump()
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(rw)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	})
	metrics := http.NewServeMux()
	mh := promhttp.HandlerFor(w.cfg.Registry, promhttp.HandlerOpts{Registry: w.cfg.Registry})
	metrics.Handle("GET /metrics", mh)
	metrics.Handle("GET /stats/prometheus", mh)
	ready := http.NewServeMux()
	ready.HandleFunc("GET /healthz/ready", func(rw http.ResponseWriter, r *http.Request) {
		if err := w.Ready(); err != nil {
			http.Error(rw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ready")
	})
	for _, b := range []struct {
		name, addr string
		h          http.Handler
	}{{"admin", w.cfg.AdminAddr, admin}, {"metrics", w.cfg.MetricsAddr, metrics}, {"readiness", w.cfg.ReadyAddr, ready}} {
		if b.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", b.addr)
		if err != nil {
			return fmt.Errorf("new waypoint: %s port: %w (is another waypoint running here?)", b.name, err)
		}
		w.ports = append(w.ports, served{srv: &http.Server{Handler: b.h, ReadHeaderTimeout: 10 * time.Second}, ln: ln})
	}
	return nil
}

// rand returns a random number for weighted backend picks.
func (w *Waypoint) rand() uint64 {
	if w.cfg.Rand != nil {
		return w.cfg.Rand()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rnd.Uint64()
}
