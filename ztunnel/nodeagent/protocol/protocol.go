// Package protocol is the wire format between the warren-cni plugin and the node agent inside
// warren-ztunnel, and the pod records the plugin leaves on the node. Both sides are built from
// the same version of this package; it is internal to Warren.
//
// # Requests
//
// The node agent listens on a unix stream socket (default [DefaultSocket], mode 0600). A client
// connects, writes one [Request] as a single line of JSON ending in '\n' (at most [MaxMessage]
// bytes including the newline), and reads one [Response] line; then both sides close. There is no
// pipelining and no framing beyond the newline (JSON encodes newlines inside strings as \n).
// Unknown JSON fields are ignored, so a plugin and an agent one minor version apart still talk;
// an unknown op is an error. Ops:
//
//	{"op":"add","podUID":"…","podName":"…","podNamespace":"…","serviceAccount":"…","netns":"/var/run/netns/…","addresses":["10.0.0.5"]}
//	{"op":"del","podUID":"…"}
//	{"op":"check","podUID":"…"}   is the pod enrolled? (error if not)
//	{"op":"list"}                 every enrolled pod
//
// and the answer is {"ok":true} (with "pods" for check and list) or {"ok":false,"error":"…"}.
// "serviceAccount" may be empty in an add: the agent then takes it from the node config, and
// fails if the config does not have the pod.
//
// # Pod records
//
// On every ADD the plugin writes a [Record] of the pod (uid, name, namespace, netns, addresses)
// to <state dir>/<uid> (default [DefaultStateDir]) whether or not the pod is meshed, and removes it
// on DEL. A restarted node agent, or one that sees a namespace labelled ambient, finds the
// network namespaces of running pods there. Pods created before warren-cni was installed have no
// record: they are enrolled once restarted.
//
// The package is a library: no logging.
package protocol

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults shared by the plugin and the agent.
const (
	DefaultSocket   = "/var/run/warren/node-agent.sock"
	DefaultStateDir = "/var/run/warren/pods"
	// MaxMessage bounds a request or response line, newline included.
	MaxMessage = 64 << 10
)

// Ops.
const (
	OpAdd   = "add"
	OpDel   = "del"
	OpCheck = "check"
	OpList  = "list"
)

// ErrTooLarge is returned for a message longer than MaxMessage.
var ErrTooLarge = fmt.Errorf("message larger than %d bytes", MaxMessage)

// Request is one call to the node agent.
type Request struct {
	Op             string   `json:"op"`
	PodUID         string   `json:"podUID,omitempty"`
	PodName        string   `json:"podName,omitempty"`
	PodNamespace   string   `json:"podNamespace,omitempty"`
	ServiceAccount string   `json:"serviceAccount,omitempty"`
	Netns          string   `json:"netns,omitempty"`
	Addresses      []string `json:"addresses,omitempty"`
}

// Validate checks that the op is known and has the fields it needs.
func (r *Request) Validate() error {
	var missing []string
	need := func(v, name string) {
		if v == "" {
			missing = append(missing, name)
		}
	}
	switch r.Op {
	case OpAdd:
		need(r.PodUID, "podUID")
		need(r.PodName, "podName")
		need(r.PodNamespace, "podNamespace")
		need(r.Netns, "netns")
		if len(r.Addresses) == 0 {
			missing = append(missing, "addresses")
		}
		for _, a := range r.Addresses {
			if _, err := netip.ParseAddr(a); err != nil {
				return fmt.Errorf("add: address %q: %w", a, err)
			}
		}
		if r.Netns != "" && !filepath.IsAbs(r.Netns) {
			return fmt.Errorf("add: netns %q is not an absolute path", r.Netns)
		}
	case OpDel, OpCheck:
		need(r.PodUID, "podUID")
	case OpList:
	case "":
		return errors.New("no op")
	default:
		return fmt.Errorf("unknown op %q", r.Op)
	}
	if r.PodUID != "" && !validUID(r.PodUID) {
		return fmt.Errorf("%s: bad podUID %q", r.Op, r.PodUID)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: missing %s", r.Op, strings.Join(missing, ", "))
	}
	return nil
}

// validUID accepts what can name a record file: Kubernetes UIDs are UUIDs.
func validUID(uid string) bool {
	if len(uid) > 128 || uid == "." || uid == ".." {
		return false
	}
	for _, c := range uid {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Pod is an enrolled pod, as check and list report it.
type Pod struct {
	UID       string   `json:"uid"`
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Identity  string   `json:"identity"`
	Netns     string   `json:"netns"`
	Addresses []string `json:"addresses"`
}

// Response is the node agent's answer.
type Response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Pods  []Pod  `json:"pods,omitempty"`
}

// Write writes v as one JSON line.
func Write(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if len(b) > MaxMessage {
		return ErrTooLarge
	}
	_, err = w.Write(b)
	return err
}

// Read reads one JSON line (or the whole input if it does not end in a newline) into v.
func Read(r io.Reader, v any) error {
	br := bufio.NewReader(&io.LimitedReader{R: r, N: MaxMessage + 1})
	line, err := br.ReadBytes('\n')
	if len(line) > MaxMessage {
		return ErrTooLarge
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return errors.New("empty message")
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// ReadRequest reads and validates one request.
func ReadRequest(r io.Reader) (*Request, error) {
	var req Request
	if err := Read(r, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

// Call sends req to the node agent at socket and returns its answer. An answer with an error is
// returned as an error too.
func Call(ctx context.Context, socket string, req Request) (*Response, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("node agent request: %w", err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("node agent unreachable at %s (is warren-ztunnel running on this node?): %w", socket, err)
	}
	defer c.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	_ = c.SetDeadline(dl)
	if err := Write(c, req); err != nil {
		return nil, fmt.Errorf("node agent %s: send %s: %w", socket, req.Op, err)
	}
	var resp Response
	if err := Read(c, &resp); err != nil {
		return nil, fmt.Errorf("node agent %s: %s: read answer: %w", socket, req.Op, err)
	}
	if !resp.OK {
		msg := resp.Error
		if msg == "" {
			msg = "failed without a reason"
		}
		return &resp, fmt.Errorf("node agent: %s pod %s: %s", req.Op, req.PodUID, msg)
	}
	return &resp, nil
}

// Record is what the plugin remembers of a pod on the node.
type Record struct {
	UID         string   `json:"uid"`
	Name        string   `json:"name"`
	Namespace   string   `json:"namespace"`
	ContainerID string   `json:"containerID,omitempty"`
	Netns       string   `json:"netns"`
	Addresses   []string `json:"addresses,omitempty"`
}

// WriteRecord writes rec to dir/<uid> atomically (mode 0600; dir is created 0700).
func WriteRecord(dir string, rec Record) error {
	if !validUID(rec.UID) || rec.UID == "" {
		return fmt.Errorf("pod record: bad uid %q", rec.UID)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pod record: %w", err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("pod record: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+rec.UID+".tmp*")
	if err != nil {
		return fmt.Errorf("pod record: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, rec.UID))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("pod record: %w", err)
	}
	return nil
}

// ReadRecord reads dir/<uid>; it returns an error wrapping fs.ErrNotExist when there is none.
func ReadRecord(dir, uid string) (Record, error) {
	var rec Record
	if !validUID(uid) || uid == "" {
		return rec, fmt.Errorf("pod record: bad uid %q", uid)
	}
	b, err := os.ReadFile(filepath.Join(dir, uid))
	if err != nil {
		return rec, fmt.Errorf("pod record: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("pod record %s: %w", uid, err)
	}
	return rec, nil
}

// RemoveRecord removes dir/<uid>; a missing record is not an error.
func RemoveRecord(dir, uid string) error {
	if !validUID(uid) || uid == "" {
		return fmt.Errorf("pod record: bad uid %q", uid)
	}
	if err := os.Remove(filepath.Join(dir, uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pod record: %w", err)
	}
	return nil
}
