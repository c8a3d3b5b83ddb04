// Package nodeagent is the node agent inside warren-ztunnel: it enrolls pods into the in-pod
// mesh when the warren-cni plugin tells it about them, and follows the node config for pods that
// are already running.
//
// # Enrollment
//
// An add request (see package protocol for the wire format) enrolls a pod in this order: a
// socket factory inside the pod's network namespace (sockets.Netns, source = the pod's first IPv4
// address, SO_MARK 0x539), the ztunnel's listeners and proxies for the pod (ztunnel.AddPod; the
// certificate is fetched now), the netns cookie, the inbound capture (sk_lookup with the pod's
// HBONE and plaintext listeners), and last the outbound capture (the cookie in the redirect's
// enrolled map). Any failure undoes the steps already done and is answered as an error, which
// makes the plugin fail the pod's creation (fail closed). A repeated add for an enrolled pod with
// the same netns is answered ok; with another netns (a new sandbox of the same pod) the old
// enrollment is removed first.
//
// A del request undoes an enrollment in the reverse order; deleting a pod that is not enrolled
// is not an error.
//
// # Pods already running
//
// When Config.Store is set, the agent reconciles on start and after every config change: every
// workload of this node with TUNNEL_PROTOCOL_HBONE that is not enrolled is enrolled if
// Config.NetnsFor finds its network namespace (by default, the pod records warren-cni leaves in
// Config.StateDir), and every enrolled pod whose workload the config now has with another tunnel
// protocol, or that the config had as an HBONE workload and now lacks (its namespace was
// un-labelled: warren-controller leaves non-member pods out unless a Service needs them), is
// un-enrolled; its record stays, so labelling again enrolls it again. A pod the config has never
// had is left alone: a brand-new pod is enrolled before the controller has even seen its IP. Pods started before warren-cni was installed have no
// record and are enrolled once restarted.
//
// # Failure stance
//
// While the pod's workload is not in the config yet, its inbound connections are refused (fail
// closed; see ztunnel.AddPod). When Run ends the agent removes its pods from the ztunnel but leaves
// them captured, so they cannot connect until a new agent enrolls them again (in production the
// process exits and the redirect goes with it; see package redirect).
package nodeagent
