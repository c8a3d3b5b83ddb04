package waypoint

import (
	"errors"
	"net/http"
	"strings"
)

// errEncodedSeparator refuses paths whose escaped form hides a separator.
var errEncodedSeparator = errors.New("path contains an encoded '/' (%2F) or a '\\'; send '/' unescaped")

// normalizePath makes the request path the one that routing and authorization decide on and the
// one the app receives: RFC 3986 dot segments are removed ("/public/../admin" becomes "/admin"),
// so a prefix that an allow rule names cannot be used to reach a path it does not. Escaped
// separators are refused outright, because the app may decode them after the waypoint has
// decided on the undecoded form. Paths that are already normal are not touched (no allocation).
func normalizePath(r *http.Request) error {
	if r.URL == nil || r.Method == http.MethodConnect {
		return nil
	}
	p := r.URL.Path
	if strings.IndexByte(p, '\\') >= 0 {
		return errEncodedSeparator
	}
	if raw := r.URL.RawPath; raw != "" && containsFold(raw, "%2f") {
		return errEncodedSeparator
	}
	if p == "" || p == "*" || !needsDotRemoval(p) {
		return nil
	}
	r.URL.Path = removeDotSegments(p)
	r.URL.RawPath = ""
	r.RequestURI = r.URL.RequestURI()
	return nil
}

// containsFold reports whether s contains the lower-case ASCII needle, ignoring case.
func containsFold(s, needle string) bool {
	for i := 0; i+len(needle) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(needle)], needle) {
			return true
		}
	}
	return false
}

// needsDotRemoval reports whether p has a "." or ".." segment.
func needsDotRemoval(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '.' || (i > 0 && p[i-1] != '/') {
			continue
		}
		j := i + 1
		if j < len(p) && p[j] == '.' {
			j++
		}
		if j == len(p) || p[j] == '/' {
			return true
		}
	}
	return false
}

// removeDotSegments is RFC 3986 section 5.2.4 for an absolute path; a trailing "." or ".."
// segment leaves a trailing slash, as the RFC says. The result always starts with "/".
func removeDotSegments(p string) string {
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	return r
}
