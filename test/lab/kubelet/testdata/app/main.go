// Command app is the lab kubelet tests' container payload: an HTTP server whose readiness and
// liveness follow files (/tmp/ready, /tmp/unhealthy), small file commands for Exec, and, when
// installed as a CNI plugin named refuse-cni, a plugin that refuses every ADD.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if strings.HasSuffix(filepath.Base(os.Args[0]), "refuse-cni") {
		if os.Getenv("CNI_COMMAND") == "ADD" {
			fmt.Print(`{"cniVersion":"1.0.0","code":100,"msg":"pod refused by the test plugin","details":"fail-closed"}`)
			os.Exit(1)
		}
		if os.Getenv("CNI_COMMAND") == "VERSION" {
			fmt.Print(`{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}`)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve ADDR | touch PATH | cat PATH | fstype PATH | grpc-health ADDR | hang | exit CODE")
		os.Exit(2)
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "serve":
		serve(arg)
	case "touch":
		if err := os.WriteFile(arg, []byte("x"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "cat":
		b, err := os.ReadFile(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
	case "fstype":
		var st syscall.Statfs_t
		if err := syscall.Statfs(arg, &st); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%#x", st.Type)
	case "grpc-health":
		lis, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		srv := grpc.NewServer()
		hs := health.NewServer()
		hs.SetServingStatus("app", healthpb.HealthCheckResponse_NOT_SERVING)
		healthpb.RegisterHealthServer(srv, hs)
		fmt.Println("gRPC health on", arg)
		_ = srv.Serve(lis)
	case "hang":
		// Ignores SIGTERM: only the kubelet's SIGKILL after the grace period ends it.
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("hanging")
		for {
			time.Sleep(time.Hour)
		}
	case "exit":
		code, _ := strconv.Atoi(arg)
		os.Exit(code)
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr string) {
	mux := http.NewServeMux()
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !exists("/tmp/ready") {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if exists("/tmp/unhealthy") {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, _ *http.Request) {
		env := os.Environ()
		sort.Strings(env)
		fmt.Fprintln(w, strings.Join(env, "\n"))
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		fmt.Println("SIGTERM: shutting down")
		_ = srv.Shutdown(context.Background())
	}()
	fmt.Println("listening on", addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
