// Package caservice is the certificate signing protocol between the node agents (ztunnels,
// waypoints) and the CA in warren-controller, generated from ca.proto by "make generate". It has
// no side effects; the ca package serves it and ztunnel/identity calls it.
package caservice
