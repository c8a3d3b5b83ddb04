package cniinstall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigName is the plugin's kubeconfig in the net dir.
const KubeconfigName = PluginType + ".kubeconfig"

// DefaultServiceAccountDir is where a pod's ServiceAccount token and cluster CA are mounted.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Config of an Installer. The directories are as this process sees them (host paths mounted into
// the ztunnel's container); HostNetDir is the net dir as the node sees it.
type Config struct {
	// NetDir is the node's CNI config dir (e.g. /host/etc/cni/net.d).
	NetDir string
	// HostNetDir is NetDir as the container runtime sees it (e.g. /etc/cni/net.d): the entry's
	// kubeconfig path is in it.
	HostNetDir string
	// BinDir is the node's CNI bin dir (e.g. /host/opt/cni/bin).
	BinDir string
	// Binary is the warren-cni binary to install (e.g. /usr/local/bin/warren-cni).
	Binary string
	// ServiceAccountDir holds the token and ca.crt the plugin's kubeconfig is made of; empty
	// means DefaultServiceAccountDir.
	ServiceAccountDir string
	// APIServer is the API server's URL as the node reaches it (see ServerFromEnv).
	APIServer string
	// NodeAgentSocket and StateDir go into the entry (node paths; see Entry).
	NodeAgentSocket, StateDir string
	// Resync is how often the installer checks everything even without a file event; zero
	// means 30s.
	Resync time.Duration
	// OnEvent, if set, is told what the installer did or could not do (it may be called from
	// Run's goroutine and from Uninstall; it must not call back into the Installer).
	OnEvent func(Event)
}

// EventKind says what an Event is about.
type EventKind string

// Event kinds.
const (
	// BinaryInstalled: Path is the warren-cni binary just written.
	BinaryInstalled EventKind = "binary-installed"
	// KubeconfigWritten: Path is the plugin's kubeconfig, written for the first time or with a
	// rotated token.
	KubeconfigWritten EventKind = "kubeconfig-written"
	// Chained: Path is the config file now ending with warren-cni; Detail says what changed.
	Chained EventKind = "chained"
	// Waiting: the net dir has no CNI config yet (the network plugin has not written one).
	Waiting EventKind = "waiting"
	// Failed: a step failed (Err says which); the installer retries at the next file event or
	// resync.
	Failed EventKind = "failed"
	// Unchained: Uninstall removed the entry from Path (Detail: restored from a conversion).
	Unchained EventKind = "unchained"
	// Removed: Uninstall removed the file Path.
	Removed EventKind = "removed"
)

// Event is one thing the installer did or could not do.
type Event struct {
	Kind   EventKind
	Path   string
	Detail string
	Err    error
}

// Installer installs warren-cni on a node and keeps it chained.
type Installer struct {
	cfg            Config
	entry          Entry
	kubeconfigPath string // in NetDir
	binPath        string // in BinDir

	running atomic.Bool
	mu      sync.Mutex // serializes sync and Uninstall
	binSeen stamp      // the installed binary when last found identical
	status  string     // last Waiting/Failed/Chained status, to report changes only
}

// stamp identifies a file's version cheaply.
type stamp struct {
	size int64
	mod  time.Time
}

// New checks cfg: the directories and URL must be set, the binary and the ServiceAccount's token
// and ca.crt readable.
func New(cfg Config) (*Installer, error) {
	if cfg.ServiceAccountDir == "" {
		cfg.ServiceAccountDir = DefaultServiceAccountDir
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	for _, f := range []struct{ name, v string }{
		{"net dir", cfg.NetDir}, {"host net dir", cfg.HostNetDir}, {"bin dir", cfg.BinDir}, {"binary", cfg.Binary},
	} {
		if f.v == "" {
			return nil, fmt.Errorf("cni install: %s is required", f.name)
		}
	}
	if !filepath.IsAbs(cfg.HostNetDir) {
		return nil, fmt.Errorf("cni install: host net dir %q is not an absolute path", cfg.HostNetDir)
	}
	if err := checkServer(cfg.APIServer); err != nil {
		return nil, fmt.Errorf("cni install: %w", err)
	}
	if fi, err := os.Stat(cfg.Binary); err != nil {
		return nil, fmt.Errorf("cni install: warren-cni binary: %w (is it in the image?)", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("cni install: warren-cni binary %s is not a regular file", cfg.Binary)
	}
	for _, name := range []string{"token", "ca.crt"} {
		if _, err := os.ReadFile(filepath.Join(cfg.ServiceAccountDir, name)); err != nil {
			return nil, fmt.Errorf("cni install: service account %s: %w (is the ServiceAccount token mounted?)", name, err)
		}
	}
	i := &Installer{
		cfg:            cfg,
		kubeconfigPath: filepath.Join(cfg.NetDir, KubeconfigName),
		binPath:        filepath.Join(cfg.BinDir, PluginType),
		entry: Entry{
			NodeAgentSocket: cfg.NodeAgentSocket, StateDir: cfg.StateDir,
			Kubeconfig: filepath.Join(cfg.HostNetDir, KubeconfigName),
		},
	}
	if err := i.entry.validate(); err != nil {
		return nil, fmt.Errorf("cni install: %w", err)
	}
	return i, nil
}

// ServerFromEnv returns the API server's URL from the KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT variables the kubelet sets in every pod (getenv is os.Getenv).
func ServerFromEnv(getenv func(string) string) (string, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)")
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

func checkServer(s string) error {
	if s == "" {
		return errors.New("API server URL is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("API server URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("API server URL %q: want https://host:port", s)
	}
	return nil
}

// Run installs the binary and kubeconfig, chains warren-cni into the primary config and keeps it
// so until ctx ends: it re-checks on every change in the net dir and the ServiceAccount dir, and
// every Resync. Steps that fail are reported (Failed) and retried; Run itself fails only if it
// cannot watch the directories. It returns nil when ctx ends, leaving everything installed
// (Uninstall removes it).
func (i *Installer) Run(ctx context.Context) error {
	if !i.running.CompareAndSwap(false, true) {
		return errors.New("cni install: already running")
	}
	defer i.running.Store(false)
	if err := os.MkdirAll(i.cfg.NetDir, 0o755); err != nil {
		return fmt.Errorf("cni install: create net dir: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("cni install: watch: %w", err)
	}
	defer w.Close()
	for _, dir := range []string{i.cfg.NetDir, i.cfg.ServiceAccountDir} {
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("cni install: watch %s: %w", dir, err)
		}
	}
	resync := time.NewTicker(i.cfg.Resync)
	defer resync.Stop()
	// File events come in bursts (a writer's create, write and rename); sync once they settle.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	i.sync()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("cni install: watcher closed")
			}
			settle.Reset(50 * time.Millisecond)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("cni install: watcher closed")
			}
			// Missed events (an overflow): check everything now.
			i.emit(Event{Kind: Failed, Path: i.cfg.NetDir, Err: fmt.Errorf("watch: %w", err)})
			i.sync()
		case <-settle.C:
			i.sync()
		case <-resync.C:
			i.sync()
		}
	}
}

func (i *Installer) emit(e Event) {
	if i.cfg.OnEvent != nil {
		i.cfg.OnEvent(e)
	}
}

// setStatus reports e unless the last status was the same.
func (i *Installer) setStatus(e Event) {
	s := fmt.Sprint(e.Kind, e.Path, e.Err)
	if s == i.status {
		return
	}
	i.status = s
	i.emit(e)
}

func (i *Installer) sync() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.installBinary(); err != nil {
		i.emit(Event{Kind: Failed, Path: i.binPath, Err: err})
	}
	if err := i.writeKubeconfig(); err != nil {
		i.emit(Event{Kind: Failed, Path: i.kubeconfigPath, Err: err})
	}
	i.chain()
}

// installBinary copies the binary into BinDir (tmp file and rename) unless the same is there.
func (i *Installer) installBinary() error {
	if fi, err := os.Stat(i.binPath); err == nil && (stamp{fi.Size(), fi.ModTime()}) == i.binSeen {
		return nil
	}
	same, err := sameContent(i.cfg.Binary, i.binPath)
	if err != nil {
		return fmt.Errorf("install warren-cni binary: %w", err)
	}
	if !same {
		src, err := os.Open(i.cfg.Binary)
		if err != nil {
			return fmt.Errorf("install warren-cni binary: %w", err)
		}
		defer src.Close()
		if err := writeAtomic(i.binPath, src, 0o755); err != nil {
			return fmt.Errorf("install warren-cni binary: %w", err)
		}
		i.emit(Event{Kind: BinaryInstalled, Path: i.binPath})
	}
	if fi, err := os.Stat(i.binPath); err == nil {
		i.binSeen = stamp{fi.Size(), fi.ModTime()}
	}
	return nil
}

// sameContent reports whether dst exists with src's content.
func sameContent(src, dst string) (bool, error) {
	d, err := os.Open(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer d.Close()
	s, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer s.Close()
	sfi, err := s.Stat()
	if err != nil {
		return false, err
	}
	dfi, err := d.Stat()
	if err != nil {
		return false, err
	}
	if sfi.Size() != dfi.Size() || !dfi.Mode().IsRegular() {
		return false, nil
	}
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		n, errA := io.ReadFull(s, a)
		m, errB := io.ReadFull(d, b[:n])
		if m != n || !bytes.Equal(a[:n], b[:n]) {
			return false, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return true, nil
		}
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, errB
		}
	}
}

// writeKubeconfig writes the plugin's kubeconfig unless it already says the same.
func (i *Installer) writeKubeconfig() error {
	want, err := i.kubeconfig()
	if err != nil {
		return err
	}
	if got, err := os.ReadFile(i.kubeconfigPath); err == nil && bytes.Equal(got, want) {
		return nil
	}
	if err := writeAtomic(i.kubeconfigPath, bytes.NewReader(want), 0o600); err != nil {
		return fmt.Errorf("write plugin kubeconfig: %w", err)
	}
	i.emit(Event{Kind: KubeconfigWritten, Path: i.kubeconfigPath})
	return nil
}

func (i *Installer) kubeconfig() ([]byte, error) {
	token, err := os.ReadFile(filepath.Join(i.cfg.ServiceAccountDir, "token"))
	if err != nil {
		return nil, fmt.Errorf("plugin kubeconfig: service account token: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(i.cfg.ServiceAccountDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("plugin kubeconfig: service account ca.crt: %w", err)
	}
	return Kubeconfig(i.cfg.APIServer, ca, token)
}

// Kubeconfig renders the plugin's kubeconfig: the API server, its CA (PEM) and a bearer token.
func Kubeconfig(server string, caPEM, token []byte) ([]byte, error) {
	if err := checkServer(server); err != nil {
		return nil, fmt.Errorf("plugin kubeconfig: %w", err)
	}
	t := string(bytes.TrimSpace(token))
	if t == "" {
		return nil, errors.New("plugin kubeconfig: the service account token is empty")
	}
	if !bytes.Contains(caPEM, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, errors.New("plugin kubeconfig: the service account ca.crt has no PEM certificate")
	}
	b, err := clientcmd.Write(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"cluster": {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{PluginType: {Token: t}},
		Contexts:       map[string]*clientcmdapi.Context{PluginType: {Cluster: "cluster", AuthInfo: PluginType}},
		CurrentContext: PluginType,
	})
	if err != nil {
		return nil, fmt.Errorf("plugin kubeconfig: %w", err)
	}
	return b, nil
}

// chain chains warren-cni into the primary config if it is not already.
func (i *Installer) chain() {
	primary, ok, err := i.primary()
	if err != nil {
		i.setStatus(Event{Kind: Failed, Path: i.cfg.NetDir, Err: err})
		return
	}
	if !ok {
		i.setStatus(Event{Kind: Waiting, Path: i.cfg.NetDir, Detail: "no CNI config yet (waiting for the network plugin to write one)"})
		return
	}
	path := filepath.Join(i.cfg.NetDir, primary)
	data, fi, err := readFile(path)
	if err != nil {
		i.setStatus(Event{Kind: Failed, Path: path, Err: err})
		return
	}
	out, changed, err := Chain(File{Name: primary, Data: data}, i.entry)
	if err != nil {
		i.setStatus(Event{Kind: Failed, Path: path, Err: err})
		return
	}
	detail := "already chained"
	if changed {
		outPath := filepath.Join(i.cfg.NetDir, out.Name)
		detail = "appended warren-cni as the last plugin"
		if out.Name != primary {
			detail = "converted " + primary + " to a conflist and appended warren-cni"
			if existing, _, err := readFile(outPath); err == nil && convertedFrom(File{Name: out.Name, Data: existing}) != primary {
				i.setStatus(Event{Kind: Failed, Path: path, Err: fmt.Errorf("chain %s: converting it would overwrite %s, which is not Warren's conversion of it", primary, out.Name)})
				return
			}
		}
		if err := writeAtomic(outPath, bytes.NewReader(out.Data), fi.Mode().Perm()); err != nil {
			i.setStatus(Event{Kind: Failed, Path: outPath, Err: fmt.Errorf("chain: %w", err)})
			return
		}
		if out.Name != primary {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				i.setStatus(Event{Kind: Failed, Path: path, Err: fmt.Errorf("chain: remove the converted file: %w", err)})
				return
			}
		}
		path = outPath
		i.status = "" // report this write even if the status was Chained before
	}
	i.setStatus(Event{Kind: Chained, Path: path, Detail: detail})
}

// primary returns the name of the net dir's primary config.
func (i *Installer) primary() (string, bool, error) {
	ents, err := os.ReadDir(i.cfg.NetDir)
	if err != nil {
		return "", false, fmt.Errorf("list CNI configs: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0 {
			names = append(names, e.Name())
		}
	}
	name, ok := PrimaryConfig(names)
	return name, ok, nil
}

// Ready reports whether warren-cni is in place now: the binary and kubeconfig are there and the
// primary config ends with this installer's entry. It reads the files each time.
func (i *Installer) Ready() error {
	if fi, err := os.Stat(i.binPath); err != nil {
		return fmt.Errorf("cni: warren-cni binary not installed: %w", err)
	} else if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("cni: warren-cni binary %s is not executable", i.binPath)
	}
	if _, err := os.Stat(i.kubeconfigPath); err != nil {
		return fmt.Errorf("cni: plugin kubeconfig not written: %w", err)
	}
	primary, ok, err := i.primary()
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if !ok {
		return fmt.Errorf("cni: no CNI config in %s yet", i.cfg.NetDir)
	}
	data, _, err := readFile(filepath.Join(i.cfg.NetDir, primary))
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	_, changed, err := Chain(File{Name: primary, Data: data}, i.entry)
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if changed {
		return fmt.Errorf("cni: %s does not end with warren-cni yet", primary)
	}
	return nil
}

// Uninstall removes warren-cni from every config file of the net dir (turning a converted
// .conf back into itself), then the plugin's kubeconfig and the binary. Call it after Run has
// returned. It carries on past failures and returns them all.
func (i *Installer) Uninstall() error {
	if i.running.Load() {
		return errors.New("cni uninstall: Run is still running (cancel it first)")
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	var errs []error
	ents, err := os.ReadDir(i.cfg.NetDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("cni uninstall: list CNI configs: %w", err))
	}
	for _, e := range ents {
		if !IsConfigName(e.Name()) || e.IsDir() {
			continue
		}
		if err := i.unchain(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("cni uninstall: %w", err))
		}
	}
	for _, p := range []string{i.kubeconfigPath, i.binPath} {
		switch err := os.Remove(p); {
		case err == nil:
			i.emit(Event{Kind: Removed, Path: p})
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("cni uninstall: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (i *Installer) unchain(name string) error {
	path := filepath.Join(i.cfg.NetDir, name)
	data, fi, err := readFile(path)
	if err != nil {
		return err
	}
	f := File{Name: name, Data: data}
	if !HasEntry(f) {
		return nil
	}
	out, _, err := Unchain(f)
	if err != nil {
		return err
	}
	outPath := filepath.Join(i.cfg.NetDir, out.Name)
	if out.Name != name {
		if _, err := os.Lstat(outPath); err == nil {
			// The network plugin wrote the original file again since: it is newer than what we
			// kept, so only our conversion goes.
			if err := os.Remove(path); err != nil {
				return err
			}
			i.emit(Event{Kind: Removed, Path: path, Detail: "Warren's conversion of " + out.Name + ", which exists again"})
			return nil
		}
	}
	if err := writeAtomic(outPath, bytes.NewReader(out.Data), fi.Mode().Perm()); err != nil {
		return err
	}
	detail := "removed the warren-cni entry"
	if out.Name != name {
		if err := os.Remove(path); err != nil {
			return err
		}
		detail = "restored " + out.Name + " from its conversion " + name
		path = outPath
	}
	i.emit(Event{Kind: Unchained, Path: path, Detail: detail})
	return nil
}

// convertedFrom returns the file that f, a conflist, was converted from by Chain ("" if none).
func convertedFrom(f File) string {
	cl, err := parseConflist(f.Data)
	if err != nil {
		return ""
	}
	for _, idx := range cl.indexes(PluginType) {
		var e entryJSON
		if err := json.Unmarshal(cl.plugins[idx].raw, &e); err == nil && e.ConvertedFrom != "" {
			return e.ConvertedFrom
		}
	}
	return ""
}

func readFile(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	return data, fi, nil
}

// writeAtomic writes r to path through a temporary file in the same directory (whose name ends
// in neither .conf, .conflist nor .json, so no runtime reads it half-written) and a rename.
func writeAtomic(path string, r io.Reader, perm fs.FileMode) error {
	dir, name := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done = true
	return nil
}
