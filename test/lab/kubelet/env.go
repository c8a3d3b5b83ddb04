//go:build linux

package kubelet

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// containerEnv is the container's environment as a runtime gets it from the kubelet: the
// image's Env, then (overriding) service links, envFrom, env, and HOSTNAME.
func (w *podWorker) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, img ImageConfig, sb *sandbox) ([]string, error) {
	api := w.k.cfg.Client.CoreV1()
	var order []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	lookup := func(k string) (string, bool) { v, ok := vals[k]; return v, ok }
	for _, e := range img.Env {
		k, v, _ := strings.Cut(e, "=")
		set(k, v)
	}
	// Service links: the kubernetes Service always, the namespace's Services unless disabled.
	svcs, err := api.Services(pod.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services for service links: %w", err)
	}
	var linked []corev1.Service
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		linked = svcs.Items
	}
	if pod.Namespace != metav1.NamespaceDefault {
		if master, err := api.Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
			linked = slices.DeleteFunc(linked, func(s corev1.Service) bool { return s.Name == "kubernetes" })
			linked = append(linked, *master)
		}
	} else if pod.Spec.EnableServiceLinks != nil && !*pod.Spec.EnableServiceLinks {
		for _, s := range svcs.Items {
			if s.Name == "kubernetes" {
				linked = append(linked, s)
			}
		}
	}
	for _, kv := range serviceEnv(linked) {
		set(kv[0], kv[1])
	}
	for _, from := range c.EnvFrom {
		data := map[string]string{}
		switch {
		case from.ConfigMapRef != nil:
			cm, err := api.ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("configmap %q (envFrom): %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := api.Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("secret %q (envFrom): %w", from.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, lookup))
			continue
		}
		v, ok, err := w.envValueFrom(ctx, pod, c, sb, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	if _, ok := vals["PATH"]; !ok {
		set("PATH", defaultPath) // what containerd gives an image without one
	}
	if _, ok := vals["HOSTNAME"]; !ok {
		set("HOSTNAME", podHostname(pod, w.k.cfg.NodeName))
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vals[k])
	}
	return env, nil
}

// defaultPath is a container's PATH when its image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func optional(b *bool) bool { return b != nil && *b }

// envValueFrom resolves one valueFrom; ok false means an optional source is missing.
func (w *podWorker) envValueFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sb *sandbox, from *corev1.EnvVarSource) (string, bool, error) {
	api := w.k.cfg.Client.CoreV1()
	switch {
	case from.FieldRef != nil:
		v, err := w.fieldValue(pod, sb, from.FieldRef.FieldPath)
		return v, err == nil, err
	case from.ResourceFieldRef != nil:
		v, err := w.resourceValue(ctx, pod, c, from.ResourceFieldRef)
		return v, err == nil, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := api.ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %q: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %q has no key %q", ref.Name, ref.Key)
		}
		return v, true, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := api.Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
		}
		return string(v), true, nil
	}
	return "", false, fmt.Errorf("valueFrom has no source (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef)")
}

// fieldValue is a downward API field (env fieldRef or downwardAPI volume item).
func (w *podWorker) fieldValue(pod *corev1.Pod, sb *sandbox, path string) (string, error) {
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok && strings.HasSuffix(k, "']") {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok && strings.HasSuffix(k, "']") {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	ip := ""
	if sb != nil && sb.ip.IsValid() {
		ip = sb.ip.String()
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return ip, nil
	case "status.hostIP", "status.hostIPs":
		return w.k.cfg.NodeIP.String(), nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", path)
}

// formatMap is the downward API's key="value" lines, sorted.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = k + "=" + strconv.Quote(m[k])
	}
	return strings.Join(lines, "\n")
}

// resourceValue is a resourceFieldRef: the container's limit or request divided by divisor
// (rounded up); an unset limit is the Node's allocatable.
func (w *podWorker) resourceValue(ctx context.Context, pod *corev1.Pod, c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		found := false
		for _, x := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
			if x.Name == ref.ContainerName {
				c, found = &x, true
				break
			}
		}
		if !found {
			return "", fmt.Errorf("resourceFieldRef: no container %q", ref.ContainerName)
		}
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || kind != "limits" && kind != "requests" {
		return "", fmt.Errorf("resourceFieldRef %q is not limits.<name> or requests.<name>", ref.Resource)
	}
	res := corev1.ResourceName(name)
	var q resource.Quantity
	var set bool
	if kind == "limits" {
		q, set = c.Resources.Limits[res]
	} else {
		q, set = c.Resources.Requests[res]
	}
	if !set && kind == "limits" {
		node, err := w.k.cfg.Client.CoreV1().Nodes().Get(ctx, w.k.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("resourceFieldRef %s: node allocatable: %w", ref.Resource, err)
		}
		q, set = node.Status.Allocatable[res]
	}
	if !set {
		return "0", nil
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue()))
	return strconv.FormatInt(int64(v), 10), nil
}

// serviceEnv is the Docker-links style variables of Kubernetes service links, for Services
// with a cluster IP.
func serviceEnv(svcs []corev1.Service) [][2]string {
	slices.SortFunc(svcs, func(a, b corev1.Service) int { return strings.Compare(a.Name, b.Name) })
	var out [][2]string
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		p0 := s.Spec.Ports[0]
		out = append(out, [2]string{name + "_SERVICE_HOST", ip}, [2]string{name + "_SERVICE_PORT", strconv.Itoa(int(p0.Port))})
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				out = append(out, [2]string{name + "_SERVICE_PORT_" + strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port))})
			}
		}
		proto := func(p corev1.ServicePort) string {
			if p.Protocol == "" {
				return "tcp"
			}
			return strings.ToLower(string(p.Protocol))
		}
		url := func(p corev1.ServicePort) string {
			return proto(p) + "://" + net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))
		}
		out = append(out, [2]string{name + "_PORT", url(p0)})
		for _, p := range s.Spec.Ports {
			pre := name + "_PORT_" + strconv.Itoa(int(p.Port)) + "_" + strings.ToUpper(proto(p))
			out = append(out,
				[2]string{pre, url(p)}, [2]string{pre + "_PROTO", proto(p)},
				[2]string{pre + "_PORT", strconv.Itoa(int(p.Port))}, [2]string{pre + "_ADDR", ip})
		}
	}
	return out
}

func podHostname(pod *corev1.Pod, node string) string {
	if pod.Spec.HostNetwork {
		return node
	}
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// podFilesPaths are the pod's /etc files on the host.
type podFilesPaths struct {
	resolv, hosts, hostname string
	hostnameValue           string
}

// podFiles writes the pod's resolv.conf, hosts and hostname (once per sandbox).
func (w *podWorker) podFiles(pod *corev1.Pod, sb *sandbox) (podFilesPaths, error) {
	dir := filepath.Join(w.dir, "etc")
	p := podFilesPaths{
		resolv: filepath.Join(dir, "resolv.conf"), hosts: filepath.Join(dir, "hosts"), hostname: filepath.Join(dir, "hostname"),
		hostnameValue: podHostname(pod, w.k.cfg.NodeName),
	}
	resolv, err := w.resolvConf(pod)
	if err != nil {
		return p, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return p, fmt.Errorf("pod files: %w", err)
	}
	for path, data := range map[string]string{
		p.resolv: resolv, p.hosts: hostsFile(pod, sb, p.hostnameValue, w.k.cfg.ClusterDomain), p.hostname: p.hostnameValue + "\n",
	} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			return p, fmt.Errorf("pod files: %w", err)
		}
	}
	return p, nil
}

// resolvConf follows dnsPolicy (ClusterFirst; hostNetwork pods ClusterFirstWithHostNet;
// Default: the host's; None) and dnsConfig.
func (w *podWorker) resolvConf(pod *corev1.Pod) (string, error) {
	var servers, searches []string
	var options []string
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && pod.Spec.HostNetwork {
		policy = corev1.DNSDefault
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		d := w.k.cfg.ClusterDomain
		servers = []string{w.k.cfg.ClusterDNS.String()}
		searches = []string{pod.Namespace + ".svc." + d, "svc." + d, d}
		options = []string{"ndots:5"}
	case corev1.DNSDefault:
		raw, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return "", fmt.Errorf("dnsPolicy Default: host resolv.conf: %w", err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			switch f[0] {
			case "nameserver":
				servers = append(servers, f[1])
			case "search":
				searches = append(searches, f[1:]...)
			case "options":
				options = append(options, f[1:]...)
			}
		}
	case corev1.DNSNone:
	default:
		return "", fmt.Errorf("dnsPolicy %q unknown", policy)
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		servers = append(servers, dc.Nameservers...)
		searches = append(searches, dc.Searches...)
		for _, o := range dc.Options {
			name := o.Name
			options = slices.DeleteFunc(options, func(s string) bool { n, _, _ := strings.Cut(s, ":"); return n == name })
			if o.Value != nil {
				options = append(options, name+":"+*o.Value)
			} else {
				options = append(options, name)
			}
		}
	}
	var b strings.Builder
	for _, s := range servers {
		b.WriteString("nameserver " + s + "\n")
	}
	if len(searches) > 0 {
		b.WriteString("search " + strings.Join(searches, " ") + "\n")
	}
	if len(options) > 0 {
		b.WriteString("options " + strings.Join(options, " ") + "\n")
	}
	return b.String(), nil
}

func hostsFile(pod *corev1.Pod, sb *sandbox, hostname, domain string) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if sb != nil && sb.ip.IsValid() {
		names := hostname
		if pod.Spec.Subdomain != "" && !pod.Spec.HostNetwork {
			names = hostname + "." + pod.Spec.Subdomain + "." + pod.Namespace + ".svc." + domain + "\t" + hostname
		}
		b.WriteString(sb.ip.String() + "\t" + names + "\n")
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.Spec.HostAliases {
			b.WriteString(a.IP + "\t" + strings.Join(a.Hostnames, "\t") + "\n")
		}
	}
	return b.String()
}
