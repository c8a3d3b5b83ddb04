package hbone

import (
	"crypto/tls"
	"net"
	"sync"
)

// maxBatch bounds the bytes of TLS records gathered into one write(2).
const maxBatch = 128 << 10

// batchBufs holds the batch buffers between writes, so an idle connection keeps none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch+tlsRecordOverhead); return &b }}

// tlsRecordOverhead is the most a TLS 1.3 record adds to its 16 KiB of payload.
const tlsRecordOverhead = 16<<10 + 256

// batchConn sits under crypto/tls. While a batch is open, the records tls writes are gathered
// and sent with one write(2) per maxBatch bytes instead of one per 16 KiB record. crypto/tls has
// no flush hook of its own; batchedTLS opens and closes the batch around each tls Write.
type batchConn struct {
	net.Conn

	mu   sync.Mutex
	open bool
	buf  *[]byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return c.Conn.Write(p)
	}
	if c.buf == nil {
		c.buf = batchBufs.Get().(*[]byte)
	}
	if len(*c.buf)+len(p) > maxBatch {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > maxBatch {
			return c.Conn.Write(p)
		}
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

func (c *batchConn) begin() {
	c.mu.Lock()
	c.open = true
	c.mu.Unlock()
}

// end closes the batch and writes what it gathered.
func (c *batchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open = false
	err := c.flushLocked()
	if c.buf != nil {
		*c.buf = (*c.buf)[:0]
		batchBufs.Put(c.buf)
		c.buf = nil
	}
	return err
}

func (c *batchConn) flushLocked() error {
	if c.buf == nil || len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	return err
}

// batchedTLS is the TLS connection HTTP/2 runs on: each Write (one HTTP/2 framer flush) leaves in
// as few write(2) calls as possible. Everything else is the tls.Conn's.
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
	wmu sync.Mutex
}

// newBatchedTLS returns a TLS connection over raw whose writes are batched; wrap builds it
// (tls.Client or tls.Server) over the batching layer.
func newBatchedTLS(raw net.Conn, wrap func(net.Conn) *tls.Conn) *batchedTLS {
	b := &batchConn{Conn: raw}
	return &batchedTLS{Conn: wrap(b), raw: b}
}

func (t *batchedTLS) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.raw.begin()
	n, err := t.Conn.Write(p)
	if ferr := t.raw.end(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}
