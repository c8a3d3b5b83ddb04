// Package integration holds tests that run Warren's control plane and data plane together in
// one process: a real kube-apiserver and etcd (test/envtest), the real controller with its CA,
// and real ztunnels that get their config from the push stream and their certificates from the
// CSR service, carrying real traffic on loopback. It has no non-test code.
package integration
