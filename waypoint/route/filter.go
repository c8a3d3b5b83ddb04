package route

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Redirect is the answer a RequestRedirect filter gives instead of forwarding.
type Redirect struct {
	// Location is the absolute URL for the Location header.
	Location string
	// StatusCode is 301, 302 (the default), 303, 307 or 308.
	StatusCode int
}

// rule is the compiled form of a RouteRule's filters and backends.
type rule struct {
	filters  filters
	backends []backend // parallel to RouteRule.Backends
	// cum[i] is the sum of the weights of backends[0..i].
	cum   []uint64
	total uint64
}

type backend struct {
	src     *nodeconfig.RouteBackend
	filters filters
}

// filters are the compiled filters of a rule or a backend, in order.
type filters struct {
	request  []requestFilter
	response []*headerModifier
}

// requestFilter is exactly one of its fields.
type requestFilter struct {
	headers  *headerModifier
	redirect *redirect
	rewrite  *rewrite
}

// headerModifier has canonical header names.
type headerModifier struct {
	set, add []header
	remove   []string
}

type header struct{ name, value string }

// pathModifier replaces the full path or the matched prefix.
type pathModifier struct {
	full  bool
	value string
}

type redirect struct {
	scheme, hostname string
	port             uint32
	status           int
	path             *pathModifier
}

type rewrite struct {
	hostname string
	path     *pathModifier
}

// PickBackend makes the weighted choice among the rule's backends: n is a random number from
// the caller (any uint64; tests pass fixed ones). It returns nil when no backend has weight,
// which Gateway API answers with 500. A picked backend with an empty Service could not be
// resolved by the controller and is answered with 500 too.
func (m *Match) PickBackend(n uint64) *nodeconfig.RouteBackend {
	r := m.rule
	if r.total == 0 {
		return nil
	}
	x := n % r.total
	for i, c := range r.cum {
		if x < c {
			return r.backends[i].src
		}
	}
	return nil // unreachable: x < total == cum[len-1]
}

// Redirects reports whether the rule's own filters answer with a redirect: such a rule needs
// no backend (Gateway API redirect rules usually have none), so the caller checks this before
// answering 500 for a nil PickBackend.
func (m *Match) Redirects() bool {
	for _, f := range m.rule.filters.request {
		if f.redirect != nil {
			return true
		}
	}
	return false
}

// ApplyRequest applies the rule's filters, then those of be (nil, or one of m.Rule.Backends as
// PickBackend returns it), to the outgoing request in place, in order: RequestHeaderModifier
// (remove, then set, then add; a "Host" header sets r.Host) and URLRewrite (hostname sets
// r.Host; ReplaceFullPath and ReplacePrefixMatch set r.URL.Path and clear r.URL.RawPath; the
// query is kept). When a RequestRedirect filter is reached it returns the redirect to answer
// instead, built from the request as the filters before it left it. A rule whose only action
// is a redirect has no backends: call ApplyRequest(r, nil) before answering 500 for a nil
// backend.
func (m *Match) ApplyRequest(r *http.Request, be *nodeconfig.RouteBackend) *Redirect {
	if rd := m.rule.filters.applyRequest(r, m.prefix); rd != nil {
		return rd
	}
	if be == nil {
		return nil
	}
	return m.backendFilters(be).applyRequest(r, m.prefix)
}

// ApplyResponse applies the ResponseHeaderModifier filters of the rule, then those of be (nil,
// or one of m.Rule.Backends), to the response headers h.
func (m *Match) ApplyResponse(h http.Header, be *nodeconfig.RouteBackend) {
	for _, hm := range m.rule.filters.response {
		hm.apply(h, nil)
	}
	if be == nil {
		return
	}
	for _, hm := range m.backendFilters(be).response {
		hm.apply(h, nil)
	}
}

// backendFilters returns the compiled filters of be. A backend that is not one of the rule's
// (the caller built its own) is compiled now, ignoring filters that do not compile.
func (m *Match) backendFilters(be *nodeconfig.RouteBackend) *filters {
	for i := range m.rule.backends {
		if m.rule.backends[i].src == be {
			return &m.rule.backends[i].filters
		}
	}
	f, _ := compileFilters(m.Route.GetKind(), be.GetFilters(), true, true)
	return &f
}

func (f *filters) applyRequest(r *http.Request, prefix string) *Redirect {
	for _, rf := range f.request {
		switch {
		case rf.headers != nil:
			rf.headers.apply(r.Header, r)
		case rf.rewrite != nil:
			if rf.rewrite.hostname != "" {
				r.Host = rf.rewrite.hostname
			}
			if pm := rf.rewrite.path; pm != nil {
				r.URL.Path = pm.apply(r.URL.Path, prefix)
				r.URL.RawPath = ""
			}
		case rf.redirect != nil:
			return rf.redirect.answer(r, prefix)
		}
	}
	return nil
}

// apply modifies h; when r is non-nil (request headers) a Host header goes to r.Host.
func (hm *headerModifier) apply(h http.Header, r *http.Request) {
	for _, name := range hm.remove {
		delete(h, name)
	}
	for _, s := range hm.set {
		if r != nil && s.name == "Host" {
			r.Host = s.value
			continue
		}
		h[s.name] = []string{s.value}
	}
	for _, a := range hm.add {
		if r != nil && a.name == "Host" {
			r.Host = a.value
			continue
		}
		h[a.name] = append(h[a.name], a.value)
	}
}

// apply rewrites path. prefix is the matched PathPrefix without trailing "/": the rest of the
// path after it (empty or starting with "/") is appended to the replacement without its
// trailing "/", and an empty result is "/" (the Gateway API table for ReplacePrefixMatch).
func (pm *pathModifier) apply(path, prefix string) string {
	if pm.full {
		return pm.value
	}
	rest := path
	if strings.HasPrefix(path, prefix) {
		rest = path[len(prefix):]
	}
	out := strings.TrimRight(pm.value, "/") + rest
	if out == "" {
		return "/"
	}
	return out
}

// answer builds the redirect for r. The port follows Gateway API: the filter's port; else the
// well-known port of the filter's scheme; else the port the client addressed (the Host's, which
// in the mesh is the listener). Port 80 for http and 443 for https are left out.
func (rd *redirect) answer(r *http.Request, prefix string) *Redirect {
	scheme := rd.scheme
	if scheme == "" {
		switch {
		case r.URL.Scheme != "":
			scheme = r.URL.Scheme
		case r.TLS != nil:
			scheme = "https"
		default:
			scheme = "http"
		}
	}
	host, port := splitHostPort(r.Host)
	host = strings.TrimSuffix(host, ".")
	if rd.hostname != "" {
		host = rd.hostname
	}
	switch {
	case rd.port != 0:
		port = strconv.FormatUint(uint64(rd.port), 10)
	case rd.scheme == "http":
		port = "80"
	case rd.scheme == "https":
		port = "443"
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	u := url.URL{Scheme: scheme, RawQuery: r.URL.RawQuery}
	switch {
	case port != "":
		u.Host = net.JoinHostPort(host, port)
	case strings.IndexByte(host, ':') >= 0:
		u.Host = "[" + host + "]"
	default:
		u.Host = host
	}
	if rd.path != nil {
		u.Path = rd.path.apply(r.URL.Path, prefix)
	} else {
		u.Path, u.RawPath = r.URL.Path, r.URL.RawPath
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return &Redirect{Location: u.String(), StatusCode: rd.status}
}

// compileRule compiles a rule's filters and backends. allPrefix says whether every match of the
// rule is a PathPrefix, which ReplacePrefixMatch needs.
func compileRule(kind nodeconfig.RouteKind, r *nodeconfig.RouteRule) (*rule, error) {
	allPrefix := true
	for _, m := range r.GetMatches() {
		if p := m.GetPath(); p != nil && p.GetType() != nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX {
			allPrefix = false
		}
	}
	if kind == nodeconfig.RouteKind_ROUTE_KIND_GRPC {
		allPrefix = false
	}
	cr := &rule{}
	var err error
	if cr.filters, err = compileFilters(kind, r.GetFilters(), allPrefix, false); err != nil {
		return nil, err
	}
	for i, be := range r.GetBackends() {
		f, err := compileFilters(kind, be.GetFilters(), allPrefix, false)
		if err != nil {
			return nil, fmt.Errorf("backend %d (%s): %w", i, be.GetService(), err)
		}
		cr.backends = append(cr.backends, backend{src: be, filters: f})
		cr.total += uint64(be.GetWeight())
		cr.cum = append(cr.cum, cr.total)
	}
	return cr, nil
}

// compileFilters compiles filters in order. lenient skips filters that do not compile instead
// of failing.
func compileFilters(kind nodeconfig.RouteKind, fs []*nodeconfig.RouteFilter, allPrefix, lenient bool) (filters, error) {
	var (
		out                 filters
		redirects, rewrites int
	)
	for i, f := range fs {
		err := func() error {
			switch v := f.GetFilter().(type) {
			case *nodeconfig.RouteFilter_RequestHeaderModifier:
				hm, err := compileHeaderModifier(v.RequestHeaderModifier)
				if err != nil {
					return fmt.Errorf("request header modifier: %w", err)
				}
				out.request = append(out.request, requestFilter{headers: hm})
			case *nodeconfig.RouteFilter_ResponseHeaderModifier:
				hm, err := compileHeaderModifier(v.ResponseHeaderModifier)
				if err != nil {
					return fmt.Errorf("response header modifier: %w", err)
				}
				out.response = append(out.response, hm)
			case *nodeconfig.RouteFilter_RequestRedirect:
				if kind == nodeconfig.RouteKind_ROUTE_KIND_GRPC {
					return errors.New("request redirect is not a GRPCRoute filter")
				}
				rd, err := compileRedirect(v.RequestRedirect, allPrefix)
				if err != nil {
					return fmt.Errorf("request redirect: %w", err)
				}
				redirects++
				out.request = append(out.request, requestFilter{redirect: rd})
			case *nodeconfig.RouteFilter_UrlRewrite:
				if kind == nodeconfig.RouteKind_ROUTE_KIND_GRPC {
					return errors.New("url rewrite is not a GRPCRoute filter")
				}
				rw := &rewrite{hostname: v.UrlRewrite.GetHostname()}
				if h := rw.hostname; h != "" && !httpguts.ValidHostHeader(h) {
					return fmt.Errorf("url rewrite: hostname %q is not a valid host", h)
				}
				pm, err := compilePathModifier(v.UrlRewrite.GetPath(), allPrefix)
				if err != nil {
					return fmt.Errorf("url rewrite: %w", err)
				}
				rw.path = pm
				rewrites++
				out.request = append(out.request, requestFilter{rewrite: rw})
			default:
				return errors.New("empty or unknown filter: the controller and waypoint disagree on the config version")
			}
			return nil
		}()
		if err != nil {
			if lenient {
				continue
			}
			return filters{}, fmt.Errorf("filter %d: %w", i, err)
		}
	}
	if !lenient {
		switch {
		case redirects > 0 && rewrites > 0:
			return filters{}, errors.New("a request redirect and a url rewrite cannot be used together")
		case redirects > 1:
			return filters{}, errors.New("more than one request redirect")
		case rewrites > 1:
			return filters{}, errors.New("more than one url rewrite")
		}
	}
	return out, nil
}

func compileHeaderModifier(hm *nodeconfig.HeaderModifier) (*headerModifier, error) {
	out := &headerModifier{}
	conv := func(hs []*nodeconfig.Header, op string) ([]header, error) {
		var res []header
		for _, h := range hs {
			if !httpguts.ValidHeaderFieldName(h.GetName()) {
				return nil, fmt.Errorf("%s: %q is not a valid header name", op, h.GetName())
			}
			if !httpguts.ValidHeaderFieldValue(h.GetValue()) {
				return nil, fmt.Errorf("%s %s: %q is not a valid header value", op, h.GetName(), h.GetValue())
			}
			res = append(res, header{name: textproto.CanonicalMIMEHeaderKey(h.GetName()), value: h.GetValue()})
		}
		return res, nil
	}
	var err error
	if out.set, err = conv(hm.GetSet(), "set"); err != nil {
		return nil, err
	}
	if out.add, err = conv(hm.GetAdd(), "add"); err != nil {
		return nil, err
	}
	for _, name := range hm.GetRemove() {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("remove: %q is not a valid header name", name)
		}
		out.remove = append(out.remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	return out, nil
}

func compileRedirect(rd *nodeconfig.RequestRedirect, allPrefix bool) (*redirect, error) {
	out := &redirect{scheme: rd.GetScheme(), hostname: rd.GetHostname(), port: rd.GetPort(), status: int(rd.GetStatusCode())}
	switch out.scheme {
	case "", "http", "https":
	default:
		return nil, fmt.Errorf("scheme %q is not http or https", out.scheme)
	}
	if h := out.hostname; h != "" && (strings.ContainsAny(h, ":/[]") || !httpguts.ValidHostHeader(h)) {
		return nil, fmt.Errorf("hostname %q is not a valid host name", h)
	}
	if out.port > 65535 {
		return nil, fmt.Errorf("port %d is out of range", out.port)
	}
	switch out.status {
	case 0:
		out.status = http.StatusFound
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return nil, fmt.Errorf("status code %d is not 301, 302, 303, 307 or 308", out.status)
	}
	var err error
	if out.path, err = compilePathModifier(rd.GetPath(), allPrefix); err != nil {
		return nil, err
	}
	return out, nil
}

func compilePathModifier(pm *nodeconfig.PathModifier, allPrefix bool) (*pathModifier, error) {
	if pm == nil {
		return nil, nil
	}
	switch v := pm.GetModifier().(type) {
	case *nodeconfig.PathModifier_ReplaceFullPath:
		if !strings.HasPrefix(v.ReplaceFullPath, "/") {
			return nil, fmt.Errorf("replace full path %q does not start with \"/\"", v.ReplaceFullPath)
		}
		return &pathModifier{full: true, value: v.ReplaceFullPath}, nil
	case *nodeconfig.PathModifier_ReplacePrefixMatch:
		if !allPrefix {
			return nil, errors.New("replace prefix match needs every match of the rule to be a PathPrefix")
		}
		if v.ReplacePrefixMatch != "" && !strings.HasPrefix(v.ReplacePrefixMatch, "/") {
			return nil, fmt.Errorf("replace prefix match %q does not start with \"/\"", v.ReplacePrefixMatch)
		}
		return &pathModifier{value: v.ReplacePrefixMatch}, nil
	}
	return nil, errors.New("path modifier sets neither replace full path nor replace prefix match")
}
