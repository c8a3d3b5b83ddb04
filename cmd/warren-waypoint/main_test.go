package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFlagsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no mode", nil, "either --controller"},
		{"both modes", []string{"--config", "c.yaml", "--controller", "x:1"}, "exclude each other"},
		{"controller without ca", []string{"--controller", "x:1", "--node", "n"}, "needs --ca-addr"},
		{"controller without node", []string{"--controller", "x:1", "--ca-addr", "x:2", "--node", ""}, "needs --node"},
		{"controller without identity", []string{"--controller", "x:1", "--ca-addr", "x:2", "--node", "n", "--namespace", "", "--service-account", ""}, "make the waypoint's identity"},
		{"standalone without cert", []string{"--config", "c.yaml"}, "needs --cert"},
		{"unknown flag", []string{"--nope"}, "not defined"},
	}
	for _, tt := range tests {
		_, err := parseFlags(tt.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: parseFlags(%q) = %v, want an error containing %q", tt.name, tt.args, err, tt.want)
		}
	}
	o, err := parseFlags([]string{"--controller", "x:1", "--ca-addr", "x:2", "--node", "n", "--namespace", "ns", "--service-account", "wp"}, io.Discard)
	if err != nil || o.hboneAddr != ":15008" || o.adminAddr != ":15000" {
		t.Errorf("parseFlags(controller mode) = %+v, %v; want defaults :15008 and :15000", o, err)
	}
}

// TestRunBadFiles: a missing certificate or a broken config file fails fast with the flag named.
func TestRunBadFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("workloads: [{uid: 1"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", bad, "--cert", missing, "--key", missing, "--bundle", missing}, "--cert/--key"},
		{[]string{"--controller", "x:1", "--ca-addr", "x:2", "--node", "n", "--namespace", "ns", "--service-account", "wp", "--ca-root-file", missing}, "--ca-root-file"},
	} {
		err := run(context.Background(), tt.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error naming %s", tt.args, err, tt.want)
		}
	}
}
