package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/warren-mesh/warren/controller/push"
)

// Token claims of bound ServiceAccount tokens, as a TokenReview reports them.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// TokenReviewer authenticates push clients by their projected ServiceAccount token: a
// TokenReview must accept it for Audience, its ServiceAccount must be one of the trusted ones,
// and it must be bound to a pod on a node (the node it may subscribe as).
type TokenReviewer struct {
	// Client creates TokenReviews.
	Client client.Client
	// Audience the token must carry, e.g. "warren-ca".
	Audience string
	// Ztunnels and Waypoints are "namespace/name" of the ServiceAccounts that may subscribe as
	// each kind of client.
	Ztunnels, Waypoints []string
	// IsWaypoint, when set, decides for other accounts whether they may subscribe as a
	// waypoint: the controller's Controller.IsWaypoint answers for the ServiceAccounts of
	// Gateways of class warren-waypoint.
	IsWaypoint func(ctx context.Context, account string) (bool, error)
}

// errNotAuthorized is all a refused caller learns.
var errNotAuthorized = errors.New("not authorized")

// Authenticate implements the push server's authenticator.
func (t *TokenReviewer) Authenticate(ctx context.Context, token string) (push.Caller, error) {
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{t.Audience}}}
	if err := t.Client.Create(ctx, tr); err != nil {
		return push.Caller{}, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated || !slices.Contains(st.Audiences, t.Audience) {
		return push.Caller{}, errNotAuthorized
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return push.Caller{}, errNotAuthorized
	}
	account := ns + "/" + sa
	caller := push.Caller{Identity: st.User.Username}
	switch {
	case slices.Contains(t.Ztunnels, account):
		caller.Kind = "ztunnel"
	case slices.Contains(t.Waypoints, account):
		caller.Kind = "waypoint"
	case t.IsWaypoint != nil:
		ok, err := t.IsWaypoint(ctx, account)
		if err != nil {
			return push.Caller{}, fmt.Errorf("token review: look up waypoint account %s: %w", account, err)
		}
		if !ok {
			return push.Caller{}, errNotAuthorized
		}
		caller.Kind = "waypoint"
	default:
		return push.Caller{}, errNotAuthorized
	}
	if len(st.User.Extra[extraPodName]) != 1 || len(st.User.Extra[extraNodeName]) != 1 {
		return push.Caller{}, errNotAuthorized // not a pod-bound token
	}
	caller.Node = st.User.Extra[extraNodeName][0]
	return caller, nil
}
