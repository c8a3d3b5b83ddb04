// Command app is the lab's sample workload (test/lab builds it into
// .cache/bin/warren-lab-app and runs it inside pod network namespaces):
//
//	app server --listen :8080 --name X   answers each line with "hello from X: <line>"
//	app client --to IP:port --msg M      sends M, prints the answer, exits non-zero on failure
//	           [--show-peer]             first prints "peer: <getpeername of the socket>"
//	           [--show-local]            then prints "local: <getsockname of the socket>"
//	app http-server --listen :8080 --name X   answers HTTP/1.1 and h2c with "X <method> <path> xff=<X-Forwarded-For>"
//	app grpc-server --listen :9090           the gRPC health service, SERVING
//	app http --url URL [--method M] [--n N] [--h2c]
//	                                     one request: prints "<status> <body>"; N: JSON counts
//	                                     of "<status> <first word of body>"
//	app grpc --to IP:port                    Health/Check; prints the status code and message
//	app hbone --to IP:15008 --authority IP:port --cert C --key K --bundle B [--path P]
//	                                     an HBONE stream with that certificate; prints
//	                                     "hbone <status>" if refused, else "http <status>"
//	app forward --listen A[,B] --to A[,B] [--to-netns /proc/1/ns/net]
//	                                     forwards connections into another network namespace
//
// MPTCP is off on both sides (Go enables it for listeners by default), so the
// sockets are the plain TCP sockets the eBPF redirect hooks see.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app server --listen :8080 --name X | app client --to IP:port --msg M")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:], os.Stdout)
	case "http-server":
		err = httpServer(os.Args[2:])
	case "grpc-server":
		err = grpcServer(os.Args[2:])
	case "http":
		err = httpClient(os.Args[2:], os.Stdout)
	case "grpc":
		err = grpcClient(os.Args[2:], os.Stdout)
	case "forward":
		err = forward(os.Args[2:])
	case "hbone":
		err = hboneClient(os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q (want server, client, http-server, grpc-server, http, grpc, hbone or forward)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
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
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return err
	}
	log.Printf("server %s listening on %s", *name, ln.Addr())
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serve(c, *name)
	}
}

func serve(c net.Conn, name string) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" || err == nil {
			if _, werr := fmt.Fprintf(c, "hello from %s: %s\n", name, line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func client(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	to := fs.String("to", "", "server address IP:port")
	msg := fs.String("msg", "hi", "message to send (one line)")
	timeout := fs.Duration("timeout", 5*time.Second, "overall timeout")
	showPeer := fs.Bool("show-peer", false, "print the connected socket's peer address (getpeername) before the answer")
	showLocal := fs.Bool("show-local", false, "print the connected socket's local address (getsockname) before the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("client: --to is required")
	}
	d := net.Dialer{Timeout: *timeout}
	d.SetMultipathTCP(false)
	c, err := d.Dial("tcp", *to)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(*timeout)); err != nil {
		return err
	}
	if *showPeer {
		peer, err := getpeername(c.(*net.TCPConn))
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(stdout, "peer: %s\n", peer); err != nil {
			return err
		}
	}
	if *showLocal {
		local, err := getsockname(c.(*net.TCPConn))
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(stdout, "local: %s\n", local); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(c, "%s\n", *msg); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read answer from %s: %w", *to, err)
	}
	_, err = io.WriteString(stdout, line)
	return err
}

// getpeername asks the kernel (not Go's cached RemoteAddr) for the socket's peer.
func getpeername(c *net.TCPConn) (string, error) {
	return sockaddr(c, "getpeername", unix.Getpeername)
}

// getsockname asks the kernel (not Go's cached LocalAddr) for the socket's local address.
func getsockname(c *net.TCPConn) (string, error) {
	return sockaddr(c, "getsockname", unix.Getsockname)
}

func sockaddr(c *net.TCPConn, name string, get func(fd int) (unix.Sockaddr, error)) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = get(int(fd)) }); err != nil {
		return "", err
	}
	if serr != nil {
		return "", fmt.Errorf("%s: %w", name, serr)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String(), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)).String(), nil
	}
	return fmt.Sprintf("%v", sa), nil
}
