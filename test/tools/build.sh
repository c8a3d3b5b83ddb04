#!/usr/bin/env bash
# build.sh builds the test and generator binaries into the gitignored cache
# (default: <repo>/.cache/bin, override with WARREN_TOOLS_BIN):
#   kube-apiserver  k8s.io/kubernetes v1.37.2      (test/tools/go.mod)
#   kube-controller-manager, kube-scheduler
#                   k8s.io/kubernetes v1.37.2      (test/tools/go.mod), for the lab cluster
#   controller-gen  sigs.k8s.io/controller-tools   (test/tools/go.mod)
#   etcd            go.etcd.io/etcd/server v3.7.3  (test/tools/etcd/go.mod)
#   cni-plugins     github.com/containernetworking/plugins v1.10.0 bridge, host-local,
#                   loopback into <bin>/cni/ (test/tools/cni/go.mod), for the lab (test/lab)
#   helm            helm.sh/helm/v3 v3.22.0        (test/tools/helm/go.mod), renders manifests/charts
# Idempotent: a binary is rebuilt only when missing or when the go.mod/go.sum (or
# source) that pins it changed since it was built (a sha256 stamp next to it). Usage: test/tools/build.sh [kube-apiserver|kube-controller-manager|kube-scheduler|etcd|controller-gen|cni-plugins|helm]...
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${WARREN_TOOLS_BIN:-$root/.cache/bin}
go=${GO:-go}
mkdir -p "$bin"

# stamp DEP... : a digest of the files that pin a binary, and of the Go version.
stamp() { { "$go" env GOVERSION; cat "$@"; } | sha256sum | cut -d' ' -f1; }

# build NAME DIR PKG DEP...: NAME may hold a subdirectory (cni/bridge); its stamp
# is .<base>.stamp next to it.
build() {
	local name=$1 dir=$2 pkg=$3; shift 3
	local want; want=$(stamp "$@")
	local stampf; stampf=$(dirname "$bin/$name")/.$(basename "$name").stamp
	mkdir -p "$(dirname "$bin/$name")"
	if [[ ! -x $bin/$name || $(cat "$stampf" 2>/dev/null) != "$want" ]]; then
		echo "building $name ($pkg)..." >&2
		local start=$SECONDS
		# -trimpath keeps the checkout path out of the binaries.
		(cd "$dir" && CGO_ENABLED=0 "$go" build -mod=readonly -buildvcs=false -trimpath -ldflags='-s -w' -o "$bin/$name.tmp" "$pkg")
		mv -f "$bin/$name.tmp" "$bin/$name"
		echo "$want" >"$stampf"
		echo "built $bin/$name in $((SECONDS - start))s" >&2
	else
		echo "$bin/$name is up to date" >&2
	fi
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(controller-gen etcd kube-apiserver cni-plugins)
for t in "${targets[@]}"; do
	case $t in
	kube-apiserver) build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$here/go.mod" "$here/go.sum" ;;
	kube-controller-manager) build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$here/go.mod" "$here/go.sum" ;;
	kube-scheduler) build kube-scheduler "$here" k8s.io/kubernetes/cmd/kube-scheduler "$here/go.mod" "$here/go.sum" ;;
	controller-gen) build controller-gen "$here" sigs.k8s.io/controller-tools/cmd/controller-gen "$here/go.mod" "$here/go.sum" ;;
	etcd) build etcd "$here/etcd" . "$here/etcd/go.mod" "$here/etcd/go.sum" "$here/etcd/main.go" ;;
	helm) build helm "$here/helm" helm.sh/helm/v3/cmd/helm "$here/helm/go.mod" "$here/helm/go.sum" ;;
	cni-plugins)
		for p in main/bridge ipam/host-local main/loopback; do
			build "cni/${p#*/}" "$here/cni" "github.com/containernetworking/plugins/plugins/$p" "$here/cni/go.mod" "$here/cni/go.sum"
		done
		;;
	*) echo "build.sh: unknown tool $t (want kube-apiserver, kube-controller-manager, kube-scheduler, etcd, controller-gen, cni-plugins or helm)" >&2; exit 2 ;;
	esac
done
