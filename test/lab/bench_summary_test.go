//go:build linux

package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBenchSummary(t *testing.T) {
	r := &BenchResults{
		Cases: []string{"direct", "warren", "stunnel", "gotunnel"},
		Samples: map[string]map[string][]float64{
			"direct":   {"bulk1_gbps": {10, 12, 11}, "rr1000_p50_us": {100, 100, 100}},
			"warren":   {"bulk1_gbps": {6, 5, 7}, "rr1000_p50_us": {200, 180, 220}, "rss_idle_mib": {20}},
			"stunnel":  {"bulk1_gbps": {3, 3, 3}, "rr1000_p50_us": {400, 400, 400}, "rss_idle_mib": {10}},
			"gotunnel": {"bulk1_gbps": {4, 4, 4}, "rr1000_p50_us": {300, 300, 300}, "rss_idle_mib": {40}},
		},
	}
	r.summarize()
	want := map[string]map[string]Cell{
		"bulk1_gbps": { // higher is better: gotunnel is the best peer
			"direct":   {Median: 11, Min: 10, Max: 12, RatioToDirect: 1},
			"warren":   {Median: 6, Min: 5, Max: 7, RatioToDirect: 6.0 / 11, RatioToBestPeer: 1.5, BestPeer: "gotunnel"},
			"stunnel":  {Median: 3, Min: 3, Max: 3, RatioToDirect: 3.0 / 11, RatioToBestPeer: 0.75, BestPeer: "gotunnel"},
			"gotunnel": {Median: 4, Min: 4, Max: 4, RatioToDirect: 4.0 / 11, RatioToBestPeer: 1, BestPeer: "gotunnel"},
		},
		"rr1000_p50_us": { // lower is better
			"direct":   {Median: 100, Min: 100, Max: 100, RatioToDirect: 1},
			"warren":   {Median: 200, Min: 180, Max: 220, RatioToDirect: 2, RatioToBestPeer: 200.0 / 300, BestPeer: "gotunnel"},
			"stunnel":  {Median: 400, Min: 400, Max: 400, RatioToDirect: 4, RatioToBestPeer: 400.0 / 300, BestPeer: "gotunnel"},
			"gotunnel": {Median: 300, Min: 300, Max: 300, RatioToDirect: 3, RatioToBestPeer: 1, BestPeer: "gotunnel"},
		},
		"rss_idle_mib": { // no direct value: no ratio to it
			"warren":   {Median: 20, Min: 20, Max: 20, RatioToBestPeer: 2, BestPeer: "stunnel"},
			"stunnel":  {Median: 10, Min: 10, Max: 10, RatioToBestPeer: 1, BestPeer: "stunnel"},
			"gotunnel": {Median: 40, Min: 40, Max: 40, RatioToBestPeer: 4, BestPeer: "stunnel"},
		},
	}
	if diff := cmp.Diff(want, r.Summary); diff != "" {
		t.Errorf("Summary (-want +got):\n%s", diff)
	}
	md := r.markdown()
	for _, line := range []string{
		"| Bulk, 1 stream (Gbit/s) | 11.00 [10.00–12.00] | 6.00 [5.00–7.00] ×0.55 | 3.00 [3.00–3.00] ×0.27 | 4.00 [4.00–4.00] ×0.36 | ×1.50 (gotunnel) |",
		"| Proxy RSS idle, fresh, both hops (MiB) | – | 20.0 | 10.0 | 40.0 | ×2.00 (stunnel) |",
	} {
		if !strings.Contains(md, line+"\n") {
			t.Errorf("markdown lacks the line\n%s\ngot:\n%s", line, md)
		}
	}
}

// A case without samples (a peer that was not measured) leaves its cells empty and breaks no
// ratio.
func TestBenchSummaryMissingCase(t *testing.T) {
	r := &BenchResults{
		Cases:   []string{"direct", "warren", "haproxy"},
		Samples: map[string]map[string][]float64{"direct": {"bulk1_gbps": {10}}, "warren": {"bulk1_gbps": {5}}},
	}
	r.summarize()
	want := map[string]map[string]Cell{"bulk1_gbps": {
		"direct": {Median: 10, Min: 10, Max: 10, RatioToDirect: 1},
		"warren": {Median: 5, Min: 5, Max: 5, RatioToDirect: 0.5},
	}}
	if diff := cmp.Diff(want, r.Summary); diff != "" {
		t.Errorf("Summary (-want +got):\n%s", diff)
	}
	if md := r.markdown(); !strings.Contains(md, "| Bulk, 1 stream (Gbit/s) | 10.00 | 5.00 ×0.50 | – | – |\n") {
		t.Errorf("markdown row for a missing peer:\n%s", md)
	}
}
