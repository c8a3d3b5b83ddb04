// Package hbone implements HBONE, the tunnel protocol of Istio ambient mode:
// one HTTP/2 CONNECT stream per proxied TCP connection, carried over mutual
// TLS 1.3 (ALPN "h2") between SPIFFE identities. It is wire compatible with
// Istio's ztunnel: classic (non-extended) CONNECT, ":authority" = "ip:port",
// 200 on success, 400 malformed, 401 denied, 503 upstream unreachable.
//
// The package provides the TLS configurations ([ClientTLSConfig],
// [ServerTLSConfig]), the client side ([NewClientConn], [ClientConn.Connect])
// and the server side ([NewServer], [Server.Serve], [Stream]). A proxied
// stream is a [Conn], which implements net.Conn plus half-close.
//
// It knows nothing about mesh state: it dials no sockets (callers create them,
// in pod network namespaces, with SO_MARK), keeps no pool (see ztunnel/pool)
// and makes no authorization decision beyond TLS peer verification. It does
// not log; errors are returned to the caller.
//
// It may be imported by any ztunnel or waypoint package; it depends only on
// the standard library, golang.org/x/net/http2 and go-spiffe.
package hbone

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN is the only application protocol an HBONE peer negotiates.
const ALPN = "h2"

// Header names Istio's ztunnel sends on the CONNECT request.
const (
	HeaderForwarded   = "Forwarded"
	HeaderBaggage     = "Baggage"
	HeaderTraceparent = "Traceparent"
)

// HTTP/2 settings, matching Istio ztunnel's defaults (HTTP2_* env vars).
const (
	streamWindow = 4 << 20  // per-stream receive window
	connWindow   = 16 << 20 // per-connection receive window
	maxFrameSize = 1 << 20  // largest DATA frame the client accepts
	// serverMaxFrame is the largest frame the server accepts (SETTINGS_MAX_FRAME_SIZE). The x/net
	// client holds a scratch buffer of min(this, 512 KiB) for every stream whose request body is
	// open, idle or not: at 1 MiB that was 512 KiB per idle proxied connection. 64 KiB - 9 makes
	// a full DATA frame with its 9-byte header exactly four 16 KiB TLS records, gathered into one
	// write(2) by batchedTLS.
	serverMaxFrame   = 64<<10 - 9
	maxHeaderBytes   = 16 << 10 // SETTINGS_MAX_HEADER_LIST_SIZE (roughly)
	defaultMaxStream = 1000     // advertised SETTINGS_MAX_CONCURRENT_STREAMS
)

// ClientTLSConfig returns the TLS configuration of an HBONE client.
//
// svid is the SOURCE workload's identity (the client presents the workload's
// certificate, not the ztunnel's); bundle holds the trust anchors the server
// chain is verified against; authorize checks the server's SPIFFE ID, usually
// tlsconfig.AuthorizeOneOf(expected destination IDs...). The configuration
// allows TLS 1.3 only, offers ALPN "h2", sends no SNI and does not resume
// sessions.
func ClientTLSConfig(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, authorize)
	harden(c)
	return c
}

// ServerTLSConfig returns the TLS configuration of an HBONE server.
//
// The server presents svid, requires a client certificate, verifies its chain
// against bundle and passes the client's SPIFFE ID to authorize, usually
// tlsconfig.AuthorizeMemberOf(localTrustDomain). A client without a
// certificate, or with one from a trust domain missing from bundle, fails the
// handshake.
func ServerTLSConfig(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, authorize)
	harden(c)
	return c
}

func harden(c *tls.Config) {
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = tls.VersionTLS13
	c.NextProtos = []string{ALPN}
	c.SessionTicketsDisabled = true
}

// NewTraceparent returns a random W3C traceparent value,
// "00-<32 hex trace id>-<16 hex span id>-00", as Istio's ztunnel sends one
// per proxied connection.
func NewTraceparent() string {
	var id [24]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go >= 1.24)
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], id[:16])
	b[35] = '-'
	hex.Encode(b[36:52], id[16:])
	copy(b[52:], "-00")
	return string(b[:])
}

// Forwarded returns the value of the "forwarded" header Istio's ztunnel sends:
// for="<client ip:port>";host=<host>. IPv6 addresses are bracketed inside the
// quotes (for="[fd00::1]:4000"). host is omitted when empty.
func Forwarded(client netip.AddrPort, host string) string {
	s := `for="` + client.String() + `"`
	if host != "" {
		s += ";host=" + host
	}
	return s
}

// StatusError is returned by [ClientConn.Connect] when the peer answers the
// CONNECT with a status other than 200. Use errors.As to get it.
type StatusError struct {
	Code   int    // HTTP status code, e.g. 401
	Status string // e.g. "401 Unauthorized"
}

func (e *StatusError) Error() string {
	s := "peer answered " + e.Status
	switch e.Code {
	case http.StatusBadRequest:
		s += " (malformed CONNECT: is the authority an ip:port of the destination?)"
	case http.StatusUnauthorized:
		s += " (denied by the destination's authorization policy)"
	case http.StatusServiceUnavailable:
		s += " (the peer could not reach the destination workload)"
	case http.StatusRequestHeaderFieldsTooLarge:
		s += " (request headers exceed the peer's 16 KiB limit)"
	}
	return s
}
