package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Mode says which hop of the tunnel a process is.
type Mode string

const (
	// Client accepts plain TCP and dials the server hop with mutual TLS.
	Client Mode = "client"
	// Server accepts mutual TLS (client certificate required) and dials plain TCP.
	Server Mode = "server"
)

// Route is one listen address and where its connections go.
type Route struct {
	Listen, Connect string
}

// ParseRoute parses "LISTEN=CONNECT", both host:port.
func ParseRoute(s string) (Route, error) {
	l, c, ok := strings.Cut(s, "=")
	if !ok || l == "" || c == "" {
		return Route{}, fmt.Errorf("route %q: want LISTEN=CONNECT, e.g. 10.0.0.1:19000=10.0.1.2:19100", s)
	}
	for _, a := range []string{l, c} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return Route{}, fmt.Errorf("route %q: %w", s, err)
		}
	}
	return Route{Listen: l, Connect: c}, nil
}

// Config of one tunnel hop.
type Config struct {
	Mode   Mode
	Routes []Route
	// CertFile and KeyFile hold this hop's certificate (PEM, ECDSA P-256 in the bench); CAFile
	// the CA the peer's certificate must chain to.
	CertFile, KeyFile, CAFile string
	// ServerName is the name the client hop verifies in the server's certificate.
	ServerName string
	// DialTimeout bounds connecting to the next hop; zero means 5s.
	DialTimeout time.Duration
}

// Tunnel is one hop, its listeners bound.
type Tunnel struct {
	cfg Config
	tls *tls.Config
	lns []net.Listener
}

// New checks cfg, loads the certificates and binds every route's listener.
func New(cfg Config) (*Tunnel, error) {
	if cfg.Mode != Client && cfg.Mode != Server {
		return nil, fmt.Errorf("new gotunnel: mode %q: want client or server", cfg.Mode)
	}
	if len(cfg.Routes) == 0 {
		return nil, errors.New("new gotunnel: no routes (--route LISTEN=CONNECT)")
	}
	if cfg.Mode == Client && cfg.ServerName == "" {
		return nil, errors.New("new gotunnel: the client hop needs --server-name to verify the server's certificate")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("new gotunnel: %w", err)
	}
	t := &Tunnel{cfg: cfg, tls: tc}
	for _, r := range cfg.Routes {
		ln, err := net.Listen("tcp", r.Listen)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("new gotunnel: %w", err)
		}
		t.lns = append(t.lns, ln)
	}
	return t, nil
}

// tlsConfig is TLS 1.3 only with X25519 key exchange, this hop's certificate, and the peer's
// certificate verified against the CA (the server requires one).
func tlsConfig(cfg Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("load CA: no PEM certificate in %s", cfg.CAFile)
	}
	c := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		Certificates:           []tls.Certificate{cert},
		SessionTicketsDisabled: true,
	}
	if cfg.Mode == Server {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = pool
	} else {
		c.RootCAs = pool
		c.ServerName = cfg.ServerName
	}
	return c, nil
}

// Addrs returns the bound listen addresses, in route order.
func (t *Tunnel) Addrs() []net.Addr {
	var out []net.Addr
	for _, ln := range t.lns {
		out = append(out, ln.Addr())
	}
	return out
}

func (t *Tunnel) close() {
	for _, ln := range t.lns {
		ln.Close()
	}
}

// Run accepts on every route until ctx ends, then closes the listeners and open connections
// and waits for their goroutines.
func (t *Tunnel) Run(ctx context.Context) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		errc  = make(chan error, len(t.lns))
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	stop := context.AfterFunc(ctx, t.close)
	defer stop()
	for i, ln := range t.lns {
		r := t.cfg.Routes[i]
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				track(c, true)
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer track(c, false)
					t.serve(ctx, c, r.Connect)
				}()
			}
		}()
	}
	var first error
	for range t.lns {
		if err := <-errc; first == nil && ctx.Err() == nil {
			first = err
			t.close()
		}
	}
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	if first != nil {
		return fmt.Errorf("gotunnel accept: %w", first)
	}
	return nil
}

// serve carries one accepted connection over one new connection to the next hop, as ghostunnel
// does: no pooling, one TLS handshake per proxied connection.
func (t *Tunnel) serve(ctx context.Context, in net.Conn, to string) {
	defer in.Close()
	dctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(dctx, "tcp", to)
	if err != nil {
		return
	}
	var out net.Conn = raw
	if t.cfg.Mode == Client {
		tc := tls.Client(raw, t.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return
		}
		out = tc
	} else {
		tc := tls.Server(in, t.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return
		}
		in = tc
	}
	defer out.Close()
	pipe(in, out)
}

// pipe copies both ways with io.Copy (the kernel splices where both ends are plain TCP) and
// half-closes each destination when its source reaches EOF.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(a, b)
	}()
	copyHalf(b, a)
	<-done
}

func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
