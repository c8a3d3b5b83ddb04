package ztunnel_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/ca/catest"
	"github.com/warren-mesh/warren/ztunnel"
	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/sockets"
	"github.com/warren-mesh/warren/ztunnel/state"
)

// readyZtunnel runs a ztunnel that enrolls nothing, with its readiness port on loopback, and
// returns that port's address.
func readyZtunnel(t testing.TB, store *state.Store, checks ...func() error) (*ztunnel.Ztunnel, string) {
	t.Helper()
	c := catest.New(t, "cluster.local")
	reg := prometheus.NewRegistry()
	ids, err := identity.New(identity.Config{Signer: c, TrustDomain: c.Bundle().TrustDomain(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	zt, err := ztunnel.New(ztunnel.Config{
		Node: "node-1", Store: store, Identities: ids, Bundle: c.Bundle(),
		Sockets: func(*nodeconfig.Workload) (sockets.Factory, error) {
			return nil, errors.New("this test enrolls nothing")
		},
		ReadyAddr: "127.0.0.1:0", ReadyChecks: checks,
		Registry: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- zt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return zt, zt.Addrs()[0].String()
}

func getReady(t testing.TB, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// The readiness port answers 503 while the config is missing or an extra check (as the CNI
// chaining with --cni-install) fails, with every failure in the body.
func TestReadyChecks(t *testing.T) {
	view, err := state.Build(articleSnapshot(randomNet()))
	if err != nil {
		t.Fatal(err)
	}
	chained := errors.New("cni: no CNI config in /host/etc/cni/net.d yet")
	other := errors.New("other: not yet")
	tests := []struct {
		name       string
		store      *state.Store
		checks     []func() error
		wantStatus int
		wantBody   string
	}{
		{"config, no checks", state.NewStore(view), nil, http.StatusOK, "ready"},
		{"config, checks pass", state.NewStore(view), []func() error{func() error { return nil }}, http.StatusOK, "ready"},
		{"config, a check fails", state.NewStore(view), []func() error{func() error { return nil }, func() error { return chained }}, http.StatusServiceUnavailable, chained.Error()},
		{"config, two checks fail", state.NewStore(view), []func() error{func() error { return chained }, func() error { return other }}, http.StatusServiceUnavailable, chained.Error() + "; " + other.Error()},
		{"no config, checks pass", state.NewStore(nil), []func() error{func() error { return nil }}, http.StatusServiceUnavailable, "no config yet"},
		{"no config, a check fails", state.NewStore(nil), []func() error{func() error { return chained }}, http.StatusServiceUnavailable, "no config yet; " + chained.Error()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			zt, addr := readyZtunnel(t, tc.store, tc.checks...)
			if status, body := getReady(t, addr); status != tc.wantStatus || body != tc.wantBody {
				t.Errorf("GET /healthz/ready = %d %q; want %d %q", status, body, tc.wantStatus, tc.wantBody)
			}
			v := zt.Version()
			if wantReady := tc.wantStatus == http.StatusOK; v.Ready != wantReady || (!wantReady && v.NotReady != tc.wantBody) {
				t.Errorf("Version() ready %v %q; want %v %q", v.Ready, v.NotReady, wantReady, tc.wantBody)
			}
			if err := zt.Ready(); strings.Contains(tc.wantBody, chained.Error()) && !errors.Is(err, chained) {
				t.Errorf("Ready() = %v; want it to wrap the check's error", err)
			}
		})
	}

	// The checks run on every request: readiness follows them.
	t.Run("follows the check", func(t *testing.T) {
		var failing atomic.Bool
		failing.Store(true)
		_, addr := readyZtunnel(t, state.NewStore(view), func() error {
			if failing.Load() {
				return chained
			}
			return nil
		})
		if status, _ := getReady(t, addr); status != http.StatusServiceUnavailable {
			t.Errorf("with the check failing: %d; want 503", status)
		}
		failing.Store(false)
		if status, _ := getReady(t, addr); status != http.StatusOK {
			t.Errorf("with the check passing: %d; want 200", status)
		}
		failing.Store(true)
		if status, _ := getReady(t, addr); status != http.StatusServiceUnavailable {
			t.Errorf("with the check failing again: %d; want 503", status)
		}
	})
}

func TestNewRejectsNilReadyCheck(t *testing.T) {
	c := catest.New(t, "cluster.local")
	reg := prometheus.NewRegistry()
	ids, err := identity.New(identity.Config{Signer: c, TrustDomain: c.Bundle().TrustDomain(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ztunnel.New(ztunnel.Config{
		Store: state.NewStore(nil), Identities: ids, Bundle: c.Bundle(),
		Sockets:     func(*nodeconfig.Workload) (sockets.Factory, error) { return nil, nil },
		ReadyChecks: []func() error{func() error { return nil }, nil},
		Registry:    reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if want := "new ztunnel: ready check 1 is nil"; err == nil || err.Error() != want {
		t.Fatalf("New with a nil ready check = %v; want %q", err, want)
	}
}
