package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/cli"
)

// run runs the plugin with args and returns the exit code, stdout and stderr.
func run(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := cli.Main(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestBadInput checks that every malformed command fails with exit code 1, nothing on stdout
// and one "error: " line on stderr that says what to write instead, before the plugin reaches
// for a cluster: the kubeconfig points at a file that does not exist, so any command that got
// as far as connecting would fail with a kubeconfig error instead of the one wanted.
func TestBadInput(t *testing.T) {
	noCluster := "--kubeconfig=" + filepath.Join(t.TempDir(), "absent")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown output format", []string{"status", "-o", "xml"}, `unknown output format "xml" (use -o table, -o json or -o yaml)`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate" for "kubectl warren"`},
		{"unknown flag", []string{"status", "--frob"}, "unknown flag: --frob"},
		{"identity without pods", []string{"identity"}, "no pod given (name one or more pods, or use -l selector)"},
		{"why one argument", []string{"why", "service-a"}, "why takes 2 argument(s), got 1 (usage: kubectl warren why SOURCE DEST:PORT"},
		{"why three arguments", []string{"why", "a", "b:1", "c"}, "why takes 2 argument(s), got 3"},
		{"why without port", []string{"why", "a", "service-b"}, `destination "service-b" has no port (write DEST:PORT, e.g. service-b:8080)`},
		{"why port not a number", []string{"why", "a", "service-b:http"}, `destination port "http" is not a port number`},
		{"why port zero", []string{"why", "a", "service-b:0"}, `destination port "0" is not a port number`},
		{"why port too large", []string{"why", "a", "service-b:65536"}, `destination port "65536" is not a port number`},
		{"why relative path", []string{"why", "a", "b:80", "--path", "foo"}, `--path "foo" must start with / (e.g. --path /foo/bar)`},
		{"why header without =", []string{"why", "a", "b:80", "--header", "x-user"}, `--header "x-user": write K=V (e.g. --header x-user=alice)`},
		{"why header without name", []string{"why", "a", "b:80", "--header", "=v"}, `--header "=v": write K=V`},
		{"policy port not a number", []string{"policy", "service-b", "eighty"}, `port "eighty" is not a port number (e.g. kubectl warren policy service-b 8080)`},
		{"policy one argument", []string{"policy", "service-b"}, "policy takes 2 argument(s), got 1"},
		{"ztunnel-config unknown kind", []string{"ztunnel-config", "routes"}, `unknown ztunnel-config "routes" (one of workloads, services, policies, certificates, connections)`},
		{"zc alias, no kind", []string{"zc"}, "ztunnel-config takes 1 argument(s), got 0"},
		{"authz bad since", []string{"authz", "--since", "yesterday"}, `--since "yesterday": want a duration such as 10m or an RFC 3339 time`},
		{"authz negative since", []string{"authz", "--since=-5m"}, `--since "-5m": a duration back from now must not be negative (e.g. --since 10m)`},
		{"authz since, not RFC 3339", []string{"authz", "--since", "2026-01-02 15:04"}, `--since "2026-01-02 15:04": want a duration such as 10m or an RFC 3339 time`},
		{"authz argument", []string{"authz", "default"}, "authz takes 0 argument(s), got 1"},
		{"status argument", []string{"status", "now"}, "status takes 0 argument(s), got 1"},
		{"namespace unknown action", []string{"namespace", "join", "default"}, `unknown namespace action "join" (enable or disable)`},
		{"namespace no name", []string{"namespace", "enable"}, "namespace takes 2 argument(s), got 1"},
		{"waypoint unknown action", []string{"waypoint", "create"}, `unknown waypoint action "create" (apply, list or delete)`},
		{"waypoint no action", []string{"waypoint"}, "waypoint takes 1 argument(s), got 0"},
		{"bad duration flag", []string{"status", "--expiring-within", "soon"}, `invalid argument "soon" for "--expiring-within"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, append(tc.args, noCluster)...)
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
			}
			line := strings.TrimSuffix(stderr, "\n")
			if strings.Contains(line, "\n") || !strings.HasPrefix(line, "error: ") || !strings.Contains(line, tc.want) {
				t.Errorf("stderr %q; want one line \"error: ...%s...\"", stderr, tc.want)
			}
		})
	}
	// Nothing is left behind between runs: a good command still parses and runs (help).
	if code, stdout, stderr := run(t, "why", "--help"); code != 0 || !strings.Contains(stdout, "kubectl warren why SOURCE DEST:PORT") || stderr != "" {
		t.Errorf("why --help after bad input: exit %d, %q, %q", code, stdout, stderr)
	}
}

// TestKubeconfigErrors: a valid command with an unusable kubeconfig or context names the flag
// to check, in one line.
func TestKubeconfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"status", "--kubeconfig", filepath.Join(t.TempDir(), "absent")}, "(check --kubeconfig and --context)"},
		{"unknown context", []string{"namespace", "enable", "default", "--kubeconfig", writeKubeconfig(t), "--context", "nope"}, `context "nope" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.args...)
			line := strings.TrimSuffix(stderr, "\n")
			if code != 1 || stdout != "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "error: kubeconfig: ") || !strings.Contains(line, tc.want) {
				t.Errorf("exit %d stdout %q stderr %q; want one line with %q", code, stdout, stderr, tc.want)
			}
		})
	}
}

// TestHelp: every command documents itself with examples, so `kubectl warren CMD --help` is
// enough to start.
func TestHelp(t *testing.T) {
	code, stdout, _ := run(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, c := range []string{"identity", "why", "policy", "status", "ztunnel-config", "authz", "namespace", "waypoint"} {
		if !strings.Contains(stdout, "\n  "+c+" ") {
			t.Errorf("root help does not list %s:\n%s", c, stdout)
		}
		code, out, stderr := run(t, c, "--help")
		if code != 0 || stderr != "" || !strings.Contains(out, "Examples:") || !strings.Contains(out, "kubectl warren "+c) {
			t.Errorf("%s --help: exit %d, stderr %q, no example in\n%s", c, code, stderr, out)
		}
		// The standard kubectl flags come from cli-runtime.
		for _, f := range []string{"--kubeconfig", "--context", "-n, --namespace", "-o, --output"} {
			if !strings.Contains(out, f) {
				t.Errorf("%s --help has no %s flag", c, f)
			}
		}
	}
}

// writeKubeconfig writes a kubeconfig with one context, "lab", for a server nothing listens on.
func writeKubeconfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := `apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: lab, user: {token: x}}]
contexts: [{name: lab, context: {cluster: lab, user: lab}}]
current-context: lab
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
