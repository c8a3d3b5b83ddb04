package protocol

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRoundTrip(t *testing.T) {
	req := Request{
		Op: OpAdd, PodUID: "0b4f-11", PodName: "web-0", PodNamespace: "shop", ServiceAccount: "web",
		Netns: "/var/run/netns/cni-1", Addresses: []string{"10.0.0.5", "fd00::5"},
	}
	var buf bytes.Buffer
	if err := Write(&buf, req); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(buf.String(), "}\n") || strings.Count(buf.String(), "\n") != 1 {
		t.Errorf("Write() = %q; want one JSON line", buf.String())
	}
	got, err := ReadRequest(&buf)
	if err != nil {
		t.Fatalf("ReadRequest() = %v", err)
	}
	if diff := cmp.Diff(req, *got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestReadRequestRejects(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"", "empty message"},
		{"\n", "empty message"},
		{"not json\n", "decode"},
		{`{"op":"frobnicate"}`, `unknown op "frobnicate"`},
		{`{"podUID":"u"}`, "no op"},
		{`{"op":"add","podUID":"u"}`, "add: missing podName, podNamespace, netns, addresses"},
		{`{"op":"add","podUID":"u","podName":"p","podNamespace":"n","netns":"/x","addresses":["nope"]}`, `address "nope"`},
		{`{"op":"add","podUID":"u","podName":"p","podNamespace":"n","netns":"rel/x","addresses":["10.0.0.1"]}`, "not an absolute path"},
		{`{"op":"del"}`, "del: missing podUID"},
		{`{"op":"del","podUID":"../etc"}`, "bad podUID"},
		{`{"op":"check"}`, "check: missing podUID"},
		{`{"op":"list"}` + strings.Repeat(" ", MaxMessage), "larger than"},
		{`{"op":"add","podName":"` + strings.Repeat("x", MaxMessage) + `"}` + "\n", "larger than"},
	}
	for _, tc := range tests {
		_, err := ReadRequest(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			name := tc.in
			if len(name) > 60 {
				name = name[:60] + "..."
			}
			t.Errorf("ReadRequest(%q) = %v; want an error containing %q", name, err, tc.want)
		}
	}
}

func TestReadRequestAccepts(t *testing.T) {
	for _, in := range []string{
		`{"op":"list"}`,              // no trailing newline: the peer closed
		`{"op":"list","v":2}` + "\n", // unknown fields are ignored
		`{"op":"del","podUID":"5d1c-aa"}` + "\n" + "trailing ignored",
	} {
		if _, err := ReadRequest(strings.NewReader(in)); err != nil {
			t.Errorf("ReadRequest(%q) = %v", in, err)
		}
	}
}

func TestWriteTooLarge(t *testing.T) {
	err := Write(&bytes.Buffer{}, Request{Op: OpList, PodName: strings.Repeat("x", MaxMessage)})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Write(huge) = %v; want ErrTooLarge", err)
	}
}

func TestRecords(t *testing.T) {
	dir := t.TempDir() + "/pods"
	rec := Record{UID: "u-1", Name: "p", Namespace: "n", Netns: "/run/netns/x", Addresses: []string{"10.0.0.1"}}
	if err := WriteRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir + "/u-1")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	got, err := ReadRecord(dir, "u-1")
	if err != nil || !cmp.Equal(got, rec) {
		t.Errorf("ReadRecord() = %+v, %v; want %+v", got, err, rec)
	}
	if err := RemoveRecord(dir, "u-1"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveRecord(dir, "u-1"); err != nil {
		t.Errorf("RemoveRecord(missing) = %v; want nil", err)
	}
	if _, err := ReadRecord(dir, "u-1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadRecord(removed) = %v; want ErrNotExist", err)
	}
	if err := WriteRecord(dir, Record{UID: "../x"}); err == nil {
		t.Error("WriteRecord(../x) succeeded")
	}
}
