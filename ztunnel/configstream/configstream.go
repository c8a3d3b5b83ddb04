// Package configstream is the ztunnel's side of the config push stream
// (api/nodeconfig/push.proto): it subscribes to the controller, applies each response atomically
// to a state.Store (the whole response or nothing), ACKs or NACKs it, and keeps the last good
// config when the controller is gone, reconnecting with jittered exponential backoff and
// resuming from the versions it holds.
//
// cmd/warren-ztunnel and cmd/warren-waypoint import it. It depends on the contract and the
// ztunnel's state package only.
package configstream

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// Config of a Client.
type Config struct {
	// Target is the controller's push address, host:port; required.
	Target string
	// TLSConfig secures the connection; nil means plaintext, for tests only.
	TLSConfig *tls.Config
	// Token returns the bearer token; it is called for every connection attempt, because
	// projected ServiceAccount tokens rotate. Required.
	Token func() (string, error)
	// Node is this ztunnel's node name; required.
	Node string
	// Kind is "ztunnel" (the default) or "waypoint".
	Kind string
	// Store receives every applied config; required.
	Store *state.Store
	// Log receives connect and disconnect lines; nil discards them.
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the jittered exponential wait between connection
	// attempts; they default to 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
}

// Status is the client's state, for config dumps and readiness.
type Status struct {
	// Connected is true while a stream is open and has delivered its first response.
	Connected bool `json:"connected"`
	// Version is the system version of the config in the store; empty before the first one.
	Version string `json:"version,omitempty"`
	// LastError is the last connection error or rejected config, cleared when a config applies.
	LastError   string    `json:"lastError,omitempty"`
	LastApplied time.Time `json:"lastApplied,omitzero"`
}

// Client subscribes to the controller's config push. Create it with New, then call Run.
type Client struct {
	cfg  Config
	log  *slog.Logger
	conn *grpc.ClientConn

	// resources is what the store's config was assembled from, sorted by name; only Run's
	// goroutine uses it.
	resources []*nodeconfig.Resource

	mu      sync.Mutex
	status  Status
	changed chan struct{}
}

// maxMessage bounds one push response: the first one carries the whole mesh (about 200 bytes
// per workload and per service).
const maxMessage = 256 << 20

// New checks cfg and prepares the connection; it does not dial.
func New(cfg Config) (*Client, error) {
	switch {
	case cfg.Target == "":
		return nil, errors.New("new config stream: a target address is required")
	case cfg.Token == nil:
		return nil, errors.New("new config stream: a Token func is required")
	case cfg.Node == "":
		return nil, errors.New("new config stream: the node name is required")
	case cfg.Store == nil:
		return nil, errors.New("new config stream: a state store is required")
	}
	cfg.Kind = cmp.Or(cfg.Kind, "ztunnel")
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, time.Second)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, 30*time.Second), cfg.MinBackoff)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	creds := insecure.NewCredentials()
	if cfg.TLSConfig != nil {
		creds = credentials.NewTLS(cfg.TLSConfig)
	}
	conn, err := grpc.NewClient(cfg.Target,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)),
		// The channel's own reconnect backoff (default up to 120s) follows ours.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: cfg.MinBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: cfg.MaxBackoff},
			MinConnectTimeout: 20 * time.Second,
		}),
		// The controller permits pings every 10s; this finds a vanished controller in ~40s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("new config stream for %s: %w", cfg.Target, err)
	}
	return &Client{
		cfg:     cfg,
		log:     log.With("controller", cfg.Target),
		conn:    conn,
		changed: make(chan struct{}),
	}, nil
}

// Status returns the client's current status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// StatusChanged returns a channel that is closed at the next change of Status.
func (c *Client) StatusChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Client) setStatus(fn func(*Status)) {
	c.mu.Lock()
	fn(&c.status)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// Run subscribes until ctx ends, reconnecting with backoff; the store keeps the last good config
// throughout. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	defer c.conn.Close()
	backoff := c.cfg.MinBackoff
	failures := 0 // connection attempts that failed in a row
	for {
		synced, err := c.session(ctx)
		if ctx.Err() != nil {
			c.setStatus(func(s *Status) { s.Connected = false })
			return ctx.Err()
		}
		if synced {
			backoff, failures = c.cfg.MinBackoff, 0
		} else {
			failures++
		}
		// Jitter within [backoff/2, backoff] so that a restarted controller is not hit by every
		// node at once.
		wait := backoff/2 + rand.N(backoff/2+1)
		switch {
		case synced:
			c.log.Info("config push disconnected; keeping the last config and reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		case failures == 1:
			c.log.Info("config push unavailable; retrying with backoff", "err", err, "in", wait.Round(time.Millisecond))
		default:
			c.log.Debug("config push connect failed", "err", err, "attempt", failures, "in", wait.Round(time.Millisecond))
		}
		c.setStatus(func(s *Status) { s.Connected = false; s.LastError = err.Error() })
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			c.setStatus(func(s *Status) { s.Connected = false })
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// session runs one stream until it breaks. synced reports whether a response was applied or
// acknowledged on it (the controller was reachable and talking).
func (c *Client) session(ctx context.Context) (synced bool, err error) {
	token, err := c.cfg.Token()
	if err != nil {
		return false, fmt.Errorf("read token for config push: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := nodeconfig.NewConfigPushClient(c.conn).Stream(ctx)
	if err != nil {
		return false, c.connectErr(err)
	}
	held := make(map[string]string, len(c.resources))
	for _, r := range c.resources {
		held[r.GetName()] = r.GetVersion()
	}
	if err := stream.Send(&nodeconfig.PushRequest{Node: c.cfg.Node, ClientKind: c.cfg.Kind, InitialResourceVersions: held}); err != nil {
		return false, c.connectErr(recvErr(stream, err))
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return synced, c.connectErr(err)
		}
		if !synced {
			c.log.Info("config push connected", "node", c.cfg.Node, "held", len(held))
		}
		synced = true
		ack := &nodeconfig.PushRequest{ResponseNonce: resp.GetNonce()}
		if err := c.apply(resp); err != nil {
			ack.ErrorDetail = err.Error()
			c.log.Warn("config rejected", "version", resp.GetSystemVersion(), "err", err)
			c.setStatus(func(s *Status) { s.Connected = true; s.LastError = err.Error() })
		} else {
			now := time.Now()
			c.setStatus(func(s *Status) {
				s.Connected, s.Version, s.LastError, s.LastApplied = true, resp.GetSystemVersion(), "", now
			})
		}
		if err := stream.Send(ack); err != nil {
			return synced, c.connectErr(recvErr(stream, err))
		}
	}
}

// recvErr turns the io.EOF of a failed Send into the stream's real status.
func recvErr(stream grpc.BidiStreamingClient[nodeconfig.PushRequest, nodeconfig.PushResponse], err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

func (c *Client) connectErr(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("config push %s: %w", c.cfg.Target, err)
	}
	hint := ""
	switch st.Code() {
	case codes.Unavailable:
		hint = " (is warren-controller running and reachable?)"
	case codes.Unauthenticated:
		hint = " (is the projected token mounted with the right audience?)"
	case codes.PermissionDenied:
		hint = " (is NODE_NAME set to the node this pod runs on?)"
	}
	return fmt.Errorf("connect config push %s: %w%s", c.cfg.Target, err, hint)
}

// apply builds the config that results from resp and swaps it in, or changes nothing.
func (c *Client) apply(resp *nodeconfig.PushResponse) error {
	for _, r := range resp.GetResources() {
		if r.GetName() == "" {
			return errors.New("apply config: a resource has no name")
		}
	}
	next := merge(c.resources, resp.GetResources(), resp.GetRemovedResources())
	snap, err := assemble(resp.GetSystemVersion(), next)
	if err != nil {
		return err
	}
	view, err := state.Build(snap)
	if err != nil {
		return fmt.Errorf("apply config %s: %w", resp.GetSystemVersion(), err)
	}
	c.cfg.Store.Swap(view)
	c.resources = next
	return nil
}

func byName(a, b *nodeconfig.Resource) int { return strings.Compare(a.GetName(), b.GetName()) }

// merge returns a new list, sorted by name: cur without removed, with upserts added or replacing
// what they name. cur is not modified. A few changes are spliced into a copy of cur; many are
// merged through a map and sorted.
func merge(cur, upserts []*nodeconfig.Resource, removed []string) []*nodeconfig.Resource {
	if n := len(upserts) + len(removed); n > len(cur)/16 {
		m := make(map[string]*nodeconfig.Resource, len(cur)+len(upserts))
		for _, r := range cur {
			m[r.GetName()] = r
		}
		for _, name := range removed {
			delete(m, name)
		}
		for _, r := range upserts {
			m[r.GetName()] = r
		}
		return slices.SortedFunc(maps.Values(m), byName)
	}
	next := slices.Clone(cur)
	find := func(name string) (int, bool) {
		return slices.BinarySearchFunc(next, name, func(r *nodeconfig.Resource, name string) int { return strings.Compare(r.GetName(), name) })
	}
	for _, name := range removed {
		if i, ok := find(name); ok {
			next = slices.Delete(next, i, i+1)
		}
	}
	for _, r := range upserts {
		if i, ok := find(r.GetName()); ok {
			next[i] = r
		} else {
			next = slices.Insert(next, i, r)
		}
	}
	return next
}

// assemble turns resources, sorted by name, into a Snapshot.
func assemble(version string, res []*nodeconfig.Resource) (*nodeconfig.Snapshot, error) {
	snap := &nodeconfig.Snapshot{Version: version}
	for _, r := range res {
		name := r.GetName()
		kind, _, _ := strings.Cut(name, "/")
		switch k := r.GetKind().(type) {
		case *nodeconfig.Resource_Workload:
			if kind != "workload" {
				return nil, fmt.Errorf("apply config: resource %s holds a workload", name)
			}
			snap.Workloads = append(snap.Workloads, k.Workload)
		case *nodeconfig.Resource_Service:
			if kind != "service" {
				return nil, fmt.Errorf("apply config: resource %s holds a service", name)
			}
			snap.Services = append(snap.Services, k.Service)
		case *nodeconfig.Resource_Server:
			if kind != "server" {
				return nil, fmt.Errorf("apply config: resource %s holds a server", name)
			}
			snap.Servers = append(snap.Servers, k.Server)
		case *nodeconfig.Resource_Route:
			if kind != "route" {
				return nil, fmt.Errorf("apply config: resource %s holds a route", name)
			}
			snap.Routes = append(snap.Routes, k.Route)
		case *nodeconfig.Resource_Mesh:
			if kind != "mesh" {
				return nil, fmt.Errorf("apply config: resource %s holds mesh settings", name)
			}
			snap.TrustDomain = k.Mesh.GetTrustDomain()
			snap.Defaults = k.Mesh.GetDefaults()
			snap.TrustBundle = k.Mesh.GetTrustBundle()
		default:
			return nil, fmt.Errorf("apply config: resource %s is empty or of an unknown kind (is the controller newer than this ztunnel?)", name)
		}
	}
	return snap, nil
}
