package kubeca

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// WaypointClassName is the gatewayClassName of waypoint Gateways (as in controller/translate).
const WaypointClassName = "warren-waypoint"

// WaypointGateways returns an IsWaypoint func (see ServiceConfig) that answers from r, usually the
// controller's cache: ServiceAccount "<ns>/<name>" is a waypoint's when Gateway <ns>/<name>
// exists with gatewayClassName warren-waypoint, since the controller runs each waypoint Gateway
// as the ServiceAccount of the Gateway's name. The push server's token review uses the same
// answer, so a waypoint may fetch its own certificate and subscribe to config as a waypoint.
func WaypointGateways(r client.Reader) func(ctx context.Context, account string) (bool, error) {
	return func(ctx context.Context, account string) (bool, error) {
		ns, name, ok := strings.Cut(account, "/")
		if !ok || ns == "" || name == "" {
			return false, nil
		}
		var gw gatewayv1.Gateway
		if err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &gw); err != nil {
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			return false, fmt.Errorf("get gateway %s: %w", account, err)
		}
		return string(gw.Spec.GatewayClassName) == WaypointClassName && gw.DeletionTimestamp == nil, nil
	}
}
