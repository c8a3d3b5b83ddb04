package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/controller"
)

func TestParseFlagsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"lease too short", []string{"--leader-elect", "--leader-elect-lease-duration=1s"}, "--leader-elect-lease-duration: 1s is shorter than the 3s minimum"},
		{"stray argument", []string{"--leader-elect", "true"}, `unexpected arguments ["true"]`},
		{"unknown default policy", []string{"--default-inbound-policy=allow"}, "--default-inbound-policy"},
		{"intermediate without namespace", []string{"--ca-intermediate-secret=my-ca"}, "--ca-intermediate-secret: want namespace/name"},
		{"unknown flag", []string{"--leader-election"}, "flag provided but not defined: -leader-election"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseFlags(%q) error = %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestLeaderElectionFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want *controller.LeaderElection
	}{
		{"off by default", nil, nil},
		{"on, in the pod's namespace", []string{"--leader-elect", "--namespace=mesh"}, &controller.LeaderElection{
			Namespace: "mesh", Name: "warren-controller", LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		}},
		{"longer lease", []string{"--leader-elect", "--namespace=warren-system", "--leader-elect-lease-duration=30s"}, &controller.LeaderElection{
			Namespace: "warren-system", Name: "warren-controller", LeaseDuration: 30 * time.Second, RenewDeadline: 20 * time.Second, RetryPeriod: 4 * time.Second,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, o.leaderElection()); diff != "" {
				t.Errorf("leaderElection() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHealthHandler(t *testing.T) {
	var ready error = errors.New("cache not synced yet")
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "metrics") })
	srv := httptest.NewServer(healthHandler(metrics, func() error { return ready }))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	type answer struct {
		Code int
		Body string
	}
	check := func(path string, want answer) {
		t.Helper()
		code, body := get(path)
		if diff := cmp.Diff(want, answer{code, body}); diff != "" {
			t.Errorf("GET %s (-want +got):\n%s", path, diff)
		}
	}
	check("/healthz", answer{200, "ok"})
	check("/readyz", answer{503, "not ready: cache not synced yet"})
	check("/metrics", answer{200, "metrics"})
	check("/other", answer{404, "404 page not found"})
	ready = nil
	check("/readyz", answer{200, "ok"})
}
