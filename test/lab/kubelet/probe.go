//go:build linux

package kubelet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// runProbes runs the container's startup, readiness and liveness probes until ctx ends.
func (w *podWorker) runProbes(ctx context.Context, c *ctr) {
	w.mu.Lock()
	startCh, killc := c.startCh, c.kill
	w.mu.Unlock()
	done := make(chan struct{}, 3)
	n := 0
	if p := c.spec.StartupProbe; p != nil {
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			w.probeLoop(ctx, c, "startup", p, nil, func(ok bool) bool {
				if ok {
					w.mu.Lock()
					if !c.started {
						c.started = true
						c.ready = c.spec.ReadinessProbe == nil
						close(startCh)
					}
					w.mu.Unlock()
					w.markDirty()
					return true
				}
				sendKill(killc, "failed startup probe")
				return true
			})
		}()
	}
	if p := c.spec.ReadinessProbe; p != nil && !c.init {
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			w.probeLoop(ctx, c, "readiness", p, startCh, func(ok bool) bool {
				w.mu.Lock()
				changed := c.ready != ok
				c.ready = ok
				w.mu.Unlock()
				if changed {
					w.markDirty()
				}
				return false
			})
		}()
	}
	if p := c.spec.LivenessProbe; p != nil && !c.init {
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			w.probeLoop(ctx, c, "liveness", p, startCh, func(ok bool) bool {
				if ok {
					return false
				}
				sendKill(killc, "failed liveness probe")
				return true
			})
		}()
	}
	for range n {
		<-done
	}
}

func sendKill(c chan string, reason string) {
	select {
	case c <- reason:
	default:
	}
}

// probeLoop probes every period after the initial delay (counted once after) and calls report
// when the result crosses the success or failure threshold; report returning true ends it.
func (w *podWorker) probeLoop(ctx context.Context, c *ctr, kind string, p *corev1.Probe, after chan struct{}, report func(ok bool) bool) {
	if after != nil {
		select {
		case <-ctx.Done():
			return
		case <-after:
		}
	}
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	okNeed, failNeed := int(max(p.SuccessThreshold, 1)), int(max(p.FailureThreshold, 1))
	if !sleep(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return
	}
	var oks, fails int
	reported := -1 // 1 success reported, 0 failure reported
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := w.probe(pctx, c, p)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			oks, fails = oks+1, 0
		} else {
			oks, fails = 0, fails+1
			if fails == failNeed {
				w.log.Info("probe failed", "kind", kind, "container", c.spec.Name, "err", err)
				w.event(corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %v", capital(kind), err))
			}
		}
		switch {
		case oks >= okNeed && reported != 1:
			reported = 1
			if report(true) {
				return
			}
		case fails >= failNeed && reported != 0:
			reported = 0
			if report(false) {
				return
			}
		}
		if !sleep(ctx, period) {
			return
		}
	}
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// probe runs one probe: httpGet, tcpSocket and grpc from the node's network namespace to the
// pod's address (as a kubelet does from the host), exec inside the container.
func (w *podWorker) probe(ctx context.Context, c *ctr, p *corev1.Probe) error {
	sb := w.sandbox()
	if sb == nil {
		return errors.New("no sandbox")
	}
	port := func(ps intstr.IntOrString) (string, error) {
		if ps.Type == intstr.Int {
			return strconv.Itoa(ps.IntValue()), nil
		}
		for _, cp := range c.spec.Ports {
			if cp.Name == ps.StrVal {
				return strconv.Itoa(int(cp.ContainerPort)), nil
			}
		}
		if n, err := strconv.Atoi(ps.StrVal); err == nil {
			return strconv.Itoa(n), nil
		}
		return "", fmt.Errorf("port %q is not a container port name", ps.StrVal)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialIn(ctx, w.k.cfg.NodeNetns, network, addr)
	}
	switch {
	case p.Exec != nil:
		w.mu.Lock()
		pid, env, cg := c.pid, c.env, c.cgroup
		w.mu.Unlock()
		if pid == 0 {
			return errors.New("container not running")
		}
		_, _, err := execIn(ctx, pid, env, cg, p.Exec.Command, nil)
		return err
	case p.HTTPGet != nil:
		g := p.HTTPGet
		pt, err := port(g.Port)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = sb.ip.String()
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		path := g.Path
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, pt)+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/warren-lab")
		for _, h := range g.HTTPHeaders {
			if h.Name == "Host" {
				req.Host = h.Value
				continue
			}
			req.Header.Add(h.Name, h.Value)
		}
		tr := &http.Transport{DialContext: dial, DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // kubelet probes skip verification too
		defer tr.CloseIdleConnections()
		cl := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		pt, err := port(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = sb.ip.String()
		}
		conn, err := dial(ctx, "tcp", net.JoinHostPort(host, pt))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.GRPC != nil:
		addr := net.JoinHostPort(sb.ip.String(), strconv.Itoa(int(p.GRPC.Port)))
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial(ctx, "tcp", a) }))
		if err != nil {
			return err
		}
		defer conn.Close()
		svc := ""
		if p.GRPC.Service != nil {
			svc = *p.GRPC.Service
		}
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return err
		}
		if res.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("gRPC probe: service %q is %v", svc, res.Status)
		}
		return nil
	}
	return errors.New("probe has no handler (exec, httpGet, tcpSocket, grpc)")
}

// dialIn dials from the network namespace netnsPath ("" the kubelet's own): the socket is
// created on a thread switched into it, and keeps that namespace.
func dialIn(ctx context.Context, netnsPath, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if netnsPath == "" {
		return d.DialContext(ctx, network, addr)
	}
	if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.IsValid() {
		return nil, fmt.Errorf("dial %s: want an ip:port", addr)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("dial: own netns: %w", err)}
			return
		}
		defer orig.Close()
		target, err := os.Open(netnsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("dial: netns: %w", err)}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("dial: enter netns %s: %w", netnsPath, err)}
			return
		}
		c, err := d.DialContext(ctx, network, addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine.
			if c != nil {
				c.Close()
			}
			ch <- result{err: fmt.Errorf("dial: leave netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
