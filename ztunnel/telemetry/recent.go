package telemetry

import (
	"net/netip"
	"sync"
	"time"
)

// Recent-history defaults: how many security events and closed connections the ztunnel keeps in
// memory for its admin endpoint (a few hundred KB at most).
const (
	DefaultRecentEvents      = 1024
	DefaultRecentConnections = 256
)

// EventRecord is a security event as kept in memory and served by the admin endpoint
// (/security_events): the fields of the log line, with the time it happened.
type EventRecord struct {
	Time        time.Time `json:"time"`
	Type        EventType `json:"type"`
	Src         string    `json:"src"`
	SrcIdentity string    `json:"srcIdentity,omitempty"`
	DstWorkload string    `json:"dstWorkload,omitempty"`
	Dst         string    `json:"dst"`
	PolicyKind  string    `json:"policyKind"`
	Policy      string    `json:"policy"`
	Server      string    `json:"server,omitempty"`
	Reason      string    `json:"reason"`
}

// ConnectionRecord is a closed connection as kept in memory and served by the admin endpoint
// (/connections).
type ConnectionRecord struct {
	Start       time.Time `json:"start"`
	Direction   Direction `json:"direction"`
	Mode        Mode      `json:"mode"`
	Src         string    `json:"src"`
	Dst         string    `json:"dst"`
	SrcIdentity string    `json:"srcIdentity,omitempty"`
	DstIdentity string    `json:"dstIdentity,omitempty"`
	DstWorkload string    `json:"dstWorkload,omitempty"`
	Via         string    `json:"via,omitempty"`
	// Upstream and Downstream are bytes client->server and server->client.
	Upstream   int64         `json:"bytesUpstream"`
	Downstream int64         `json:"bytesDownstream"`
	Duration   time.Duration `json:"durationNs"`
	Error      string        `json:"error,omitempty"`
}

// ring is a bounded, mutex-guarded history: the newest n items, oldest first on read. Adding
// copies one value into a preallocated slot: no allocation.
type ring[T any] struct {
	mu    sync.Mutex
	items []T
	next  int  // slot of the next add
	full  bool // every slot holds an item
}

func newRing[T any](n int) *ring[T] { return &ring[T]{items: make([]T, n)} }

func (r *ring[T]) add(v T) {
	r.mu.Lock()
	r.items[r.next] = v
	r.next++
	if r.next == len(r.items) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// since returns the items for which keep is true, oldest first.
func (r *ring[T]) since(keep func(*T) bool) []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []T{}
	walk := func(items []T) {
		for i := range items {
			if keep(&items[i]) {
				out = append(out, items[i])
			}
		}
	}
	if r.full {
		walk(r.items[r.next:])
	}
	walk(r.items[:r.next])
	return out
}

// recentConn is what the connection ring stores: the Connection as Closed got it (the error is
// turned into text only when someone reads the history) and when it closed.
type recentConn struct {
	c      Connection
	closed time.Time
}

// RecentEvents returns the security events kept in memory that happened at or after since,
// oldest first (at most the configured number of the latest ones).
func (t *Telemetry) RecentEvents(since time.Time) []EventRecord {
	return t.events.since(func(e *EventRecord) bool { return !e.Time.Before(since) })
}

// RecentConnections returns the closed connections kept in memory that closed at or after
// since, oldest first.
func (t *Telemetry) RecentConnections(since time.Time) []ConnectionRecord {
	rc := t.conns.since(func(c *recentConn) bool { return !c.closed.Before(since) })
	out := make([]ConnectionRecord, len(rc))
	for i, r := range rc {
		c := r.c
		out[i] = ConnectionRecord{
			Start: r.closed.Add(-c.Duration), Direction: c.Direction, Mode: c.Mode,
			Src: addrString(c.Src), Dst: addrString(c.Dst), SrcIdentity: c.SrcIdentity, DstIdentity: c.DstIdentity,
			DstWorkload: c.DstWorkload, Via: addrString(c.Via),
			Upstream: c.Upstream, Downstream: c.Downstream, Duration: c.Duration,
		}
		if c.Err != nil {
			out[i].Error = c.Err.Error()
		}
	}
	return out
}

func addrString(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return ""
	}
	return ap.String()
}
