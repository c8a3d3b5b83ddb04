package controller

import (
	"context"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/controller/translate"
)

// gatewayClassCreator creates the GatewayClass warren-waypoint while this replica leads, unless
// it exists (a user's changes to it are kept). The controller owns it rather than the install
// manifests because a GatewayClass cannot be created in the same apply (or Helm release) as the
// Gateway API CRDs that define it: the kind is unknown until they are established.
type gatewayClassCreator struct {
	c     client.Client
	log   *slog.Logger
	retry time.Duration // between attempts while the CRD is missing or the API server refuses
}

// Start implements manager.Runnable: it returns once the GatewayClass exists, or when ctx ends.
func (g *gatewayClassCreator) Start(ctx context.Context) error {
	gc := &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: translate.WaypointClassName, Labels: map[string]string{
			"app.kubernetes.io/part-of": "warren", "app.kubernetes.io/managed-by": fieldManager,
		}},
		Spec: gatewayv1.GatewayClassSpec{
			ControllerName: translate.ControllerName,
			Description:    ptr.To("Warren waypoints, shared L7 proxies (HBONE on 15008)"),
		},
	}
	warned := false
	for {
		err := g.c.Create(ctx, gc.DeepCopy(), client.FieldOwner(fieldManager))
		switch {
		case err == nil:
			g.log.Info("created GatewayClass", "name", gc.Name)
			return nil
		case apierrors.IsAlreadyExists(err):
			return nil
		case !warned:
			hint := ""
			if meta.IsNoMatchError(err) {
				hint = " (are the Gateway API CRDs installed?)"
			}
			g.log.Warn("create GatewayClass "+gc.Name+hint+": retrying", "error", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(g.retry):
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: only the leader writes.
func (g *gatewayClassCreator) NeedLeaderElection() bool { return true }
