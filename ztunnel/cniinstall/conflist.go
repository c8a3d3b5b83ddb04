package cniinstall

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// PluginType is the "type" of warren-cni's entry in a conflist (and the binary's name).
const PluginType = "warren-cni"

// Entry is what warren-cni's entry in the conflist says. The paths are the node's, as the
// container runtime that runs the plugin sees them.
type Entry struct {
	// NodeAgentSocket is the node agent's unix socket (warren-ztunnel --node-agent-socket).
	NodeAgentSocket string
	// StateDir is where the plugin records pods (warren-ztunnel --pod-state-dir).
	StateDir string
	// Kubeconfig lets the plugin read Pods and Namespaces to decide membership. Optional: without
	// it the plugin meshes no pod.
	Kubeconfig string
}

func (e Entry) validate() error {
	for _, f := range []struct{ name, path string }{
		{"node agent socket", e.NodeAgentSocket}, {"state dir", e.StateDir}, {"kubeconfig", e.Kubeconfig},
	} {
		if f.path == "" && f.name == "kubeconfig" {
			continue
		}
		if !filepath.IsAbs(f.path) {
			return fmt.Errorf("warren-cni entry: %s %q is not an absolute path", f.name, f.path)
		}
	}
	return nil
}

// entryJSON is the entry as written. ConvertedFrom names the single-plugin config file that
// Chain turned into this conflist, so that Unchain can turn it back.
type entryJSON struct {
	Type            string `json:"type"`
	NodeAgentSocket string `json:"nodeAgentSocket"`
	StateDir        string `json:"stateDir"`
	Kubeconfig      string `json:"kubeconfig,omitempty"`
	ConvertedFrom   string `json:"convertedFrom,omitempty"`
}

// File is one file of the CNI net dir: its base name and content.
type File struct {
	Name string
	Data []byte
}

// configExts are the extensions container runtimes read from the net dir (libcni.ConfFiles as
// containerd and CRI-O call it).
var configExts = []string{".conf", ".conflist", ".json"}

// IsConfigName reports whether a file of the net dir with this base name is a CNI config a
// container runtime reads.
func IsConfigName(name string) bool { return slices.Contains(configExts, filepath.Ext(name)) }

// PrimaryConfig returns the config file a container runtime uses among the base names of the net
// dir's files: the lexically first that ends in .conf, .conflist or .json (containerd's go-cni
// sorts them and loads the first; it fails rather than skipping to the next when that one is
// invalid, so Chain reports an invalid primary instead of moving on). ok is false when there is
// none.
func PrimaryConfig(names []string) (name string, ok bool) {
	for _, n := range names {
		if IsConfigName(n) && (!ok || n < name) {
			name, ok = n, true
		}
	}
	return name, ok
}

// Chain returns f with e's warren-cni entry as the last plugin, and whether that changed
// anything. It is idempotent: when the entry is already the last plugin with these settings it
// returns f unchanged. An entry elsewhere in the list, several entries, or an entry with other
// settings (another version's socket path, extra fields) are replaced by one entry at the end.
//
// A .conflist is edited in place: the entry is spliced in after the last plugin, with the
// separator the file already uses between plugins, and no other byte changes. A single-plugin
// .conf or .json file becomes a .conflist of the same stem (the caller writes the new name and
// removes the old one) whose only other plugin is the original file's text, verbatim; the entry
// remembers the original name ("convertedFrom") so that Unchain restores it.
//
// Errors name the file and the problem: invalid JSON, no "plugins" or an empty list, a plugin
// without "type", a list with nothing but warren-cni, or a name that is not a CNI config.
func Chain(f File, e Entry) (File, bool, error) {
	if err := e.validate(); err != nil {
		return f, false, err
	}
	want := entryJSON{Type: PluginType, NodeAgentSocket: e.NodeAgentSocket, StateDir: e.StateDir, Kubeconfig: e.Kubeconfig}
	out := f
	switch filepath.Ext(f.Name) {
	case ".conflist":
	case ".conf", ".json":
		data, err := convert(f)
		if err != nil {
			return f, false, err
		}
		out = File{Name: convertedName(f.Name), Data: data}
		want.ConvertedFrom = f.Name
	default:
		return f, false, fmt.Errorf("chain %s: not a CNI config file (want .conf, .conflist or .json)", f.Name)
	}
	cl, err := parseConflist(out.Data)
	if err != nil {
		return f, false, fmt.Errorf("chain %s: %w", f.Name, err)
	}
	ours := cl.indexes(PluginType)
	if len(ours) == len(cl.plugins) {
		return f, false, fmt.Errorf("chain %s: it lists no plugin but warren-cni; warren-cni must come after the network plugin", f.Name)
	}
	if len(ours) > 0 {
		var got entryJSON
		last := cl.plugins[ours[len(ours)-1]]
		if err := json.Unmarshal(last.raw, &got); err == nil && want.ConvertedFrom == "" {
			// This conflist is one that Chain converted earlier.
			want.ConvertedFrom = got.ConvertedFrom
		}
		enc := marshalEntry(want)
		var compact bytes.Buffer
		if len(ours) == 1 && ours[0] == len(cl.plugins)-1 && json.Compact(&compact, last.raw) == nil && bytes.Equal(compact.Bytes(), enc) {
			return f, false, nil
		}
		if out.Data, err = removeAll(out.Data, PluginType); err != nil {
			return f, false, fmt.Errorf("chain %s: %w", f.Name, err)
		}
		if cl, err = parseConflist(out.Data); err != nil {
			return f, false, fmt.Errorf("chain %s: %w", f.Name, err)
		}
	}
	out.Data = insertLast(out.Data, cl, marshalEntry(want))
	return out, true, nil
}

// Unchain returns f without its warren-cni entries, and whether it had any. A conflist that Chain
// made from a single-plugin file comes back as that file (name and bytes), unless someone added
// other plugins or changed its top level since, in which case it stays a conflist. Files that
// are not conflists, or have no entry, come back unchanged. A conflist that lists nothing but
// warren-cni is an error: removing the entry would leave an invalid file.
func Unchain(f File) (File, bool, error) {
	if filepath.Ext(f.Name) != ".conflist" {
		return f, false, nil
	}
	cl, err := parseConflist(f.Data)
	if err != nil {
		return f, false, fmt.Errorf("unchain %s: %w", f.Name, err)
	}
	ours := cl.indexes(PluginType)
	if len(ours) == 0 {
		return f, false, nil
	}
	if len(ours) == len(cl.plugins) {
		return f, false, fmt.Errorf("unchain %s: it lists no plugin but warren-cni; remove the file by hand if it is not needed", f.Name)
	}
	from := ""
	for _, i := range ours {
		var e entryJSON
		if json.Unmarshal(cl.plugins[i].raw, &e) == nil && e.ConvertedFrom != "" {
			from = e.ConvertedFrom
		}
	}
	data, err := removeAll(f.Data, PluginType)
	if err != nil {
		return f, false, fmt.Errorf("unchain %s: %w", f.Name, err)
	}
	if from != "" && filepath.Base(from) == from && (filepath.Ext(from) == ".conf" || filepath.Ext(from) == ".json") && convertedName(from) == f.Name {
		if orig, ok := unconvert(data, from); ok {
			return File{Name: from, Data: orig}, true, nil
		}
	}
	return File{Name: f.Name, Data: data}, true, nil
}

// HasEntry reports whether f is a conflist that lists warren-cni (Unchain would change it).
func HasEntry(f File) bool {
	if filepath.Ext(f.Name) != ".conflist" || !bytes.Contains(f.Data, []byte(PluginType)) {
		return false
	}
	cl, err := parseConflist(f.Data)
	return err == nil && len(cl.indexes(PluginType)) > 0
}

func marshalEntry(e entryJSON) []byte {
	b, err := json.Marshal(e)
	if err != nil {
		panic(err) // strings only
	}
	return b
}

func convertedName(name string) string {
	return strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
}

// conflist locates a conflist's plugins in its text.
type conflist struct {
	open, close int // offsets of the plugins array's '[' and ']'
	plugins     []element
}

// element is one plugin: its text is data[start:end].
type element struct {
	start, end int
	typ        string
	raw        []byte
}

func (c *conflist) indexes(typ string) []int {
	var out []int
	for i, p := range c.plugins {
		if p.typ == typ {
			out = append(out, i)
		}
	}
	return out
}

// parseConflist checks data as container runtimes do (a JSON object with a "name" and a
// non-empty "plugins" list of objects with a "type") and finds where each plugin is.
func parseConflist(data []byte) (*conflist, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("invalid conflist JSON: %w", err)
	}
	if _, ok := top["name"]; !ok {
		return nil, errors.New(`conflist has no "name" (container runtimes refuse it)`)
	}
	if _, ok := top["plugins"]; !ok {
		return nil, errors.New(`conflist has no "plugins"`)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // '{', checked by Unmarshal
		return nil, fmt.Errorf("invalid conflist JSON: %w", err)
	}
	var cl *conflist
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid conflist JSON: %w", err)
		}
		if key, _ := tok.(string); key != "plugins" || cl != nil {
			// Another key, or a duplicate "plugins" (encoding/json, like libcni, keeps the last).
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fmt.Errorf("invalid conflist JSON: %w", err)
			}
			if key == "plugins" {
				return nil, errors.New(`conflist has "plugins" twice`)
			}
			continue
		}
		if tok, err = dec.Token(); err != nil {
			return nil, fmt.Errorf("invalid conflist JSON: %w", err)
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return nil, fmt.Errorf(`conflist "plugins" is not a list`)
		}
		cl = &conflist{open: int(dec.InputOffset()) - 1}
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("invalid conflist JSON: %w", err)
			}
			end := int(dec.InputOffset())
			var p struct {
				Type *string `json:"type"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, fmt.Errorf("conflist plugin %d is not an object: %w", len(cl.plugins), err)
			}
			if p.Type == nil || *p.Type == "" {
				return nil, fmt.Errorf(`conflist plugin %d has no "type"`, len(cl.plugins))
			}
			cl.plugins = append(cl.plugins, element{start: end - len(raw), end: end, typ: *p.Type, raw: raw})
		}
		if _, err := dec.Token(); err != nil { // ']'
			return nil, fmt.Errorf("invalid conflist JSON: %w", err)
		}
		cl.close = int(dec.InputOffset()) - 1
	}
	if len(cl.plugins) == 0 {
		return nil, errors.New(`conflist has no plugins ("plugins" is empty)`)
	}
	return cl, nil
}

// separator returns the whitespace the list uses between plugins (or after its '[').
func (c *conflist) separator(data []byte) []byte {
	n := len(c.plugins)
	if n >= 2 {
		between := data[c.plugins[n-2].end:c.plugins[n-1].start]
		if _, after, ok := bytes.Cut(between, []byte(",")); ok {
			return after
		}
	}
	if ws := data[c.open+1 : c.plugins[0].start]; len(ws) > 0 {
		return ws
	}
	return []byte(" ")
}

// insertLast splices ",<separator><enc>" in after the last plugin.
func insertLast(data []byte, cl *conflist, enc []byte) []byte {
	at := cl.plugins[len(cl.plugins)-1].end
	sep := cl.separator(data)
	out := make([]byte, 0, len(data)+1+len(sep)+len(enc))
	out = append(out, data[:at]...)
	out = append(out, ',')
	out = append(out, sep...)
	out = append(out, enc...)
	return append(out, data[at:]...)
}

// removeAll removes every plugin of type typ, each with the separator before it (or, for the
// first plugin, the separator after it), which undoes insertLast exactly.
func removeAll(data []byte, typ string) ([]byte, error) {
	for {
		cl, err := parseConflist(data)
		if err != nil {
			return nil, err
		}
		ours := cl.indexes(typ)
		if len(ours) == 0 {
			return data, nil
		}
		if len(ours) == len(cl.plugins) {
			return nil, fmt.Errorf("removing %s would leave no plugins", typ)
		}
		i := ours[len(ours)-1]
		from, to := 0, cl.plugins[i].end
		if i > 0 {
			from = cl.plugins[i-1].end
		} else {
			from, to = cl.plugins[0].start, cl.plugins[1].start
		}
		data = append(append([]byte{}, data[:from]...), data[to:]...)
	}
}

// convert turns a single-plugin config file into a conflist whose only plugin is the file's
// text, verbatim, with the file's cniVersion and name (libcni.ConfListFromConf; the name
// defaults to the file's stem).
func convert(f File) ([]byte, error) {
	var conf map[string]json.RawMessage
	if err := json.Unmarshal(f.Data, &conf); err != nil {
		return nil, fmt.Errorf("chain %s: invalid CNI config JSON: %w", f.Name, err)
	}
	var typ string
	if raw, ok := conf["type"]; !ok || json.Unmarshal(raw, &typ) != nil || typ == "" {
		if _, ok := conf["plugins"]; ok {
			return nil, fmt.Errorf(`chain %s: a conflist in a single-plugin config file (rename it to .conflist; container runtimes refuse it as it is)`, f.Name)
		}
		return nil, fmt.Errorf(`chain %s: CNI config has no "type"`, f.Name)
	}
	if typ == PluginType {
		return nil, fmt.Errorf("chain %s: it is warren-cni alone; warren-cni must come after the network plugin", f.Name)
	}
	return wrap(f.Name, conf, f.Data)
}

func wrap(name string, conf map[string]json.RawMessage, data []byte) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("{\n")
	if v, ok := conf["cniVersion"]; ok {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, fmt.Errorf("chain %s: cniVersion is not a string: %w", name, err)
		}
		b.WriteString(`  "cniVersion": ` + quote(s) + ",\n")
	}
	n := strings.TrimSuffix(name, filepath.Ext(name))
	if v, ok := conf["name"]; ok {
		if err := json.Unmarshal(v, &n); err != nil {
			return nil, fmt.Errorf("chain %s: name is not a string: %w", name, err)
		}
	}
	b.WriteString(`  "name": ` + quote(n) + ",\n")
	b.WriteString(`  "plugins": [`)
	b.Write(data)
	b.WriteString("]\n}\n")
	return b.Bytes(), nil
}

// unconvert returns the original single-plugin file of a conflist that convert made (with the
// warren-cni entry already removed), if the conflist is still exactly what convert made.
func unconvert(data []byte, from string) ([]byte, bool) {
	cl, err := parseConflist(data)
	if err != nil || len(cl.plugins) != 1 {
		return nil, false
	}
	inner := data[cl.open+1 : cl.close]
	var conf map[string]json.RawMessage
	if json.Unmarshal(inner, &conf) != nil {
		return nil, false
	}
	again, err := wrap(from, conf, inner)
	if err != nil || !bytes.Equal(again, data) {
		return nil, false
	}
	return inner, true
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
