package configstream

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

func TestMerge(t *testing.T) {
	t.Parallel()
	res := func(names ...string) []*nodeconfig.Resource {
		var out []*nodeconfig.Resource
		for _, n := range names {
			out = append(out, &nodeconfig.Resource{Name: n, Version: "new"})
		}
		return out
	}
	// cur is large enough that a few changes are spliced in, and small enough that many are not.
	var cur []*nodeconfig.Resource
	var names []string
	for i := range 40 {
		names = append(names, fmt.Sprintf("workload/%02d", i*2))
		cur = append(cur, &nodeconfig.Resource{Name: names[i], Version: "old"})
	}
	summary := func(rs []*nodeconfig.Resource) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Name+"@"+r.Version)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		upserts []*nodeconfig.Resource
		removed []string
	}{
		{"splice", res("workload/01", "workload/02", "workload/99"), []string{"workload/00", "workload/77", "workload/78"}},
		{"bulk", res(names[1:30]...), names[30:]},
		{"upsert what is removed", res("workload/04"), []string{"workload/04"}},
	} {
		before := summary(cur)
		got := summary(merge(cur, tc.upserts, tc.removed))
		// The reference: a map, then sorted.
		m := map[string]string{}
		for _, r := range cur {
			m[r.Name] = r.Version
		}
		for _, n := range tc.removed {
			delete(m, n)
		}
		for _, r := range tc.upserts {
			m[r.Name] = r.Version
		}
		var want []string
		for _, n := range slices.Sorted(maps.Keys(m)) {
			want = append(want, n+"@"+m[n])
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: merge (-want +got):\n%s", tc.name, diff)
		}
		if diff := cmp.Diff(before, summary(cur)); diff != "" {
			t.Errorf("%s: merge modified its input (-before +after):\n%s", tc.name, diff)
		}
	}
}
