//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Inbound is one pod's inbound capture: an sk_lookup program attached to the pod's netns and the
// SOCKMAP holding the ztunnel's listeners there.
type Inbound struct {
	r           *Redirector
	netnsCookie uint64
	coll        *ebpf.Collection
	link        link.Link
	pin         string // "" if not pinned
}

// AttachInbound captures new TCP connections to the pod whose netns the two listeners were
// created in: connections to port [Config.HBONEPort] go to hbone, all others to plaintext
// (see the package documentation for what is not captured). Both must be *net.TCPListener
// created inside the same pod netns with MPTCP off. The listeners stay owned by the caller; if one
// is closed, connections it would have received are refused (fail closed).
//
// One attachment per netns and Redirector: attaching again fails until the previous one is
// closed. With [Config.PinPath] the link is pinned as pods/<netns cookie>; a link pinned there by
// a previous process is adopted (its program replaced atomically), so a restarted ztunnel
// re-enrolling its pods takes them over without a window where they are not captured.
func (r *Redirector) AttachInbound(hbone, plaintext net.Listener) (*Inbound, error) {
	var hboneNS, plainNS uint64
	var nsfd int = -1
	err := listenerFD(hbone, func(fd int) (err error) {
		if hboneNS, err = netnsCookieFD(fd); err != nil {
			return err
		}
		// The listener's own netns: the attach target cannot disagree with the listeners.
		nsfd, err = unix.IoctlRetInt(fd, unix.SIOCGSKNS)
		if err != nil {
			return fmt.Errorf("ioctl SIOCGSKNS: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: attach inbound: hbone listener: %w", err)
	}
	defer unix.Close(nsfd)
	err = listenerFD(plaintext, func(fd int) (err error) {
		plainNS, err = netnsCookieFD(fd)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: attach inbound: plaintext listener: %w", err)
	}
	if hboneNS != plainNS {
		return nil, fmt.Errorf("redirect: attach inbound: listeners are in different netns (%d, %d)", hboneNS, plainNS)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("redirect: attach inbound: redirector closed")
	}
	if _, ok := r.attached[hboneNS]; ok {
		return nil, fmt.Errorf("redirect: attach inbound: netns %d already attached", hboneNS)
	}

	coll, err := ebpf.NewCollection(r.inbound)
	if err != nil {
		return nil, fmt.Errorf("redirect: load sk_lookup program: %w", err)
	}
	sockmap := coll.Maps[mapListeners]
	for _, l := range []struct {
		ln   net.Listener
		slot uint32
	}{{hbone, slotHBONE}, {plaintext, slotPlaintext}} {
		err := listenerFD(l.ln, func(fd int) error { return sockmap.Put(l.slot, uint32(fd)) })
		if err != nil {
			coll.Close()
			return nil, fmt.Errorf("redirect: attach inbound: add listener %s to sockmap: %w", l.ln.Addr(), err)
		}
	}
	prog := coll.Programs[progSkLookup]
	pin := r.podPin(hboneNS)
	lk, err := attachPinned(pin, prog, func() (link.Link, error) { return link.AttachNetNs(nsfd, prog) })
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("redirect: attach sk_lookup to netns %d: %w", hboneNS, err)
	}
	in := &Inbound{r: r, netnsCookie: hboneNS, coll: coll, link: lk, pin: pin}
	r.attached[hboneNS] = in
	return in, nil
}

// NetnsCookie returns the cookie of the netns this attachment captures.
func (in *Inbound) NetnsCookie() uint64 { return in.netnsCookie }

// Close detaches the program and removes its pin, if any (un-enrolling the pod); new connections
// to the pod reach it directly again.
func (in *Inbound) Close() error {
	in.r.mu.Lock()
	if in.r.attached[in.netnsCookie] != in {
		in.r.mu.Unlock()
		return nil // already closed, or closed with the Redirector
	}
	delete(in.r.attached, in.netnsCookie)
	in.r.mu.Unlock()
	var uerr error
	if in.pin != "" {
		uerr = in.link.Unpin()
	}
	if err := errors.Join(uerr, in.close()); err != nil {
		return fmt.Errorf("redirect: detach inbound netns %d: %w", in.netnsCookie, err)
	}
	return nil
}

func (in *Inbound) close() error {
	err := in.link.Close()
	in.coll.Close()
	return err
}
