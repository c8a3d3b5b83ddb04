// Package relay copies bytes between two connections in both directions, the
// inner loop of every proxied connection in the ztunnel and the waypoint.
//
// It is half-close aware (EOF in one direction becomes CloseWrite on the other
// side while the opposite direction keeps running), allocates no buffer per
// connection in the steady state (buffers come from pools and grow from
// 1 KiB to 16 KiB to 256 KiB as a connection proves busy, as Istio's ztunnel
// does), and lets the kernel splice when both ends are *net.TCPConn.
//
// It may be imported by any data-plane package. It does not log.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Buffer tiers. A connection starts small so that idle connections cost little
// memory, and moves up a tier after fillsToGrow reads that filled its buffer.
const (
	tier0       = 1 << 10
	tier1       = 16 << 10
	tier2       = 256 << 10
	fillsToGrow = 4
)

// pools holds one sync.Pool per tier. It is immutable after package
// initialization, like a lookup table, and holds no mesh state.
var pools = [3]sync.Pool{
	{New: func() any { b := make([]byte, tier0); return &b }},
	{New: func() any { b := make([]byte, tier1); return &b }},
	{New: func() any { b := make([]byte, tier2); return &b }},
}

// Relay copies a to b and b to a concurrently until both directions are done,
// then closes both connections and returns the byte counts.
//
// When one direction reads EOF, Relay calls CloseWrite on the destination if it
// has one (*net.TCPConn, *tls.Conn, *hbone.Conn) and keeps the other direction
// running. When one direction fails, Relay closes both connections so the other
// direction ends too. err is the first real error: io.EOF and the "use of
// closed connection" errors caused by Relay's own closing are not reported.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var (
		mu       sync.Mutex
		first    error
		shutdown bool
	)
	fail := func(e error) {
		mu.Lock()
		defer mu.Unlock()
		if shutdown {
			return // caused by our own close, or after the first error
		}
		shutdown = true
		first = e
		a.Close()
		b.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var e error
		bToA, e = copyHalf(a, b)
		if e != nil {
			fail(e)
		}
	}()
	aToB, e := copyHalf(b, a)
	if e != nil {
		fail(e)
	}
	<-done
	mu.Lock()
	shutdown = true
	mu.Unlock()
	a.Close()
	b.Close()
	return aToB, bToA, first
}

// Puller is a connection that reads what it sends by itself from the connection it was opened
// with, such as an hbone stream from ConnectFrom: the relay then copies only the other way.
type Puller interface {
	net.Conn
	// Sent is the number of bytes read from the source so far.
	Sent() int64
	// SendDone is closed when the source is no longer read; SendErr says why (nil: its EOF).
	SendDone() <-chan struct{}
	SendErr() error
}

// RelayPulled relays between a and b when b reads from a by itself (b is a Puller opened on a):
// it copies b to a in the calling goroutine, no goroutine of its own, with the semantics of
// Relay: EOF from b half-closes a, while b keeps reading a until a's EOF; a failure in either
// direction closes both; the call returns when both directions are done, with both closed.
// aToB is what b read from a.
func RelayPulled(a net.Conn, b Puller) (aToB, bToA int64, err error) {
	bToA, err = copyHalf(a, b)
	if err != nil {
		select {
		case <-b.SendDone(): // the source failed first: that is the cause
			if serr := b.SendErr(); sourceFailed(serr) {
				err = serr
			}
		default:
		}
		a.Close()
		b.Close()
	}
	<-b.SendDone()
	if serr := b.SendErr(); err == nil && sourceFailed(serr) {
		err = serr
	}
	a.Close()
	b.Close()
	return b.Sent(), bToA, err
}

// sourceFailed reports a real read error of a Puller's source, not one caused by the stream
// ending (closed, or released by a read deadline in the past).
func sourceFailed(err error) bool {
	return err != nil && !benign(err) && !errors.Is(err, os.ErrDeadlineExceeded)
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst until EOF, then half-closes dst. It returns nil on
// a clean EOF.
func copyHalf(dst, src net.Conn) (int64, error) {
	var n int64
	var err error
	if d, ok := dst.(*net.TCPConn); ok {
		if s, ok := src.(*net.TCPConn); ok {
			n, err = d.ReadFrom(s) // splice(2) on Linux
			return n, finish(dst, err)
		}
	}
	n, err = copyBuffered(dst, src)
	return n, finish(dst, err)
}

func finish(dst net.Conn, err error) error {
	if err != nil {
		return err
	}
	if cw, ok := dst.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !benign(err) {
			return err
		}
	}
	return nil
}

// benign reports errors that only say the connection is already gone.
func benign(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN)
}

// copyBuffered is io.CopyBuffer without the ReaderFrom/WriterTo detours, which
// would allocate, with buffers that grow with the connection's traffic.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	tier := 0
	bp := pools[tier].Get().(*[]byte)
	defer func() { pools[tier].Put(bp) }()
	var total int64
	fills := 0
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			if werr != nil {
				return total, werr
			}
			if nw != nr {
				return total, io.ErrShortWrite
			}
			if nr == len(buf) && tier < len(pools)-1 {
				if fills++; fills >= fillsToGrow {
					pools[tier].Put(bp)
					tier++
					bp = pools[tier].Get().(*[]byte)
					fills = 0
				}
			} else {
				fills = 0
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}
