package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
	"github.com/warren-mesh/warren/ztunnel/authz"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// gRPC status codes the waypoint answers with.
const (
	grpcNotFound         = 5
	grpcPermissionDenied = 7
	grpcDeadlineExceeded = 4
	grpcUnavailable      = 14
	grpcInternal         = 13
)

// maxRetryBody is the largest request body buffered so that a request can be retried.
const maxRetryBody = 64 << 10

// forward is one request's routing decision, carried to the upstream round tripper in the
// request's context.
type forward struct {
	c       *compiled
	info    *streamInfo
	dst     destination
	match   *route.Match
	backend *nodeconfig.RouteBackend
	aroute  authz.Route
	ep      state.Endpoint
	grpc    bool
	retry   *nodeconfig.RouteRetry
	// backendTimeout bounds each attempt; zero means none.
	backendTimeout time.Duration
}

type forwardKey struct{}

func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// serveHTTP handles one request of an inner stream: route, authorize, filter, forward.
func (w *Waypoint) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info, _ := r.Context().Value(infoKey{}).(*streamInfo)
	sw := &statusWriter{ResponseWriter: rw}
	f := &forward{info: info, grpc: isGRPC(r)}
	if err := normalizePath(r); err != nil {
		w.fail(sw, f, http.StatusBadRequest, grpcInternal, "waypoint: "+err.Error())
		w.tel.request(f, sw.status(), time.Since(start))
		return
	}
	w.route(sw, r, f)
	w.tel.request(f, sw.status(), time.Since(start))
}

func (w *Waypoint) route(rw *statusWriter, r *http.Request, f *forward) {
	if f.info == nil {
		w.fail(rw, f, http.StatusInternalServerError, grpcInternal, "waypoint: request without stream")
		return
	}
	c := w.current()
	d, err := c.resolve(f.info.authority, w.cfg.Identity.String())
	if err != nil {
		// The config changed under an open stream.
		w.fail(rw, f, http.StatusServiceUnavailable, grpcUnavailable, "waypoint: destination no longer served: "+err.Error())
		return
	}
	f.c, f.dst = c, d
	if m := c.routes.Match(d.parent, r); m != nil {
		f.match = m
		f.aroute = authz.Route{Kind: m.Route.GetKind(), Namespace: m.Route.GetNamespace(), Name: m.Route.GetName()}
		f.retry = m.Rule.GetRetry()
		f.backendTimeout = time.Duration(m.Rule.GetBackendTimeoutMs()) * time.Millisecond
		if len(m.Rule.GetBackends()) > 0 || d.server == nil {
			// Service parents need backends (Gateway API: none answers 500) unless the rule
			// redirects; Server parents (inbound, Linkerd style) forward to the pod when the rule
			// names none.
			f.backend = m.PickBackend(w.rand())
			if (f.backend == nil || f.backend.GetService() == "") && !m.Redirects() {
				w.fail(rw, f, http.StatusInternalServerError, grpcInternal, "waypoint: route rule has no usable backend")
				return
			}
			if f.backend != nil && f.backend.GetService() == "" {
				f.backend = nil
			}
		}
	} else if c.routes.HasRoutes(d.parent, nodeconfig.RouteKind_ROUTE_KIND_UNSPECIFIED) {
		w.tel.notFound()
		w.fail(rw, f, http.StatusNotFound, grpcNotFound, "no route found for request")
		return
	}

	if f.ep, err = c.endpoint(d, f.backend); err != nil {
		w.fail(rw, f, http.StatusServiceUnavailable, grpcUnavailable, "waypoint: "+err.Error())
		return
	}
	if !w.authorize(f, f.ep) {
		w.fail(rw, f, http.StatusForbidden, grpcPermissionDenied, "unauthorized request on route")
		return
	}

	if f.match != nil {
		if redir := f.match.ApplyRequest(r, f.backend); redir != nil {
			rw.Header().Set("Location", redir.Location)
			rw.WriteHeader(redir.StatusCode)
			return
		}
		if ms := f.match.Rule.GetTimeoutMs(); ms > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), time.Duration(ms)*time.Millisecond)
			defer cancel()
			r = r.WithContext(ctx)
		}
	}
	if f.retry.GetAttempts() > 0 && r.Body != nil && r.Body != http.NoBody {
		// Only small bodies are buffered for replay; a bigger one disables retries.
		if r.ContentLength > 0 && r.ContentLength <= maxRetryBody {
			body, err := io.ReadAll(io.LimitReader(r.Body, maxRetryBody+1))
			if err != nil {
				w.fail(rw, f, http.StatusBadRequest, grpcInternal, "waypoint: reading request body: "+err.Error())
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		} else {
			f.retry = nil
		}
	}
	w.proxy.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), forwardKey{}, f)))
}

// authorize decides a request to endpoint ep at L4 and L7 at once: the Server's authorizations
// targeting the Server or its Namespace, and those targeting the matched route; else the
// Server's access policy, else the default policy. Denies and audits are security events.
func (w *Waypoint) authorize(f *forward, ep state.Endpoint) bool {
	dec := f.c.view.Authz().EvaluateRoute(ep.Workload, ep.Addr.Port(), authzSource(f.info), f.aroute)
	if !dec.Allow || dec.Audit {
		w.tel.decision(f.info, f.dst, ep, routeName(f.match), dec)
	} else {
		w.tel.allowed(dec)
	}
	return dec.Allow
}

func authzSource(info *streamInfo) authz.Source {
	return authz.Source{Identity: info.peer, Addr: info.src.Addr()}
}

func routeName(m *route.Match) string {
	if m == nil {
		return ""
	}
	return m.Route.GetNamespace() + "/" + m.Route.GetName()
}

// fail answers a request the waypoint refuses or cannot forward: an HTTP status with a short
// body, or, for gRPC, a trailers-only response with HTTP 200.
func (w *Waypoint) fail(rw http.ResponseWriter, f *forward, code, grpcCode int, msg string) {
	if f.grpc {
		h := rw.Header()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcCode))
		h.Set("Grpc-Message", msg)
		rw.WriteHeader(http.StatusOK)
		return
	}
	h := rw.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	rw.WriteHeader(code)
	_, _ = io.WriteString(rw, msg+"\n")
}

// newProxy builds the reverse proxy that forwards authorized requests upstream.
func (w *Waypoint) newProxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			f := pr.In.Context().Value(forwardKey{}).(*forward)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = f.ep.Addr.String()
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     w.up,
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
		ModifyResponse: func(res *http.Response) error {
			f := res.Request.Context().Value(forwardKey{}).(*forward)
			if f.match != nil {
				f.match.ApplyResponse(res.Header, f.backend)
			}
			return nil
		},
		ErrorHandler: func(rw http.ResponseWriter, r *http.Request, err error) {
			f := r.Context().Value(forwardKey{}).(*forward)
			switch {
			case errors.Is(err, errDenied):
				w.fail(rw, f, http.StatusForbidden, grpcPermissionDenied, "unauthorized request on route")
			case errors.Is(err, context.DeadlineExceeded):
				w.fail(rw, f, http.StatusGatewayTimeout, grpcDeadlineExceeded, "upstream request timeout")
			case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
				// The client went away; nobody reads the answer.
				rw.WriteHeader(499)
			default:
				w.fail(rw, f, http.StatusServiceUnavailable, grpcUnavailable, "upstream unavailable")
			}
		},
	}
}

// statusWriter records the status code for metrics. It keeps Flush and trailers working
// through Unwrap (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 && code >= 200 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
