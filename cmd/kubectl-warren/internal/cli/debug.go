package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warren-mesh/warren/api/nodeconfig"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/admin"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/explain"
	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/report"
)

// config fetches and decodes node's config from its ztunnel, once per command.
func (e *env) config(ctx context.Context, cache map[string]*explain.Config, node string) (*explain.Config, error) {
	if c := cache[node]; c != nil {
		return c, nil
	}
	var d admin.ConfigDump
	if err := e.adm.Get(ctx, node, admin.PathConfigDump, nil, &d); err != nil {
		return nil, err
	}
	c, err := explain.Decode(node, d.Config)
	if err != nil {
		return nil, err
	}
	cache[node] = c
	return c, nil
}

func (e *env) identityCmd() *cobra.Command {
	var selector string
	cmd := &cobra.Command{
		Use:   "identity [POD...] [-l selector]",
		Short: "Show a pod's SPIFFE ID and the certificate its node's ztunnel holds for it",
		Example: `  # the identity and certificate of pod service-a in namespace default
  kubectl warren identity -n default service-a

  # every pod labelled app=service-b, as JSON
  kubectl warren identity -n default -l app=service-b -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if selector == "" && len(args) == 0 {
				return errNoArgs
			}
			ctx := cmd.Context()
			if err := e.connect(); err != nil {
				return err
			}
			var pods []*corev1.Pod
			if selector != "" {
				list, err := e.cs.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
				if err != nil {
					return admin.Explain(err, "list", "pods", e.ns)
				}
				if len(list.Items) == 0 {
					return fmt.Errorf("no pods match -l %s in namespace %s (check the selector and -n)", selector, e.ns)
				}
				for i := range list.Items {
					pods = append(pods, &list.Items[i])
				}
			}
			for _, a := range args {
				ns, name := e.splitName(a)
				p, err := e.pod(ctx, ns, name)
				if err != nil {
					return err
				}
				pods = append(pods, p)
			}
			if len(pods) == 0 {
				return errNoArgs
			}
			certs := map[string]admin.Certificates{}
			var out []report.PodIdentity
			for _, p := range pods {
				if err := e.meshed(ctx, p); err != nil {
					return err
				}
				node := p.Spec.NodeName
				cs, ok := certs[node]
				if !ok {
					if err := e.adm.Get(ctx, node, admin.PathCertificates, nil, &cs); err != nil {
						return err
					}
					certs[node] = cs
				}
				sa := p.Spec.ServiceAccountName
				if sa == "" {
					sa = "default"
				}
				suffix := "/ns/" + p.Namespace + "/sa/" + sa
				id := report.PodIdentity{Pod: p.Namespace + "/" + p.Name, Node: node}
				for _, c := range cs.Certificates {
					if strings.HasSuffix(c.ID, suffix) {
						id.SPIFFEID, id.Certificate = c.ID, &c
					}
				}
				if id.Certificate == nil {
					return fmt.Errorf("ztunnel on node %s holds no certificate for pod %s (identity .../ns/%s/sa/%s): is the pod enrolled? (kubectl warren ztunnel-config workloads --node %s)", node, id.Pod, p.Namespace, sa, node)
				}
				out = append(out, id)
			}
			return e.print(out, func(w io.Writer) { report.IdentityTable(w, out, e.now()) })
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector of the pods")
	return cmd
}

func (e *env) whyCmd() *cobra.Command {
	var path, method string
	var headers []string
	cmd := &cobra.Command{
		Use:   "why SOURCE DEST:PORT",
		Short: "Explain whether a connection from SOURCE to DEST:PORT is allowed, and why",
		Long: `why evaluates a connection from SOURCE (a pod, or an IP address for a client outside the
mesh) to port PORT of DEST (a pod, or a service as svc/NAME) with the same evaluator the
destination's ztunnel runs, on the config that ztunnel holds (its /config_dump): the decision,
the Server that covers the port (or the default policy), every AuthorizationPolicy considered
with its required authentications, and which of them matched or failed and on what.
Names are NAME in -n's namespace, or NAMESPACE/NAME.`,
		Example: `  # would service-a be allowed to call service-b on 8080?
  kubectl warren why -n default service-a service-b:8080

  # and service-c, through the service?
  kubectl warren why -n default service-c svc/service-b:8080

  # an HTTP request, as the destination's waypoint decides it (route, then L7 policy)
  kubectl warren why -n default service-a svc/service-b:8080 --method GET --path /foo/bar

  # an unmeshed client at 10.244.1.9
  kubectl warren why -n default 10.244.1.9 service-b:8080`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req *explain.Request
			if path != "" || method != "" || len(headers) > 0 {
				req = &explain.Request{Method: method, Path: path, Header: http.Header{}}
				if req.Method == "" {
					req.Method = http.MethodGet
				}
				if req.Path == "" {
					req.Path = "/"
				}
				if !strings.HasPrefix(req.Path, "/") {
					return fmt.Errorf("--path %q must start with / (e.g. --path /foo/bar)", path)
				}
				for _, h := range headers {
					k, v, ok := strings.Cut(h, "=")
					if !ok || k == "" {
						return fmt.Errorf("--header %q: write K=V (e.g. --header x-user=alice)", h)
					}
					req.Header.Add(k, v)
				}
			}
			dstName, portStr, ok := cutLast(args[1], ":")
			if !ok {
				return fmt.Errorf("destination %q has no port (write DEST:PORT, e.g. service-b:8080)", args[1])
			}
			port, err := strconv.ParseUint(portStr, 10, 16)
			if err != nil || port == 0 {
				return fmt.Errorf("destination port %q is not a port number (write DEST:PORT, e.g. service-b:8080)", portStr)
			}
			ctx := cmd.Context()
			if err := e.connect(); err != nil {
				return err
			}
			cache := map[string]*explain.Config{}
			out, err := e.why(ctx, cache, args[0], dstName, uint16(port), req)
			if err != nil {
				return err
			}
			return e.print(out, func(w io.Writer) { report.WhyTable(w, out) })
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "HTTP path of the request (L7, evaluated by the waypoint)")
	cmd.Flags().StringVar(&method, "method", "", "HTTP method of the request (L7)")
	cmd.Flags().StringArrayVar(&headers, "header", nil, "HTTP header K=V of the request (L7, repeatable)")
	return cmd
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// source is the client of a why: a pod (its IP, and its identity when meshed) or an address.
type source struct {
	name   string
	addr   netip.Addr
	meshed bool
	ns, sa string
}

func (e *env) source(ctx context.Context, s string) (source, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return source{name: s, addr: a}, nil
	}
	ns, name := e.splitName(strings.TrimPrefix(s, "pod/"))
	p, err := e.pod(ctx, ns, name)
	if err != nil {
		return source{}, err
	}
	src := source{name: ns + "/" + name, ns: ns, sa: p.Spec.ServiceAccountName}
	if src.sa == "" {
		src.sa = "default"
	}
	if src.addr, err = netip.ParseAddr(p.Status.PodIP); err != nil {
		return source{}, fmt.Errorf("source pod %s has no IP yet (kubectl -n %s get pod %s -o wide)", src.name, ns, name)
	}
	src.meshed = e.meshed(ctx, p) == nil
	return src, nil
}

func (e *env) why(ctx context.Context, cache map[string]*explain.Config, srcArg, dstArg string, port uint16, req *explain.Request) ([]explain.Decision, error) {
	decide := func(c *explain.Config, s explain.Source, w *nodeconfig.Workload, p uint16, svc string, svcPort uint16) (explain.Decision, error) {
		if req == nil {
			return c.Why(s, w, p)
		}
		r := *req
		r.Service, r.ServicePort = svc, svcPort
		return c.WhyRequest(s, w, p, r)
	}
	src, err := e.source(ctx, srcArg)
	if err != nil {
		return nil, err
	}
	mkSource := func(c *explain.Config) (explain.Source, error) {
		s := explain.Source{Name: src.name, Addr: src.addr}
		if src.meshed {
			id, err := spiffeid.FromSegments(c.View.TrustDomain(), "ns", src.ns, "sa", src.sa)
			if err != nil {
				return s, fmt.Errorf("source %s: %w", src.name, err)
			}
			s.Identity = id
		}
		return s, nil
	}
	if svc, ok := strings.CutPrefix(dstArg, "svc/"); ok {
		ns, name := e.splitName(svc)
		zs, err := e.adm.Ztunnels(ctx)
		if err != nil {
			return nil, err
		}
		if len(zs) == 0 {
			return nil, fmt.Errorf("no ztunnel pods found (kubectl -n %s get pods -l %s -o wide)", admin.SystemNamespace, admin.ZtunnelLabel)
		}
		any, err := e.config(ctx, cache, zs[0].Node)
		if err != nil {
			return nil, err
		}
		label, targets, err := any.ServiceTargets(ns, name, port)
		if err != nil {
			return nil, err
		}
		var out []explain.Decision
		for _, t := range targets {
			c, err := e.config(ctx, cache, t.Workload.GetNode())
			if err != nil {
				return nil, err
			}
			s, err := mkSource(c)
			if err != nil {
				return nil, err
			}
			w := c.Workload(t.Workload.GetUid(), t.Workload.GetNamespace(), t.Workload.GetName())
			d, err := decide(c, s, w, t.Port, ns+"/"+name, port)
			if err != nil {
				return nil, err
			}
			d.Service = label
			out = append(out, d)
		}
		return out, nil
	}
	ns, name := e.splitName(strings.TrimPrefix(dstArg, "pod/"))
	p, err := e.pod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	if err := e.meshed(ctx, p); err != nil {
		return nil, err
	}
	c, err := e.config(ctx, cache, p.Spec.NodeName)
	if err != nil {
		return nil, err
	}
	w := c.Workload(string(p.UID), ns, name)
	if w == nil {
		return nil, fmt.Errorf("pod %s/%s is not in the config of node %s's ztunnel (version %s) yet: retry in a few seconds, or check warren-controller", ns, name, p.Spec.NodeName, c.View.Version())
	}
	s, err := mkSource(c)
	if err != nil {
		return nil, err
	}
	d, err := decide(c, s, w, port, "", 0)
	if err != nil {
		return nil, err
	}
	return []explain.Decision{d}, nil
}

func (e *env) policyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "policy POD PORT",
		Short: "Show the effective inbound policy of a pod port",
		Long: `policy shows what decides connections to PORT of POD, as the pod's node's ztunnel holds it:
the Server covering the port with its access policy and every AuthorizationPolicy that applies
(and whether the ztunnel or a waypoint enforces it), or the default policy when no Server does.`,
		Example: `  kubectl warren policy -n default service-b 8080
  kubectl warren policy default/service-b 9090 -o yaml`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			port, err := strconv.ParseUint(args[1], 10, 16)
			if err != nil || port == 0 {
				return fmt.Errorf("port %q is not a port number (e.g. kubectl warren policy service-b 8080)", args[1])
			}
			if err := e.connect(); err != nil {
				return err
			}
			ns, name := e.splitName(args[0])
			p, err := e.pod(ctx, ns, name)
			if err != nil {
				return err
			}
			if err := e.meshed(ctx, p); err != nil {
				return err
			}
			c, err := e.config(ctx, map[string]*explain.Config{}, p.Spec.NodeName)
			if err != nil {
				return err
			}
			w := c.Workload(string(p.UID), ns, name)
			if w == nil {
				return fmt.Errorf("pod %s/%s is not in the config of node %s's ztunnel yet: retry in a few seconds, or check warren-controller", ns, name, p.Spec.NodeName)
			}
			pol, err := c.PolicyOf(w, uint16(port))
			if err != nil {
				return err
			}
			return e.print(pol, func(w io.Writer) { report.PolicyTable(w, pol) })
		},
	}
}

func (e *env) ztunnelConfigCmd() *cobra.Command {
	var node string
	kinds := []string{"workloads", "services", "policies", "certificates", "connections"}
	cmd := &cobra.Command{
		Use:       "ztunnel-config workloads|services|policies|certificates|connections [--node N]",
		Aliases:   []string{"zc"},
		Short:     "Show a node's ztunnel view: workloads, services, policies, certificates, connections",
		ValidArgs: kinds,
		Example: `  kubectl warren ztunnel-config workloads --node node-1
  kubectl warren zc policies
  kubectl warren zc certificates -o json
  kubectl warren zc connections --node node-2`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind := args[0]
			if !slices.Contains(kinds, kind) {
				return fmt.Errorf("unknown ztunnel-config %q (one of %s)", kind, strings.Join(kinds, ", "))
			}
			ctx := cmd.Context()
			if err := e.connect(); err != nil {
				return err
			}
			nodes := []string{node}
			if node == "" {
				zs, err := e.adm.Ztunnels(ctx)
				if err != nil {
					return err
				}
				if len(zs) == 0 {
					return fmt.Errorf("no ztunnel pods found (kubectl -n %s get pods -l %s -o wide)", admin.SystemNamespace, admin.ZtunnelLabel)
				}
				nodes = nodes[:0]
				for _, z := range zs {
					nodes = append(nodes, z.Node)
				}
			}
			return e.ztunnelConfig(ctx, kind, nodes)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node whose ztunnel to ask (default: every node)")
	return cmd
}

func (e *env) ztunnelConfig(ctx context.Context, kind string, nodes []string) error {
	switch kind {
	case "certificates":
		var out []report.NodeCertificates
		for _, n := range nodes {
			var cs admin.Certificates
			if err := e.adm.Get(ctx, n, admin.PathCertificates, nil, &cs); err != nil {
				return err
			}
			out = append(out, report.NodeCertificates{Node: n, Certificates: cs.Certificates})
		}
		return e.print(out, func(w io.Writer) { report.CertificatesTable(w, out, e.now()) })
	case "connections":
		var out []admin.Connections
		for _, n := range nodes {
			var cs admin.Connections
			if err := e.adm.Get(ctx, n, admin.PathConnections, nil, &cs); err != nil {
				return err
			}
			cs.Node = n
			out = append(out, cs)
		}
		return e.print(out, func(w io.Writer) { report.ConnectionsTable(w, out) })
	}
	cache := map[string]*explain.Config{}
	type nodeView struct {
		Node string `json:"node"`
		Data any    `json:"data"`
	}
	var views []nodeView
	var tables []func(io.Writer)
	for _, n := range nodes {
		c, err := e.config(ctx, cache, n)
		if err != nil {
			return err
		}
		snap := c.View.Snapshot()
		switch kind {
		case "workloads":
			views = append(views, nodeView{n, snap.GetWorkloads()})
			tables = append(tables, func(w io.Writer) { report.WorkloadsTable(w, n, snap.GetWorkloads()) })
		case "services":
			views = append(views, nodeView{n, snap.GetServices()})
			tables = append(tables, func(w io.Writer) { report.ServicesTable(w, n, snap.GetServices()) })
		case "policies":
			views = append(views, nodeView{n, snap.GetServers()})
			tables = append(tables, func(w io.Writer) { report.PoliciesTable(w, n, snap.GetServers()) })
		}
	}
	return e.print(views, func(w io.Writer) {
		for i, t := range tables {
			if i > 0 {
				fmt.Fprintln(w)
			}
			t(w)
		}
	})
}

func (e *env) authzCmd() *cobra.Command {
	var since string
	var all bool
	cmd := &cobra.Command{
		Use:   "authz [-n NS | -A] [--since 10m]",
		Short: "Show recent security events (denies, audits, revocations) from every ztunnel",
		Long: `authz collects the security events every node's ztunnel keeps in memory (the latest 1024 per
node) and shows those whose destination is in the namespace (-n, or every namespace with -A)
within the window (--since: a duration such as 10m, or an RFC 3339 time).`,
		Example: `  kubectl warren authz -n default --since 10m
  kubectl warren authz -A -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if since != "" {
				if d, err := time.ParseDuration(since); err == nil && d < 0 {
					return fmt.Errorf("--since %q: a duration back from now must not be negative (e.g. --since 10m)", since)
				} else if err != nil {
					if _, err := time.Parse(time.RFC3339, since); err != nil {
						return fmt.Errorf("--since %q: want a duration such as 10m or an RFC 3339 time", since)
					}
				}
			}
			if err := e.connect(); err != nil {
				return err
			}
			zs, err := e.adm.Ztunnels(ctx)
			if err != nil {
				return err
			}
			if len(zs) == 0 {
				return fmt.Errorf("no ztunnel pods found (kubectl -n %s get pods -l %s -o wide)", admin.SystemNamespace, admin.ZtunnelLabel)
			}
			out := []admin.SecurityEvent{}
			for _, z := range zs {
				var ev admin.SecurityEvents
				if err := e.adm.GetPod(ctx, z, admin.PathSecurityEvents, url.Values{"since": {since}}, &ev); err != nil {
					return err
				}
				for _, x := range ev.Events {
					if !all && !strings.HasPrefix(x.DstWorkload, e.ns+"/") {
						continue
					}
					x.Node = z.Node
					out = append(out, x)
				}
			}
			slices.SortStableFunc(out, func(a, b admin.SecurityEvent) int { return a.Time.Compare(b.Time) })
			return e.print(out, func(w io.Writer) { report.EventsTable(w, out) })
		},
	}
	cmd.Flags().StringVar(&since, "since", "10m", "only events this recent (duration, or RFC 3339 time; empty: all kept)")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "events of every namespace")
	return cmd
}
