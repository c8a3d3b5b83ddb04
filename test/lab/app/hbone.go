package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ztunnel/hbone"
)

// hboneClient opens an HBONE stream with a given certificate straight to an HBONE port (what a
// client holding a mesh certificate could try in order to skip a waypoint), sends one HTTP/1.1
// GET and prints the response's status line, or "hbone <status>" when the CONNECT is refused.
func hboneClient(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("hbone", flag.ContinueOnError)
	to := fs.String("to", "", "HBONE address IP:15008")
	authority := fs.String("authority", "", "CONNECT authority IP:port")
	path := fs.String("path", "/", "HTTP path to GET inside the stream")
	certFile := fs.String("cert", "", "PEM certificate chain")
	keyFile := fs.String("key", "", "PEM private key")
	bundleFile := fs.String("bundle", "", "PEM trust bundle")
	td := fs.String("trust-domain", "cluster.local", "trust domain of the bundle")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" || *authority == "" || *certFile == "" || *keyFile == "" || *bundleFile == "" {
		return errors.New("hbone: --to, --authority, --cert, --key and --bundle are required")
	}
	svid, err := x509svid.Load(*certFile, *keyFile)
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(*td), *bundleFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	d := net.Dialer{}
	d.SetMultipathTCP(false)
	raw, err := d.DialContext(ctx, "tcp", *to)
	if err != nil {
		return err
	}
	cc, err := hbone.NewClientConn(ctx, raw, hbone.ClientTLSConfig(svid, bundle, tlsconfig.AuthorizeAny()), hbone.ClientOptions{})
	if err != nil {
		return err
	}
	defer cc.Close()
	c, err := cc.Connect(ctx, *authority, nil)
	var se *hbone.StatusError
	if errors.As(err, &se) {
		_, err = fmt.Fprintf(stdout, "hbone %d\n", se.Code)
		return err
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", *path, *authority); err != nil {
		return err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		_, err = fmt.Fprintf(stdout, "stream closed: %v\n", err)
		return err
	}
	res.Body.Close()
	_, err = fmt.Fprintf(stdout, "http %d\n", res.StatusCode)
	return err
}
