//go:build linux

package kubelet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// saMountPath is where the ServiceAccount's token, ca.crt and namespace appear.
const saMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// autoVolume names the kube-api-access volume the kubelet adds itself.
const autoVolume = "kube-api-access-lab"

// podVolume is one of the pod's volumes on the host.
type podVolume struct {
	name string
	src  corev1.VolumeSource
	// path is the directory (or hostPath file) bind mounted into containers.
	path string
	// readOnly volumes (configMap, secret, downwardAPI, projected) are always mounted read only.
	readOnly bool
	// tokens caches projected serviceAccountTokens by source index.
	tokens map[int]cachedToken
}

type cachedToken struct {
	token   string
	refresh time.Time
}

// effectiveSpec is the pod's spec plus, when the pod does not turn automounting off and has no
// kube-api-access volume, a projected volume with the ServiceAccount token, ca.crt and
// namespace mounted at saMountPath in every container (what the ServiceAccount admission
// plugin would have added).
func (k *Kubelet) effectiveSpec(ctx context.Context, pod *corev1.Pod) corev1.PodSpec {
	spec := *pod.Spec.DeepCopy()
	if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
		return spec
	}
	for _, v := range spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return spec
		}
	}
	sa := spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if spec.AutomountServiceAccountToken == nil {
		if obj, err := k.cfg.Client.CoreV1().ServiceAccounts(pod.Namespace).Get(ctx, sa, metav1.GetOptions{}); err == nil &&
			obj.AutomountServiceAccountToken != nil && !*obj.AutomountServiceAccountToken {
			return spec
		}
	}
	exp := int64(3607)
	mode := int32(0o644)
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: autoVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: &mode,
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}},
			}}},
		},
	}}})
	addMount := func(cs []corev1.Container) {
		for i := range cs {
			if !slices.ContainsFunc(cs[i].VolumeMounts, func(m corev1.VolumeMount) bool { return filepath.Clean(m.MountPath) == saMountPath }) {
				cs[i].VolumeMounts = append(cs[i].VolumeMounts, corev1.VolumeMount{Name: autoVolume, MountPath: saMountPath, ReadOnly: true})
			}
		}
	}
	addMount(spec.InitContainers)
	addMount(spec.Containers)
	return spec
}

// setupVolumes creates every volume of the pod and fills those with content.
func (w *podWorker) setupVolumes(ctx context.Context) error {
	w.mu.Lock()
	spec := w.spec
	w.mu.Unlock()
	vols := map[string]*podVolume{}
	var errs []error
	for _, v := range spec.Volumes {
		pv, err := w.newVolume(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("MountVolume.SetUp failed for volume %q: %w", v.Name, err))
			continue
		}
		if err := w.syncVolume(ctx, pv); err != nil {
			errs = append(errs, fmt.Errorf("MountVolume.SetUp failed for volume %q: %w", v.Name, err))
			continue
		}
		vols[v.Name] = pv
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	w.mu.Lock()
	w.vols = vols
	w.mu.Unlock()
	return nil
}

// refreshVolumes keeps configMap, secret, downwardAPI and projected volumes current.
func (w *podWorker) refreshVolumes(life context.Context) {
	t := time.NewTicker(w.k.cfg.ResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		vols := w.vols
		w.mu.Unlock()
		for _, v := range vols {
			if err := w.syncVolume(life, v); err != nil && life.Err() == nil {
				w.log.Warn("refresh volume", "volume", v.name, "err", err)
			}
		}
	}
}

func (w *podWorker) newVolume(v corev1.Volume) (*podVolume, error) {
	pv := &podVolume{name: v.Name, src: v.VolumeSource, path: filepath.Join(w.dir, "volumes", v.Name), tokens: map[int]cachedToken{}}
	s := v.VolumeSource
	switch {
	case s.HostPath != nil:
		p, err := w.hostPath(s.HostPath)
		if err != nil {
			return nil, err
		}
		pv.path = p
		return pv, nil
	case s.EmptyDir != nil:
	case s.ConfigMap != nil, s.Secret != nil, s.DownwardAPI != nil, s.Projected != nil:
		pv.readOnly = true
	default:
		return nil, errors.New("volume type not supported by the lab kubelet (hostPath, emptyDir, configMap, secret, downwardAPI, projected)")
	}
	if err := os.MkdirAll(pv.path, 0o755); err != nil {
		return nil, err
	}
	return pv, nil
}

// hostPath maps a hostPath to the node's file system (NodeLocalPaths under NodeRoot) and checks
// its type.
func (w *podWorker) hostPath(h *corev1.HostPathVolumeSource) (string, error) {
	if !filepath.IsAbs(h.Path) {
		return "", fmt.Errorf("hostPath %q is not absolute", h.Path)
	}
	p := filepath.Clean(h.Path)
	for _, l := range w.k.cfg.NodeLocalPaths {
		if p == l || strings.HasPrefix(p, l+"/") {
			p = filepath.Join(w.k.cfg.NodeRoot, p)
			break
		}
	}
	typ := corev1.HostPathUnset
	if h.Type != nil {
		typ = *h.Type
	}
	st, err := os.Stat(p)
	exists := err == nil
	switch typ {
	case corev1.HostPathUnset:
		return p, nil
	case corev1.HostPathDirectoryOrCreate:
		if !exists {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return "", fmt.Errorf("hostPath DirectoryOrCreate %s: %w", p, err)
			}
			return p, nil
		}
		if !st.IsDir() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a directory", p)
		}
	case corev1.HostPathFileOrCreate:
		if !exists {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return "", fmt.Errorf("hostPath FileOrCreate %s: %w", p, err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return "", fmt.Errorf("hostPath FileOrCreate %s: %w", p, err)
			}
			return p, f.Close()
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a file", p)
		}
	default:
		if !exists {
			return "", fmt.Errorf("hostPath type check failed: %s does not exist (type %s)", p, typ)
		}
		ok := map[corev1.HostPathType]bool{
			corev1.HostPathDirectory: st.IsDir(),
			corev1.HostPathFile:      st.Mode().IsRegular(),
			corev1.HostPathSocket:    st.Mode()&os.ModeSocket != 0,
			corev1.HostPathCharDev:   st.Mode()&os.ModeCharDevice != 0,
			corev1.HostPathBlockDev:  st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0,
		}
		good, known := ok[typ]
		if !known {
			return "", fmt.Errorf("hostPath type %q unknown", typ)
		}
		if !good {
			return "", fmt.Errorf("hostPath type check failed: %s is not a %s", p, typ)
		}
	}
	return p, nil
}

// file is one file of a content volume.
type file struct {
	data []byte
	mode os.FileMode
}

// syncVolume writes the volume's current content when it changed.
func (w *podWorker) syncVolume(ctx context.Context, v *podVolume) error {
	files, err := w.volumeFiles(ctx, v)
	if err != nil || files == nil {
		return err
	}
	return writeAtomic(v.path, files)
}

// volumeFiles is the content of a configMap, secret, downwardAPI or projected volume (nil for
// other types).
func (w *podWorker) volumeFiles(ctx context.Context, v *podVolume) (map[string]file, error) {
	pod := w.current()
	s := v.src
	mode := func(m *int32) os.FileMode {
		if m == nil {
			return 0o644
		}
		return os.FileMode(*m)
	}
	switch {
	case s.ConfigMap != nil:
		return w.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, mode(s.ConfigMap.DefaultMode))
	case s.Secret != nil:
		return w.secretFiles(ctx, pod.Namespace, s.Secret.SecretName, s.Secret.Items, s.Secret.Optional, mode(s.Secret.DefaultMode))
	case s.DownwardAPI != nil:
		return w.downwardFiles(ctx, pod, s.DownwardAPI.Items, mode(s.DownwardAPI.DefaultMode))
	case s.Projected != nil:
		all := map[string]file{}
		def := mode(s.Projected.DefaultMode)
		for i, src := range s.Projected.Sources {
			var fs map[string]file
			var err error
			switch {
			case src.ConfigMap != nil:
				fs, err = w.configMapFiles(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, def)
			case src.Secret != nil:
				fs, err = w.secretFiles(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, src.Secret.Optional, def)
			case src.DownwardAPI != nil:
				fs, err = w.downwardFiles(ctx, pod, src.DownwardAPI.Items, def)
			case src.ServiceAccountToken != nil:
				var tok string
				tok, err = w.token(ctx, pod, v, i, src.ServiceAccountToken)
				fs = map[string]file{src.ServiceAccountToken.Path: {data: []byte(tok), mode: def}}
			case src.ClusterTrustBundle != nil, src.PodCertificate != nil:
				err = errors.New("projected clusterTrustBundle and podCertificate sources are not supported by the lab kubelet")
			}
			if err != nil {
				return nil, err
			}
			for p, f := range fs {
				all[p] = f
			}
		}
		return all, nil
	}
	return nil, nil
}

func itemMode(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m)
	}
	return def
}

func (w *podWorker) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt *bool, def os.FileMode) (map[string]file, error) {
	cm, err := w.k.cfg.Client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional(opt) {
			return map[string]file{}, nil
		}
		return nil, fmt.Errorf("configmap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles("configmap", name, data, items, opt, def)
}

func (w *podWorker) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt *bool, def os.FileMode) (map[string]file, error) {
	s, err := w.k.cfg.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional(opt) {
			return map[string]file{}, nil
		}
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return keyFiles("secret", name, s.Data, items, opt, def)
}

func keyFiles(kind, name string, data map[string][]byte, items []corev1.KeyToPath, opt *bool, def os.FileMode) (map[string]file, error) {
	out := map[string]file{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = file{data: v, mode: def}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional(opt) {
				continue
			}
			return nil, fmt.Errorf("%s %q has no key %q", kind, name, it.Key)
		}
		out[it.Path] = file{data: v, mode: itemMode(it.Mode, def)}
	}
	return out, nil
}

func (w *podWorker) downwardFiles(ctx context.Context, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def os.FileMode) (map[string]file, error) {
	out := map[string]file{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = w.fieldValue(pod, w.sandbox(), it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			var c *corev1.Container
			for i := range pod.Spec.Containers {
				if pod.Spec.Containers[i].Name == it.ResourceFieldRef.ContainerName {
					c = &pod.Spec.Containers[i]
				}
			}
			if c == nil {
				return nil, fmt.Errorf("downwardAPI %s: resourceFieldRef names no container %q", it.Path, it.ResourceFieldRef.ContainerName)
			}
			v, err = w.resourceValue(ctx, pod, c, it.ResourceFieldRef)
		default:
			err = errors.New("item has neither fieldRef nor resourceFieldRef")
		}
		if err != nil {
			return nil, fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		out[it.Path] = file{data: []byte(v), mode: itemMode(it.Mode, def)}
	}
	return out, nil
}

// token returns a ServiceAccount token bound to the pod, requesting a new one at 80% of the
// current one's lifetime.
func (w *podWorker) token(ctx context.Context, pod *corev1.Pod, v *podVolume, idx int, src *corev1.ServiceAccountTokenProjection) (string, error) {
	if t, ok := v.tokens[idx]; ok && time.Now().Before(t.refresh) {
		return t.token, nil
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	res, err := w.k.cfg.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	issued := time.Now()
	life := res.Status.ExpirationTimestamp.Sub(issued)
	if life <= 0 {
		life = time.Duration(exp) * time.Second
	}
	v.tokens[idx] = cachedToken{token: res.Status.Token, refresh: issued.Add(life * 8 / 10)}
	return res.Status.Token, nil
}

// writeAtomic makes dir hold exactly files, the way the kubelet's atomic writer does: the
// files live in a timestamped directory, ..data points at it (swapped with a rename), and each
// top-level name is a symbolic link through ..data. It does nothing when the content is the
// same.
func writeAtomic(dir string, files map[string]file) error {
	for p := range files {
		if p == "" || filepath.IsAbs(p) || slices.Contains(strings.Split(p, "/"), "..") || strings.HasPrefix(p, "..") {
			return fmt.Errorf("volume file path %q must be relative, with no .. element, and must not start with two dots", p)
		}
	}
	data := filepath.Join(dir, "..data")
	if same(data, files) {
		return nil
	}
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for p, f := range files {
		full := filepath.Join(ts, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(full, f.mode); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(data)
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if err := os.Rename(tmp, data); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	top := map[string]bool{}
	for p := range files {
		top[strings.Split(p, "/")[0]] = true
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "..") && !top[n] {
			_ = os.RemoveAll(filepath.Join(dir, n))
		}
	}
	if old != "" && old != filepath.Base(ts) {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// same reports whether the directory holds exactly files.
func same(dir string, files map[string]file) bool {
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	n := 0
	err := filepath.WalkDir(dir+"/", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		f, ok := files[rel]
		if !ok {
			return errors.New("extra")
		}
		st, err := d.Info()
		if err != nil || st.Mode().Perm() != f.mode.Perm() {
			return errors.New("mode")
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, f.data) {
			return errors.New("content")
		}
		n++
		return nil
	})
	return err == nil && n == len(files)
}
