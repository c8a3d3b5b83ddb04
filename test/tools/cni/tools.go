//go:build tools

// Package tools pins the reference CNI plugins in go.mod; only
// test/tools/build.sh builds them (into .cache/bin/cni/).
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
)
