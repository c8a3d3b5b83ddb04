// Package cli is the kubectl plugin's command tree (kubectl warren ...): cobra commands with the
// standard kubectl flags from k8s.io/cli-runtime, which look things up in the cluster and on the
// nodes' ztunnels (package admin), answer policy questions with the ztunnel's own evaluator
// (package explain) and print reports (package report). Only cmd/kubectl-warren imports it.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/report"
)

// Fixed names (MISSION.md).
const (
	LabelDataplaneMode = "warren.dev/dataplane-mode"
	LabelUseWaypoint   = "warren.dev/use-waypoint"
	WaypointClass      = "warren-waypoint"
)

// Main runs the plugin with args (without the program name) and returns the exit code. Errors
// are one line on stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "error: "+strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	return 0
}

// env is what every command shares: the kubectl flags, the output and the clock.
type env struct {
	flags  *genericclioptions.ConfigFlags
	output string
	out    io.Writer
	now    func() time.Time

	cs  kubernetes.Interface
	crc client.Client
	adm *admin.Client
	ns  string
}

// NewRoot returns the root command.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	e := &env{flags: genericclioptions.NewConfigFlags(true), out: stdout, now: time.Now}
	root := &cobra.Command{
		// kubectl runs the plugin as "kubectl warren": usage lines and errors say so.
		Use:         "warren",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl warren"},
		Short:       "Debug Warren mesh identities and policies",
		Long: `kubectl warren inspects the Warren ambient mesh: workload identities and certificates,
why a connection is allowed or denied, the effective policy of a pod port, the state of every
node's ztunnel, and recent security events. It reaches each node's ztunnel admin endpoint
(:15000, read-only) through the API server (pods/proxy in warren-system), so no port-forward is
needed and RBAC on pods/proxy decides who may look.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			_, err := report.ParseFormat(e.output)
			return err
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	e.flags.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVarP(&e.output, "output", "o", "table", "output format: table, json or yaml")
	root.AddCommand(
		e.identityCmd(), e.whyCmd(), e.policyCmd(), e.statusCmd(), e.ztunnelConfigCmd(),
		e.authzCmd(), e.namespaceCmd(), e.waypointCmd(),
	)
	return root
}

// connect builds the clients from the kubectl flags.
func (e *env) connect() error {
	if e.cs != nil {
		return nil
	}
	rc, err := e.flags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w (check --kubeconfig and --context)", err)
	}
	rc.QPS, rc.Burst = 50, 100
	e.cs, err = kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := gatewayv1.Install(scheme); err != nil {
		return err
	}
	e.crc, err = client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	e.adm = admin.New(e.cs)
	e.ns, _, err = e.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	return nil
}

func (e *env) print(v any, table func(io.Writer)) error {
	f, err := report.ParseFormat(e.output)
	if err != nil {
		return err
	}
	return report.Print(e.out, f, v, table)
}

// splitName splits "ns/name" (or "name" in the current namespace).
func (e *env) splitName(s string) (ns, name string) {
	if a, b, ok := strings.Cut(s, "/"); ok {
		return a, b
	}
	return e.ns, s
}

// pod gets a pod, with one-line errors.
func (e *env) pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("pod %s/%s not found (check the name and -n)", ns, name)
	case err != nil:
		return nil, admin.Explain(err, "get", "pods", ns)
	}
	return p, nil
}

// meshed checks that a pod is in the mesh: its namespace (or itself) labelled ambient, not
// opted out, and scheduled.
func (e *env) meshed(ctx context.Context, p *corev1.Pod) error {
	key := p.Namespace + "/" + p.Name
	if p.Labels[LabelDataplaneMode] == "none" {
		return fmt.Errorf("pod %s is not in the mesh: it opts out with label %s=none (remove the label to join)", key, LabelDataplaneMode)
	}
	if p.Labels[LabelDataplaneMode] != "ambient" {
		ns, err := e.cs.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
		if err != nil {
			return admin.Explain(err, "get", "namespaces", "")
		}
		if ns.Labels[LabelDataplaneMode] != "ambient" {
			return fmt.Errorf("pod %s is not in the mesh: namespace %s is not labelled %s=ambient (run: kubectl warren namespace enable %s)", key, p.Namespace, LabelDataplaneMode, p.Namespace)
		}
	}
	if p.Spec.NodeName == "" {
		return fmt.Errorf("pod %s is not scheduled on a node yet (kubectl -n %s get pod %s -o wide)", key, p.Namespace, p.Name)
	}
	return nil
}

var errNoArgs = errors.New("no pod given (name one or more pods, or use -l selector)")

// exactArgs is cobra.ExactArgs with an error that shows the command's usage.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		return fmt.Errorf("%s takes %d argument(s), got %d (usage: %s; see kubectl warren %s --help)", cmd.Name(), n, len(args), cmd.UseLine(), cmd.Name())
	}
}

// noArgs is cobra.NoArgs with an error that shows the command's usage.
func noArgs(cmd *cobra.Command, args []string) error { return exactArgs(0)(cmd, args) }
