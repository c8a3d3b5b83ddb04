package ztunnel

// LocalOnlyForTest exposes localOnly to the external tests.
var LocalOnlyForTest = localOnly
