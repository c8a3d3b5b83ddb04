// Package cniinstall chains warren-cni into a node's CNI configuration and keeps it there, as the
// warren-ztunnel DaemonSet does on every node; it also undoes that when Warren is uninstalled.
//
// The pure half works on file contents: [PrimaryConfig] picks the config file a container runtime
// uses (the lexically first *.conf, *.conflist or *.json of the net dir, as containerd's go-cni and
// CRI-O's ocicni do); [Chain] appends the warren-cni entry as the last plugin of that config (a
// single-plugin .conf or .json becomes a .conflist, as istio-cni does) and [Unchain] removes it
// again. Both edit the file's text in place, so every byte outside the warren-cni entry stays as
// it was, and Unchain(Chain(f)) gives back f exactly, a converted .conf included.
//
// The [Installer] does the node side: it copies the warren-cni binary into the node's CNI bin
// dir, writes the plugin's kubeconfig (API server, CA and ServiceAccount token, rewritten when the
// token rotates), chains into the primary config (waiting for one if the node has none yet) and
// re-chains whenever another writer (the network plugin's own installer) rewrites it.
// [Installer.Uninstall] removes what it installed. The installer does not log: it reports what it
// does through [Config.OnEvent].
//
// Imported by cmd/warren-ztunnel (and its tests); nothing else needs it.
package cniinstall
