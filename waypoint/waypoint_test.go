package waypoint_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/waypoint"
	"github.com/warren-mesh/warren/ztunnel/hbone"
)

type clientKind struct {
	name string
	new  func(e *env, tb testing.TB, id, authority string) *http.Client
}

var clientKinds = []clientKind{
	{"http1", (*env).h1},
	{"http2", (*env).h2},
}

// TestArticle is the article's example: only service-a may call GET /foo/bar on service-b.
func TestArticle(t *testing.T) {
	e := newEnv(t, envOptions{})
	b0 := e.addr(hostB0, 8080)
	for _, ck := range clientKinds {
		t.Run(ck.name, func(t *testing.T) {
			tests := []struct {
				name, id, method, path string
				want                   int
			}{
				{"GET from a", idA, "GET", "/foo/bar", 200},
				{"POST from a", idA, "POST", "/foo/bar", 403},
				{"GET from c", idC, "GET", "/foo/bar", 403},
				{"unrouted path", idA, "GET", "/other", 404},
				// Dot segments are removed before routing and authorization, and the app gets
				// the path that was decided on; escaped separators are refused.
				{"dot segments", idA, "GET", "/other/../foo/./bar", 200},
				{"escaped slash", idA, "GET", "/foo%2Fbar", 400},
			}
			for _, tt := range tests {
				code, ec, _ := get(t, ck.new(e, t, tt.id, b0), tt.method, tt.path, nil)
				if code != tt.want {
					t.Errorf("%s: %s %s = %d, want %d", tt.name, tt.method, tt.path, code, tt.want)
				}
				if code == 200 && (ec.Pod != "b-0" || ec.Path != "/foo/bar") {
					t.Errorf("%s: answered by %q for path %q, want b-0 for /foo/bar", tt.name, ec.Pod, ec.Path)
				}
			}
		})
	}
	// The destination ztunnel only ever saw the waypoint's identity.
	e.mu.Lock()
	peers := e.peers
	e.mu.Unlock()
	if diff := cmp.Diff(map[string]int{idWP: 2}, peers); diff != "" {
		t.Errorf("identities seen by destination ztunnels (-want +got):\n%s", diff)
	}
	// Every deny is one security event naming source, destination, route and policy.
	var denies []string
	for _, ev := range e.securityEvents(t) {
		denies = append(denies, fmt.Sprintf("%v %v %v %v %v", ev["event"], ev["src.identity"], ev["dst.workload"], ev["route"], ev["policy"]))
	}
	want := []string{
		"deny " + idA + " default/b-0 default/b-foo server/default/b:deny",
		"deny " + idC + " default/b-0 default/b-get-foo server/default/b:deny",
	}
	if diff := cmp.Diff(append(want, want...), denies); diff != "" {
		t.Errorf("security events (-want +got):\n%s", diff)
	}
	if got := metric(t, e, "warren_waypoint_authz_decisions_total", `decision="deny"`); got != 4 {
		t.Errorf("deny decisions counted = %v, want 4", got)
	}
	if got := metric(t, e, "warren_waypoint_route_not_found_total", ""); got != 2 {
		t.Errorf("route not found counted = %v, want 2", got)
	}
}

// TestFiltersAndRedirect: redirect, request and response header modifiers, URL rewrite and
// X-Forwarded-For, end to end.
func TestFiltersAndRedirect(t *testing.T) {
	e := newEnv(t, envOptions{})
	web := e.addr(vipWeb, 80)
	for _, ck := range clientKinds {
		t.Run(ck.name, func(t *testing.T) {
			c := ck.new(e, t, idA, web)
			code, _, res := get(t, c, "GET", "/old/page?q=1", nil)
			if code != 301 || res.Header.Get("Location") == "" || !strings.Contains(res.Header.Get("Location"), "/new/page") {
				t.Errorf("redirect: %d Location %q, want 301 to /new/page", code, res.Header.Get("Location"))
			}
			code, ec, res := get(t, c, "GET", "/hdr/x", http.Header{"X-Drop": {"secret"}})
			if code != 200 {
				t.Fatalf("GET /hdr/x = %d, want 200", code)
			}
			got := []string{ec.Path, ec.Header.Get("X-Test"), ec.Header.Get("X-Drop"), res.Header.Get("X-Resp"), ec.Header.Get("X-Forwarded-For")}
			want := []string{"/echo/x", "yes", "", "done", e.ip(200).String()}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("path, X-Test, X-Drop, X-Resp, X-Forwarded-For (-want +got):\n%s", diff)
			}
			wantProto := map[string]string{"http1": "HTTP/1.1", "http2": "HTTP/2.0"}[ck.name]
			if ec.Proto != wantProto {
				t.Errorf("app saw %s, want %s (the client's protocol)", ec.Proto, wantProto)
			}
			if ec.Pod != "web-0" && ec.Pod != "web-1" {
				t.Errorf("answered by %q, want a web pod", ec.Pod)
			}
		})
	}
}

// TestWeightedSplit: weights 1 (web) and 3 (web-v2) over 400 requests, with a seeded source.
func TestWeightedSplit(t *testing.T) {
	e := newEnv(t, envOptions{seed: 7})
	c := e.h1(t, idA, e.addr(vipWeb, 80))
	counts := map[string]int{}
	for range 400 {
		code, ec, _ := get(t, c, "GET", "/split", nil)
		if code != 200 {
			t.Fatalf("GET /split = %d", code)
		}
		counts[ec.Pod]++
	}
	// Binomial(400, 0.75): mean 300, sd 8.7; the bounds are 7 sd wide.
	if v2 := counts["web-v2-0"]; v2 < 240 || v2 > 360 {
		t.Errorf("web-v2 got %d of 400, want about 300: %v", v2, counts)
	}
	if counts["web-0"] == 0 || counts["web-1"] == 0 {
		t.Errorf("web endpoints not round-robined: %v", counts)
	}
}

// TestTimeoutRetryAndFailures: rule timeout 504, retry on 503, no endpoint and unreachable app
// 503, for HTTP and gRPC.
func TestTimeoutRetryAndFailures(t *testing.T) {
	e := newEnv(t, envOptions{})
	web := e.h1(t, idA, e.addr(vipWeb, 80))
	if code, _, _ := get(t, web, "GET", "/slow", nil); code != http.StatusGatewayTimeout {
		t.Errorf("GET /slow = %d, want 504", code)
	}
	if code, _, _ := get(t, web, "GET", "/unresolved", nil); code != http.StatusInternalServerError {
		t.Errorf("GET /unresolved (backendRef not resolved) = %d, want 500", code)
	}
	if code, _, _ := get(t, web, "GET", "/flaky", nil); code != 200 {
		t.Errorf("GET /flaky = %d, want 200 after a retry", code)
	}
	if n := e.flaky.Load(); n != 2 {
		t.Errorf("/flaky reached the app %d times, want 2 (one retry)", n)
	}
	for _, ck := range clientKinds {
		for _, dst := range []string{e.addr(vipEmpty, 80), e.addr(vipDown, 80)} {
			if code, _, _ := get(t, ck.new(e, t, idA, dst), "GET", "/", nil); code != http.StatusServiceUnavailable {
				t.Errorf("%s to %s = %d, want 503", ck.name, dst, code)
			}
		}
	}
	_, err := healthpb.NewHealthClient(e.grpc(t, idA, e.addr(vipDown, 80))).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("gRPC to an unreachable app: %v, want Unavailable", err)
	}
}

// TestGRPC: GRPCRoute hit, miss (NOT_FOUND) and route-level authorization (PERMISSION_DENIED),
// with a grpc-go client and server.
func TestGRPC(t *testing.T) {
	e := newEnv(t, envOptions{})
	greeter := e.addr(vipGreeter, 9000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := healthpb.NewHealthClient(e.grpc(t, idA, greeter))
	res, err := a.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check from a = %v, %v; want SERVING", res, err)
	}
	_, err = a.List(ctx, &healthpb.HealthListRequest{})
	if status.Code(err) != codes.NotFound {
		t.Errorf("List (no route) from a: %v, want NotFound", err)
	}
	_, err = healthpb.NewHealthClient(e.grpc(t, idC, greeter)).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("Check from c: %v, want PermissionDenied", err)
	}
	if got := metric(t, e, "warren_waypoint_requests_total", `protocol="grpc",route="default/health-check"`); got != 2 {
		t.Errorf("gRPC requests on route health-check = %v, want 2", got)
	}
}

// TestOpaqueTCP: a port declared TCP is authorized at L4 before the HBONE answer (401 for c) and
// relayed; a port of unknown protocol carrying non-HTTP bytes is detected as opaque and relayed.
func TestOpaqueTCP(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	roundTrip := func(c net.Conn, msg string) string {
		t.Helper()
		defer c.Close()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		return string(buf)
	}
	c, err := e.connect(ctx, t, idA, e.addr(vipDB, 5432))
	if err != nil {
		t.Fatalf("connect db as a: %v", err)
	}
	if got := roundTrip(c, "hello db"); got != "hello db" {
		t.Errorf("db echo = %q", got)
	}
	_, err = e.connect(ctx, t, idC, e.addr(vipDB, 5432))
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("connect db as c: %v, want HBONE 401", err)
	}
	c, err = e.connect(ctx, t, idC, e.addr(hostTCP, 7000))
	if err != nil {
		t.Fatalf("connect echo: %v", err)
	}
	if got := roundTrip(c, "\x00\x01binary"); got != "\x00\x01binary" {
		t.Errorf("sniffed opaque echo = %q", got)
	}
}

// TestDestinationChecks: the waypoint serves only destinations bound to it.
func TestDestinationChecks(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tt := range []struct {
		authority string
		want      int
	}{
		{e.addr(hostUnbound, 8080), http.StatusUnauthorized},
		{e.addr(250, 80), http.StatusBadRequest},
		{e.addr(vipWeb, 81), http.StatusBadRequest},
	} {
		_, err := e.connect(context.Background(), t, idA, tt.authority)
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Code != tt.want {
			t.Errorf("connect %s: %v, want HBONE %d", tt.authority, err, tt.want)
		}
	}
	// And it still serves the others.
	if code, _, _ := get(t, e.h1(t, idA, e.addr(vipWeb, 80)), "GET", "/", nil); code != 200 {
		t.Errorf("GET / = %d after refused streams", code)
	}
}

// TestBadInput: malformed requests get clear errors and close only their own stream while
// another client keeps being served; goroutines return to the baseline.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOptions{readHeaderTimeout: 300 * time.Millisecond})
	web := e.addr(vipWeb, 80)
	good := e.h1(t, idA, web)
	// Warm up: one app connection to each of the two web endpoints (round-robin).
	for range 4 {
		if code, _, _ := get(t, good, "GET", "/", nil); code != 200 {
			t.Fatalf("warm-up GET = %d", code)
		}
	}
	baseline := runtimeGoroutines()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, failed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", "http://svc.test/", nil)
			res, err := good.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			if err != nil || res.StatusCode != 200 {
				failed++
			} else {
				served++
			}
		}
	}()

	ctx := context.Background()
	raw := func() net.Conn {
		t.Helper()
		c, err := e.connect(ctx, t, idA, web)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return c
	}
	statusLine := func(c net.Conn) string {
		t.Helper()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read status line: %v", err)
		}
		return strings.TrimSpace(line)
	}
	t.Run("malformed request line", func(t *testing.T) {
		c := raw()
		defer c.Close()
		io.WriteString(c, "GET /x HTTP/1.1 junk\r\nHost: a\r\n\r\n")
		if got := statusLine(c); !strings.HasPrefix(got, "HTTP/1.1 400") {
			t.Errorf("status = %q, want 400", got)
		}
	})
	t.Run("oversized headers", func(t *testing.T) {
		c := raw()
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 80<<10))
		if got := statusLine(c); !strings.HasPrefix(got, "HTTP/1.1 431") {
			t.Errorf("status = %q, want 431", got)
		}
	})
	t.Run("http2 garbage after preface", func(t *testing.T) {
		c := raw()
		defer c.Close()
		io.WriteString(c, http2.ClientPreface)
		c.Write([]byte{0, 0, 4, 0xff, 0, 0, 0, 0, 0, 'j', 'u', 'n', 'k'}) // a frame before SETTINGS
		fr := http2.NewFramer(io.Discard, c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("no GOAWAY before %v", err)
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				if ga.ErrCode != http2.ErrCodeProtocol {
					t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
				}
				break
			}
		}
	})
	t.Run("slow client", func(t *testing.T) {
		c := raw()
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\n") // and never the rest
		if n, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("slow client: read %d bytes, then %v; want the stream closed (EOF)", n, err)
		}
	})
	close(stop)
	wg.Wait()
	if failed > 0 || served == 0 {
		t.Errorf("the other client: %d served, %d failed during the bad input", served, failed)
	}
	waitGoroutines(t, baseline)
	if d, _ := e.wp.Dump(); d.OpenStreams > 1 {
		t.Errorf("open streams = %d after the bad clients left, want at most the good client's 1", d.OpenStreams)
	}
}

func TestConfigDump(t *testing.T) {
	e := newEnv(t, envOptions{})
	res, err := http.Get("http://" + e.admin + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var d waypoint.ConfigDump
	if err := json.NewDecoder(res.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Identity != idWP || d.Version != "1" || len(d.RouteErrors) != 0 || len(d.Config) == 0 {
		t.Errorf("config dump: identity %q version %q route errors %v config %d bytes", d.Identity, d.Version, d.RouteErrors, len(d.Config))
	}
}

func TestNewErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name string
		cfg  waypoint.Config
		want string
	}{
		{"no identity", waypoint.Config{}, "Identity is required"},
		{"no store", waypoint.Config{Identity: mustID(idWP)}, "are required"},
		{"hbone port taken", waypoint.Config{Identity: mustID(idWP), SVID: e.ca.SVID(t, mustID(idWP)), Bundle: e.ca.Bundle(),
			Store: e.store, Registry: newRegistry(), Log: discard(), HBONEAddr: e.wpAddr}, "address already in use"},
	}
	for _, tt := range tests {
		_, err := waypoint.New(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	// The running waypoint is unaffected.
	if code, _, _ := get(t, e.h1(t, idA, e.addr(vipWeb, 80)), "GET", "/", nil); code != 200 {
		t.Errorf("GET / = %d", code)
	}
}

// BenchmarkRequest is one GET through the waypoint (client -> HBONE -> waypoint -> HBONE ->
// stand-in ztunnel -> app, all in this process), next to the same GET straight to the app.
func BenchmarkRequest(b *testing.B) {
	e := newEnv(b, envOptions{})
	b.Run("direct-baseline", func(b *testing.B) {
		c := &http.Client{}
		b.ReportAllocs()
		for b.Loop() {
			res, err := c.Get("http://" + e.addr(hostWeb0, 8080) + "/")
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	})
	for _, ck := range clientKinds {
		b.Run(ck.name, func(b *testing.B) {
			c := ck.new(e, b, idA, e.addr(vipWeb, 80))
			req, _ := http.NewRequest("GET", "http://svc.test/", nil)
			b.ReportAllocs()
			for b.Loop() {
				res, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
	}
}
