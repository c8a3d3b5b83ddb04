package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/warren-mesh/warren/ca"
)

// LeaderElection makes the replicas of warren-controller elect one leader through a
// coordination.k8s.io Lease.
//
// Every replica watches the cluster, translates it, serves config push and signs CSRs (so a
// Service may spread ztunnels over the replicas); only the leader writes: the status of policies,
// routes, Gateways and GatewayClasses, the waypoint objects, and the CA roots ConfigMap
// (Config.RootsConfigMap). Every replica uses the same CA: the root Secret is created once (an
// atomic create; see kubeca.LoadOrCreate) and loaded by everyone else.
//
// A leader that loses its Lease stops: Run returns an error and the process must exit (its
// controllers cannot be stopped one by one), so the Deployment restarts it as a follower.
type LeaderElection struct {
	// Namespace and Name of the Lease; Name defaults to "warren-controller".
	Namespace, Name string
	// LeaseDuration is how long followers wait before taking over a Lease that is not renewed,
	// RenewDeadline how long the leader retries renewing before it gives up, RetryPeriod how
	// often everyone tries. Zero means 15s, 10s and 2s (client-go's defaults).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// DefaultLeaseName is the Lease the replicas of warren-controller elect their leader with.
const DefaultLeaseName = "warren-controller"

func (le *LeaderElection) options(o *manager.Options) error {
	if le.Namespace == "" {
		return errors.New("leader election: the Lease's namespace is required")
	}
	name := le.Name
	if name == "" {
		name = DefaultLeaseName
	}
	dur := func(d, def time.Duration) *time.Duration {
		if d == 0 {
			d = def
		}
		return &d
	}
	o.LeaderElection = true
	o.LeaderElectionResourceLock = "leases"
	o.LeaderElectionNamespace = le.Namespace
	o.LeaderElectionID = name
	// A replica that stops cleanly hands over at once instead of after LeaseDuration.
	o.LeaderElectionReleaseOnCancel = true
	o.LeaseDuration = dur(le.LeaseDuration, 15*time.Second)
	o.RenewDeadline = dur(le.RenewDeadline, 10*time.Second)
	o.RetryPeriod = dur(le.RetryPeriod, 2*time.Second)
	if *o.RenewDeadline >= *o.LeaseDuration || *o.RetryPeriod >= *o.RenewDeadline {
		return fmt.Errorf("leader election: want retry period %v < renew deadline %v < lease duration %v", *o.RetryPeriod, *o.RenewDeadline, *o.LeaseDuration)
	}
	return nil
}

// leader tracks whether this replica leads: IsLeader for the code every replica runs (the mesh
// reconciler writes status only while leading), and a leader-only runnable that records the
// election and makes the mesh reconciler run once, so a new leader writes the status its
// predecessor left behind.
type leader struct {
	elected <-chan struct{}
	gauge   prometheus.Gauge
	// onElected runs when this replica becomes the leader (or at start without an election).
	onElected func(ctx context.Context)
	log       *slog.Logger
}

func newLeader(mgr manager.Manager, reg prometheus.Registerer, log *slog.Logger) (*leader, error) {
	l := &leader{
		elected: mgr.Elected(),
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_controller_leader",
			Help: "1 while this replica is the elected leader (writes status, waypoints and the roots ConfigMap), else 0.",
		}),
		log: log,
	}
	if err := reg.Register(l.gauge); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	return l, nil
}

// IsLeader reports whether this replica won the election (always true without one, once the
// manager started).
func (l *leader) IsLeader() bool {
	select {
	case <-l.elected:
		return true
	default:
		return false
	}
}

// Start implements manager.Runnable; NeedLeaderElection makes the manager start it once elected.
func (l *leader) Start(ctx context.Context) error {
	l.gauge.Set(1)
	l.log.Info("leading: writing status, waypoints and the CA roots")
	if l.onElected != nil {
		l.onElected(ctx)
	}
	<-ctx.Done()
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (l *leader) NeedLeaderElection() bool { return true }

// rootsPublisher writes the CA's trust bundle into a ConfigMap (key ca.crt) while this replica
// leads: node agents and waypoints mount it to verify the controller before they have config.
type rootsPublisher struct {
	c         client.Client
	key       client.ObjectKey
	authority *ca.CA
	log       *slog.Logger
}

// Start implements manager.Runnable: it publishes, retrying with backoff until it succeeds or
// ctx ends, then returns.
func (p *rootsPublisher) Start(ctx context.Context) error {
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 8, Cap: 30 * time.Second}
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if last = p.publish(ctx); last != nil {
			p.log.Warn("publish CA roots: retrying", "error", last)
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() == nil {
		// Still failing after ~1 min: stop the manager, so the pod restarts and the failure shows.
		return fmt.Errorf("publish CA roots to configmap %s (does the controller's Role allow configmaps there?): %w", p.key, last)
	}
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (p *rootsPublisher) NeedLeaderElection() bool { return true }

func (p *rootsPublisher) publish(ctx context.Context) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: p.key.Name, Namespace: p.key.Namespace}}
	_, err := controllerutil.CreateOrUpdate(ctx, client.WithFieldOwner(p.c, fieldManager), cm, func() error {
		cm.Data = map[string]string{"ca.crt": ca.BundlePEM(p.authority.Bundle())}
		return nil
	})
	if err != nil {
		return err
	}
	p.log.Info("published CA roots", "configmap", p.key.String())
	return nil
}
