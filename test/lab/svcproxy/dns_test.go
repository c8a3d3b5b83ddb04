//go:build linux

package svcproxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func query(tb testing.TB, name string, typ dnsmessage.Type, class dnsmessage.Class) []byte {
	tb.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 4242, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		tb.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: class}); err != nil {
		tb.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		tb.Fatal(err)
	}
	return msg
}

// reply is the part of a response the tests check.
type reply struct {
	RCode         dnsmessage.RCode
	Authoritative bool
	Truncated     bool
	Question      string
	Answers       []string
}

func parseReply(tb testing.TB, msg []byte) reply {
	tb.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		tb.Fatalf("unpack response: %v", err)
	}
	if !m.Response || m.ID != 4242 {
		tb.Errorf("header %+v: want a response with the query's ID", m.Header)
	}
	r := reply{RCode: m.RCode, Authoritative: m.Authoritative, Truncated: m.Truncated}
	if len(m.Questions) > 0 {
		r.Question = m.Questions[0].Name.String()
	}
	for _, a := range m.Answers {
		if a.Header.TTL != dnsTTL {
			tb.Errorf("answer %v: TTL %d, want %d", a.Header.Name, a.Header.TTL, dnsTTL)
		}
		switch b := a.Body.(type) {
		case *dnsmessage.AResource:
			r.Answers = append(r.Answers, netip.AddrFrom4(b.A).String())
		case *dnsmessage.AAAAResource:
			r.Answers = append(r.Answers, netip.AddrFrom16(b.AAAA).String())
		default:
			r.Answers = append(r.Answers, a.Body.GoString())
		}
	}
	return r
}

func testSnapshot() *snapshot {
	many := sliceObj("ns", "many-1", "many", discoveryv1.AddressTypeIPv4, nil)
	for i := range 40 {
		many.Endpoints = append(many.Endpoints, ep(nil, nil, fmt.Sprintf("10.1.1.%d", i+1)))
	}
	snap, _ := buildSnapshot(
		[]*corev1.Service{
			svcObj("ns", "web", "10.0.0.5", corev1.ServicePort{Port: 80}),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ds"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.7", ClusterIPs: []string{"10.0.0.7", "fd00:10::7"}}},
			svcObj("ns", "db", corev1.ClusterIPNone),
			svcObj("ns", "many", corev1.ClusterIPNone),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
		},
		[]*discoveryv1.EndpointSlice{
			sliceObj("ns", "db-1", "db", discoveryv1.AddressTypeIPv4, nil,
				ep(nil, nil, "10.1.0.8"), ep(nil, nil, "10.1.0.7"), ep(ptr.To(false), nil, "10.1.0.9")),
			many,
		})
	return snap
}

func TestResolverAnswer(t *testing.T) {
	r := &resolver{domain: "cluster.local."}
	snap := testSnapshot()
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("10.1.1.%d", i+1))
	}
	in, refused, nx, ok := dnsmessage.ClassINET, dnsmessage.RCodeRefused, dnsmessage.RCodeNameError, dnsmessage.RCodeSuccess
	tests := []struct {
		name  string
		qname string
		typ   dnsmessage.Type
		class dnsmessage.Class
		udp   bool
		want  reply
	}{
		{"service A", "web.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true, Answers: []string{"10.0.0.5"}}},
		{"case-insensitive", "WEB.Ns.svc.Cluster.Local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true, Answers: []string{"10.0.0.5"}}},
		{"service AAAA of an IPv4 service is NODATA", "web.ns.svc.cluster.local.", dnsmessage.TypeAAAA, in, true, reply{RCode: ok, Authoritative: true}},
		{"dual-stack AAAA", "ds.ns.svc.cluster.local.", dnsmessage.TypeAAAA, in, true, reply{RCode: ok, Authoritative: true, Answers: []string{"fd00:10::7"}}},
		{"other type is NODATA", "web.ns.svc.cluster.local.", dnsmessage.TypeMX, in, true, reply{RCode: ok, Authoritative: true}},
		{"headless gives ready endpoints", "db.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true, Answers: []string{"10.1.0.7", "10.1.0.8"}}},
		{"large headless answer over TCP", "many.ns.svc.cluster.local.", dnsmessage.TypeA, in, false, reply{RCode: ok, Authoritative: true, Answers: many}},
		{"large headless answer over UDP is truncated", "many.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true, Truncated: true}},
		{"unknown service", "nope.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"unknown namespace", "web.other.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"ExternalName is not served", "ext.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"pod records are not served", "host.db.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"search-path miss", "web.ns.svc.ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"namespace exists", "ns.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true}},
		{"namespace without services", "empty.svc.cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: nx, Authoritative: true}},
		{"zone apex", "cluster.local.", dnsmessage.TypeA, in, true, reply{RCode: ok, Authoritative: true}},
		{"outside the domain is refused", "example.com.", dnsmessage.TypeA, in, true, reply{RCode: refused}},
		{"suffix without a dot is outside", "xcluster.local.", dnsmessage.TypeA, in, true, reply{RCode: refused}},
		{"reverse lookups are refused", "5.0.0.10.in-addr.arpa.", dnsmessage.TypePTR, in, true, reply{RCode: refused}},
		{"class CHAOS is refused", "web.ns.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.ClassCHAOS, true, reply{RCode: refused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := r.answer(snap, query(t, tt.qname, tt.typ, tt.class), tt.udp)
			if out == nil {
				t.Fatal("no answer")
			}
			if tt.udp && len(out) > maxUDPSize {
				t.Errorf("UDP answer of %d bytes, over %d", len(out), maxUDPSize)
			}
			tt.want.Question = tt.qname
			if diff := cmp.Diff(tt.want, parseReply(t, out)); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolverBadMessages(t *testing.T) {
	r := &resolver{domain: "cluster.local."}
	snap := testSnapshot()
	header := func(h dnsmessage.Header) []byte {
		b := dnsmessage.NewBuilder(nil, h)
		msg, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	for _, tt := range []struct {
		name  string
		msg   []byte
		want  dnsmessage.RCode
		reply bool
	}{
		{"too short for a header", []byte{1, 2, 3}, 0, false},
		{"a response is not answered", header(dnsmessage.Header{ID: 4242, Response: true}), 0, false},
		{"no question", header(dnsmessage.Header{ID: 4242}), dnsmessage.RCodeFormatError, true},
		{"opcode other than QUERY", header(dnsmessage.Header{ID: 4242, OpCode: 5}), dnsmessage.RCodeNotImplemented, true},
		{"question cut short", query(t, "web.ns.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.ClassINET)[:20], dnsmessage.RCodeFormatError, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := r.answer(snap, tt.msg, true)
			if !tt.reply {
				if out != nil {
					t.Fatalf("answer = %x, want none", out)
				}
				return
			}
			if out == nil {
				t.Fatal("no answer")
			}
			if got := parseReply(t, out); got.RCode != tt.want || len(got.Answers) != 0 {
				t.Errorf("answer = %+v, want rcode %v and no records", got, tt.want)
			}
		})
	}
}

func TestCanonicalDomain(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{in: "cluster.local", want: "cluster.local."},
		{in: "Cluster.Local.", want: "cluster.local."},
		{in: "my-cluster.example", want: "my-cluster.example."},
		{in: "", err: "empty"},
		{in: ".", err: "empty"},
		{in: "cluster..local", err: "empty or over-long label"},
		{in: "-bad.local", err: "not a DNS label"},
		{in: "bad_label.local", err: "not a DNS label"},
		{in: strings.Repeat("a", 64) + ".local", err: "empty or over-long label"},
		{in: strings.Repeat("abcdefg.", 32) + "local", err: "longer than 253"},
	} {
		got, err := canonicalDomain(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("canonicalDomain(%q) = %q, %v; want an error containing %q", tt.in, got, err, tt.err)
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("canonicalDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
