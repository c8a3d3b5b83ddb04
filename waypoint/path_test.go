package waypoint

import (
	"net/http/httptest"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		target  string
		want    string // request URI after normalization
		wantErr bool
	}{
		{target: "/foo/bar", want: "/foo/bar"},
		{target: "/foo/bar/", want: "/foo/bar/"},
		{target: "/foo/bar?x=1", want: "/foo/bar?x=1"},
		{target: "/public/../foo/bar", want: "/foo/bar"},
		{target: "/public/../foo/bar?x=../y", want: "/foo/bar?x=../y"},
		{target: "/a/./b", want: "/a/b"},
		{target: "/a/b/..", want: "/a/"},
		{target: "/a/b/.", want: "/a/b/"},
		{target: "/../../etc", want: "/etc"},
		{target: "/..", want: "/"},
		{target: "/a/..b/c", want: "/a/..b/c"},
		{target: "/a/.b", want: "/a/.b"},
		{target: "/a%2Fb", wantErr: true},
		{target: "/a%2fb", wantErr: true},
		{target: "/a%5Cb", wantErr: true},
		{target: "/a%20b", want: "/a%20b"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.target, nil)
			err := normalizePath(r)
			if (err != nil) != tt.wantErr {
				t.Fatalf("normalizePath(%q) error = %v, want error %v", tt.target, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := r.URL.RequestURI(); got != tt.want {
				t.Errorf("normalizePath(%q): request URI %q, want %q", tt.target, got, tt.want)
			}
		})
	}
}

func TestNormalizePathAllocs(t *testing.T) {
	r := httptest.NewRequest("GET", "/foo/bar/baz?q=1", nil)
	if n := testing.AllocsPerRun(100, func() { _ = normalizePath(r) }); n != 0 {
		t.Errorf("normalizePath of a normal path allocates %v times, want 0", n)
	}
}
