package ztunnel

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/warren-mesh/warren/ztunnel/identity"
	"github.com/warren-mesh/warren/ztunnel/pool"
	"github.com/warren-mesh/warren/ztunnel/telemetry"
)

// The admin port's read-only debug endpoints beyond /config_dump. They serve JSON built from
// state the ztunnel keeps anyway (the identity manager's certificates, the enrolled workloads, the
// telemetry history): nothing is computed on the data path for them, and no private key is ever
// part of an answer. The kubectl plugin reaches them through the API server's pods/proxy.
const (
	PathVersion        = "/version"
	PathCertificates   = "/certificates"
	PathConnections    = "/connections"
	PathSecurityEvents = "/security_events"
)

// VersionInfo is what /version serves.
type VersionInfo struct {
	Node string `json:"node"`
	// BuildVersion is the binary's version (Config.BuildVersion).
	BuildVersion string `json:"buildVersion"`
	// ConfigVersion is the version of the config in use; empty before the first one.
	ConfigVersion string `json:"configVersion"`
	// Ready is the readiness check's answer; NotReady says why not.
	Ready    bool   `json:"ready"`
	NotReady string `json:"notReady,omitempty"`
	// Workloads is the number of enrolled workloads.
	Workloads int `json:"workloads"`
}

// Certificates is what /certificates serves: one entry per workload identity the node holds a
// certificate for (or is fetching one for).
type Certificates struct {
	Node         string        `json:"node"`
	Certificates []Certificate `json:"certificates"`
}

// Certificate is one identity's certificate: the identity manager's view plus the decoded chain.
type Certificate struct {
	identity.CertificateInfo
	// Decoded is the chain, leaf first, decoded from CertificateInfo.Chain.
	Decoded []ChainCert `json:"decoded,omitempty"`
}

// ChainCert is one certificate of a chain, public fields only.
type ChainCert struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"` // hex
	URIs      []string  `json:"uris,omitempty"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	IsCA      bool      `json:"isCA"`
}

// Connections is what /connections serves.
type Connections struct {
	Node string `json:"node"`
	// Workloads are the enrolled workloads with their open inbound connections and outbound
	// HBONE pool.
	Workloads []WorkloadConnections `json:"workloads"`
	// Recent are the latest closed connections, oldest first (a bounded history).
	Recent []telemetry.ConnectionRecord `json:"recent"`
}

// WorkloadConnections is one enrolled workload's connection state.
type WorkloadConnections struct {
	Name        string     `json:"name"`
	Identity    string     `json:"identity"`
	OpenInbound int        `json:"openInbound"`
	Pool        pool.Stats `json:"pool"`
}

// SecurityEvents is what /security_events serves.
type SecurityEvents struct {
	Node string `json:"node"`
	// Since is the start of the window asked for (zero: everything kept).
	Since  time.Time               `json:"since,omitzero"`
	Events []telemetry.EventRecord `json:"events"`
}

// Version returns what /version serves.
func (z *Ztunnel) Version() VersionInfo {
	v := VersionInfo{Node: z.cfg.Node, BuildVersion: z.cfg.BuildVersion, Ready: true}
	if s := z.cfg.Store.Load(); s != nil {
		v.ConfigVersion = s.Version()
	}
	if err := z.Ready(); err != nil {
		v.Ready, v.NotReady = false, err.Error()
	}
	z.mu.Lock()
	v.Workloads = len(z.workloads)
	z.mu.Unlock()
	return v
}

// Certificates returns what /certificates serves.
func (z *Ztunnel) Certificates() Certificates {
	infos := z.cfg.Identities.Certificates()
	out := Certificates{Node: z.cfg.Node, Certificates: make([]Certificate, 0, len(infos))}
	for _, info := range infos {
		out.Certificates = append(out.Certificates, Certificate{CertificateInfo: info, Decoded: decodeChain(info.Chain)})
	}
	return out
}

// decodeChain decodes PEM certificates; blocks that do not parse are left out (the PEM stays in
// Chain for anyone who wants to look).
func decodeChain(chain []string) []ChainCert {
	var out []ChainCert
	for _, p := range chain {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			continue
		}
		cc := ChainCert{
			Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: c.SerialNumber.Text(16),
			NotBefore: c.NotBefore, NotAfter: c.NotAfter, IsCA: c.IsCA,
		}
		for _, u := range c.URIs {
			cc.URIs = append(cc.URIs, u.String())
		}
		out = append(out, cc)
	}
	return out
}

// Connections returns what /connections serves; since bounds the closed-connection history.
func (z *Ztunnel) Connections(since time.Time) Connections {
	ws := z.Workloads()
	out := Connections{Node: z.cfg.Node, Workloads: make([]WorkloadConnections, 0, len(ws)), Recent: z.tel.RecentConnections(since)}
	for _, w := range ws {
		out.Workloads = append(out.Workloads, WorkloadConnections{Name: w.Name, Identity: w.Identity, OpenInbound: w.OpenInbound, Pool: w.Pool})
	}
	return out
}

// SecurityEvents returns what /security_events serves.
func (z *Ztunnel) SecurityEvents(since time.Time) SecurityEvents {
	return SecurityEvents{Node: z.cfg.Node, Since: since, Events: z.tel.RecentEvents(since)}
}

// ParseSince parses the ?since= parameter: empty (everything kept), a duration back from now
// ("10m", "1h30m"), or an RFC 3339 time.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("since %q: a duration back from now must not be negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("since %q: want a duration such as 10m or an RFC 3339 time such as 2026-01-02T15:04:05Z", s)
	}
	return t, nil
}

// registerDebug adds the read-only debug endpoints to the admin mux.
func (z *Ztunnel) registerDebug(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathVersion, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, z.Version())
	})
	mux.HandleFunc("GET "+PathCertificates, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, z.Certificates())
	})
	withSince := func(serve func(w http.ResponseWriter, since time.Time)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			since, err := ParseSince(strings.TrimSpace(r.URL.Query().Get("since")), time.Now())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			serve(w, since)
		}
	}
	mux.HandleFunc("GET "+PathConnections, withSince(func(w http.ResponseWriter, since time.Time) {
		writeJSON(w, z.Connections(since))
	}))
	mux.HandleFunc("GET "+PathSecurityEvents, withSince(func(w http.ResponseWriter, since time.Time) {
		writeJSON(w, z.SecurityEvents(since))
	}))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
