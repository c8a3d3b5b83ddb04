//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records every frame on one interface of a network namespace with an AF_PACKET socket
// (no tcpdump needed): the lab's view of "the wire" between nodes.
type Capture struct {
	fd      int
	mu      sync.Mutex
	packets []capturedPacket
	stop    chan struct{}
	done    chan struct{}
}

type capturedPacket struct {
	at   time.Time
	data []byte
}

// StartCapture opens an AF_PACKET socket for all protocols inside netnsPath, bound to ifname,
// and records frames until Stop.
func StartCapture(netnsPath, ifname string) (*Capture, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		// The thread enters the node's netns to create the socket (a socket keeps the netns it
		// was created in) and is thrown away afterwards (no UnlockOSThread).
		runtime.LockOSThread()
		fd, err := func() (int, error) {
			ns, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, err
			}
			defer unix.Close(ns)
			if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
				return -1, fmt.Errorf("setns %s: %w", netnsPath, err)
			}
			ifc, err := net.InterfaceByName(ifname)
			if err != nil {
				return -1, fmt.Errorf("interface %s in %s: %w", ifname, netnsPath, err)
			}
			proto := htons(unix.ETH_P_ALL)
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
			if err != nil {
				return -1, fmt.Errorf("AF_PACKET socket: %w", err)
			}
			if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifc.Index}); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("bind AF_PACKET to %s: %w", ifname, err)
			}
			tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				unix.Close(fd)
				return -1, err
			}
			return fd, nil
		}()
		ch <- res{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	c := &Capture{fd: r.fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		c.mu.Lock()
		c.packets = append(c.packets, capturedPacket{time.Now(), bytes.Clone(buf[:n])})
		c.mu.Unlock()
	}
}

// Stop ends the capture and closes the socket.
func (c *Capture) Stop() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	unix.Close(c.fd)
}

// CaptureSummary is what a capture shows.
type CaptureSummary struct {
	Packets int
	// TCPByPort counts TCP segments by their server-side port (the lower of the two ports).
	TCPByPort map[uint16]int
	// PayloadByPort counts TCP payload bytes by the same port.
	PayloadByPort map[uint16]int
	// Flows are the distinct TCP flows "src -> dst".
	Flows map[string]bool
}

// Summary decodes the frames (Ethernet, IPv4/IPv6, TCP).
func (c *Capture) Summary() CaptureSummary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := CaptureSummary{TCPByPort: map[uint16]int{}, PayloadByPort: map[uint16]int{}, Flows: map[string]bool{}}
	for _, p := range c.packets {
		s.Packets++
		src, dst, sp, dp, payload, ok := decodeTCP(p.data)
		if !ok {
			continue
		}
		port := min(sp, dp)
		s.TCPByPort[port]++
		s.PayloadByPort[port] += payload
		s.Flows[netip.AddrPortFrom(src, sp).String()+" -> "+netip.AddrPortFrom(dst, dp).String()] = true
	}
	return s
}

// Contains reports whether any captured frame contains b.
func (c *Capture) Contains(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.packets {
		if bytes.Contains(p.data, b) {
			return true
		}
	}
	return false
}

func decodeTCP(f []byte) (src, dst netip.Addr, sp, dp uint16, payload int, ok bool) {
	if len(f) < 14 {
		return
	}
	et, ip := binary.BigEndian.Uint16(f[12:14]), f[14:]
	var l4 []byte
	switch {
	case et == 0x0800 && len(ip) >= 20 && ip[9] == 6:
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if len(ip) < ihl || total > len(ip) || total < ihl {
			return
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		l4 = ip[ihl:total]
	case et == 0x86dd && len(ip) >= 40 && ip[6] == 6:
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40:min(len(ip), 40+int(binary.BigEndian.Uint16(ip[4:6])))]
	default:
		return
	}
	if len(l4) < 20 {
		return
	}
	sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	off := int(l4[12]>>4) * 4
	if off > len(l4) {
		return
	}
	return src, dst, sp, dp, len(l4) - off, true
}

// WritePcap writes the frames as a classic pcap file (LINKTYPE_ETHERNET), for tcpdump -r or
// Wireshark.
func (c *Capture) WritePcap(path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b bytes.Buffer
	hdr := []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), uint32(65535), uint32(1)}
	for _, v := range hdr {
		_ = binary.Write(&b, binary.LittleEndian, v)
	}
	for _, p := range c.packets {
		for _, v := range []uint32{uint32(p.at.Unix()), uint32(p.at.Nanosecond() / 1000), uint32(len(p.data)), uint32(len(p.data))} {
			_ = binary.Write(&b, binary.LittleEndian, v)
		}
		b.Write(p.data)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
