// Package report is what the kubectl plugin prints: the data of each command's answer and its
// table, JSON and YAML forms. Table functions take decoded data and the current time (for
// "expires in"), so they are golden-tested without a cluster. Only cmd/kubectl-warren imports it.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// Format is an output format (-o).
type Format string

const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat parses -o.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Table, JSON, YAML:
		return f, nil
	case "":
		return Table, nil
	}
	return "", fmt.Errorf("unknown output format %q (use -o table, -o json or -o yaml)", s)
}

// Print writes v as JSON or YAML, or calls table for the table form.
func Print(w io.Writer, f Format, v any, table func(io.Writer)) error {
	switch f {
	case JSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case YAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("print yaml: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// row writes one tab-separated table row.
func row(w io.Writer, cols ...string) {
	for i, c := range cols {
		if c == "" {
			cols[i] = "-"
		}
	}
	fmt.Fprintln(w, strings.Join(cols, "\t"))
}

// Until renders d, a time left, as kubectl's ages do: 23h59m, 11h, 4m10s, 0s; negative is
// "expired 3m ago" style "-3m".
func Until(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now)
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d >= 48*time.Hour:
		s = fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= 10*time.Hour:
		s = fmt.Sprintf("%dh", int(d.Hours()))
	case d >= time.Hour:
		s = fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		s = fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		s = fmt.Sprintf("%ds", int(d.Seconds()))
	}
	if neg {
		return "-" + s
	}
	return s
}

// Stamp renders an absolute time in UTC, second precision.
func Stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}
