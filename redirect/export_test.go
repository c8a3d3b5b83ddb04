//go:build linux

package redirect

import "github.com/cilium/ebpf"

// ProgramStats returns the kernel's run statistics of the outbound programs and of in's sk_lookup
// program (in may be nil), by program name. Statistics are only counted while enabled with
// ebpf.EnableStats.
func ProgramStats(r *Redirector, in *Inbound) (map[string]*ebpf.ProgramStats, error) {
	progs := map[string]*ebpf.Program{}
	for name, p := range r.progs {
		progs[name] = p
	}
	if in != nil {
		progs[progSkLookup] = in.coll.Programs[progSkLookup]
	}
	out := map[string]*ebpf.ProgramStats{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return nil, err
		}
		out[name] = st
	}
	return out, nil
}
