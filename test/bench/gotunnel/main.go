// Command gotunnel is the benchmark's plain Go mTLS tunnel, the peer that stands in for
// ghostunnel (which the module proxy does not serve): standard library crypto/tls, TLS 1.3 with
// X25519, ECDSA P-256 certificates, client certificates required, io.Copy in both directions
// and one TLS connection per proxied connection. `go run ./test/lab bench` runs one process per
// hop; nothing else imports it.
//
//	gotunnel --mode client --route 10.0.0.1:19000=10.0.2.1:19100 --cert c.pem --key c.key --ca ca.pem --server-name bench-peer
//	gotunnel --mode server --route 10.0.2.1:19100=10.0.2.5:9000 --cert s.pem --key s.key --ca ca.pem
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

type routes []Route

func (r *routes) String() string { return fmt.Sprint(*r) }
func (r *routes) Set(s string) error {
	rt, err := ParseRoute(s)
	if err != nil {
		return err
	}
	*r = append(*r, rt)
	return nil
}

func main() {
	var cfg Config
	var rs routes
	flag.StringVar((*string)(&cfg.Mode), "mode", "", "client (plain TCP in, mTLS out) or server (mTLS in, plain TCP out)")
	flag.Var(&rs, "route", "LISTEN=CONNECT (repeatable)")
	flag.StringVar(&cfg.CertFile, "cert", "", "this hop's certificate (PEM)")
	flag.StringVar(&cfg.KeyFile, "key", "", "this hop's private key (PEM)")
	flag.StringVar(&cfg.CAFile, "ca", "", "CA the peer's certificate must chain to (PEM)")
	flag.StringVar(&cfg.ServerName, "server-name", "", "name verified in the server's certificate (client hop)")
	flag.Parse()
	cfg.Routes = rs
	os.Exit(run(cfg))
}

func run(cfg Config) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotunnel:", err)
		return 2
	}
	if err := t.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "gotunnel:", err)
		return 1
	}
	return 0
}
