// Package netnsmesh holds the in-pod mesh tests: real network namespaces as pods, the eBPF
// redirect capturing their traffic, and an in-process ztunnel whose sockets live inside each pod
// (sockets.Netns). An application process in a pod's cgroup and netns connects to another pod's
// IP as if there were no mesh; the tests check the connection went through HBONE with the client
// pod's SPIFFE identity and that policy is enforced.
//
// The tests need root, cgroup v2 and a kernel with everything package redirect needs; they skip
// otherwise, and fail under CI=true. Test code only.
package netnsmesh
