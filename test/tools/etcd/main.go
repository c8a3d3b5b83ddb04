// Command etcd is the full etcd server (go.etcd.io/etcd/server/v3 etcdmain),
// built from the module proxy so envtest has an etcd on machines without
// a release download. Only test/tools/build.sh builds it; nothing imports it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
