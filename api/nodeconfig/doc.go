// Package nodeconfig is the config contract between the Warren control plane and its data plane:
// the Snapshot of workloads, services and compiled policies that the controller pushes to every
// ztunnel and waypoint, and that a ztunnel reads from a file in standalone mode.
//
// The messages are generated from nodeconfig.proto (run "make generate"). This package adds the
// file form (YAML or JSON in protobuf's JSON mapping), structural validation and the SPIFFE ID
// helpers every consumer needs. It has no side effects and may be imported by anyone.
package nodeconfig
