package route

import (
	"net/http"
	"net/url"
	"strings"
)

// matches reports whether r satisfies every condition of c (hostnames are checked by the
// caller).
func (c *candidate) matches(r *http.Request, req *request) bool {
	if c.method != "" && r.Method != c.method {
		return false
	}
	if !c.path.match(req.path) {
		return false
	}
	if c.isGRPCish && (!c.service.any || !c.grpcMeth.any) {
		if !req.grpc || !c.service.match(req.service) || !c.grpcMeth.match(req.method) {
			return false
		}
	}
	for i := range c.headers {
		h := &c.headers[i]
		v, ok := headerValue(r, h.name)
		if !ok || !h.match(v) {
			return false
		}
	}
	for i := range c.query {
		q := &c.query[i]
		v, ok := queryValue(r.URL.RawQuery, q.name)
		if !ok || !q.match(v) {
			return false
		}
	}
	return true
}

// headerValue returns the value of the header with canonical name, its values joined with ","
// when it is repeated. Host is r.Host.
func headerValue(r *http.Request, name string) (string, bool) {
	if name == "Host" {
		return r.Host, r.Host != ""
	}
	vs := r.Header[name]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// queryValue returns the first value of the query parameter name (case-sensitive) in a raw
// query, decoded. It allocates only when the key or value is percent-encoded. Pairs containing
// ";" are skipped, as net/url does.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" || strings.IndexByte(pair, ';') >= 0 {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if !queryEqual(k, name) {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			dv, err := url.QueryUnescape(v)
			if err != nil {
				continue
			}
			v = dv
		}
		return v, true
	}
	return "", false
}

// queryEqual compares a raw query key with a decoded name.
func queryEqual(rawKey, name string) bool {
	if !strings.ContainsAny(rawKey, "%+") {
		return rawKey == name
	}
	k, err := url.QueryUnescape(rawKey)
	return err == nil && k == name
}
