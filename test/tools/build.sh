#!/usr/bin/env bash
# build.sh builds the test and generator binaries into the gitignored cache
# (default: <repo>/.cache/bin, override with WARREN_TOOLS_BIN):
#   kube-apiserver  k8s.io/kubernetes v1.37.2      (test/tools/go.mod)
#   controller-gen  sigs.k8s.io/controller-tools   (test/tools/go.mod)
#   etcd            go.etcd.io/etcd/server v3.7.3  (test/tools/etcd/go.mod)
# Idempotent: a binary is rebuilt only when missing or when the go.mod/go.sum (or
# source) that pins it changed since it was built (a sha256 stamp next to it). Usage: test/tools/build.sh [kube-apiserver|etcd|controller-gen]...
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${WARREN_TOOLS_BIN:-$root/.cache/bin}
go=${GO:-go}
mkdir -p "$bin"

# stamp DEP... : a digest of the files that pin a binary, and of the Go version.
stamp() { { "$go" env GOVERSION; cat "$@"; } | sha256sum | cut -d' ' -f1; }

build() {
	local name=$1 dir=$2 pkg=$3; shift 3
	local want; want=$(stamp "$@")
	if [[ ! -x $bin/$name || $(cat "$bin/.$name.stamp" 2>/dev/null) != "$want" ]]; then
		echo "building $name ($pkg)..." >&2
		local start=$SECONDS
		# -trimpath keeps the checkout path out of the binaries.
		(cd "$dir" && CGO_ENABLED=0 "$go" build -mod=readonly -buildvcs=false -trimpath -ldflags='-s -w' -o "$bin/$name.tmp" "$pkg")
		mv -f "$bin/$name.tmp" "$bin/$name"
		echo "$want" >"$bin/.$name.stamp"
		echo "built $bin/$name in $((SECONDS - start))s" >&2
	else
		echo "$bin/$name is up to date" >&2
	fi
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(controller-gen etcd kube-apiserver)
for t in "${targets[@]}"; do
	case $t in
	kube-apiserver) build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$here/go.mod" "$here/go.sum" ;;
	controller-gen) build controller-gen "$here" sigs.k8s.io/controller-tools/cmd/controller-gen "$here/go.mod" "$here/go.sum" ;;
	etcd) build etcd "$here/etcd" . "$here/etcd/go.mod" "$here/etcd/go.sum" "$here/etcd/main.go" ;;
	*) echo "build.sh: unknown tool $t (want kube-apiserver, etcd or controller-gen)" >&2; exit 2 ;;
	esac
done
