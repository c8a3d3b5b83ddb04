//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// profile runs the warren case once more per phase (1-stream bulk, 8-stream bulk, 1000 rps, new
// connections),
// not counted in the results, while it takes a CPU profile and an allocation profile (delta over
// the phase) from both ztunnels' admin /debug/pprof. The raw profiles go to rawDir, and
// `go tool pprof -top` summaries (CPU; allocated bytes; allocated objects) to sumDir. The
// allocation profiles sample one allocation per 512 KiB (the runtime's default rate): an empty
// one means the phase allocated less than about that.
func (b *bench) profile(ctx context.Context, rawDir, sumDir string, bulkDur, rrDur, connDur time.Duration) error {
	c := b.warren()
	for _, d := range []string{rawDir, sumDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	scratch := &BenchResults{}
	phases := []struct {
		name string
		dur  time.Duration
		run  func() error
	}{
		{"bulk1", bulkDur, func() error { return b.bulk(ctx, scratch, c, 1, bulkDur) }},
		{"bulk8", bulkDur, func() error { return b.bulk(ctx, scratch, c, 8, bulkDur) }},
		{"rr1000", rrDur, func() error { return b.rr(ctx, scratch, c, 1000, rrDur) }},
		{"connrate", connDur, func() error { return b.connrate(ctx, scratch, c, connDur) }},
	}
	for _, ph := range phases {
		secs := int(ph.dur.Seconds()) - 1 // inside the phase, after the load tool's start
		if secs < 1 {
			return fmt.Errorf("phase %s lasts %v: too short to profile (at least 2s)", ph.name, ph.dur)
		}
		fmt.Printf("bench: profiling %-7s ", ph.name)
		var wg sync.WaitGroup
		errs := make([]error, 0, 4)
		var mu sync.Mutex
		for _, node := range []string{"node-1", "node-2"} {
			z := b.l.Ztunnel(node)
			if z == nil {
				return fmt.Errorf("no ztunnel on %s", node)
			}
			for _, kind := range []string{"profile", "allocs"} {
				file := filepath.Join(rawDir, fmt.Sprintf("%s-%s-%s.pb.gz", ph.name, node, map[string]string{"profile": "cpu", "allocs": "allocs"}[kind]))
				url := fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", z.AdminAddr, kind, secs)
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := fetchTo(ctx, url, file, time.Duration(secs+30)*time.Second); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}()
			}
		}
		time.Sleep(300 * time.Millisecond) // the profiles start before the load
		err := ph.run()
		wg.Wait()
		fmt.Println()
		if err := errors.Join(append(errs, err)...); err != nil {
			return fmt.Errorf("phase %s: %w", ph.name, err)
		}
		for _, node := range []string{"node-1", "node-2"} {
			base := ph.name + "-" + node
			for _, s := range []struct {
				out, in string
				args    []string
			}{
				{"cpu", "cpu", nil},
				{"alloc_space", "allocs", []string{"-sample_index=alloc_space"}},
				{"alloc_objects", "allocs", []string{"-sample_index=alloc_objects"}},
			} {
				in := filepath.Join(rawDir, base+"-"+s.in+".pb.gz")
				out := filepath.Join(sumDir, base+"-"+s.out+".txt")
				if err := pprofTop(ctx, in, out, s.args); err != nil {
					return err
				}
				rel, _ := filepath.Rel(filepath.Dir(sumDir), out)
				b.profiles = append(b.profiles, rel)
			}
		}
	}
	return nil
}

// fetchTo writes the body of a GET to file.
func fetchTo(ctx context.Context, url, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w (is the ztunnel's admin server on that address?)", url, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("get %s: %s: %s", url, res.Status, strings.TrimSpace(string(msg)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return fmt.Errorf("get %s: %w", url, err)
	}
	return f.Close()
}

// pprofTop writes `go tool pprof -top` of a profile, headed by the command that made it.
func pprofTop(ctx context.Context, in, out string, extra []string) error {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=35"}, extra...)
	args = append(args, in)
	cmd := exec.CommandContext(ctx, "go", args...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, b)
	}
	head := fmt.Sprintf("# go %s\n", strings.Join(args[:len(args)-1], " ")+" "+filepath.Base(in))
	return os.WriteFile(out, append([]byte(head), b...), 0o644)
}
