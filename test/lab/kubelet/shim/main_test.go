//go:build linux

package main

import (
	"strings"
	"testing"
)

// The shim's bad inputs: each fails before touching any mount with an error naming the cause.
// None of these reach a mount, so they need no root.
func TestRunRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no spec", nil, "usage: shim '<json spec>'"},
		{"two args", []string{"{}", "{}"}, "usage: shim"},
		{"not JSON", []string{"{"}, "parse spec"},
		{"no argv", []string{`{"root":"/tmp"}`}, "spec has no argv"},
		// The test binary shares its parent's mount namespace: the shim must refuse to make
		// the host's mounts slaves.
		{"parent's mount namespace", []string{`{"argv":["/bin/true"]}`}, "refusing to run in the parent's mount namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestLookPath(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		env      []string
		want     string
		wantErr  string
	}{
		{"absolute", "/x/y", nil, "/x/y", ""},
		{"relative with slash", "./y", nil, "./y", ""},
		{"found in PATH", "sh", []string{"PATH=/nonexistent:/bin"}, "/bin/sh", ""},
		{"not found", "no-such-binary-wrn", []string{"PATH=/bin"}, "", `executable "no-such-binary-wrn" not found in PATH /bin`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookPath(tc.in, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("lookPath = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
