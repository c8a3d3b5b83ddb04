//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// LabelDataplaneMode is the mesh membership label.
const LabelDataplaneMode = "warren.dev/dataplane-mode"

// SetNamespaceAmbient labels (ambient true) or un-labels namespace ns with kubectl and returns
// kubectl's output.
func (l *Lab) SetNamespaceAmbient(ctx context.Context, ns string, ambient bool) (string, error) {
	arg := LabelDataplaneMode + "=ambient"
	if !ambient {
		arg = LabelDataplaneMode + "-"
	}
	return l.Kubectl(ctx, "label", "--overwrite", "ns", ns, arg)
}

// ArticleYAML is the article's L4 example (test/lab/testdata/article.yaml).
func (l *Lab) ArticleYAML() string {
	return filepath.Join(l.cfg.Root, "test", "lab", "testdata", "article.yaml")
}

// Call runs the sample client in pod from (namespace/name) against pod to's IP on port and
// returns its output. extra are more client flags.
func (l *Lab) Call(ctx context.Context, from, to string, port int, msg string, extra ...string) (string, error) {
	fns, fname, _ := strings.Cut(from, "/")
	tns, tname, _ := strings.Cut(to, "/")
	dst := l.Pod(tns, tname)
	if dst == nil {
		return "", fmt.Errorf("no pod %s", to)
	}
	args := append([]string{"client", "--to", fmt.Sprintf("%s:%d", dst.IP, port), "--msg", msg, "--timeout", "3s"}, extra...)
	return l.Exec(ctx, fns, fname, "app", args...)
}

// LogLine is one JSON line of a ztunnel log.
type LogLine map[string]any

// S returns a field as a string.
func (ll LogLine) S(k string) string {
	v, _ := ll[k].(string)
	return v
}

// ZtunnelLog returns the node's ztunnel log lines whose "log" field is kind ("access",
// "security"; "" for all) and the raw text of each.
func (l *Lab) ZtunnelLog(node, kind string) ([]LogLine, []string) {
	var r io.Reader
	if l.cfg.Cluster {
		text, err := l.clusterZtunnelLog(node)
		if err != nil {
			return nil, nil
		}
		r = strings.NewReader(text)
	} else {
		z := l.Ztunnel(node)
		if z == nil {
			return nil, nil
		}
		f, err := os.Open(z.LogPath)
		if err != nil {
			return nil, nil
		}
		defer f.Close()
		r = f
	}
	var out []LogLine
	var raw []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ll LogLine
		if json.Unmarshal(sc.Bytes(), &ll) != nil {
			continue
		}
		if kind == "" || ll.S("log") == kind {
			out = append(out, ll)
			raw = append(raw, sc.Text())
		}
	}
	return out, raw
}

// FindLog returns the first line of the node's ztunnel log of kind whose fields contain every
// key=value in want (a value matches if the field contains it), and its raw text.
func (l *Lab) FindLog(node, kind string, want map[string]string) (LogLine, string, bool) {
	lines, raw := l.ZtunnelLog(node, kind)
	for i, ll := range lines {
		ok := true
		for k, v := range want {
			if !strings.Contains(fmt.Sprint(ll[k]), v) {
				ok = false
				break
			}
		}
		if ok {
			return ll, raw[i], true
		}
	}
	return nil, "", false
}

// Eventually retries f every 250ms until it returns nil or timeout passes; it returns f's last
// error.
func Eventually(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// SpiffeID is the SPIFFE ID of a service account in the lab's trust domain.
func SpiffeID(ns, sa string) string {
	return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
}
