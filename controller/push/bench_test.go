package push_test

import (
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/controller/push/pushtest"
	"github.com/warren-mesh/warren/ztunnel/configstream"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// BenchmarkPushRaw and BenchmarkPushZtunnel measure the push at the scale of the mission's
// target: 10,000 workloads in 500 namespaces over 100 nodes (1,000 Servers, 500 Services), 100
// clients on their own loopback gRPC connections. Each iteration changes one workload (in a
// fresh snapshot, as the translator makes one: every message a new pointer) and waits until
// every client has it:
//
//   - Raw: clients decode each response and ACK it (the server and the wire);
//   - Ztunnel: real configstream clients that assemble, validate and compile their whole node
//     view (state.Build) and swap it into their store before ACKing. All 100 share this
//     machine's cores, which a real cluster's nodes do not.
//
// Run them with:
//
//	go test -run '^$' -bench 'BenchmarkPush' -benchtime 50x -timeout 30m ./controller/push/
func BenchmarkPushRaw(b *testing.B) { benchPush(b, "raw") }

func BenchmarkPushZtunnel(b *testing.B) { benchPush(b, "ztunnel") }

func benchPush(b *testing.B, kind string) {
	const nodes, namespaces, workloads = 100, 500, 10_000
	// The environment belongs to this (outer) benchmark: a sub-benchmark's cleanups run after
	// each of its rounds.
	env := newBenchEnv(b, kind, nodes, namespaces, workloads)
	b.Run("10k-workloads", env.run)
	env.close()
}

type benchEnv struct {
	srv     *pushtest.Server
	mesh    *nodeconfig.Snapshot
	applied chan string // a client's applied version, once per applied response
	clients int
	change  int
	stop    []func()
}

func newBenchEnv(b *testing.B, kind string, nodes, namespaces, workloads int) *benchEnv {
	env := &benchEnv{mesh: pushtest.Mesh(nodes, namespaces, workloads), applied: make(chan string, 4*nodes), clients: nodes}
	first := proto.Clone(env.mesh).(*nodeconfig.Snapshot)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	srv := pushtest.Start(b, pushtest.Options{})
	env.srv = srv
	env.stop = append(env.stop, srv.Stop)
	start := time.Now()
	srv.Update(first)
	updateTook := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	// The server's own heap: its indexes, versions and encodings (the snapshot itself was
	// allocated before base).
	stateHeap := ms.HeapInuse - base

	start = time.Now()
	for i := range nodes {
		node := pushtest.Node(i)
		if kind == "raw" {
			env.rawClient(b, node)
		} else {
			env.ztunnelClient(b, node)
		}
	}
	env.waitAll(b, srv.Version())
	sync := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.Logf("%s: first Update of %d workloads %v; server heap for its state (beyond the snapshot) %.1f MB; "+
		"initial sync of %d clients %v (%.1f MB pushed); process heap with clients connected %.1f MB",
		kind, workloads, updateTook.Round(time.Millisecond), float64(stateHeap)/1e6,
		nodes, sync.Round(time.Millisecond), srv.Metric(b, "warren_push_bytes_total")/1e6, float64(ms.HeapInuse)/1e6)
	return env
}

func (env *benchEnv) close() {
	for _, fn := range slices.Backward(env.stop) {
		fn()
	}
}

func (env *benchEnv) rawClient(b *testing.B, node string) {
	conn, err := grpc.NewClient(env.srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pushtest.ZtunnelToken(node)))
	stream, err := nodeconfig.NewConfigPushClient(conn).Stream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(ztunnel(node)); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if err := stream.Send(&nodeconfig.PushRequest{ResponseNonce: resp.GetNonce()}); err != nil {
				return
			}
			env.applied <- resp.GetSystemVersion()
		}
	}()
	env.stop = append(env.stop, func() { cancel(); <-done; conn.Close() })
}

func (env *benchEnv) ztunnelClient(b *testing.B, node string) {
	store := state.NewStore(nil)
	store.Subscribe(func(_, cur *state.View) { env.applied <- cur.Version() })
	c, err := configstream.New(configstream.Config{
		Target: env.srv.Addr, Node: node, Store: store,
		Token:      func() (string, error) { return pushtest.ZtunnelToken(node), nil },
		MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	env.stop = append(env.stop, func() { cancel(); <-done })
}

// waitAll waits until every client reported version.
func (env *benchEnv) waitAll(b *testing.B, version string) {
	timeout := time.After(10 * time.Minute)
	for n := 0; n < env.clients; {
		select {
		case v := <-env.applied:
			if v == version {
				n++
			}
		case <-timeout:
			b.Fatalf("only %d of %d clients applied version %s", n, env.clients, version)
		}
	}
}

func (env *benchEnv) run(b *testing.B) {
	lat := make([]time.Duration, 0, b.N)
	var updates time.Duration
	bytes0 := env.srv.Metric(b, "warren_push_bytes_total")
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		i := (env.change * 37) % len(env.mesh.Workloads)
		env.change++
		env.mesh.Workloads[i].Ready = !env.mesh.Workloads[i].Ready
		next := proto.Clone(env.mesh).(*nodeconfig.Snapshot)
		runtime.GC()
		b.StartTimer()

		start := time.Now()
		env.srv.Update(next)
		updates += time.Since(start)
		env.waitAll(b, env.srv.Version())
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	bytes := (env.srv.Metric(b, "warren_push_bytes_total") - bytes0) / float64(b.N)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(pct(0.50).Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1e3, "p99-ms")
	b.ReportMetric(float64(updates.Microseconds())/1e3/float64(b.N), "update-ms")
	b.ReportMetric(bytes, "bytes/change")
	b.ReportMetric(float64(ms.HeapInuse)/1e6, "heap-MB")
	b.Logf("N=%d p50=%v p99=%v max=%v Update=%v/change bytes/change=%.0f", b.N, pct(0.5), pct(0.99), lat[len(lat)-1], updates/time.Duration(b.N), bytes)
}
