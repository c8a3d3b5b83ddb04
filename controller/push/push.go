// Package push is the controller's config push service: the server side of the
// warren.nodeconfig.v1.ConfigPush stream (api/nodeconfig/push.proto) that every ztunnel (and
// later every waypoint) subscribes to.
//
// The controller hands it the mesh-wide nodeconfig.Snapshot after each translation (Update). The
// server turns the snapshot into named, versioned resources ("workload/<uid>",
// "service/<ns>/<name>", "server/<ns>/<name>", "route/http|grpc/<ns>/<name>", "mesh/defaults"),
// works out once per Update what changed, and sends each client only what changed in its view:
// a ztunnel its node's (see Relevant; never routes), a waypoint the whole mesh; one
// response at a time: the next response on a stream waits for the client's ACK or NACK of the
// previous one, and changes that arrive meanwhile are merged. A slow client never blocks Update
// or other clients.
//
// Callers are authenticated by a bearer token in the "authorization" metadata; the Authenticate
// func in Config decides who the token belongs to (the controller uses a TokenReview).
//
// Only the controller (and cmd/warren-controller) imports it; the ztunnel's side is
// ztunnel/configstream.
package push

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

// Client kinds.
const (
	KindZtunnel  = "ztunnel"
	KindWaypoint = "waypoint"
)

// Caller is who a bearer token belongs to.
type Caller struct {
	// Node is the node the caller's pod runs on; a ztunnel may only subscribe as this node.
	Node string
	// Kind is KindZtunnel or KindWaypoint; empty means KindZtunnel.
	Kind string
	// Identity names the caller in logs (e.g. the ServiceAccount user name).
	Identity string
}

// Config of a Server.
type Config struct {
	// Authenticate maps a bearer token to its Caller, or fails; required. Its error is logged,
	// never returned to the client.
	Authenticate func(ctx context.Context, token string) (Caller, error)
	// Log receives connect, disconnect and NACK lines; nil discards them.
	Log *slog.Logger
	// Registerer gets the metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
}

// ClientInfo describes one connected client, for debugging and config dumps.
type ClientInfo struct {
	Node     string    `json:"node"`
	Kind     string    `json:"kind"`
	Identity string    `json:"identity,omitempty"`
	Since    time.Time `json:"since"`
	// InitialResources is how many resources the client said it held when it connected.
	InitialResources int `json:"initialResources"`
	// AckedVersion is the system version of the last response the client ACKed; empty before
	// the first ACK.
	AckedVersion string    `json:"ackedVersion,omitempty"`
	AckedAt      time.Time `json:"ackedAt,omitzero"`
	// LastNACK is the error detail of the client's last NACK, cleared by the next ACK.
	LastNACK string `json:"lastNack,omitempty"`
	// Responses and Resources count what was sent on this stream (Resources includes removals).
	Responses int `json:"responses"`
	Resources int `json:"resources"`
}

// Server serves the ConfigPush stream. Create it with New.
type Server struct {
	nodeconfig.UnimplementedConfigPushServer

	auth func(context.Context, string) (Caller, error)
	log  *slog.Logger
	m    metrics

	state    atomic.Pointer[meshState]
	updateMu sync.Mutex // serializes Update

	mu      sync.Mutex
	clients map[uint64]*client
	nextID  uint64
	changed chan struct{} // closed and replaced when any client's info changes
}

// New returns a Server holding no config. Streams get their first response after the first
// Update, so a restarted controller never tells clients to drop what they hold.
func New(cfg Config) (*Server, error) {
	if cfg.Authenticate == nil {
		return nil, errors.New("new push server: an Authenticate func is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new push server: %w", err)
	}
	s := &Server{
		auth:    cfg.Authenticate,
		log:     log,
		m:       m,
		clients: map[uint64]*client{},
		changed: make(chan struct{}),
	}
	s.state.Store(emptyState())
	return s, nil
}

// Register adds the ConfigPush service to g.
func (s *Server) Register(g *grpc.Server) { nodeconfig.RegisterConfigPushServer(g, s) }

// Update replaces the mesh-wide config. The server takes ownership of mesh: the caller must not
// modify it (or any message in it) afterwards; handing in the same, unmodified messages again is
// the cheapest way to say "unchanged". Update never waits for clients.
func (s *Server) Update(mesh *nodeconfig.Snapshot) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	now := time.Now()
	st, d := s.state.Load().next(mesh)
	s.state.Store(st)
	if len(d.changed) == 0 && len(d.nodeServers) == 0 && st.gen > 1 {
		return
	}
	// Marking a large share of all resources as dirty costs more than one full comparison.
	full := len(d.changed) > (len(st.workloads)+len(st.services)+len(st.servers)+len(st.routes))/4
	s.mu.Lock()
	clients := make([]*client, 0, len(s.clients))
	for _, c := range s.clients {
		clients = append(clients, c)
	}
	s.mu.Unlock()
	for _, c := range clients {
		c.mark(d.changed, d.nodeServers[c.node], full, now)
	}
}

// Version returns the system version of the current config; empty before the first Update.
func (s *Server) Version() string { return s.state.Load().version }

// Clients returns the connected clients, ordered by node and kind.
func (s *Server) Clients() []ClientInfo {
	s.mu.Lock()
	out := make([]ClientInfo, 0, len(s.clients))
	for _, c := range s.clients {
		out = append(out, c.info())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ClientInfo) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		if c := strings.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return a.Since.Compare(b.Since)
	})
	return out
}

// WaitFor blocks until cond holds for the connected clients (checked now and after every connect,
// disconnect, ACK and NACK) or ctx ends. It is meant for tests and readiness checks.
func (s *Server) WaitFor(ctx context.Context, cond func([]ClientInfo) bool) error {
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond(s.Clients()) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for push clients: %w", ctx.Err())
		}
	}
}

// WaitAcked blocks until a client of node has ACKed the current version (and rejected nothing
// since), or ctx ends.
func (s *Server) WaitAcked(ctx context.Context, node string) error {
	return s.WaitFor(ctx, func(cs []ClientInfo) bool {
		v := s.Version()
		for _, c := range cs {
			if c.Node == node && c.AckedVersion == v && c.LastNACK == "" {
				return true
			}
		}
		return false
	})
}

func (s *Server) broadcast() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// client is one stream's shared state: what Update marks for it, and what it reports.
type client struct {
	id       uint64
	node     string
	kind     string
	identity string
	since    time.Time
	initial  int

	notify chan struct{} // capacity 1: "there is something to look at"

	mu      sync.Mutex
	dirty   map[string]struct{}
	full    bool
	pending time.Time // when the oldest unsent change was made; zero if none
	waitGen uint64    // after a NACK: send nothing until the state is newer than this
	stats   ClientInfo
}

func (c *client) mark(names, nodeServers []string, full bool, at time.Time) {
	c.mu.Lock()
	if full {
		c.full = true
	} else {
		for _, n := range names {
			c.dirty[n] = struct{}{}
		}
		for _, n := range nodeServers {
			c.dirty[n] = struct{}{}
		}
	}
	if c.pending.IsZero() {
		c.pending = at
	}
	c.mu.Unlock()
	c.wake()
}

func (c *client) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// take returns and clears the marks, unless a NACK holds the stream until st is newer.
func (c *client) take(gen uint64) (names map[string]struct{}, full bool, since time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == 0 || gen <= c.waitGen {
		return nil, false, time.Time{}, false
	}
	names, full, since = c.dirty, c.full, c.pending
	c.dirty, c.full, c.pending = map[string]struct{}{}, false, time.Time{}
	return names, full, since, true
}

func (c *client) info() ClientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.stats
	i.Node, i.Kind, i.Identity, i.Since, i.InitialResources = c.node, c.kind, c.identity, c.since, c.initial
	return i
}

// Stream implements nodeconfig.ConfigPushServer.
func (s *Server) Stream(srv nodeconfig.ConfigPush_StreamServer) error {
	ctx := srv.Context()
	caller, err := s.authenticate(ctx)
	if err != nil {
		return err
	}
	first, err := srv.Recv()
	if err != nil {
		return err
	}
	kind := first.GetClientKind()
	if kind == "" {
		kind = KindZtunnel
	}
	if kind != KindZtunnel && kind != KindWaypoint {
		return status.Errorf(codes.InvalidArgument, "unknown client kind %q (want %q or %q)", kind, KindZtunnel, KindWaypoint)
	}
	if ck := cmp.Or(caller.Kind, KindZtunnel); ck != kind {
		return status.Errorf(codes.PermissionDenied, "token of a %s cannot subscribe as a %s", ck, kind)
	}
	if kind == KindZtunnel && first.GetNode() != caller.Node {
		return status.Errorf(codes.PermissionDenied, "token of node %s cannot subscribe as node %s", caller.Node, first.GetNode())
	}

	held := make(map[string]string, len(first.GetInitialResourceVersions()))
	for name, v := range first.GetInitialResourceVersions() {
		held[name] = v
	}
	c := &client{
		node:     first.GetNode(),
		kind:     kind,
		identity: caller.Identity,
		since:    time.Now(),
		initial:  len(held),
		notify:   make(chan struct{}, 1),
		dirty:    map[string]struct{}{},
		full:     true,
	}
	s.mu.Lock()
	s.nextID++
	c.id = s.nextID
	s.clients[c.id] = c
	s.mu.Unlock()
	c.wake()
	s.m.clients.WithLabelValues(kind).Inc()
	log := s.log.With("node", c.node, "kind", kind, "peer", peerAddr(ctx))
	log.Info("push client connected", "identity", caller.Identity, "holds", len(held))
	s.broadcast()
	defer func() {
		s.mu.Lock()
		delete(s.clients, c.id)
		s.mu.Unlock()
		s.m.clients.WithLabelValues(kind).Dec()
		s.broadcast()
	}()

	st := &stream{s: s, c: c, srv: srv, held: held, log: log, resync: true, reqs: make(chan *nodeconfig.PushRequest), errc: make(chan error, 1)}
	go st.recv(ctx)
	err = st.run(ctx)
	log.Info("push client disconnected", "reason", err)
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (s *Server) authenticate(ctx context.Context) (Caller, error) {
	refuse := status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return Caller{}, refuse
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return Caller{}, refuse
	}
	caller, err := s.auth(ctx, strings.TrimSpace(token))
	if err != nil {
		s.log.Warn("push client refused", "peer", peerAddr(ctx), "err", err)
		return Caller{}, refuse
	}
	return caller, nil
}

// stream is the sending side of one client's stream; only its goroutine touches held.
type stream struct {
	s    *Server
	c    *client
	srv  nodeconfig.ConfigPush_StreamServer
	log  *slog.Logger
	held map[string]string // what the client holds: name -> version, as of its last ACK
	seq  uint64
	// resync is set until a response is ACKed: at first, and after a NACK. Such a response is
	// sent even when empty, so the client learns it holds the current version.
	resync bool

	reqs chan *nodeconfig.PushRequest
	errc chan error
}

func (st *stream) recv(ctx context.Context) {
	for {
		req, err := st.srv.Recv()
		if err != nil {
			st.errc <- err
			return
		}
		select {
		case st.reqs <- req:
		case <-ctx.Done():
			return
		}
	}
}

func (st *stream) run(ctx context.Context) error {
	for {
		select {
		case <-st.c.notify:
		case req := <-st.reqs:
			st.log.Debug("push client sent a request with no response outstanding; ignored", "nonce", req.GetResponseNonce())
			continue
		case err := <-st.errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		// Take the marks before loading the state: Update stores the state before it marks, so
		// the state loaded here is at least as new as every change marked.
		names, full, since, ok := st.c.take(st.s.state.Load().gen)
		if !ok {
			continue
		}
		state := st.s.state.Load()
		resp := st.build(state, names, full)
		if resp == nil {
			continue
		}
		if err := st.push(ctx, state, resp, since); err != nil {
			return err
		}
	}
}

// build returns the response that brings the client from held to the desired version of the
// given names (of every name when full), or nil when nothing differs (except for the first
// a response while resyncing, which is always sent).
func (st *stream) build(state *meshState, names map[string]struct{}, full bool) *nodeconfig.PushResponse {
	node, kind := st.c.node, st.c.kind
	resp := &nodeconfig.PushResponse{SystemVersion: state.version}
	consider := func(name string, r *nodeconfig.Resource) {
		v, holds := st.held[name]
		switch {
		case r != nil && (!holds || v != r.GetVersion()):
			resp.Resources = append(resp.Resources, r)
		case r == nil && holds:
			resp.RemovedResources = append(resp.RemovedResources, name)
		}
	}
	if full {
		seen := make(map[string]bool, len(st.held))
		state.each(node, kind, func(r *nodeconfig.Resource) {
			seen[r.GetName()] = true
			consider(r.GetName(), r)
		})
		for name := range st.held {
			if !seen[name] {
				consider(name, nil)
			}
		}
	} else {
		for name := range names {
			consider(name, state.desired(name, node, kind))
		}
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 && !st.resync {
		return nil
	}
	slices.SortFunc(resp.Resources, func(a, b *nodeconfig.Resource) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.Sort(resp.RemovedResources)
	return resp
}

// push sends resp and waits for its ACK or NACK.
func (st *stream) push(ctx context.Context, state *meshState, resp *nodeconfig.PushResponse, since time.Time) error {
	st.seq++
	resp.Nonce = strconv.FormatUint(st.seq, 10)
	n := len(resp.Resources) + len(resp.RemovedResources)
	if err := st.srv.Send(resp); err != nil {
		return err
	}
	kind := st.c.kind
	st.s.m.responses.WithLabelValues(kind).Inc()
	st.s.m.resources.WithLabelValues(kind).Add(float64(n))
	st.s.m.bytes.WithLabelValues(kind).Add(float64(proto.Size(resp)))
	st.c.mu.Lock()
	st.c.stats.Responses++
	st.c.stats.Resources += n
	st.c.mu.Unlock()

	for {
		var req *nodeconfig.PushRequest
		select {
		case req = <-st.reqs:
		case err := <-st.errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		if req.GetResponseNonce() != resp.Nonce {
			st.log.Debug("push client answered a stale nonce; ignored", "nonce", req.GetResponseNonce(), "want", resp.Nonce)
			continue
		}
		if detail := req.GetErrorDetail(); detail != "" {
			st.nack(state, resp, detail)
			return nil
		}
		st.resync = false
		for _, r := range resp.Resources {
			st.held[r.GetName()] = r.GetVersion()
		}
		for _, name := range resp.RemovedResources {
			delete(st.held, name)
		}
		now := time.Now()
		if !since.IsZero() {
			st.s.m.latency.WithLabelValues(kind).Observe(now.Sub(since).Seconds())
		}
		st.c.mu.Lock()
		st.c.stats.AckedVersion, st.c.stats.AckedAt, st.c.stats.LastNACK = resp.SystemVersion, now, ""
		st.c.mu.Unlock()
		st.s.broadcast()
		return nil
	}
}

// nack records a rejected response. The client kept its config, so held stays as it was; the
// rejected names are looked at again with the next Update (not before: resending the same
// content would only be rejected again).
func (st *stream) nack(state *meshState, resp *nodeconfig.PushResponse, detail string) {
	st.log.Warn("push client rejected config", "version", resp.SystemVersion, "resources", len(resp.Resources), "removed", len(resp.RemovedResources), "error", detail)
	st.s.m.nacks.WithLabelValues(st.c.kind).Inc()
	st.resync = true
	c := st.c
	c.mu.Lock()
	for _, r := range resp.Resources {
		c.dirty[r.GetName()] = struct{}{}
	}
	for _, name := range resp.RemovedResources {
		c.dirty[name] = struct{}{}
	}
	if c.waitGen < state.gen {
		c.waitGen = state.gen
	}
	c.stats.LastNACK = detail
	c.mu.Unlock()
	st.s.broadcast()
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
