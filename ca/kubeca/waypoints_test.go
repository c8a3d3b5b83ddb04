package kubeca_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	corev1 "k8s.io/api/core/v1"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/kubeca"
)

// TestWaypointGatewayAccounts: the ServiceAccount of a warren-waypoint Gateway (found through
// real Gateway objects) gets a certificate for its own identity and nothing else; the account of
// a Gateway of another class, or of no Gateway, is refused; the static list keeps working next to
// the dynamic one.
func TestWaypointGatewayAccounts(t *testing.T) {
	c := newCluster(t)
	for _, gw := range []struct{ name, class string }{{"wp", kubeca.WaypointClassName}, {"ingress", "other-implementation"}} {
		create(t, c.env.Client, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: gw.name},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(gw.class),
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
		})
		create(t, c.env.Client, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: gw.name}})
		c.pod(t, c.ns, gw.name+"-0", gw.name, "node-1")
	}
	srv := startService(t, kubeca.ServiceConfig{
		Reader:     c.env.Client,
		Reviewer:   c.env.Client,
		Ztunnels:   []string{systemNS + "/" + ztunnelSA},
		Waypoints:  []string{c.ns + "/waypoint"},
		IsWaypoint: kubeca.WaypointGateways(c.env.Client),
	})
	wp := c.token(t, c.ns, "wp", "wp-0", audience)
	ingress := c.token(t, c.ns, "ingress", "ingress-0", audience)
	static := c.token(t, c.ns, "waypoint", "waypoint-1", audience)
	intruder := c.token(t, c.ns, "intruder", "intruder-1", audience)
	tests := []struct {
		name     string
		req      request
		wantCode codes.Code
		reason   string
	}{
		{name: "waypoint gateway's own identity", req: request{token: wp, identity: c.id("wp").String()}},
		{name: "static waypoint account still works", req: request{token: static, identity: c.id("waypoint").String()}},
		{name: "waypoint gateway asks for another identity", req: request{token: wp, identity: c.id("service-a").String()}, wantCode: codes.PermissionDenied, reason: "identity_not_own"},
		{name: "gateway of another class", req: request{token: ingress, identity: c.id("ingress").String()}, wantCode: codes.PermissionDenied, reason: "untrusted_account"},
		{name: "no gateway", req: request{token: intruder, identity: c.id("intruder").String()}, wantCode: codes.PermissionDenied, reason: "untrusted_account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, key, err := srv.call(t, tt.req)
			lines := srv.logs.take(t)
			if tt.wantCode != codes.OK {
				checkRefusal(t, err, lines, tt.wantCode, "", tt.reason, tt.req.identity)
				return
			}
			if err != nil {
				t.Fatalf("CreateCertificate() = %v, want a certificate", err)
			}
			checkIssued(t, srv, resp, key, tt.req.identity, ca.DefaultTTL)
		})
	}
}
