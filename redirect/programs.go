//go:build linux

package redirect

import (
	"encoding/binary"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// This file holds the eBPF programs, written with cilium/ebpf's assembler. It is pure: it builds
// deterministic specs and touches no kernel. Offsets are the fixed UAPI context layouts from
// include/uapi/linux/bpf.h; no BTF or CO-RE is involved.

// Context offsets: struct bpf_sock_addr.
const (
	saUserIP4  = 4
	saUserIP6  = 8
	saUserPort = 24
	saProtocol = 36
	saSk       = 64
)

// Context offsets: struct bpf_sock (reached through bpf_sock_addr.sk).
const skMark = 16

// Context offsets: struct bpf_sock_ops.
const (
	soOp        = 0
	soFamily    = 20
	soLocalIP4  = 28
	soLocalIP6  = 48
	soLocalPort = 68
)

// Context offsets: struct bpf_sk_lookup.
const (
	slFamily    = 8
	slProtocol  = 12
	slRemoteIP4 = 16
	slRemoteIP6 = 20
	slLocalIP4  = 40
	slLocalIP6  = 44
	slLocalPort = 60
)

const (
	afInet               = 2
	afInet6              = 10
	ipprotoTCP           = 6
	sockOpsActiveEstabCB = 4 // BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
	skPass               = 1
	skDrop               = 0
	bpfAny               = 0
)

// Map names, shared by the specs and the loader.
const (
	mapEnrolled     = "enrolled"
	mapOrigByCookie = "orig_by_cookie"
	mapOrigByPeer   = "orig_by_peer"
	mapListeners    = "listeners"
)

// Program names (also what bpftool shows, truncated to 15 bytes by the kernel).
const (
	progConnect4     = "wrn_connect4"
	progConnect6     = "wrn_connect6"
	progGetpeername4 = "wrn_getpeer4"
	progGetpeername6 = "wrn_getpeer6"
	progSockops      = "wrn_sockops"
	progSkLookup     = "wrn_sk_lookup"
)

// programLicense is the license the programs declare to the kernel. None of the helpers they call is
// GPL-only, so the string only labels the bytecode.
const programLicense = "Apache-2.0"

// Sizes of the connection tables. Entries are evicted least-recently-used; an entry must live from
// connect() until the ztunnel has looked it up (microseconds) and, for getpeername, as long as the
// application asks, so the size bounds the number of concurrently redirected connections per node
// whose getpeername stays exact.
const (
	maxEnrolled    = 4096
	maxConnections = 65536
)

// enrollValue is the value of the enrolled map, keyed by netns cookie.
type enrollValue struct {
	// Port is the outbound listener port as the kernel's bpf_sock_addr.user_port holds it: the
	// port in network byte order in the low 16 bits of a native-endian u32.
	Port uint32
	// IP4 is the pod's IPv4 address (network byte order), where connects to IPv4 (and
	// IPv4-mapped) destinations are sent; zero: 127.0.0.1.
	IP4 [4]byte
	// IP6 is the pod's IPv6 address, where connects to native IPv6 destinations are sent;
	// zero: ::1.
	IP6 [16]byte
}

// Offsets in enrollValue.
const (
	evPort = 0
	evIP4  = 4
	evIP6  = 8
)

// origDst is the value of both connection tables: where a redirected connection was going.
type origDst struct {
	Addr   [16]byte // IPv6, or IPv4-mapped for AF_INET sockets
	Port   [2]byte  // network byte order
	Family uint16   // the socket's address family
	_      [4]byte
	Netns  uint64 // netns cookie of the connecting socket
}

// peerKey keys orig_by_peer: the redirected client's local address as the proxy sees it as the
// accepted connection's remote address (the pod's IP), plus the pod's netns cookie (pods may
// share addresses, e.g. loopback when enrolled without IPs, so the address alone can be
// ambiguous across pods).
type peerKey struct {
	Netns uint64
	Addr  [16]byte // IPv6, or IPv4-mapped
	Port  uint16   // host byte order
	_     [6]byte
}

// be32 returns the native-endian u32 whose memory bytes are b, which is how a network-order IPv4
// address or prefix reads from a context field.
func be32(b ...byte) int32 { return int32(binary.NativeEndian.Uint32(b)) }

// userPort returns port encoded like bpf_sock_addr.user_port.
func userPort(port uint16) uint32 {
	return uint32(binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, port)))
}

var (
	loopbackNet    = be32(127, 0, 0, 0)
	loopbackMask   = be32(0xff, 0, 0, 0)
	loopback4      = be32(127, 0, 0, 1)
	v4MappedPrefix = be32(0, 0, 0xff, 0xff) // third word of ::ffff:a.b.c.d
	v6One          = be32(0, 0, 0, 1)       // fourth word of ::1
)

// outboundSpec builds the maps and programs attached once at the parent cgroup. mark is the
// SO_MARK of the ztunnel's own sockets, which are never redirected.
func outboundSpec(mark uint32) *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			mapEnrolled: {
				Name: mapEnrolled, Type: ebpf.Hash,
				KeySize: 8, ValueSize: 24, MaxEntries: maxEnrolled,
			},
			mapOrigByCookie: {
				Name: mapOrigByCookie, Type: ebpf.LRUHash,
				KeySize: 8, ValueSize: 32, MaxEntries: maxConnections,
			},
			mapOrigByPeer: {
				Name: mapOrigByPeer, Type: ebpf.LRUHash,
				KeySize: 32, ValueSize: 32, MaxEntries: maxConnections,
			},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			progConnect4: {
				Name: progConnect4, Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect,
				License: programLicense, Instructions: connect4Insns(int32(mark)),
			},
			progConnect6: {
				Name: progConnect6, Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet6Connect,
				License: programLicense, Instructions: connect6Insns(int32(mark)),
			},
			progGetpeername4: {
				Name: progGetpeername4, Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCgroupInet4GetPeername,
				License: programLicense, Instructions: getpeernameInsns(false),
			},
			progGetpeername6: {
				Name: progGetpeername6, Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCgroupInet6GetPeername,
				License: programLicense, Instructions: getpeernameInsns(true),
			},
			progSockops: {
				Name: progSockops, Type: ebpf.SockOps, AttachType: ebpf.AttachCGroupSockOps,
				License: programLicense, Instructions: sockopsInsns(),
			},
		},
	}
}

// inboundSpec builds one pod's sk_lookup program and its two-slot SOCKMAP (slot 0: the HBONE
// listener, slot 1: the plaintext listener).
func inboundSpec(hbonePort uint16) *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			mapListeners: {
				Name: mapListeners, Type: ebpf.SockMap,
				KeySize: 4, ValueSize: 4, MaxEntries: 2,
			},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			progSkLookup: {
				Name: progSkLookup, Type: ebpf.SkLookup, AttachType: ebpf.AttachSkLookup,
				License: programLicense, Instructions: skLookupInsns(int32(hbonePort)),
			},
		},
	}
}

const (
	slotHBONE     = 0
	slotPlaintext = 1
)

// Stack layout shared by the connect programs: the u64 map key at fp-8 and the 32-byte origDst
// value at fp-40 (Addr fp-40, Port fp-24, Family fp-22, pad fp-20, Netns fp-16).
const (
	stKey       = -8
	stVal       = -40
	stValPort   = stVal + 16
	stValFamily = stVal + 18
	stValPad    = stVal + 20
	stValNetns  = stVal + 24
)

// connectPrologue checks, for the socket in R6's context, that it is TCP and not the ztunnel's
// own (mark), and jumps to "allow" otherwise.
func connectPrologue(mark int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, saProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipprotoTCP, "allow"),
		asm.LoadMem(asm.R2, asm.R6, saSk, asm.DWord), // ctx->sk, never NULL here
		asm.LoadMem(asm.R3, asm.R2, skMark, asm.Word),
		asm.JEq.Imm32(asm.R3, mark, "allow"),
	}
}

// connectEnrolled looks up the socket's netns cookie in the enrolled map: on a miss it jumps to
// "allow"; on a hit R7 points to its enrollValue and the netns cookie is written to the value on
// the stack.
func connectEnrolled() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.StoreMem(asm.RFP, stKey, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, stValNetns, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapEnrolled),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),
	}
}

// connectRecord fills the rest of the value (family and port; the caller wrote the address) and
// stores it keyed by socket cookie.
func connectRecord(family int64) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, saUserPort, asm.Word),
		asm.StoreMem(asm.RFP, stValPort, asm.R2, asm.Half),
		asm.StoreImm(asm.RFP, stValFamily, family, asm.Half),
		asm.StoreImm(asm.RFP, stValPad, 0, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, stKey, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapOrigByCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stVal),
		asm.Mov.Imm(asm.R4, bpfAny),
		asm.FnMapUpdateElem.Call(),
	}
}

func allow() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	}
}

// connect4Insns: cgroup/connect4. Redirects TCP connects of enrolled pods to <pod IPv4>:<port>
// (127.0.0.1 if the pod was enrolled without one) unless the destination is loopback or the
// socket carries the ztunnel's mark. The connect then takes the pod IP as its source address, so
// the application's getsockname and the client address the ztunnel sees are the real ones.
func connect4Insns(mark int32) asm.Instructions {
	var insns asm.Instructions
	insns = append(insns,
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, saUserIP4, asm.Word),
		asm.And.Imm32(asm.R2, loopbackMask),
		asm.JEq.Imm32(asm.R2, loopbackNet, "allow"),
	)
	insns = append(insns, connectPrologue(mark)...)
	insns = append(insns, connectEnrolled()...)
	insns = append(insns,
		// Addr = ::ffff:<user_ip4>
		asm.Mov.Imm(asm.R3, 0),
		asm.StoreMem(asm.RFP, stVal, asm.R3, asm.DWord),
		asm.StoreImm(asm.RFP, stVal+8, 0, asm.Half),
		asm.StoreImm(asm.RFP, stVal+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, saUserIP4, asm.Word),
		asm.StoreMem(asm.RFP, stVal+12, asm.R2, asm.Word),
	)
	insns = append(insns, connectRecord(afInet)...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R7, evIP4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "ip4"),
		asm.Mov.Imm32(asm.R2, loopback4),
		asm.StoreMem(asm.R6, saUserIP4, asm.R2, asm.Word).WithSymbol("ip4"),
		asm.LoadMem(asm.R2, asm.R7, evPort, asm.Word),
		asm.StoreMem(asm.R6, saUserPort, asm.R2, asm.Word),
	)
	return append(insns, allow()...)
}

// connect6Insns: cgroup/connect6. Like connect4 for AF_INET6 sockets: IPv4-mapped destinations go
// to ::ffff:<pod IPv4>, native IPv6 ones to <pod IPv6> (::ffff:127.0.0.1 and ::1 if the pod was
// enrolled without one); ::1 and ::ffff:127.0.0.0/104 are left alone. R8 is 1 for an
// IPv4-mapped destination.
func connect6Insns(mark int32) asm.Instructions {
	var insns asm.Instructions
	insns = append(insns,
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Imm(asm.R8, 0),
		asm.LoadMem(asm.R2, asm.R6, saUserIP6, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "native"),
		asm.LoadMem(asm.R2, asm.R6, saUserIP6+4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "native"),
		asm.LoadMem(asm.R2, asm.R6, saUserIP6+8, asm.Word),
		asm.JEq.Imm32(asm.R2, v4MappedPrefix, "mapped"),
		asm.JNE.Imm(asm.R2, 0, "native"),
		asm.LoadMem(asm.R2, asm.R6, saUserIP6+12, asm.Word),
		asm.JEq.Imm32(asm.R2, v6One, "allow"), // ::1
		asm.Ja.Label("native"),
		asm.LoadMem(asm.R2, asm.R6, saUserIP6+12, asm.Word).WithSymbol("mapped"),
		asm.And.Imm32(asm.R2, loopbackMask),
		asm.JEq.Imm32(asm.R2, loopbackNet, "allow"),
		asm.Mov.Imm(asm.R8, 1),
	)
	prologue := connectPrologue(mark)
	prologue[0] = prologue[0].WithSymbol("native")
	insns = append(insns, prologue...)
	insns = append(insns, connectEnrolled()...)
	for i := int16(0); i < 16; i += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R6, saUserIP6+i, asm.Word),
			asm.StoreMem(asm.RFP, stVal+i, asm.R2, asm.Word),
		)
	}
	insns = append(insns, connectRecord(afInet6)...)
	insns = append(insns,
		asm.Mov.Imm32(asm.R2, 0),
		asm.StoreMem(asm.R6, saUserIP6, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, saUserIP6+4, asm.R2, asm.Word),
		asm.JEq.Imm(asm.R8, 0, "to_v6"),
		asm.Mov.Imm32(asm.R2, v4MappedPrefix),
		asm.StoreMem(asm.R6, saUserIP6+8, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R7, evIP4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "mapped_ip"),
		asm.Mov.Imm32(asm.R2, loopback4),
		asm.StoreMem(asm.R6, saUserIP6+12, asm.R2, asm.Word).WithSymbol("mapped_ip"),
		asm.Ja.Label("port"),
		// Native: the pod's IPv6 unless it is all zero, then ::1.
		asm.LoadMem(asm.R2, asm.R7, evIP6, asm.Word).WithSymbol("to_v6"),
		asm.LoadMem(asm.R3, asm.R7, evIP6+4, asm.Word),
		asm.Or.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R7, evIP6+8, asm.Word),
		asm.Or.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R7, evIP6+12, asm.Word),
		asm.Or.Reg(asm.R2, asm.R3),
		asm.JNE.Imm(asm.R2, 0, "pod_v6"),
		asm.StoreMem(asm.R6, saUserIP6+8, asm.R2, asm.Word), // R2 is 0
		asm.Mov.Imm32(asm.R2, v6One),
		asm.StoreMem(asm.R6, saUserIP6+12, asm.R2, asm.Word),
		asm.Ja.Label("port"),
	)
	for i := int16(0); i < 16; i += 4 {
		load := asm.LoadMem(asm.R2, asm.R7, evIP6+i, asm.Word)
		if i == 0 {
			load = load.WithSymbol("pod_v6")
		}
		insns = append(insns, load, asm.StoreMem(asm.R6, saUserIP6+i, asm.R2, asm.Word))
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R7, evPort, asm.Word).WithSymbol("port"),
		asm.StoreMem(asm.R6, saUserPort, asm.R2, asm.Word),
	)
	return append(insns, allow()...)
}

// getpeernameInsns: cgroup/getpeername4 and 6. A redirected socket's peer reads as the original
// destination, so the redirect is invisible to the application.
func getpeernameInsns(v6 bool) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, stKey, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapOrigByCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
	}
	if v6 {
		for i := int16(0); i < 16; i += 4 {
			insns = append(insns,
				asm.LoadMem(asm.R2, asm.R0, i, asm.Word),
				asm.StoreMem(asm.R6, saUserIP6+i, asm.R2, asm.Word),
			)
		}
	} else {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R0, 12, asm.Word),
			asm.StoreMem(asm.R6, saUserIP4, asm.R2, asm.Word),
		)
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R0, 16, asm.Half),
		asm.StoreMem(asm.R6, saUserPort, asm.R2, asm.Word),
	)
	return append(insns, allow()...)
}

// sockopsInsns: sockops. When a redirected connection is established (before the client's final
// ACK, so before the proxy can accept it), copies its original destination to orig_by_peer, keyed
// by {netns cookie, local address, local port}: what the proxy sees as the accepted connection's
// remote address. Stack: peerKey at fp-40 (Netns fp-40, Addr fp-32, Port fp-16, pad fp-14).
func sockopsInsns() asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, soOp, asm.Word),
		asm.JNE.Imm(asm.R2, sockOpsActiveEstabCB, "allow"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, stKey, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapOrigByCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R2, asm.R7, 24, asm.DWord), // origDst.Netns
		asm.StoreMem(asm.RFP, -40, asm.R2, asm.DWord),
		asm.Mov.Imm(asm.R3, 0),
		asm.StoreMem(asm.RFP, -32, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, soFamily, asm.Word),
		asm.JEq.Imm(asm.R2, afInet6, "v6"),
		asm.StoreImm(asm.RFP, -22, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, soLocalIP4, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R2, asm.Word),
		asm.Ja.Label("port"),
	}
	for i := int16(0); i < 16; i += 4 {
		load := asm.LoadMem(asm.R2, asm.R6, soLocalIP6+i, asm.Word)
		if i == 0 {
			load = load.WithSymbol("v6")
		}
		insns = append(insns, load, asm.StoreMem(asm.RFP, -32+i, asm.R2, asm.Word))
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, soLocalPort, asm.Word).WithSymbol("port"),
		asm.StoreMem(asm.RFP, -16, asm.R2, asm.Half),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapOrigByPeer),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -40),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Mov.Imm(asm.R4, bpfAny),
		asm.FnMapUpdateElem.Call(),
	)
	return append(insns, allow()...)
}

// skLookupInsns: sk_lookup, attached to one pod's netns. Every new TCP connection to a
// non-loopback local address goes to a ztunnel listener: port hbonePort to the HBONE listener,
// every other port to the plaintext listener. Left to the normal lookup: loopback sources or
// destinations and self-sourced connections (remote address == local address), which is how the
// ztunnel's forward leg to the application avoids being captured again. If the listener is gone
// the connection is refused (fail closed).
func skLookupInsns(hbonePort int32) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, slProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipprotoTCP, "pass"),
		asm.LoadMem(asm.R2, asm.R6, slFamily, asm.Word),
		asm.JEq.Imm(asm.R2, afInet6, "v6"),
		asm.LoadMem(asm.R3, asm.R6, slRemoteIP4, asm.Word),
		asm.LoadMem(asm.R4, asm.R6, slLocalIP4, asm.Word),
		asm.JEq.Reg(asm.R3, asm.R4, "pass"),
		asm.And.Imm32(asm.R3, loopbackMask),
		asm.JEq.Imm32(asm.R3, loopbackNet, "pass"),
		asm.And.Imm32(asm.R4, loopbackMask),
		asm.JEq.Imm32(asm.R4, loopbackNet, "pass"),
		asm.Ja.Label("capture"),
	}
	// IPv6: self-sourced?
	for i := int16(0); i < 16; i += 4 {
		load := asm.LoadMem(asm.R3, asm.R6, slRemoteIP6+i, asm.Word)
		if i == 0 {
			load = load.WithSymbol("v6")
		}
		insns = append(insns, load,
			asm.LoadMem(asm.R4, asm.R6, slLocalIP6+i, asm.Word),
			asm.JNE.Reg(asm.R3, asm.R4, "v6_remote_lo"),
		)
	}
	insns = append(insns, asm.Ja.Label("pass"))
	// IPv6: ::1 on either side?
	for side, base := range []int16{slRemoteIP6, slLocalIP6} {
		next := "capture"
		if side == 0 {
			next = "v6_local_lo"
		}
		for i := int16(0); i < 12; i += 4 {
			load := asm.LoadMem(asm.R3, asm.R6, base+i, asm.Word)
			if i == 0 {
				load = load.WithSymbol([]string{"v6_remote_lo", "v6_local_lo"}[side])
			}
			insns = append(insns, load, asm.JNE.Imm(asm.R3, 0, next))
		}
		insns = append(insns,
			asm.LoadMem(asm.R3, asm.R6, base+12, asm.Word),
			asm.JEq.Imm32(asm.R3, v6One, "pass"),
		)
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, slLocalPort, asm.Word).WithSymbol("capture"),
		asm.Mov.Imm(asm.R3, slotPlaintext),
		asm.JNE.Imm(asm.R2, hbonePort, "lookup"),
		asm.Mov.Imm(asm.R3, slotHBONE),
		asm.StoreMem(asm.RFP, -4, asm.R3, asm.Word).WithSymbol("lookup"),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapListeners),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkAssign.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSkRelease.Call(),
		asm.JNE.Imm(asm.R8, 0, "drop"),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, skDrop).WithSymbol("drop"),
		asm.Return(),
	)
	return insns
}
