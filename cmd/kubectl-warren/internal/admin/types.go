package admin

import (
	"encoding/json"
	"time"
)

// The JSON the ztunnel's admin paths serve. Field names follow ztunnel/admin.go,
// ztunnel/admin_debug.go, ztunnel/identity.CertificateInfo and ztunnel/telemetry's records; the
// contract test in this package decodes a real ztunnel's answers.

// ConfigDump is /config_dump. Config is the node config snapshot as protojson.
type ConfigDump struct {
	Node         string          `json:"node"`
	Version      string          `json:"version"`
	BuildVersion string          `json:"buildVersion,omitempty"`
	Config       json.RawMessage `json:"config,omitempty"`
	Workloads    []Enrolled      `json:"workloads"`
	Certificates []Certificate   `json:"certificates"`
}

// Enrolled is one workload the ztunnel serves.
type Enrolled struct {
	UID         string    `json:"uid"`
	Name        string    `json:"name"`
	Identity    string    `json:"identity"`
	Addresses   []string  `json:"addresses"`
	OpenInbound int       `json:"openInbound"`
	Pool        PoolStats `json:"pool"`
}

// PoolStats is an outbound HBONE pool's state.
type PoolStats struct {
	Conns   int `json:"Conns"`
	Streams int `json:"Streams"`
	Dials   int `json:"Dials"`
}

// Version is /version.
type Version struct {
	Node          string `json:"node"`
	BuildVersion  string `json:"buildVersion"`
	ConfigVersion string `json:"configVersion"`
	Ready         bool   `json:"ready"`
	NotReady      string `json:"notReady,omitempty"`
	Workloads     int    `json:"workloads"`
}

// Certificates is /certificates.
type Certificates struct {
	Node         string        `json:"node"`
	Certificates []Certificate `json:"certificates"`
}

// Certificate is one workload identity's certificate as the node holds it.
type Certificate struct {
	ID        string      `json:"id"`
	State     string      `json:"state"`
	Serial    string      `json:"serial,omitempty"`
	NotBefore time.Time   `json:"notBefore,omitzero"`
	NotAfter  time.Time   `json:"notAfter,omitzero"`
	RotateAt  time.Time   `json:"rotateAt,omitzero"`
	Failures  int         `json:"failures,omitempty"`
	Decoded   []ChainCert `json:"decoded,omitempty"`
}

// ChainCert is one certificate of a chain, leaf first.
type ChainCert struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"`
	URIs      []string  `json:"uris,omitempty"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	IsCA      bool      `json:"isCA"`
}

// Connections is /connections.
type Connections struct {
	Node      string                `json:"node"`
	Workloads []WorkloadConnections `json:"workloads"`
	Recent    []ConnectionRecord    `json:"recent"`
}

// WorkloadConnections is one enrolled workload's connection state.
type WorkloadConnections struct {
	Name        string    `json:"name"`
	Identity    string    `json:"identity"`
	OpenInbound int       `json:"openInbound"`
	Pool        PoolStats `json:"pool"`
}

// ConnectionRecord is a closed connection.
type ConnectionRecord struct {
	Start       time.Time     `json:"start"`
	Direction   string        `json:"direction"`
	Mode        string        `json:"mode"`
	Src         string        `json:"src"`
	Dst         string        `json:"dst"`
	SrcIdentity string        `json:"srcIdentity,omitempty"`
	DstIdentity string        `json:"dstIdentity,omitempty"`
	DstWorkload string        `json:"dstWorkload,omitempty"`
	Via         string        `json:"via,omitempty"`
	Upstream    int64         `json:"bytesUpstream"`
	Downstream  int64         `json:"bytesDownstream"`
	Duration    time.Duration `json:"durationNs"`
	Error       string        `json:"error,omitempty"`
}

// SecurityEvents is /security_events.
type SecurityEvents struct {
	Node   string          `json:"node"`
	Events []SecurityEvent `json:"events"`
}

// SecurityEvent is one deny, audit hit or revocation.
type SecurityEvent struct {
	Time        time.Time `json:"time"`
	Node        string    `json:"node,omitempty"` // set by the plugin when merging nodes
	Type        string    `json:"type"`
	Src         string    `json:"src"`
	SrcIdentity string    `json:"srcIdentity,omitempty"`
	DstWorkload string    `json:"dstWorkload,omitempty"`
	Dst         string    `json:"dst"`
	PolicyKind  string    `json:"policyKind"`
	Policy      string    `json:"policy"`
	Server      string    `json:"server,omitempty"`
	Reason      string    `json:"reason"`
}
