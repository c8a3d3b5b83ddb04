package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/report"
)

func (e *env) statusCmd() *cobra.Command {
	var within time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show mesh membership, every node's ztunnel and the waypoints",
		Long: `status shows which namespaces are in the mesh (and how many of their pods), every node's
ztunnel (ready, build and config versions, certificates that expire within --expiring-within or
fail to renew) and the waypoints (Gateways of class warren-waypoint) with what binds to them.`,
		Example: `  kubectl warren status
  kubectl warren status --expiring-within 6h -o yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := e.connect(); err != nil {
				return err
			}
			s, err := e.status(ctx, within)
			if err != nil {
				return err
			}
			return e.print(s, func(w io.Writer) { report.StatusTable(w, s) })
		},
	}
	cmd.Flags().DurationVar(&within, "expiring-within", time.Hour, "flag certificates that expire within this window")
	return cmd
}

func (e *env) status(ctx context.Context, within time.Duration) (report.Status, error) {
	var s report.Status
	nss, err := e.cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return s, admin.Explain(err, "list", "namespaces", "")
	}
	pods, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return s, admin.Explain(err, "list", "pods", "")
	}
	ambient := map[string]bool{}
	idx := map[string]int{}
	for _, ns := range nss.Items {
		mode := ns.Labels[LabelDataplaneMode]
		ambient[ns.Name] = mode == "ambient"
		idx[ns.Name] = len(s.Namespaces)
		s.Namespaces = append(s.Namespaces, report.NamespaceStatus{Name: ns.Name, Mode: mode, Waypoint: ns.Labels[LabelUseWaypoint]})
	}
	for _, p := range pods.Items {
		i, ok := idx[p.Namespace]
		if !ok || p.Spec.HostNetwork {
			continue
		}
		s.Namespaces[i].Pods++
		m := p.Labels[LabelDataplaneMode]
		if m == "ambient" || (ambient[p.Namespace] && m != "none") {
			s.Namespaces[i].Meshed++
		}
	}
	zs, err := e.adm.Ztunnels(ctx)
	if err != nil {
		return s, err
	}
	now := e.now()
	for _, z := range zs {
		st := report.ZtunnelStatus{Node: z.Node, Pod: z.Pod, Ready: z.Ready}
		var v admin.Version
		var cs admin.Certificates
		if err := e.adm.GetPod(ctx, z, admin.PathVersion, nil, &v); err != nil {
			st.Ready, st.Error = false, shortErr(err)
		} else if err := e.adm.GetPod(ctx, z, admin.PathCertificates, nil, &cs); err != nil {
			st.Ready, st.Error = false, shortErr(err)
		} else {
			st.Ready = st.Ready && v.Ready
			st.BuildVersion, st.ConfigVersion, st.Workloads, st.Certificates = v.BuildVersion, v.ConfigVersion, v.Workloads, len(cs.Certificates)
			for _, c := range cs.Certificates {
				if c.State != "valid" || c.NotAfter.Sub(now) < within {
					st.Expiring = append(st.Expiring, c.ID+" ("+c.State+", expires in "+report.Until(c.NotAfter, now)+")")
				}
			}
		}
		s.Ztunnels = append(s.Ztunnels, st)
	}
	wps, err := e.waypoints(ctx, "")
	if err != nil {
		return s, err
	}
	for _, w := range wps {
		s.Waypoints = append(s.Waypoints, report.WaypointStatus{Namespace: w.Namespace, Name: w.Name, Programmed: w.Programmed, Serves: w.BoundBy})
	}
	return s, nil
}

// shortErr is the cause of an unreachable ztunnel, for a table cell.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, " (is the warren-ztunnel pod running?"); i > 0 {
		s = s[:i]
	}
	return s
}

func (e *env) namespaceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "namespace enable|disable NS",
		Short: "Add a namespace to the mesh, or take it out (label warren.dev/dataplane-mode=ambient)",
		Example: `  kubectl warren namespace enable default
  kubectl warren namespace disable default`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var value any
			switch args[0] {
			case "enable":
				value = "ambient"
			case "disable":
				value = nil
			default:
				return fmt.Errorf("unknown namespace action %q (enable or disable)", args[0])
			}
			if err := e.connect(); err != nil {
				return err
			}
			ns := args[1]
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelDataplaneMode: value}}})
			_, err := e.cs.CoreV1().Namespaces().Patch(cmd.Context(), ns, types.MergePatchType, patch, metav1.PatchOptions{})
			switch {
			case apierrors.IsNotFound(err):
				return fmt.Errorf("namespace %s not found (kubectl get namespaces)", ns)
			case err != nil:
				return admin.Explain(err, "patch", "namespaces", "")
			}
			if value == nil {
				fmt.Fprintf(e.out, "namespace/%s left the mesh (label %s removed)\n", ns, LabelDataplaneMode)
			} else {
				fmt.Fprintf(e.out, "namespace/%s joined the mesh (%s=ambient)\n", ns, LabelDataplaneMode)
			}
			return nil
		},
	}
	return cmd
}

func (e *env) waypointCmd() *cobra.Command {
	var name string
	var enroll bool
	cmd := &cobra.Command{
		Use:   "waypoint apply|list|delete [-n NS] [--name N] [--enroll-namespace]",
		Short: "Manage waypoints: Gateways of class warren-waypoint and their warren.dev/use-waypoint binding",
		Long: `waypoint apply creates (or updates) a Gateway of class warren-waypoint with the listener
{name: mesh, port: 15008, protocol: HBONE} in the namespace; with --enroll-namespace it also
labels the namespace warren.dev/use-waypoint=<name>, so the namespace's traffic goes through it.
waypoint list shows the waypoints of the namespace (-A: all) and what binds to them; waypoint
delete removes one (and the namespace's binding label when it points to it).`,
		Example: `  kubectl warren waypoint apply -n default --enroll-namespace
  kubectl warren waypoint list -A
  kubectl warren waypoint delete -n default --name waypoint`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !slices.Contains([]string{"apply", "list", "delete"}, args[0]) {
				return fmt.Errorf("unknown waypoint action %q (apply, list or delete)", args[0])
			}
			ctx := cmd.Context()
			if err := e.connect(); err != nil {
				return err
			}
			switch args[0] {
			case "apply":
				return e.waypointApply(ctx, name, enroll)
			case "list":
				all, _ := cmd.Flags().GetBool("all-namespaces")
				ns := e.ns
				if all {
					ns = ""
				}
				ws, err := e.waypoints(ctx, ns)
				if err != nil {
					return err
				}
				return e.print(ws, func(w io.Writer) { report.WaypointsTable(w, ws) })
			case "delete":
				return e.waypointDelete(ctx, name)
			}
			return fmt.Errorf("unknown waypoint action %q (apply, list or delete)", args[0])
		},
	}
	cmd.Flags().StringVar(&name, "name", "waypoint", "the waypoint's Gateway name")
	cmd.Flags().BoolVar(&enroll, "enroll-namespace", false, "apply: also bind the namespace to the waypoint (label "+LabelUseWaypoint+")")
	cmd.Flags().BoolP("all-namespaces", "A", false, "list: waypoints of every namespace")
	return cmd
}

// Gateway returns the waypoint Gateway namespace/name.
func Gateway(namespace, name string) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "kubectl-warren"}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: WaypointClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
}

func (e *env) waypointApply(ctx context.Context, name string, enroll bool) error {
	want := Gateway(e.ns, name)
	var have gatewayv1.Gateway
	err := e.crc.Get(ctx, client.ObjectKeyFromObject(want), &have)
	switch {
	case apierrors.IsNotFound(err):
		err = e.crc.Create(ctx, want)
	case err == nil:
		have.Spec = want.Spec
		err = e.crc.Update(ctx, &have)
	}
	if err != nil {
		return gatewayErr(err, "apply", e.ns)
	}
	fmt.Fprintf(e.out, "gateway.gateway.networking.k8s.io/%s applied in namespace %s (class %s, listener mesh 15008/HBONE)\n", name, e.ns, WaypointClass)
	if !enroll {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelUseWaypoint: name}}})
	if _, err := e.cs.CoreV1().Namespaces().Patch(ctx, e.ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return admin.Explain(err, "patch", "namespaces", "")
	}
	fmt.Fprintf(e.out, "namespace/%s uses waypoint %s (%s=%s)\n", e.ns, name, LabelUseWaypoint, name)
	return nil
}

func (e *env) waypointDelete(ctx context.Context, name string) error {
	err := e.crc.Delete(ctx, Gateway(e.ns, name))
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("waypoint %s/%s not found (kubectl warren waypoint list -n %s)", e.ns, name, e.ns)
	}
	if err != nil {
		return gatewayErr(err, "delete", e.ns)
	}
	fmt.Fprintf(e.out, "gateway.gateway.networking.k8s.io/%s deleted from namespace %s\n", name, e.ns)
	ns, err := e.cs.CoreV1().Namespaces().Get(ctx, e.ns, metav1.GetOptions{})
	if err == nil && ns.Labels[LabelUseWaypoint] == name {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelUseWaypoint: nil}}})
		if _, err := e.cs.CoreV1().Namespaces().Patch(ctx, e.ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return admin.Explain(err, "patch", "namespaces", "")
		}
		fmt.Fprintf(e.out, "namespace/%s no longer uses waypoint %s (label %s removed)\n", e.ns, name, LabelUseWaypoint)
	}
	return nil
}

func gatewayErr(err error, verb, ns string) error {
	if apierrors.IsForbidden(err) {
		return admin.Explain(err, verb, "gateways.gateway.networking.k8s.io", ns)
	}
	if strings.Contains(err.Error(), "no matches for kind") {
		return fmt.Errorf("the Gateway API CRDs are not installed (kubectl apply -f manifests/crds/gateway-api)")
	}
	return fmt.Errorf("%s waypoint: %w", verb, err)
}

// waypoints lists the warren-waypoint Gateways of ns ("" all) and what binds to them.
func (e *env) waypoints(ctx context.Context, ns string) ([]report.Waypoint, error) {
	var gws gatewayv1.GatewayList
	if err := e.crc.List(ctx, &gws, client.InNamespace(ns)); err != nil {
		if strings.Contains(err.Error(), "no matches for kind") {
			return nil, nil // no Gateway API: no waypoints
		}
		return nil, gatewayErr(err, "list", ns)
	}
	out := []report.Waypoint{}
	for _, g := range gws.Items {
		if g.Spec.GatewayClassName != WaypointClass {
			continue
		}
		w := report.Waypoint{Namespace: g.Namespace, Name: g.Name, Programmed: "Unknown"}
		for _, c := range g.Status.Conditions {
			if c.Type == string(gatewayv1.GatewayConditionProgrammed) {
				w.Programmed = string(c.Status)
			}
		}
		sel := metav1.ListOptions{LabelSelector: LabelUseWaypoint + "=" + g.Name}
		if n, err := e.cs.CoreV1().Namespaces().Get(ctx, g.Namespace, metav1.GetOptions{}); err == nil && n.Labels[LabelUseWaypoint] == g.Name {
			w.BoundBy = append(w.BoundBy, "namespace/"+g.Namespace)
		}
		if svcs, err := e.cs.CoreV1().Services(g.Namespace).List(ctx, sel); err == nil {
			for _, s := range svcs.Items {
				w.BoundBy = append(w.BoundBy, "service/"+s.Name)
			}
		}
		if pods, err := e.cs.CoreV1().Pods(g.Namespace).List(ctx, sel); err == nil {
			for _, p := range pods.Items {
				w.BoundBy = append(w.BoundBy, "pod/"+p.Name)
			}
		}
		slices.Sort(w.BoundBy)
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}
