package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is one proxied byte stream: an HTTP/2 CONNECT stream, on either side
// of the tunnel. It implements net.Conn plus half-close. Read and Write may be
// called concurrently with each other (full duplex), but each by one goroutine
// at a time.
//
// On the client side, Read returns the response body and Write the request
// body. On the server side, Read returns the request body and Write sends
// response DATA, flushed on every call.
//
// LocalAddr and RemoteAddr are the addresses of the outer TCP connection that
// carries the stream.
//
// Deadlines are destructive, like a TLS write deadline: when a read or write
// deadline passes, the stream is reset, pending and later calls return
// os.ErrDeadlineExceeded, and the Conn must be closed. HTTP/2 gives no way to
// interrupt a blocked read or write and then resume it.
type Conn struct {
	body   io.ReadCloser       // client: response body; server: request body
	pw     *io.PipeWriter      // client: request body
	src    *source             // client from ConnectFrom: request body read from the caller's conn
	rw     http.ResponseWriter // server: response
	flush  func() error        // server: flushes rw
	cancel context.CancelFunc  // client: ends the stream's context
	local  net.Addr
	remote net.Addr

	flags atomic.Uint32

	mu      sync.Mutex
	rtimer  *time.Timer
	wtimer  *time.Timer
	release func() // called once when the stream is finished
}

const (
	flagReadEOF     = 1 << iota // Read returned io.EOF
	flagWriteClosed             // CloseWrite called
	flagClosed                  // Close called
	flagTimedOut                // a deadline passed
	flagReleased                // release ran
	flagReadClosed              // CloseRead called
)

// Read reads stream data sent by the peer. It returns io.EOF once the peer
// half-closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.body.Read(p)
	if err != nil {
		if err == io.EOF {
			if c.setFlag(flagReadEOF)&flagWriteClosed != 0 {
				c.doRelease()
			}
			return n, err
		}
		if c.flags.Load()&flagReadClosed != 0 {
			return n, net.ErrClosed
		}
		err = c.mapErr(err)
	}
	return n, err
}

// Write sends p to the peer. It blocks while HTTP/2 flow control is
// exhausted.
func (c *Conn) Write(p []byte) (int, error) {
	f := c.flags.Load()
	if f&(flagWriteClosed|flagClosed|flagTimedOut) != 0 {
		return 0, c.mapErr(errWriteClosed)
	}
	var n int
	var err error
	if c.src != nil {
		return 0, errSourced
	}
	if c.pw != nil {
		n, err = c.pw.Write(p)
	} else {
		n, err = c.rw.Write(p)
		if err == nil {
			err = c.flush()
		}
	}
	if err != nil {
		err = c.mapErr(err)
	}
	return n, err
}

var (
	errWriteClosed = errors.New("write on a half-closed hbone stream")
	errSourced     = errors.New("write on an hbone stream opened with ConnectFrom: it reads what it sends from its source")
)

// Sent returns the bytes read from the source of a stream opened with [ClientConn.ConnectFrom],
// so far; zero for other streams.
func (c *Conn) Sent() int64 {
	if c.src == nil {
		return 0
	}
	return c.src.n.Load()
}

// SendDone is closed when a stream opened with [ClientConn.ConnectFrom] stopped reading its
// source: at the source's EOF (the peer then reads EOF), on a read error, or when the stream
// ended. It is nil for other streams.
func (c *Conn) SendDone() <-chan struct{} {
	if c.src == nil {
		return nil
	}
	return c.src.done
}

// SendErr returns why the source stopped being read once SendDone is closed: nil after its EOF,
// the read error, or net.ErrClosed when the stream ended first.
func (c *Conn) SendErr() error {
	if c.src == nil {
		return nil
	}
	<-c.src.done
	return c.src.err
}

func (c *Conn) mapErr(err error) error {
	f := c.flags.Load()
	switch {
	case f&flagTimedOut != 0:
		return os.ErrDeadlineExceeded
	case f&flagClosed != 0:
		return net.ErrClosed
	}
	return err
}

// CloseWrite half-closes the stream: the peer reads io.EOF after the data
// written so far.
//
// On the client side this sends END_STREAM at once. On the server side
// (a Conn from [Stream.Accept]) the x/net HTTP/2 server can only end the
// response when the [ServerConfig.Handler] returns: CloseWrite flushes and
// makes later Writes fail, and END_STREAM is sent when the handler returns.
// A handler that relays should therefore return once the upstream-to-client
// direction is done and the client has half-closed (see ztunnel/relay).
func (c *Conn) CloseWrite() error {
	f := c.setFlag(flagWriteClosed)
	if f&flagWriteClosed != 0 {
		return nil
	}
	var err error
	switch {
	case c.src != nil:
		c.src.stop()
	case c.pw != nil:
		err = c.pw.Close()
	default:
		err = c.flush()
	}
	if f&flagReadEOF != 0 {
		c.doRelease()
	}
	return err
}

// CloseRead stops reading: later Reads return net.ErrClosed. Data the peer
// still sends is discarded. On the client side, a stream whose response has
// not ended is reset, because the x/net client cannot stop reading without
// aborting the stream.
func (c *Conn) CloseRead() error {
	if c.flags.Load()&flagReadEOF != 0 {
		return nil
	}
	c.setFlag(flagReadClosed)
	return c.body.Close()
}

// Close ends the stream in both directions. On the client side a stream that
// has not finished in both directions is reset (RST_STREAM CANCEL). On the
// server side, END_STREAM is sent when the handler returns. Close is safe to
// call more than once and concurrently with Read and Write.
func (c *Conn) Close() error {
	if c.setFlag(flagClosed)&flagClosed != 0 {
		return nil
	}
	c.mu.Lock()
	if c.rtimer != nil {
		c.rtimer.Stop()
	}
	if c.wtimer != nil {
		c.wtimer.Stop()
	}
	c.mu.Unlock()
	c.abort(net.ErrClosed)
	c.doRelease()
	return nil
}

// abort tears the stream down without waiting for the peer.
func (c *Conn) abort(err error) {
	if c.pw != nil {
		c.pw.CloseWithError(err)
	}
	if c.src != nil {
		c.src.interrupt()
	}
	c.body.Close()
	if c.cancel != nil {
		c.cancel()
	}
}

func (c *Conn) setFlag(f uint32) (old uint32) {
	return c.flags.Or(f)
}

func (c *Conn) doRelease() {
	if c.setFlag(flagReleased)&flagReleased != 0 {
		return
	}
	c.mu.Lock()
	r := c.release
	c.release = nil
	c.mu.Unlock()
	if r != nil {
		r()
	}
}

// OnDone registers f to run exactly once when the stream is finished: after
// Close, or after both Read returned io.EOF and CloseWrite was called. If the
// stream is already finished, f runs at once. It is meant for connection pools
// that count active streams; call it before sharing the Conn.
func (c *Conn) OnDone(f func()) {
	c.mu.Lock()
	if c.flags.Load()&flagReleased == 0 {
		prev := c.release
		if prev == nil {
			c.release = f
		} else {
			c.release = func() { prev(); f() }
		}
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	f()
}

// LocalAddr returns the local address of the outer TCP connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the outer TCP connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both the read and the write deadline. See [Conn] for the
// destructive semantics.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline arms a timer that resets the stream when t passes; the zero
// time disarms it. See [Conn].
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(&c.rtimer, t)
}

// SetWriteDeadline arms a timer that resets the stream when t passes; the zero
// time disarms it. See [Conn].
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(&c.wtimer, t)
}

func (c *Conn) setDeadline(tp **time.Timer, t time.Time) error {
	if c.flags.Load()&flagTimedOut != 0 {
		return os.ErrDeadlineExceeded
	}
	c.mu.Lock()
	if *tp != nil {
		(*tp).Stop()
	}
	d := time.Until(t)
	switch {
	case t.IsZero():
	case d <= 0:
		c.mu.Unlock()
		c.expire()
		return nil
	case *tp == nil:
		*tp = time.AfterFunc(d, c.expire)
	default:
		(*tp).Reset(d)
	}
	c.mu.Unlock()
	return nil
}

func (c *Conn) expire() {
	if c.setFlag(flagTimedOut)&(flagTimedOut|flagClosed) != 0 {
		return
	}
	c.abort(os.ErrDeadlineExceeded)
}
