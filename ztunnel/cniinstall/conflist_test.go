package cniinstall

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var testEntry = Entry{
	NodeAgentSocket: "/var/run/warren/node-agent.sock",
	StateDir:        "/var/run/warren/pods",
	Kubeconfig:      "/etc/cni/net.d/warren-cni.kubeconfig",
}

func TestPrimaryConfig(t *testing.T) {
	tests := []struct {
		names  []string
		want   string
		wantOK bool
	}{
		{nil, "", false},
		{[]string{"warren-cni.kubeconfig", "calico-kubeconfig", "README"}, "", false},
		{[]string{"10-calico.conflist", "05-cilium.conf", "99-x.json"}, "05-cilium.conf", true},
		{[]string{"10-flannel.conflist", "10-calico.conflist"}, "10-calico.conflist", true},
		// X.conf sorts before X.conflist, as in the runtimes (plain byte order).
		{[]string{"10-a.conflist", "10-a.conf"}, "10-a.conf", true},
		{[]string{"B.conf", "a.conf"}, "B.conf", true},
		{[]string{".10-calico.conflist.tmp-123", "20-x.conflist"}, "20-x.conflist", true},
		{[]string{"00-old.conf.bak", "10-x.json"}, "10-x.json", true},
	}
	for _, tc := range tests {
		got, ok := PrimaryConfig(tc.names)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("PrimaryConfig(%q) = %q, %v; want %q, %v", tc.names, got, ok, tc.want, tc.wantOK)
		}
	}
}

func readTestdata(t testing.TB, name string) File {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return File{Name: name, Data: data}
}

// TestChainGolden chains real-world configs, compares with the golden files, and checks that
// chaining again changes nothing and that Unchain gives back the original byte for byte.
func TestChainGolden(t *testing.T) {
	tests := []struct {
		in, out string
	}{
		{"10-bridge.conflist", "10-bridge.conflist"},
		{"10-calico.conflist", "10-calico.conflist"},
		{"10-flannel.conflist", "10-flannel.conflist"},
		{"05-cilium.conf", "05-cilium.conflist"},
		{"99-noname.json", "99-noname.conflist"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			orig := readTestdata(t, tc.in)
			got, changed, err := Chain(orig, testEntry)
			if err != nil || !changed {
				t.Fatalf("Chain = %v, %v; want a change", changed, err)
			}
			if got.Name != tc.out {
				t.Errorf("Chain wrote %s; want %s", got.Name, tc.out)
			}
			golden := filepath.Join("testdata", tc.in+".golden")
			if *update {
				if err := os.WriteFile(golden, got.Data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), string(got.Data)); diff != "" {
				t.Errorf("chained %s (-golden +got):\n%s", tc.in, diff)
			}
			checkRuntimeView(t, got, 1)

			again, changed, err := Chain(got, testEntry)
			if err != nil || changed || !bytes.Equal(again.Data, got.Data) || again.Name != got.Name {
				t.Errorf("Chain of the chained file = %s, %v, %v; want it unchanged", again.Name, changed, err)
			}
			back, changed, err := Unchain(got)
			if err != nil || !changed {
				t.Fatalf("Unchain = %v, %v; want a change", changed, err)
			}
			if back.Name != orig.Name {
				t.Errorf("Unchain wrote %s; want %s", back.Name, orig.Name)
			}
			if diff := cmp.Diff(string(orig.Data), string(back.Data)); diff != "" {
				t.Errorf("Unchain did not restore %s (-orig +got):\n%s", tc.in, diff)
			}
			if HasEntry(back) {
				t.Errorf("HasEntry(%s) after Unchain = true", back.Name)
			}
		})
	}
}

// checkRuntimeView reads f with libcni, as container runtimes do, and checks that warren-cni is
// its last plugin, exactly once, with testEntry's settings.
func checkRuntimeView(t testing.TB, f File, want int) {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes(f.Data)
	if err != nil {
		t.Fatalf("libcni refuses %s: %v\n%s", f.Name, err, f.Data)
	}
	if n := len(list.Plugins); n < 2 || list.Plugins[n-1].Network.Type != PluginType {
		t.Fatalf("libcni reads %d plugins from %s; want the network plugin(s), then warren-cni", n, f.Name)
	}
	var cl struct {
		Name    *string                  `json:"name"`
		Plugins []map[string]interface{} `json:"plugins"`
	}
	if err := json.Unmarshal(f.Data, &cl); err != nil {
		t.Fatalf("%s is not valid JSON: %v\n%s", f.Name, err, f.Data)
	}
	if cl.Name == nil || len(cl.Plugins) < 2 {
		t.Fatalf("%s: name %v, %d plugins; want a name and the network plugin before warren-cni", f.Name, cl.Name, len(cl.Plugins))
	}
	n := 0
	for _, p := range cl.Plugins {
		if p["type"] == PluginType {
			n++
		}
	}
	last := cl.Plugins[len(cl.Plugins)-1]
	wantLast := map[string]interface{}{
		"type": PluginType, "nodeAgentSocket": testEntry.NodeAgentSocket, "stateDir": testEntry.StateDir, "kubeconfig": testEntry.Kubeconfig,
	}
	if c, ok := last["convertedFrom"]; ok {
		wantLast["convertedFrom"] = c
	}
	if diff := cmp.Diff(wantLast, last); diff != "" || n != want {
		t.Errorf("%s: %d warren-cni entries (want %d); last plugin (-want +got):\n%s", f.Name, n, want, diff)
	}
}

func TestChainReplacesStaleEntries(t *testing.T) {
	const base = `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"portmap"}]}`
	const old = `{"type":"warren-cni","nodeAgentSocket":"/old.sock","stateDir":"/var/run/warren/pods"}`
	const cur = `{"type":"warren-cni","nodeAgentSocket":"/var/run/warren/node-agent.sock","stateDir":"/var/run/warren/pods","kubeconfig":"/etc/cni/net.d/warren-cni.kubeconfig"}`
	tests := []struct {
		name, in string
	}{
		{"other settings", `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"portmap"},` + old + `]}`},
		{"an extra field", `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"portmap"},` + strings.TrimSuffix(cur, "}") + `,"enrollAll":true}]}`},
		{"not last", `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},` + cur + `,{"type":"portmap"}]}`},
		{"first", `{"name":"n","cniVersion":"1.0.0","plugins":[` + cur + `,{"type":"bridge"},{"type":"portmap"}]}`},
		{"twice", `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},` + old + `,{"type":"portmap"},` + cur + `]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := Chain(File{Name: "10-x.conflist", Data: []byte(tc.in)}, testEntry)
			if err != nil || !changed {
				t.Fatalf("Chain = %v, %v; want a change", changed, err)
			}
			checkRuntimeView(t, got, 1)
			want := strings.TrimSuffix(base, "]}") + "," + cur + "]}"
			if string(got.Data) != want {
				t.Errorf("Chain =\n%s\nwant\n%s", got.Data, want)
			}
			back, _, err := Unchain(got)
			if err != nil || string(back.Data) != base {
				t.Errorf("Unchain = %s, %v; want %s", back.Data, err, base)
			}
		})
	}
}

func TestChainRejects(t *testing.T) {
	tests := []struct {
		name string
		f    File
		e    Entry
		want string
	}{
		{"malformed conflist", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"},]}`)}, testEntry, "10-x.conflist: invalid conflist JSON"},
		{"truncated", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bri`)}, testEntry, "invalid conflist JSON"},
		{"empty file", File{"10-x.conflist", nil}, testEntry, "invalid conflist JSON"},
		{"not an object", File{"10-x.conflist", []byte(`[{"type":"bridge"}]`)}, testEntry, "invalid conflist JSON"},
		{"no name", File{"10-x.conflist", []byte(`{"plugins":[{"type":"bridge"}]}`)}, testEntry, `no "name"`},
		{"no plugins key", File{"10-x.conflist", []byte(`{"name":"n"}`)}, testEntry, `no "plugins"`},
		{"plugins not a list", File{"10-x.conflist", []byte(`{"name":"n","plugins":{"type":"bridge"}}`)}, testEntry, "not a list"},
		{"empty plugins", File{"10-x.conflist", []byte(`{"name":"n","plugins":[]}`)}, testEntry, "has no plugins"},
		{"plugin not an object", File{"10-x.conflist", []byte(`{"name":"n","plugins":["bridge"]}`)}, testEntry, "plugin 0 is not an object"},
		{"plugin without type", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"},{"bridge":"cni0"}]}`)}, testEntry, `plugin 1 has no "type"`},
		{"plugins twice", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"a"}],"plugins":[{"type":"b"}]}`)}, testEntry, `"plugins" twice`},
		{"only warren-cni", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"warren-cni"}]}`)}, testEntry, "no plugin but warren-cni"},
		{"conf without type", File{"10-x.conf", []byte(`{"name":"n","bridge":"cni0"}`)}, testEntry, `has no "type"`},
		{"conflist in a .conf", File{"10-x.conf", []byte(`{"name":"n","plugins":[{"type":"bridge"}]}`)}, testEntry, "a conflist in a single-plugin config file"},
		{"malformed conf", File{"10-x.conf", []byte(`{"type":`)}, testEntry, "10-x.conf: invalid CNI config JSON"},
		{"conf of warren-cni", File{"10-x.conf", []byte(`{"name":"n","type":"warren-cni"}`)}, testEntry, "warren-cni alone"},
		{"conf version not a string", File{"10-x.conf", []byte(`{"cniVersion":1,"type":"bridge"}`)}, testEntry, "cniVersion is not a string"},
		{"not a config name", File{"10-x.yaml", []byte(`{}`)}, testEntry, "not a CNI config file"},
		{"relative socket", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"}]}`)}, Entry{NodeAgentSocket: "agent.sock", StateDir: "/s"}, `node agent socket "agent.sock" is not an absolute path`},
		{"no state dir", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"}]}`)}, Entry{NodeAgentSocket: "/a.sock"}, `state dir "" is not an absolute path`},
		{"relative kubeconfig", File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"}]}`)}, Entry{NodeAgentSocket: "/a.sock", StateDir: "/s", Kubeconfig: "k"}, `kubeconfig "k" is not an absolute path`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := Chain(tc.f, tc.e)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Chain = %v; want an error containing %q", err, tc.want)
			}
			if changed || got.Name != tc.f.Name || !bytes.Equal(got.Data, tc.f.Data) {
				t.Errorf("Chain changed the file on error: %s %q", got.Name, got.Data)
			}
		})
	}
}

func TestUnchain(t *testing.T) {
	chainedConf, _, err := Chain(readTestdata(t, "05-cilium.conf"), testEntry)
	if err != nil {
		t.Fatal(err)
	}
	// Another tool appended a plugin after ours to the converted file: it must stay a conflist.
	extended := File{Name: chainedConf.Name, Data: bytes.Replace(chainedConf.Data, []byte(`"}`+"\n]"), []byte(`"}, {"type":"other"}`+"\n]"), 1)}
	if bytes.Equal(extended.Data, chainedConf.Data) {
		t.Fatal("test setup: could not append a plugin")
	}
	renamedTop := File{Name: chainedConf.Name, Data: bytes.Replace(chainedConf.Data, []byte(`"name": "cilium"`), []byte(`"name": "cilium2"`), 1)}
	tests := []struct {
		name        string
		in          File
		wantName    string
		wantChanged bool
		wantErr     string
		check       func(t *testing.T, out File)
	}{
		{name: "not a conflist", in: readTestdata(t, "05-cilium.conf"), wantName: "05-cilium.conf"},
		{name: "no entry", in: readTestdata(t, "10-calico.conflist"), wantName: "10-calico.conflist"},
		{name: "converted, then extended", in: extended, wantName: "05-cilium.conflist", wantChanged: true, check: func(t *testing.T, out File) {
			if HasEntry(out) || !bytes.Contains(out.Data, []byte(`"other"`)) || !bytes.Contains(out.Data, []byte(`"cilium-cni"`)) {
				t.Errorf("Unchain = %s; want cilium-cni and other, without warren-cni", out.Data)
			}
		}},
		{name: "converted, top level edited", in: renamedTop, wantName: "05-cilium.conflist", wantChanged: true},
		{name: "only warren-cni", in: File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"warren-cni"}]}`)}, wantName: "10-x.conflist", wantErr: "no plugin but warren-cni"},
		{name: "malformed", in: File{"10-x.conflist", []byte(`{"name":`)}, wantName: "10-x.conflist", wantErr: "10-x.conflist: invalid conflist JSON"},
		{name: "convertedFrom elsewhere", in: File{"10-x.conflist", []byte(`{"name":"n","plugins":[{"type":"bridge"},{"type":"warren-cni","convertedFrom":"../../etc/passwd.conf"}]}`)}, wantName: "10-x.conflist", wantChanged: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := Unchain(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Unchain = %v; want an error containing %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if out.Name != tc.wantName || changed != tc.wantChanged {
				t.Errorf("Unchain = %s, changed %v; want %s, %v", out.Name, changed, tc.wantName, tc.wantChanged)
			}
			if !changed && !bytes.Equal(out.Data, tc.in.Data) {
				t.Errorf("Unchain changed the data without saying so")
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
}
