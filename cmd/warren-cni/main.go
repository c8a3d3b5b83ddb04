// Command warren-cni is Warren's chained CNI plugin: it runs after the network plugin that gave
// the pod its addresses and asks the node agent in warren-ztunnel to enroll the pod in the mesh.
//
// Configuration (one entry of the conflist's "plugins", after the main plugin):
//
//	{
//	  "type": "warren-cni",
//	  "nodeAgentSocket": "/var/run/warren/node-agent.sock",  // default
//	  "stateDir": "/var/run/warren/pods",                     // default: pod records
//	  "kubeconfig": "/etc/cni/net.d/warren-cni.kubeconfig",   // decides membership
//	  "enrollAll": false                                      // without kubeconfig only
//	}
//
// ADD records the pod (uid, netns, addresses from prevResult) in stateDir, so that the node agent
// can find it later (restart, namespace labelled later), and decides whether the pod is meshed:
// with "kubeconfig", by reading the Pod and its Namespace from the API server (a Gateway's pod,
// label gateway.networking.k8s.io/gateway-name, such as a waypoint, never is; otherwise label
// warren.dev/dataplane-mode: the pod's "none" or "ambient" wins, else the namespace's
// "ambient"), with the Pod's service account as its identity. Without "kubeconfig", every pod is
// meshed if "enrollAll" is true and none otherwise; the node agent then takes the identity from the
// node config and refuses pods the config does not have yet (use a kubeconfig in clusters;
// enrollAll is for labs and tests). A meshed pod is sent to the node agent; if the agent cannot be
// reached or answers an error, ADD fails and so does the pod's creation (fail closed). The result
// is prevResult unchanged.
//
// DEL tells the node agent (if it is there) and removes the record; it never fails, so pod
// deletion is never blocked by the mesh. CHECK succeeds.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warren-mesh/warren/ztunnel/nodeagent/protocol"
)

// Label values, as warren-controller reads them (controller/translate).
const (
	labelDataplaneMode = "warren.dev/dataplane-mode"
	modeAmbient        = "ambient"
	modeNone           = "none"
	// labelGatewayName marks a Gateway's pods (gatewayv1.GatewayNameLabelKey); they are never
	// enrolled: a waypoint speaks HBONE itself.
	labelGatewayName = "gateway.networking.k8s.io/gateway-name"
)

// callTimeout bounds one call to the node agent (an enrollment fetches a certificate).
const callTimeout = 30 * time.Second

type netConf struct {
	types.PluginConf
	NodeAgentSocket string `json:"nodeAgentSocket,omitempty"`
	StateDir        string `json:"stateDir,omitempty"`
	Kubeconfig      string `json:"kubeconfig,omitempty"`
	EnrollAll       bool   `json:"enrollAll,omitempty"`
}

type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID       types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck}, version.All, "warren-cni: enrolls pods in the Warren mesh")
}

func parseConf(data []byte) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("parse network config: %w", err)
	}
	if conf.NodeAgentSocket == "" {
		conf.NodeAgentSocket = protocol.DefaultSocket
	}
	if conf.StateDir == "" {
		conf.StateDir = protocol.DefaultStateDir
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("parse prevResult: %w", err)
		}
	}
	return conf, nil
}

func parseArgs(s string) (k8sArgs, error) {
	a := k8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, &a); err != nil {
		return a, fmt.Errorf("CNI_ARGS: %w", err)
	}
	return a, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("warren-cni is a chained plugin: no prevResult (put it after the network plugin in the conflist)")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	ka, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	uid, name, ns := string(ka.K8S_POD_UID), string(ka.K8S_POD_NAME), string(ka.K8S_POD_NAMESPACE)
	if uid == "" || name == "" || ns == "" {
		// Not a Kubernetes pod (or an old runtime without K8S_POD_UID): nothing to do.
		fmt.Fprintf(os.Stderr, "warren-cni: no K8S_POD_UID/NAME/NAMESPACE in CNI_ARGS; passing through\n")
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}
	var addrs []string
	for _, ip := range prev.IPs {
		addrs = append(addrs, ip.Address.IP.String())
	}
	if len(addrs) == 0 {
		return fmt.Errorf("pod %s/%s: prevResult has no IP addresses", ns, name)
	}
	// Recorded for every pod, so a pod whose namespace is labelled later can be found.
	rec := protocol.Record{UID: uid, Name: name, Namespace: ns, ContainerID: args.ContainerID, Netns: args.Netns, Addresses: addrs}
	if err := protocol.WriteRecord(conf.StateDir, rec); err != nil {
		return fmt.Errorf("pod %s/%s: %w", ns, name, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	meshed, sa := conf.EnrollAll, ""
	if conf.Kubeconfig != "" {
		m, err := membershipFromAPI(ctx, conf.Kubeconfig, ns, name)
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", ns, name, err)
		}
		meshed, sa = m.meshed, m.serviceAccount
	}
	if meshed {
		_, err := protocol.Call(ctx, conf.NodeAgentSocket, protocol.Request{
			Op: protocol.OpAdd, PodUID: uid, PodName: name, PodNamespace: ns, ServiceAccount: sa,
			Netns: args.Netns, Addresses: addrs,
		})
		if err != nil {
			return fmt.Errorf("pod %s/%s is in the mesh but could not be enrolled (failing closed): %w", ns, name, err)
		}
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warren-cni: del: %v\n", err)
		return nil
	}
	ka, err := parseArgs(args.Args)
	if err != nil || ka.K8S_POD_UID == "" {
		return nil
	}
	uid := string(ka.K8S_POD_UID)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := protocol.Call(ctx, conf.NodeAgentSocket, protocol.Request{Op: protocol.OpDel, PodUID: uid}); err != nil {
		fmt.Fprintf(os.Stderr, "warren-cni: del pod %s: %v\n", uid, err)
	}
	if err := protocol.RemoveRecord(conf.StateDir, uid); err != nil {
		fmt.Fprintf(os.Stderr, "warren-cni: del pod %s: %v\n", uid, err)
	}
	return nil
}

func cmdCheck(*skel.CmdArgs) error { return nil }
