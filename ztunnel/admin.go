package ztunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/warren-mesh/warren/ztunnel/identity"
)

// ConfigDump is what /config_dump serves: the node's config, enrolled workloads and the
// certificates it holds (public parts only; private keys never leave the identity manager).
type ConfigDump struct {
	Node string `json:"node"`
	// Version is the config's version; BuildVersion the binary's.
	Version      string                     `json:"version"`
	BuildVersion string                     `json:"buildVersion,omitempty"`
	Config       json.RawMessage            `json:"config,omitempty"`
	Workloads    []Enrolled                 `json:"workloads"`
	Certificates []identity.CertificateInfo `json:"certificates"`
}

// Dump returns the current ConfigDump.
func (z *Ztunnel) Dump() (ConfigDump, error) {
	d := ConfigDump{Node: z.cfg.Node, BuildVersion: z.cfg.BuildVersion, Workloads: z.Workloads(), Certificates: z.cfg.Identities.Certificates()}
	if v := z.cfg.Store.Load(); v != nil {
		d.Version = v.Version()
		raw, err := protojson.Marshal(v.Snapshot())
		if err != nil {
			return d, fmt.Errorf("dump config: %w", err)
		}
		d.Config = raw
	}
	return d, nil
}

func (z *Ztunnel) bindNodePorts() error {
	bind := func(name, addr string, h http.Handler) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("new ztunnel: %s port: %w (is another ztunnel running on this node?)", name, err)
		}
		z.listeners = append(z.listeners, ln)
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		z.servers = append(z.servers, served{srv: srv, ln: ln})
		return nil
	}
	admin := http.NewServeMux()
	admin.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		d, err := z.Dump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, d)
	})
	z.registerDebug(admin)
	// Profiles are for someone on the node (or the bench harness): loopback callers only, never
	// through the API server's pods/proxy.
	admin.Handle("/debug/pprof/", localOnly(http.HandlerFunc(pprof.Index)))
	admin.Handle("/debug/pprof/profile", localOnly(http.HandlerFunc(pprof.Profile)))
	admin.Handle("/debug/pprof/trace", localOnly(http.HandlerFunc(pprof.Trace)))
	metrics := http.NewServeMux()
	mh := promhttp.HandlerFor(z.cfg.Registry, promhttp.HandlerOpts{Registry: z.cfg.Registry})
	metrics.Handle("GET /metrics", mh)
	metrics.Handle("GET /stats/prometheus", mh)
	ready := http.NewServeMux()
	ready.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if err := z.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	// AdminAddr may list several addresses, comma-separated: the first is the one Addrs reports
	// first; the others (e.g. the pod IP the API server's pods/proxy reaches, next to a loopback
	// address for profiles) come after the readiness port.
	adminAddrs := strings.Split(z.cfg.AdminAddr, ",")
	for _, b := range []struct {
		name, addr string
		h          http.Handler
	}{{"admin", strings.TrimSpace(adminAddrs[0]), admin}, {"metrics", z.cfg.MetricsAddr, metrics}, {"readiness", z.cfg.ReadyAddr, ready}} {
		if err := bind(b.name, b.addr, b.h); err != nil {
			return err
		}
	}
	for _, a := range adminAddrs[1:] {
		if err := bind("admin", strings.TrimSpace(a), admin); err != nil {
			return err
		}
	}
	return nil
}

// localOnly refuses callers that are not on loopback.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			http.Error(w, "only from localhost", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type served struct {
	srv *http.Server
	ln  net.Listener
}

func (z *Ztunnel) serveNodePorts() {
	for _, s := range z.servers {
		z.wg.Add(1)
		go func() {
			defer z.wg.Done()
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				z.log.Error("node port stopped", "addr", s.ln.Addr().String(), "error", err)
			}
		}()
		context.AfterFunc(z.ctx, func() { s.srv.Close() })
	}
}

// Ready reports whether the ztunnel has a config and every Config.ReadyChecks passes; when not,
// the error has every failure's message, separated by "; ".
func (z *Ztunnel) Ready() error {
	var errs notReady
	if z.cfg.Store.Load() == nil {
		errs = append(errs, errors.New("no config yet"))
	}
	for _, check := range z.cfg.ReadyChecks {
		if err := check(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// notReady is Ready's error: every failed check.
type notReady []error

func (e notReady) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e notReady) Unwrap() []error { return e }

// Addrs returns the bound node ports in the order admin, metrics, readiness (disabled ones
// omitted), so tests can bind ":0".
func (z *Ztunnel) Addrs() []net.Addr {
	out := make([]net.Addr, 0, len(z.listeners))
	for _, ln := range z.listeners {
		out = append(out, ln.Addr())
	}
	return out
}
