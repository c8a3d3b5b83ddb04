package route_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/waypoint/route"
)

// A waypoint compiles the routes of each config snapshot once, then for every request finds
// the rule, picks a backend and applies the filters.
func Example() {
	reviews := &nodeconfig.Route{
		Namespace: "shop",
		Name:      "reviews",
		Kind:      nodeconfig.RouteKind_ROUTE_KIND_HTTP,
		Parents:   []*nodeconfig.RouteParent{{Parent: &nodeconfig.RouteParent_Service{Service: "shop/reviews"}}},
		Rules: []*nodeconfig.RouteRule{{
			Matches: []*nodeconfig.RouteMatch{{
				Path: &nodeconfig.StringMatch{Type: nodeconfig.StringMatchType_STRING_MATCH_TYPE_PATH_PREFIX, Value: "/v1"},
			}},
			Filters: []*nodeconfig.RouteFilter{{Filter: &nodeconfig.RouteFilter_UrlRewrite{UrlRewrite: &nodeconfig.URLRewrite{
				Path: &nodeconfig.PathModifier{Modifier: &nodeconfig.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/api"}},
			}}}},
			Backends: []*nodeconfig.RouteBackend{
				{Service: "shop/reviews-v1", Port: 8080, Weight: 90},
				{Service: "shop/reviews-v2", Port: 8080, Weight: 10},
			},
		}},
	}
	table, errs := route.Compile([]*nodeconfig.Route{reviews})
	for _, err := range errs {
		fmt.Println(err) // the waypoint logs these; the other routes still work
	}

	parent := route.Parent{Service: "shop/reviews", Port: 9080}
	r := httptest.NewRequest(http.MethodGet, "http://reviews.shop:9080/v1/products/7?lang=en", nil)
	m := table.Match(parent, r)
	if m == nil {
		fmt.Println("404")
		return
	}
	be := m.PickBackend(95) // the caller passes a random number
	if rd := m.ApplyRequest(r, be); rd != nil {
		fmt.Println(rd.StatusCode, rd.Location)
		return
	}
	fmt.Println(m.Route.GetNamespace()+"/"+m.Route.GetName(), "rule", m.RuleIndex)
	fmt.Println("to", be.GetService(), be.GetPort())
	fmt.Println("as", r.URL.RequestURI())
	// Output:
	// shop/reviews rule 0
	// to shop/reviews-v2 8080
	// as /api/products/7?lang=en
}
