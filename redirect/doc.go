// Package redirect captures pod traffic for the ztunnel with eBPF, without iptables.
//
// Outbound: cgroup connect4/connect6 programs, attached once at a parent cgroup (the kubepods
// cgroup in Kubernetes), rewrite the destination of every TCP connect() made from an enrolled pod
// network namespace to the ztunnel's outbound listener inside that namespace at the pod's own IP
// (<pod IPv4>:15001, or [<pod IPv6>]:15001 for native IPv6 destinations), like Istio's REDIRECT:
// the connect takes the pod IP as its source, so the application's getsockname and the client
// address the ztunnel sees (access log, HBONE Forwarded header) are the pod's real ones. A pod is
// enrolled by its netns cookie and addresses ([Redirector.Enroll]; without an address of a family
// that family goes to 127.0.0.1 / ::1 instead), so nothing is attached per pod and no per-pod
// cgroup has to be found. Sockets carrying the ztunnel's SO_MARK
// (0x539) and loopback destinations are left alone. A sockops program records each redirected
// connection's original destination under the client's {netns, local address, local port}, which
// the ztunnel reads back with [Redirector.OriginalDst]; getpeername4/6 programs show the
// application the original destination, so the redirect is invisible to it.
//
// Inbound: an sk_lookup program attached to each pod network namespace ([Redirector.AttachInbound])
// hands every new TCP connection to the pod's addresses to the ztunnel's in-pod listeners held in
// a SOCKMAP: port 15008 to the HBONE listener, every other port to the plaintext listener. The
// accepted socket's local address is the original destination. Connections from or to loopback
// addresses and self-sourced ones (source address == destination address) are not captured.
//
// # What the ztunnel must do
//
//   - Create its in-pod listeners inside the pod's netns (setns on a locked OS thread; a socket
//     keeps the netns it was created in) with MPTCP off (net.ListenConfig.SetMultipathTCP(false):
//     MPTCP sockets cannot go into a SOCKMAP). The outbound listener binds the dual-stack wildcard
//     [::]:15001 (or each pod IP, plus loopback for a family the pod was enrolled without); IPv4
//     clients then arrive IPv4-mapped, so unmap the remote address. Connections from other pods
//     to <pod IP>:15001 do not reach it: the sk_lookup program hands them to the plaintext
//     listener (only self-sourced connections, which the redirected connects are, pass). The
//     inbound listeners bind the dual-stack wildcard ([::]:15006, [::]:15008; Go: "tcp",
//     ":15006") so IPv4 and IPv6 connections can both be assigned to them; their bound port
//     does not matter.
//   - Set SO_MARK 0x539 ([Config.Mark]) on every socket it opens inside a pod netns, or its own
//     upstream connects would be redirected back to itself.
//   - Forward inbound connections to the application from inside the pod netns with a socket
//     bound to 127.0.0.6 (IPv6: ::6 is not loopback, so bind the pod's own IPv6 address, which is
//     self-sourced), dialing the original destination (pod IP:port). Dialing from the pod IP to
//     the pod IP also works for IPv4. Anything else is captured again and loops.
//   - Pass a listener's *net.TCPListener as is: the package reads its descriptor through
//     SyscallConn().Control, never File(), which would make the listener blocking.
//
// # Why the programs are written with cilium/ebpf/asm
//
// The six programs are 14 to 88 instructions each and need only fixed UAPI context offsets (no
// BTF, no CO-RE, no packet parsing). Written with the assembler they are plain Go: `go build` needs
// no clang and no generated objects are committed, the programs are specialised at load time
// (mark, ports) without recompiling, and reviewers read them next to the loader. The cost is that
// they read like assembly; each is short and commented with what it does.
//
// # Kernel requirements
//
// Linux >= 5.14 (SO_NETNS_COOKIE is the newest piece; see [Probe] for the full list). [Probe]
// checks every feature and returns an error wrapping [ebpf.ErrNotSupported] that names the missing
// one and the kernel release that brought it. Needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN
// (setns); in practice root.
//
// # Limits
//
//   - While attached, a pod whose ztunnel listener is gone fails closed: outbound connects are
//     refused by the empty <pod IP>:15001, inbound ones dropped by the sk_lookup program (the
//     listener's SOCKMAP entry goes with the socket). Without [Config.PinPath] the programs are
//     bpf_links owned by the process: closing the [Redirector], or the process exiting, detaches
//     them and pods connect directly. With it (warren-ztunnel: --bpf-pin-path, on a mounted
//     bpffs) the links and maps are pinned and outlive the process, so a crashed or stopped
//     ztunnel leaves its pods captured (fail closed) until the next one adopts the pins;
//     [Redirector.Uninstall] removes them. Pins of pods deleted while no ztunnel ran stay until
//     Uninstall (they hold no netns; their entries are inert).
//   - MPTCP applications are redirected and [Redirector.OriginalDst] works (the hooks see the
//     first subflow), but their getpeername shows the listener's address: getpeername runs for
//     the MPTCP socket, whose cookie differs from the subflow's.
//   - Maps pinned by an older version with another layout are replaced by [New] (their programs
//     keep the old maps until their links are updated); the enrolled pods carry over, sent to
//     loopback until enrolled again with their addresses.
//   - The connection tables are LRU maps of 65536 entries: getpeername of a redirected socket
//     stays exact only while its entry has not been evicted by newer connections.
//
// The package is a library: it does not log and holds no global state. Only cmd/warren-ztunnel
// (and tests) import it; it is the only package that imports cilium/ebpf.
package redirect
