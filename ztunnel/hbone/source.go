package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// source is the request body of a stream opened with [ClientConn.ConnectFrom]: the HTTP/2 layer
// reads the caller's connection through it directly, with no pipe and no goroutine in between.
// Nothing is read before the peer answered 200 (open), so the stream carries exactly what it
// would with [ClientConn.Connect] followed by a copy.
type source struct {
	src net.Conn

	gate     chan struct{} // closed by open or shut, whichever comes first
	gateOnce sync.Once
	gateErr  error       // set before gate closes: why nothing will be read
	started  atomic.Bool // open ran: a Read may be blocked on src
	stopped  atomic.Bool // stop ran: the next deadline error is a clean EOF

	n    atomic.Int64
	done chan struct{} // closed when the body ended
	err  error         // how it ended: nil for EOF; set before done closes

	mu       sync.Mutex
	finished bool
	end      func() // runs once when the body ended, before done closes
}

func newSource(src net.Conn) *source {
	return &source{src: src, gate: make(chan struct{}), done: make(chan struct{})}
}

// open lets Reads through: the peer accepted the stream.
func (s *source) open() {
	s.gateOnce.Do(func() {
		s.started.Store(true)
		close(s.gate)
	})
}

// shut makes Reads fail with err unless open came first: the stream was not accepted or ended
// before it was. src is left alone.
func (s *source) shut(err error) {
	s.gateOnce.Do(func() {
		s.gateErr = err
		close(s.gate)
	})
}

func (s *source) Read(p []byte) (int, error) {
	<-s.gate
	if s.gateErr != nil {
		return 0, s.gateErr
	}
	n, err := s.src.Read(p)
	s.n.Add(int64(n))
	if err != nil {
		if s.stopped.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
			err = io.EOF // stop: end the stream cleanly (END_STREAM)
		}
		if err == io.EOF {
			s.finish(nil)
		} else {
			s.finish(err)
		}
	}
	return n, err
}

// Close is called by the HTTP/2 layer when the stream ends or is aborted: a Read still blocked on
// src is released (by a read deadline in the past; src itself stays open for the caller).
func (s *source) Close() error {
	s.shut(net.ErrClosed) // the HTTP/2 layer waits for a Read blocked at the gate
	s.interrupt()
	s.finish(net.ErrClosed)
	return nil
}

// stop ends the body cleanly: a blocked Read returns io.EOF and the peer sees END_STREAM.
func (s *source) stop() {
	s.stopped.Store(true)
	s.interrupt()
}

func (s *source) interrupt() {
	if s.started.Load() {
		_ = s.src.SetReadDeadline(time.Unix(1, 0))
	}
}

func (s *source) finish(err error) {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	s.err = err
	end := s.end
	s.mu.Unlock()
	if end != nil {
		end()
	}
	close(s.done)
}

// onEnd sets f to run when the body ends, at once if it already did.
func (s *source) onEnd(f func()) {
	s.mu.Lock()
	if !s.finished {
		s.end = f
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	f()
}
