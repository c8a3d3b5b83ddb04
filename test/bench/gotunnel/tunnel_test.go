package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"

	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pki writes a CA and a server and a client leaf (ECDSA P-256, DNS name bench-peer) to a temp
// directory and returns it.
func pki(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for i, name := range []string{"server", "client"} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		eku := map[string]x509.ExtKeyUsage{"server": x509.ExtKeyUsageServerAuth, "client": x509.ExtKeyUsageClientAuth}[name]
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{"bench-peer"}, NotBefore: now, NotAfter: now.Add(48 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			tb.Fatal(err)
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			tb.Fatal(err)
		}
		write(name+".pem", "CERTIFICATE", der)
		write(name+".key", "PRIVATE KEY", kd)
	}
	return dir
}

// echoServer answers every connection with what it read, then half-closes.
func echoServer(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

// start builds a hop and runs it until the test ends.
func start(tb testing.TB, cfg Config) *Tunnel {
	tb.Helper()
	t, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- t.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run() = %v", err)
		}
	})
	return t
}

// twoHops starts a server hop in front of an echo server and a client hop in front of that.
func twoHops(tb testing.TB, dir string) (clientAddr string) {
	tb.Helper()
	srv := start(tb, Config{Mode: Server, Routes: []Route{{"127.0.0.1:0", echoServer(tb)}},
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server.key"), CAFile: filepath.Join(dir, "ca.pem")})
	cli := start(tb, Config{Mode: Client, Routes: []Route{{"127.0.0.1:0", srv.Addrs()[0].String()}},
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key"), CAFile: filepath.Join(dir, "ca.pem"), ServerName: "bench-peer"})
	return cli.Addrs()[0].String()
}

// exchange sends msg, half-closes and returns everything read back.
func exchange(tb testing.TB, addr, msg string) (string, error) {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestTunnelCarriesBothWaysWithHalfClose(t *testing.T) {
	addr := twoHops(t, pki(t))
	big := strings.Repeat("warren", 200_000) // larger than any buffer on the path
	for _, msg := range []string{"hello", big} {
		got, err := exchange(t, addr, msg)
		if err != nil {
			t.Fatalf("exchange: %v", err)
		}
		if diff := cmp.Diff(len(msg), len(got)); diff != "" || got != msg {
			t.Fatalf("echo through the tunnel differs (len -want +got):\n%s", diff)
		}
	}
}

// A client hop whose certificate the server does not trust gets nothing through, and the
// server hop keeps serving trusted clients.
func TestServerRefusesUntrustedClient(t *testing.T) {
	dir, other := pki(t), pki(t)
	srv := start(t, Config{Mode: Server, Routes: []Route{{"127.0.0.1:0", echoServer(t)}},
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server.key"), CAFile: filepath.Join(dir, "ca.pem")})
	to := srv.Addrs()[0].String()
	// trusts the server's CA but presents a certificate from another CA
	bad := start(t, Config{Mode: Client, Routes: []Route{{"127.0.0.1:0", to}},
		CertFile: filepath.Join(other, "client.pem"), KeyFile: filepath.Join(other, "client.key"), CAFile: filepath.Join(dir, "ca.pem"), ServerName: "bench-peer"})
	good := start(t, Config{Mode: Client, Routes: []Route{{"127.0.0.1:0", to}},
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key"), CAFile: filepath.Join(dir, "ca.pem"), ServerName: "bench-peer"})
	if got, _ := exchange(t, bad.Addrs()[0].String(), "secret"); got != "" {
		t.Errorf("untrusted client got %q back, want nothing", got)
	}
	if got, err := exchange(t, good.Addrs()[0].String(), "ok"); err != nil || got != "ok" {
		t.Errorf("trusted client after the refusal: got %q, %v; want \"ok\"", got, err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := pki(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	good := Config{Mode: Client, Routes: []Route{{"127.0.0.1:0", "127.0.0.1:1"}}, ServerName: "bench-peer",
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key"), CAFile: filepath.Join(dir, "ca.pem")}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"mode", func(c *Config) { c.Mode = "middle" }, `mode "middle": want client or server`},
		{"no routes", func(c *Config) { c.Routes = nil }, "no routes"},
		{"client without server name", func(c *Config) { c.ServerName = "" }, "needs --server-name"},
		{"missing cert", func(c *Config) { c.CertFile = filepath.Join(dir, "nope.pem") }, "load certificate"},
		{"CA without PEM", func(c *Config) { c.CAFile = notPEM }, "no PEM certificate"},
		{"missing CA", func(c *Config) { c.CAFile = filepath.Join(dir, "nope.pem") }, "load CA"},
		{"listen address in use", func(c *Config) { c.Routes = []Route{{busy.Addr().String(), "127.0.0.1:1"}} }, "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// the good config still builds
	tun, err := New(good)
	if err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	tun.close()
}

func TestParseRoute(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Route
		wantErr string
	}{
		{"10.0.0.1:19000=10.0.2.1:19100", Route{"10.0.0.1:19000", "10.0.2.1:19100"}, ""},
		{"[fd00::1]:1=[fd00::2]:2", Route{"[fd00::1]:1", "[fd00::2]:2"}, ""},
		{"10.0.0.1:19000", Route{}, "want LISTEN=CONNECT"},
		{"=10.0.0.1:1", Route{}, "want LISTEN=CONNECT"},
		{"10.0.0.1=10.0.0.2:1", Route{}, "missing port"},
	} {
		got, err := ParseRoute(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseRoute(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRoute(%q) = %v", tc.in, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseRoute(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}
