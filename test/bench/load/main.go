// Command load is the benchmark's own load tool and sink/echo server; `go run ./test/lab bench`
// builds it and runs it inside the lab's pods. Every client mode prints one JSON object.
//
//	load server [--bulk :9000] [--http :9001]   bulk sink (reads and discards) and a minimal
//	                                            HTTP/1.1 echo server (POST body echoed back)
//	load bulk --to IP:PORT --streams N --duration D
//	load rr --to IP:PORT --rate R --conns C --duration D [--size B]
//	    R > 0: open loop. A scheduler emits send times every 1/R; C keep-alive connections take
//	    the next due request; latency is measured from the scheduled time (so queueing behind a
//	    slow response counts, no coordinated omission) and, separately, from the actual send.
//	    R = 0: closed loop at the maximum rate.
//	load connrate --to IP:PORT --workers W --duration D   connect, one request, close
//	load idle --to IP:PORT --conns N   opens N connections, prints {"open":N}, holds them until
//	                                   stdin closes
//
// MPTCP is off on both sides, so the sockets are the plain TCP sockets the eBPF redirect sees.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: load server|bulk|rr|connrate|idle [flags]")
		os.Exit(2)
	}
	raiseNofile()
	var err error
	var res any
	args := os.Args[2:]
	switch os.Args[1] {
	case "server":
		err = server(args)
	case "bulk":
		res, err = bulk(args)
	case "rr":
		res, err = rr(args)
	case "connrate":
		res, err = connrate(args)
	case "idle":
		err = idle(args)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	if res != nil {
		_ = json.NewEncoder(os.Stdout).Encode(res)
	}
}

func raiseNofile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil {
		want := uint64(200000)
		if r.Max < want {
			r.Max = want // root may raise the hard limit
		}
		r.Cur = r.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
			_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
			r.Cur = r.Max
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
		}
	}
}

var dialer = &net.Dialer{Timeout: 5 * time.Second}

func init() { dialer.SetMultipathTCP(false) }

func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}

// ---- server ----

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	bulkAddr := fs.String("bulk", ":9000", "bulk sink address")
	httpAddr := fs.String("http", ":9001", "HTTP/1.1 echo address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bl, err := listen(*bulkAddr)
	if err != nil {
		return err
	}
	hl, err := listen(*httpAddr)
	if err != nil {
		return err
	}
	go acceptLoop(bl, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	acceptLoop(hl, serveHTTP)
	return nil
}

func acceptLoop(l net.Listener, h func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() { defer c.Close(); h(c) }()
	}
}

// serveHTTP is a minimal HTTP/1.1 server: it reads a request (Content-Length body), answers 200
// with the body echoed, and keeps the connection unless the client says Connection: close.
func serveHTTP(c net.Conn) {
	br := bufio.NewReaderSize(c, 4096)
	bw := bufio.NewWriterSize(c, 4096)
	body := make([]byte, 0, 1024)
	for {
		n, closeAfter, err := readHead(br)
		if err != nil {
			return
		}
		body = body[:0]
		if n > 0 {
			body = slices.Grow(body, n)[:n]
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
		}
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ")
		bw.WriteString(strconv.Itoa(n))
		if closeAfter {
			bw.WriteString("\r\nConnection: close")
		}
		bw.WriteString("\r\n\r\n")
		bw.Write(body)
		if bw.Flush() != nil || closeAfter {
			return
		}
	}
}

// readHead reads a request or response head and returns Content-Length and whether
// "Connection: close" was present.
func readHead(br *bufio.Reader) (n int, closeConn bool, err error) {
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if first {
				continue
			}
			return n, closeConn, nil
		}
		first = false
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("content-length")):
			n, _ = strconv.Atoi(string(v))
		case bytes.EqualFold(k, []byte("connection")):
			closeConn = bytes.EqualFold(v, []byte("close"))
		}
	}
}

// ---- client side ----

type conn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
	buf []byte
}

func dialHTTP(to string, size int, closeConn bool) (*conn, error) {
	c, err := dialer.Dial("tcp", to)
	if err != nil {
		return nil, err
	}
	h := "POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: " + strconv.Itoa(size) + "\r\n"
	if closeConn {
		h += "Connection: close\r\n"
	}
	req := append([]byte(h+"\r\n"), bytes.Repeat([]byte("x"), size)...)
	return &conn{c: c, br: bufio.NewReaderSize(c, 4096), req: req, buf: make([]byte, size)}, nil
}

func (c *conn) do() error {
	if _, err := c.c.Write(c.req); err != nil {
		return err
	}
	n, _, err := readHead(c.br)
	if err != nil {
		return err
	}
	if n > len(c.buf) {
		c.buf = make([]byte, n)
	}
	_, err = io.ReadFull(c.br, c.buf[:n])
	return err
}

type BulkResult struct {
	Streams int     `json:"streams"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Gbps    float64 `json:"gbps"`
}

func bulk(args []string) (any, error) {
	fs := flag.NewFlagSet("bulk", flag.ContinueOnError)
	to := fs.String("to", "", "IP:PORT of the sink")
	streams := fs.Int("streams", 1, "parallel streams")
	dur := fs.Duration("duration", 10*time.Second, "duration")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var conns []net.Conn
	for i := 0; i < *streams; i++ {
		c, err := dialer.Dial("tcp", *to)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*dur)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			_ = c.SetWriteDeadline(deadline)
			for {
				n, err := c.Write(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	for _, c := range conns {
		c.Close()
	}
	b := total.Load()
	return BulkResult{Streams: *streams, Bytes: b, Seconds: secs, Gbps: float64(b) * 8 / secs / 1e9}, nil
}

type RRResult struct {
	Rate      float64 `json:"targetRate"`
	Conns     int     `json:"conns"`
	Requests  int     `json:"requests"`
	Errors    int     `json:"errors"`
	Seconds   float64 `json:"seconds"`
	RPS       float64 `json:"rps"`
	P50us     float64 `json:"p50us"`
	P90us     float64 `json:"p90us"`
	P99us     float64 `json:"p99us"`
	P999us    float64 `json:"p999us"`
	SendP50us float64 `json:"sendP50us"`
	SendP90us float64 `json:"sendP90us"`
	SendP99us float64 `json:"sendP99us"`
	// LateP99us is the 99th percentile of how late a send started after its schedule.
	LateP99us float64 `json:"lateP99us"`
}

func rr(args []string) (any, error) {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	to := fs.String("to", "", "IP:PORT of the HTTP echo server")
	rate := fs.Float64("rate", 1000, "requests per second in total (0: as fast as possible)")
	nconns := fs.Int("conns", 4, "keep-alive connections")
	dur := fs.Duration("duration", 10*time.Second, "duration")
	size := fs.Int("size", 100, "request body bytes (echoed back)")
	warm := fs.Duration("warmup", 500*time.Millisecond, "warm-up, not recorded")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	conns := make([]*conn, *nconns)
	for i := range conns {
		c, err := dialHTTP(*to, *size, false)
		if err != nil {
			return nil, err
		}
		defer c.c.Close()
		conns[i] = c
	}
	type sample struct{ sched, send, lat time.Duration }
	var mu sync.Mutex
	var all []sample
	var errs atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	recStart := begin.Add(*warm)
	end := recStart.Add(*dur)
	if *rate > 0 {
		interval := time.Duration(float64(time.Second) / *rate)
		n := int(float64(*warm+*dur) / float64(interval))
		due := make(chan time.Time, n+1)
		go func() { // the scheduler: emits each send time when it is due
			defer close(due)
			// Go's timers wake up with up to ~1 ms of slack; this thread sleeps in nanosleep
			// with a 1 ns timer slack instead.
			runtime.LockOSThread()
			_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
			for i := 0; i < n; i++ {
				t := begin.Add(time.Duration(i) * interval)
				if d := time.Until(t); d > 0 {
					ts := unix.NsecToTimespec(int64(d))
					_ = unix.Nanosleep(&ts, nil)
				}
				due <- t
			}
		}()
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var local []sample
				for t := range due {
					s := time.Now()
					if err := c.do(); err != nil {
						errs.Add(1)
						continue
					}
					e := time.Now()
					if t.After(recStart) {
						local = append(local, sample{e.Sub(t), e.Sub(s), s.Sub(t)})
					}
				}
				mu.Lock()
				all = append(all, local...)
				mu.Unlock()
			}()
		}
	} else {
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var local []sample
				for {
					s := time.Now()
					if s.After(end) {
						break
					}
					if err := c.do(); err != nil {
						errs.Add(1)
						return
					}
					if s.After(recStart) {
						d := time.Since(s)
						local = append(local, sample{d, d, 0})
					}
				}
				mu.Lock()
				all = append(all, local...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	secs := dur.Seconds()
	res := RRResult{Rate: *rate, Conns: *nconns, Requests: len(all), Errors: int(errs.Load()), Seconds: secs, RPS: float64(len(all)) / secs}
	q := func(get func(sample) time.Duration, p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		v := make([]time.Duration, len(all))
		for i, s := range all {
			v[i] = get(s)
		}
		slices.Sort(v)
		i := int(p * float64(len(v)-1))
		return float64(v[i]) / 1e3
	}
	sched := func(s sample) time.Duration { return s.sched }
	send := func(s sample) time.Duration { return s.send }
	late := func(s sample) time.Duration { return s.lat }
	res.P50us, res.P90us, res.P99us, res.P999us = q(sched, .5), q(sched, .9), q(sched, .99), q(sched, .999)
	res.SendP50us, res.SendP90us, res.SendP99us = q(send, .5), q(send, .9), q(send, .99)
	res.LateP99us = q(late, .99)
	return res, nil
}

type ConnResult struct {
	Workers int     `json:"workers"`
	Conns   int     `json:"conns"`
	Errors  int     `json:"errors"`
	Seconds float64 `json:"seconds"`
	CPS     float64 `json:"cps"`
}

func connrate(args []string) (any, error) {
	fs := flag.NewFlagSet("connrate", flag.ContinueOnError)
	to := fs.String("to", "", "IP:PORT of the HTTP echo server")
	workers := fs.Int("workers", 8, "parallel workers")
	dur := fs.Duration("duration", 10*time.Second, "duration")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(*dur)
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				c, err := dialHTTP(*to, 100, true)
				if err != nil {
					bad.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				if err := c.do(); err != nil {
					bad.Add(1)
				} else {
					ok.Add(1)
				}
				c.c.Close()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	return ConnResult{Workers: *workers, Conns: int(ok.Load()), Errors: int(bad.Load()), Seconds: secs, CPS: float64(ok.Load()) / secs}, nil
}

func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	to := fs.String("to", "", "IP:PORT (the bulk sink)")
	n := fs.Int("conns", 10000, "connections to open")
	par := fs.Int("parallel", 32, "dials in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conns := make([]net.Conn, *n)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := 0; w < *par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				c, err := dialer.Dial("tcp", *to)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				// one byte each, so the far side has really accepted and proxied the connection
				if _, err := c.Write([]byte{'x'}); err != nil {
					failed.Add(1)
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	open := 0
	for _, c := range conns {
		if c != nil {
			open++
		}
	}
	fe, _ := firstErr.Load().(string)
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"open": open, "failed": failed.Load(), "firstError": fe})
	_, _ = io.Copy(io.Discard, os.Stdin) // hold until stdin closes
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return nil
}
