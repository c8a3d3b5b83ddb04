package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// httpServer answers every request with "<name> <method> <path> xff=<X-Forwarded-For>" (HTTP/1.1
// and h2c).
func httpServer(args []string) error {
	fs := flag.NewFlagSet("http-server", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "TCP address to listen on")
	name := fs.String("name", "", "name to answer with (default: the host name)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := listenTCP(ctx, *listen)
	if err != nil {
		return err
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			// A proxy on the way (the waypoint) shows in X-Forwarded-For.
			fmt.Fprintf(w, "%s %s %s xff=%s\n", *name, r.Method, r.URL.Path, r.Header.Get("X-Forwarded-For"))
		}),
	}
	log.Printf("http server %s listening on %s", *name, ln.Addr())
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// grpcServer serves the standard gRPC health service, SERVING for every service name.
func grpcServer(args []string) error {
	fs := flag.NewFlagSet("grpc-server", flag.ContinueOnError)
	listen := fs.String("listen", ":9090", "TCP address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := listenTCP(ctx, *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	log.Printf("grpc server listening on %s", ln.Addr())
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(ln)
}

// httpClient sends N requests and prints, for one request, "<status> <body>"; for several, a
// JSON object counting each "<status> <first word of the body>".
func httpClient(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	url := fs.String("url", "", "request URL (http://IP:port/path)")
	method := fs.String("method", http.MethodGet, "request method")
	n := fs.Int("n", 1, "number of requests")
	h2c := fs.Bool("h2c", false, "speak HTTP/2 without TLS (prior knowledge)")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout per request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		return errors.New("http: --url is required")
	}
	var protos http.Protocols
	if *h2c {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	d := &net.Dialer{Timeout: *timeout}
	d.SetMultipathTCP(false)
	cl := &http.Client{
		Timeout:       *timeout,
		Transport:     &http.Transport{Protocols: &protos, DialContext: d.DialContext, MaxIdleConnsPerHost: 4},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	counts := map[string]int{}
	var mu sync.Mutex
	one := func() (string, error) {
		req, err := http.NewRequest(*method, *url, nil)
		if err != nil {
			return "", err
		}
		res, err := cl.Do(req)
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(io.LimitReader(res.Body, 4096))
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d %s", res.StatusCode, strings.TrimSpace(string(b))), nil
	}
	if *n == 1 {
		out, err := one()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, out)
		return err
	}
	var wg sync.WaitGroup
	var firstErr error
	work := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for range work {
				out, err := one()
				mu.Lock()
				if err != nil {
					counts["error"]++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					code, body, _ := strings.Cut(out, " ")
					word, _, _ := strings.Cut(body, " ")
					counts[code+" "+word]++
				}
				mu.Unlock()
			}
		})
	}
	for range *n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	if counts["error"] > 0 {
		log.Printf("first error: %v", firstErr)
	}
	return json.NewEncoder(stdout).Encode(counts)
}

// grpcClient calls grpc.health.v1.Health/Check and prints the gRPC status code name (OK,
// PermissionDenied, ...) and the message.
func grpcClient(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("grpc", flag.ContinueOnError)
	to := fs.String("to", "", "server address IP:port")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("grpc: --to is required")
	}
	d := &net.Dialer{Timeout: *timeout}
	d.SetMultipathTCP(false)
	cc, err := grpc.NewClient("passthrough:///"+*to,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	st := status.Convert(err)
	_, werr := fmt.Fprintf(stdout, "%s %s\n", st.Code(), st.Message())
	return werr
}

// forward listens in the current (pod) network namespace and forwards every connection to an
// address in another network namespace (the host's): the lab's stand-in for the Service path
// by which pods reach the control plane in a real cluster.
func forward(args []string) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on in this network namespace (comma-separated list)")
	to := fs.String("to", "", "address to dial in --to-netns (comma-separated, same length as --listen)")
	toNetns := fs.String("to-netns", "/proc/1/ns/net", "network namespace to dial in")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ls, ts := strings.Split(*listen, ","), strings.Split(*to, ",")
	if *listen == "" || len(ls) != len(ts) {
		return errors.New("forward: --listen and --to must list the same number of addresses")
	}
	target, err := os.Open(*toNetns)
	if err != nil {
		return fmt.Errorf("forward: open %s: %w", *toNetns, err)
	}
	defer target.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, len(ls))
	for i := range ls {
		ln, err := listenTCP(ctx, ls[i])
		if err != nil {
			return err
		}
		log.Printf("forwarding %s -> %s in %s", ln.Addr(), ts[i], *toNetns)
		go func(ln net.Listener, dst string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				go func() {
					defer c.Close()
					u, err := dialIn(target, dst)
					if err != nil {
						log.Printf("forward %s: %v", dst, err)
						return
					}
					defer u.Close()
					done := make(chan struct{}, 2)
					go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
					go func() { _, _ = io.Copy(c, u); _ = c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
					<-done
					<-done
				}()
			}
		}(ln, ts[i])
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// dialIn dials addr with a socket created in the network namespace ns: the socket is made on a
// locked thread switched into ns, then the thread switches back.
func dialIn(ns *os.File, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return // the thread stays locked and dies with the goroutine
		}
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp", addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, "tcp", addr)
}
