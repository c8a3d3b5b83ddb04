//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/ca"
)

// TestLabWaypoint runs the seed article's L7 example through a real waypoint in the lab: the
// Gateway manifest alone makes warren-controller create the waypoint's Deployment, Service and
// ServiceAccount; the lab runs its pod; the namespace label binds it. Then, with real clients:
// GET /foo/bar from service-a is 200, POST from service-a 403, GET from service-c 403, an
// unrouted path 404; grpc-go sees PERMISSION_DENIED for service-c; a client holding a valid mesh
// certificate that goes straight to service-b's ztunnel is refused; an 80/20 split holds over
// 1000 requests; and removing the binding puts traffic back on the direct L4 path.
func TestLabWaypoint(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// The state directory (with every component's log) is kept when the test fails.
	state, err := os.MkdirTemp("", "wrn-lab-waypoint-")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Up(ctx, Config{StateDir: state, WarrenCNI: "auto", WithZtunnel: true, Log: testWriter{t}}, 2, true, nil)
	if err != nil {
		t.Fatalf("lab up: %v (logs in %s)", err, state)
	}
	t.Cleanup(func() {
		if err := l.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if t.Failed() {
			t.Logf("logs kept in %s", filepath.Join(state, "logs"))
			return
		}
		_ = os.RemoveAll(state)
	})
	const ns = L7Namespace
	wp, err := l.SetupL7Example(ctx)
	if err != nil {
		if wp != nil {
			for _, f := range []string{wp.LogPath, strings.TrimSuffix(wp.LogPath, ".log") + "-helper0.log"} {
				b, _ := os.ReadFile(f)
				t.Logf("%s:\n%s", f, b)
			}
		}
		t.Fatal(err)
	}
	b := l.Pod(ns, "service-b")
	bURL := func(path string) string { return fmt.Sprintf("http://%s:8080%s", b.IP, path) }
	httpCall := func(from, method, path string) string {
		out, err := l.Exec(ctx, ns, from, "app", "http", "--url", bURL(path), "--method", method)
		if err != nil {
			return "error: " + err.Error()
		}
		code, _, _ := strings.Cut(strings.TrimSpace(out), " ")
		return code
	}

	t.Run("article L7 example", func(t *testing.T) {
		cases := []struct{ name, from, method, path, want string }{
			{"GET /foo/bar from service-a", "service-a", "GET", "/foo/bar", "200"},
			{"POST /foo/bar from service-a", "service-a", "POST", "/foo/bar", "403"},
			{"GET /foo/bar from service-c", "service-c", "GET", "/foo/bar", "403"},
			{"unrouted path from service-a", "service-a", "GET", "/other", "404"},
		}
		// The binding reaches the ztunnels with the next push: wait for the first case.
		if err := Eventually(ctx, 20*time.Second, func() error {
			if got := httpCall("service-a", "GET", "/foo/bar"); got != "200" {
				return fmt.Errorf("GET /foo/bar from service-a = %s, want 200", got)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v (waypoint log %s)", err, wp.LogPath)
		}
		for _, c := range cases {
			if got := httpCall(c.from, c.method, c.path); got != c.want {
				t.Errorf("%s = %s, want %s", c.name, got, c.want)
			}
		}
		// The denies are security events of the waypoint, naming the route and the policy.
		log, _ := os.ReadFile(wp.LogPath)
		for _, want := range []string{`"src.identity":"` + SpiffeID(ns, "service-c") + `"`, `"route":"l7/b-get-foo-bar"`} {
			if !strings.Contains(string(log), want) {
				t.Errorf("waypoint log lacks %s", want)
			}
		}
	})

	t.Run("gRPC client sees PERMISSION_DENIED", func(t *testing.T) {
		to := fmt.Sprintf("%s:9090", b.IP)
		for _, c := range []struct{ from, want string }{{"service-a", "OK"}, {"service-c", "PermissionDenied"}} {
			out, err := l.Exec(ctx, ns, c.from, "app", "grpc", "--to", to)
			if got, _, _ := strings.Cut(strings.TrimSpace(out), " "); err != nil || got != c.want {
				t.Errorf("grpc Health/Check from %s = %q, %v; want %s", c.from, out, err, c.want)
			}
		}
	})

	t.Run("skipping the waypoint is refused", func(t *testing.T) {
		dir := t.TempDir()
		writeMeshCert(t, ctx, l, dir, SpiffeID(ns, "service-a"))
		out, err := l.Exec(ctx, "plain", "outsider", "app", "hbone", "--to", b.IP.String()+":15008", "--authority", b.IP.String()+":8080",
			"--path", "/foo/bar", "--cert", filepath.Join(dir, "cert.pem"), "--key", filepath.Join(dir, "key.pem"), "--bundle", filepath.Join(dir, "bundle.pem"))
		if err != nil || strings.TrimSpace(out) != "hbone 401" {
			t.Errorf("HBONE straight to service-b's ztunnel with service-a's certificate = %q, %v; want hbone 401", out, err)
		}
		if _, line, ok := l.FindLog("node-2", "security", map[string]string{"reason": "waypoint bypass", "src.identity": SpiffeID(ns, "service-a")}); !ok {
			t.Errorf("no waypoint-bypass security event on node-2's ztunnel")
		} else {
			t.Logf("security event: %s", line)
		}
	})

	t.Run("80/20 split over 1000 requests", func(t *testing.T) {
		var svc corev1.Service
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "split"}, &svc); err != nil {
			t.Fatal(err)
		}
		url := "http://" + svc.Spec.ClusterIP + ":8080/"
		if out, err := l.Exec(ctx, ns, "service-a", "app", "http", "--url", url); err != nil || !strings.HasPrefix(out, "200 ") {
			t.Fatalf("one request to split %s: %q, %v", url, out, err)
		}
		out, err := l.Exec(ctx, ns, "service-a", "app", "http", "--url", url, "--n", "1000", "--timeout", "2s")
		if err != nil {
			t.Fatalf("1000 requests to split: %v (%s)", err, out)
		}
		var counts map[string]int
		if err := json.Unmarshal([]byte(out), &counts); err != nil {
			t.Fatalf("counts %q: %v", out, err)
		}
		v1, v2 := counts["200 v1"], counts["200 v2"]
		t.Logf("split: %v", counts)
		if v1+v2 != 1000 || v1 < 750 || v1 > 850 {
			t.Errorf("split = %v; want 1000 answers, 750..850 from v1 (80/20 within 5 points)", counts)
		}
	})

	t.Run("removing the binding restores the direct L4 path", func(t *testing.T) {
		v1, c := l.Pod(ns, "v1"), l.Pod(ns, "service-c")
		url := fmt.Sprintf("http://%s:8080/direct", v1.IP)
		// Bound: the request reaches v1 through the waypoint, which adds X-Forwarded-For.
		out, err := l.Exec(ctx, ns, "service-c", "app", "http", "--url", url)
		if _, xff, _ := strings.Cut(strings.TrimSpace(out), "xff="); err != nil || !strings.HasPrefix(out, "200 v1 GET /direct ") || !strings.Contains(xff, c.IP.String()) {
			t.Errorf("bound: GET %s from service-c = %q, %v; want 200 from v1 with X-Forwarded-For naming %s (through the waypoint)", url, out, err, c.IP)
		}
		if out, err := l.Kubectl(ctx, "label", "ns", ns, "warren.dev/use-waypoint-"); err != nil {
			t.Fatalf("unbind: %v\n%s", err, out)
		}
		// Unbound: straight from service-c's ztunnel to v1's, with service-c's own identity.
		if err := Eventually(ctx, 20*time.Second, func() error {
			out, err := l.Exec(ctx, ns, "service-c", "app", "http", "--url", url)
			if want := "200 v1 GET /direct xff="; err != nil || strings.TrimSpace(out) != want {
				return fmt.Errorf("GET %s from service-c: %q, %v; want %q", url, out, err, want)
			}
			if _, _, ok := l.FindLog("node-2", "access", map[string]string{"direction": "inbound", "dst.addr": v1.IP.String() + ":8080", "src.identity": SpiffeID(ns, "service-c")}); !ok {
				return fmt.Errorf("no inbound record at v1 with service-c's own identity")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		// service-b's route-level policy has no waypoint any more: it allows nothing (fails
		// closed), even to service-a.
		if got := httpCall("service-a", "GET", "/foo/bar"); got == "200" {
			t.Errorf("GET /foo/bar from service-a without a waypoint = 200; want refused (route policies fail closed)")
		}
	})
}

// writeMeshCert signs a certificate for id with the mesh's own CA (its root key from Secret
// warren-system/warren-ca-root) into dir/{cert,key,bundle}.pem: a client that holds a valid
// mesh identity.
func writeMeshCert(t *testing.T, ctx context.Context, l *Lab, dir, id string) {
	t.Helper()
	var sec corev1.Secret
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: "warren-ca-root"}, &sec); err != nil {
		t.Fatal(err)
	}
	certBlock, _ := pem.Decode(sec.Data["tls.crt"])
	keyBlock, _ := pem.Decode(sec.Data["tls.key"])
	if certBlock == nil || keyBlock == nil {
		t.Fatalf("secret warren-ca-root lacks tls.crt/tls.key")
	}
	root, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		if signer, err = x509.ParseECPrivateKey(keyBlock.Bytes); err != nil {
			t.Fatalf("root key: %v", err)
		}
	}
	c, err := ca.New(ca.Config{Signer: signer.(*ecdsa.PrivateKey), Certificate: root})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{sid.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Sign(ctx, sid, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var certPEM []byte
	for _, cert := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"cert.pem":   certPEM,
		"key.pem":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"bundle.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
