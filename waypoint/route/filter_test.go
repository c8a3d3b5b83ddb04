package route_test

import (
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

func TestPickBackend(t *testing.T) {
	backends := []*nodeconfig.RouteBackend{
		{Service: "ns/a", Port: 80, Weight: 1},
		{Service: "ns/zero", Port: 80, Weight: 0},
		{Service: "ns/b", Port: 80, Weight: 3},
		{Service: "", Port: 80, Weight: 1}, // unresolved: picked, the caller answers 500
	}
	rule := &nodeconfig.RouteRule{Backends: backends}
	m := compile(t, httpRoute("r", rule)).Match(svcParent, newRequest("GET", "/"))

	// Every n in [0, total) picks one backend; the counts over k full cycles are the weights.
	counts := map[string]int{}
	const total, cycles = 5, 7
	for n := uint64(0); n < total*cycles; n++ {
		be := m.PickBackend(n)
		if be == nil {
			t.Fatalf("PickBackend(%d) = nil", n)
		}
		counts[be.GetService()]++
	}
	if diff := cmp.Diff(map[string]int{"ns/a": 7, "ns/b": 21, "": 7}, counts); diff != "" {
		t.Errorf("picks over %d cycles (-want +got):\n%s", cycles, diff)
	}
	// Large n wraps around too.
	if be := m.PickBackend(^uint64(0)); be == nil || be.GetWeight() == 0 {
		t.Errorf("PickBackend(max) = %v", be)
	}
	// n selects deterministically.
	for n, want := range map[uint64]string{0: "ns/a", 1: "ns/b", 3: "ns/b", 4: "", 5: "ns/a"} {
		if got := m.PickBackend(n).GetService(); got != want {
			t.Errorf("PickBackend(%d) = %q, want %q", n, got, want)
		}
	}

	for name, bes := range map[string][]*nodeconfig.RouteBackend{
		"no backends": nil,
		"all weights zero": {
			{Service: "ns/a", Port: 80},
			{Service: "ns/b", Port: 80},
		},
	} {
		m := compile(t, httpRoute("r", &nodeconfig.RouteRule{Backends: bes})).Match(svcParent, newRequest("GET", "/"))
		for _, n := range []uint64{0, 1, 12345} {
			if be := m.PickBackend(n); be != nil {
				t.Errorf("%s: PickBackend(%d) = %v, want nil", name, n, be)
			}
		}
	}
}

func headerFilter(set, add [][2]string, remove ...string) *nodeconfig.HeaderModifier {
	hm := &nodeconfig.HeaderModifier{Remove: remove}
	for _, h := range set {
		hm.Set = append(hm.Set, &nodeconfig.Header{Name: h[0], Value: h[1]})
	}
	for _, h := range add {
		hm.Add = append(hm.Add, &nodeconfig.Header{Name: h[0], Value: h[1]})
	}
	return hm
}

func TestHeaderModifiers(t *testing.T) {
	rule := newRule()
	rule.Filters = []*nodeconfig.RouteFilter{
		{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: headerFilter(
			[][2]string{{"x-set", "new"}, {"x-absent-set", "1"}},
			[][2]string{{"X-ADD", "two"}, {"x-absent-add", "1"}},
			"x-remove", "X-Remove-Missing",
		)}},
		{Filter: &nodeconfig.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: headerFilter(
			[][2]string{{"cache-control", "no-store"}},
			[][2]string{{"x-served-by", "waypoint"}},
			"server",
		)}},
	}
	rule.Backends[0].Filters = []*nodeconfig.RouteFilter{
		{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: headerFilter(
			[][2]string{{"x-set", "from-backend"}, {"host", "backend.internal"}}, nil,
		)}},
		{Filter: &nodeconfig.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: headerFilter(
			nil, [][2]string{{"x-served-by", "backend"}},
		)}},
	}
	m := compile(t, httpRoute("r", rule)).Match(svcParent, newRequest("GET", "/"))

	// The rule's filters alone (no backend).
	r := newRequest("GET", "/", "X-Set", "old", "x-set", "older", "x-add", "one", "X-Remove", "gone", "x-keep", "k")
	if rd := m.ApplyRequest(r, nil); rd != nil {
		t.Fatalf("ApplyRequest = %+v, want no redirect", rd)
	}
	want := http.Header{
		"X-Set":        {"new"},
		"X-Absent-Set": {"1"},
		"X-Add":        {"one", "two"},
		"X-Absent-Add": {"1"},
		"X-Keep":       {"k"},
	}
	if diff := cmp.Diff(want, r.Header); diff != "" {
		t.Errorf("request headers, rule filters (-want +got):\n%s", diff)
	}
	if r.Host != "svc" {
		t.Errorf("Host = %q, want it unchanged", r.Host)
	}

	// The backend's filters run after the rule's.
	r = newRequest("GET", "/", "x-set", "old")
	m.ApplyRequest(r, m.PickBackend(0))
	want = http.Header{"X-Set": {"from-backend"}, "X-Absent-Set": {"1"}, "X-Add": {"two"}, "X-Absent-Add": {"1"}}
	if diff := cmp.Diff(want, r.Header); diff != "" {
		t.Errorf("request headers, rule and backend filters (-want +got):\n%s", diff)
	}
	if r.Host != "backend.internal" {
		t.Errorf("Host = %q, want backend.internal (set by the backend's filter)", r.Host)
	}

	h := http.Header{"Server": {"app"}, "Cache-Control": {"max-age=60"}, "Content-Type": {"text/plain"}}
	m.ApplyResponse(h, m.PickBackend(0))
	wantResp := http.Header{"Cache-Control": {"no-store"}, "X-Served-By": {"waypoint", "backend"}, "Content-Type": {"text/plain"}}
	if diff := cmp.Diff(wantResp, h); diff != "" {
		t.Errorf("response headers (-want +got):\n%s", diff)
	}

	// A backend that is not one of the rule's still gets its own filters.
	foreign := &nodeconfig.RouteBackend{Service: "ns/other", Weight: 1, Filters: rule.Backends[0].Filters}
	r = newRequest("GET", "/")
	m.ApplyRequest(r, foreign)
	if got := r.Header.Get("x-set"); got != "from-backend" {
		t.Errorf("foreign backend: x-set = %q, want from-backend", got)
	}
}

func prefixRewrite(v string) *nodeconfig.PathModifier {
	return &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: v}}
}

func fullRewrite(v string) *nodeconfig.PathModifier {
	return &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplaceFullPath{ReplaceFullPath: v}}
}

func TestURLRewrite(t *testing.T) {
	tests := []struct {
		name       string
		match      *nodeconfig.RouteMatch // nil: no matches
		rewrite    *nodeconfig.URLRewrite
		target     string
		wantPath   string
		wantHost   string
		wantRawURL string
	}{
		// The Gateway API table for ReplacePrefixMatch.
		{"prefix /foo -> /xyz", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz")}, "/foo/bar", "/xyz/bar", "svc", ""},
		{"prefix /foo -> /xyz/", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz/")}, "/foo/bar", "/xyz/bar", "svc", ""},
		{"prefix /foo/ -> /xyz", pathMatch(prefixType, "/foo/"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz")}, "/foo/bar", "/xyz/bar", "svc", ""},
		{"prefix /foo/ -> /xyz/", pathMatch(prefixType, "/foo/"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz/")}, "/foo/bar", "/xyz/bar", "svc", ""},
		{"whole prefix", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz")}, "/foo", "/xyz", "svc", ""},
		{"whole prefix with slash", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/xyz")}, "/foo/", "/xyz/", "svc", ""},
		{"to empty", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("")}, "/foo/bar", "/bar", "svc", ""},
		{"to empty, slash", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("")}, "/foo/", "/", "svc", ""},
		{"to empty, whole", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("")}, "/foo", "/", "svc", ""},
		{"to /, slash", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/")}, "/foo/", "/", "svc", ""},
		{"to /, whole", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/")}, "/foo", "/", "svc", ""},
		{"to /, child", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/")}, "/foo/baz", "/baz", "svc", ""},
		{"prefix / -> /bar", pathMatch(prefixType, "/"), &nodeconfig.URLRewrite{Path: prefixRewrite("/bar")}, "/baz", "/bar/baz", "svc", ""},
		{"no matches is prefix /", nil, &nodeconfig.URLRewrite{Path: prefixRewrite("/v2")}, "/a/b", "/v2/a/b", "svc", ""},
		{"query is kept", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/bar")}, "/foo/x?a=1&b=%2F", "/bar/x", "svc", "/bar/x?a=1&b=%2F"},
		{"full path", pathMatch(exactType, "/old"), &nodeconfig.URLRewrite{Path: fullRewrite("/new/path")}, "/old?x=1", "/new/path", "svc", "/new/path?x=1"},
		{"full path with regex match", pathMatch(regexType, "/old/.*"), &nodeconfig.URLRewrite{Path: fullRewrite("/new")}, "/old/a/b", "/new", "svc", ""},
		{"escaped path is re-escaped", pathMatch(prefixType, "/foo"), &nodeconfig.URLRewrite{Path: prefixRewrite("/a b")}, "/foo/c%20d", "/a b/c d", "svc", "/a%20b/c%20d"},
		{"hostname", pathMatch(prefixType, "/"), &nodeconfig.URLRewrite{Hostname: "backend.example.com"}, "/x?y=z", "/x", "backend.example.com", "/x?y=z"},
		{"hostname and path", pathMatch(prefixType, "/api/"), &nodeconfig.URLRewrite{Hostname: "api.internal", Path: prefixRewrite("/")}, "/api/users", "/users", "api.internal", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule := newRule()
			if tt.match != nil {
				rule = newRule(tt.match)
			}
			rule.Filters = []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: tt.rewrite}}}
			table := compile(t, httpRoute("r", rule))
			r := newRequest("GET", tt.target)
			m := table.Match(svcParent, r)
			if m == nil {
				t.Fatalf("%s did not match", tt.target)
			}
			if rd := m.ApplyRequest(r, m.PickBackend(0)); rd != nil {
				t.Fatalf("ApplyRequest = %+v, want no redirect", rd)
			}
			if r.URL.Path != tt.wantPath || r.Host != tt.wantHost {
				t.Errorf("path, host = %q, %q; want %q, %q", r.URL.Path, r.Host, tt.wantPath, tt.wantHost)
			}
			if tt.wantRawURL != "" {
				if got := r.URL.RequestURI(); got != tt.wantRawURL {
					t.Errorf("request URI = %q, want %q", got, tt.wantRawURL)
				}
			}
		})
	}
}

func TestRedirect(t *testing.T) {
	tests := []struct {
		name     string
		match    *nodeconfig.RouteMatch
		redirect *nodeconfig.RequestRedirect
		target   string // absolute: its host and port are the Host
		want     route.Redirect
	}{
		{"defaults keep scheme, host, port, path and query, 302", nil, &nodeconfig.RequestRedirect{},
			"http://svc:8080/a/b?c=d", route.Redirect{Location: "http://svc:8080/a/b?c=d", StatusCode: 302}},
		{"301", nil, &nodeconfig.RequestRedirect{StatusCode: 301},
			"http://svc/a", route.Redirect{Location: "http://svc/a", StatusCode: 301}},
		{"308", nil, &nodeconfig.RequestRedirect{StatusCode: 308},
			"http://svc/a", route.Redirect{Location: "http://svc/a", StatusCode: 308}},
		{"scheme https uses 443, left out", nil, &nodeconfig.RequestRedirect{Scheme: "https"},
			"http://svc:8080/a", route.Redirect{Location: "https://svc/a", StatusCode: 302}},
		{"scheme http uses 80, left out", nil, &nodeconfig.RequestRedirect{Scheme: "http"},
			"https://svc:8443/a", route.Redirect{Location: "http://svc/a", StatusCode: 302}},
		{"scheme and port", nil, &nodeconfig.RequestRedirect{Scheme: "https", Port: 8443},
			"http://svc/a", route.Redirect{Location: "https://svc:8443/a", StatusCode: 302}},
		{"port 80 on http is left out", nil, &nodeconfig.RequestRedirect{Port: 80},
			"http://svc:8080/a", route.Redirect{Location: "http://svc/a", StatusCode: 302}},
		{"port 443 on http is kept", nil, &nodeconfig.RequestRedirect{Port: 443},
			"http://svc/a", route.Redirect{Location: "http://svc:443/a", StatusCode: 302}},
		{"request port 80 is left out", nil, &nodeconfig.RequestRedirect{Hostname: "new.example.com"},
			"http://svc:80/a", route.Redirect{Location: "http://new.example.com/a", StatusCode: 302}},
		{"hostname keeps the request's port", nil, &nodeconfig.RequestRedirect{Hostname: "new.example.com"},
			"http://svc:8080/a", route.Redirect{Location: "http://new.example.com:8080/a", StatusCode: 302}},
		{"IPv6 host", nil, &nodeconfig.RequestRedirect{Port: 9090},
			"http://[fd00::1]:8080/a", route.Redirect{Location: "http://[fd00::1]:9090/a", StatusCode: 302}},
		{"IPv6 host without port", nil, &nodeconfig.RequestRedirect{Scheme: "https"},
			"http://[fd00::1]:8080/a", route.Redirect{Location: "https://[fd00::1]/a", StatusCode: 302}},
		{"full path", pathMatch(exactType, "/old"), &nodeconfig.RequestRedirect{Path: fullRewrite("/new")},
			"http://svc/old?x=1", route.Redirect{Location: "http://svc/new?x=1", StatusCode: 302}},
		{"prefix", pathMatch(prefixType, "/v1"), &nodeconfig.RequestRedirect{Path: prefixRewrite("/v2")},
			"http://svc/v1/users?id=3", route.Redirect{Location: "http://svc/v2/users?id=3", StatusCode: 302}},
		{"prefix to /", pathMatch(prefixType, "/v1/"), &nodeconfig.RequestRedirect{Path: prefixRewrite("/")},
			"http://svc/v1", route.Redirect{Location: "http://svc/", StatusCode: 302}},
		{"escaped path is kept escaped", nil, &nodeconfig.RequestRedirect{Hostname: "b"},
			"http://a/x%2Fy%20z", route.Redirect{Location: "http://b/x%2Fy%20z", StatusCode: 302}},
		{"everything", pathMatch(prefixType, "/a"), &nodeconfig.RequestRedirect{Scheme: "https", Hostname: "b.example.com", Port: 8443, Path: prefixRewrite("/z"), StatusCode: 301},
			"http://a:8080/a/b?q", route.Redirect{Location: "https://b.example.com:8443/z/b?q", StatusCode: 301}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule := &nodeconfig.RouteRule{
				Filters: []*nodeconfig.RouteFilter{
					{Filter: &nodeconfig.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: headerFilter([][2]string{{"x", "1"}}, nil)}},
					{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: tt.redirect}},
				},
			}
			if tt.match != nil {
				rule.Matches = []*nodeconfig.RouteMatch{tt.match}
			}
			table := compile(t, httpRoute("r", rule))
			r := newRequest("GET", tt.target)
			m := table.Match(svcParent, r)
			if m == nil {
				t.Fatalf("%s did not match", tt.target)
			}
			if be := m.PickBackend(0); be != nil {
				t.Errorf("a redirect rule without backends picked %v", be)
			}
			if !m.Redirects() {
				t.Error("Redirects() = false for a redirect rule")
			}
			rd := m.ApplyRequest(r, nil)
			if rd == nil {
				t.Fatal("ApplyRequest returned no redirect")
			}
			if diff := cmp.Diff(tt.want, *rd); diff != "" {
				t.Errorf("redirect (-want +got):\n%s", diff)
			}
		})
	}

	// A redirect in the backend's filters applies after the rule's filters.
	rule := newRule()
	rule.Backends[0].Filters = []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_RequestRedirect{RequestRedirect: &nodeconfig.RequestRedirect{Scheme: "https"}}}}
	m := compile(t, httpRoute("r", rule)).Match(svcParent, newRequest("GET", "/"))
	if m.Redirects() {
		t.Error("Redirects() = true for a rule whose backend redirects")
	}
	if rd := m.ApplyRequest(newRequest("GET", "http://svc/x"), nil); rd != nil {
		t.Errorf("without the backend: redirect %+v", rd)
	}
	if rd := m.ApplyRequest(newRequest("GET", "http://svc/x"), m.PickBackend(0)); rd == nil || rd.Location != "https://svc/x" {
		t.Errorf("with the backend: redirect %+v, want https://svc/x", rd)
	}
}
