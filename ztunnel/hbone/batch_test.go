package hbone

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/warren-mesh/warren/ca/catest"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestBatchedTLSCoalescesRecords checks that one large Write leaves in a few socket writes (one
// per 64 KiB batch) rather than one per 16 KiB TLS record, and arrives intact.
func TestBatchedTLSCoalescesRecords(t *testing.T) {
	c := catest.New(t, "cluster.local")
	a := c.SVID(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/a"))
	b := c.SVID(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/b"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 1 << 20
	got := make(chan []byte, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		tc := tls.Server(s, ServerTLSConfig(b, c.Bundle(), tlsconfig.AuthorizeAny()))
		defer tc.Close()
		buf := make([]byte, size)
		if _, err := io.ReadFull(tc, buf); err != nil {
			got <- nil
			return
		}
		got <- buf
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingConn{Conn: raw}
	bt := newBatchedTLS(counted, func(c2 net.Conn) *tls.Conn {
		return tls.Client(c2, ClientTLSConfig(a, c.Bundle(), tlsconfig.AuthorizeAny()))
	})
	defer bt.Close()
	if err := bt.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := counted.writes.Load()
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i)
	}
	if _, err := bt.Write(msg); err != nil {
		t.Fatal(err)
	}
	writes := counted.writes.Load() - before
	// 1 MiB is 64 records of 16 KiB; batched, a write carries at least
	// maxBatch-tlsRecordOverhead bytes of records.
	if want := int64(size/(maxBatch-tlsRecordOverhead) + 2); writes > want {
		t.Errorf("a 1 MiB write took %d socket writes; want at most %d (one per batch), not one per record", writes, want)
	}
	if b := <-got; string(b) != string(msg) {
		t.Error("the peer did not receive the bytes written")
	}
}
