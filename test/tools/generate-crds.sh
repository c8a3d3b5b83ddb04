#!/usr/bin/env bash
# generate-crds.sh regenerates, byte for byte, everything derived from the
# policy API types and the pinned Gateway API release:
#   api/policy/v1alpha1/zz_generated.deepcopy.go   (controller-gen object)
#   manifests/crds/policy.warren.dev_*.yaml        (controller-gen crd, one file per CRD)
#   manifests/crds/gateway-api/*.yaml              (Gateway API standard-channel CRDs,
#                                                    copied from the module cache at the
#                                                    version the main go.mod requires)
# It builds controller-gen first (test/tools/build.sh; a no-op when up to date).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${WARREN_TOOLS_BIN:-$root/.cache/bin}
go=${GO:-go}
# The Gateway API kinds Warren uses (standard channel).
gateway_crds=(gatewayclasses gateways httproutes grpcroutes referencegrants)

"$here/build.sh" controller-gen

cd "$root"
rm -f manifests/crds/policy.warren.dev_*.yaml
mkdir -p manifests/crds
"$bin/controller-gen" object crd:crdVersions=v1 paths=./api/policy/... output:crd:artifacts:config=manifests/crds

gw_version=$("$go" list -m -f '{{.Version}}' sigs.k8s.io/gateway-api) ||
	{ echo "generate-crds.sh: sigs.k8s.io/gateway-api missing from go.mod; go get sigs.k8s.io/gateway-api@v1.6.3" >&2; exit 1; }
gw_dir=$("$go" mod download -json "sigs.k8s.io/gateway-api@$gw_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $gw_dir/config/crd/standard ]] ||
	{ echo "generate-crds.sh: no config/crd/standard in $gw_dir; has the Gateway API layout changed?" >&2; exit 1; }
rm -rf manifests/crds/gateway-api
mkdir -p manifests/crds/gateway-api
for crd in "${gateway_crds[@]}"; do
	src=$gw_dir/config/crd/standard/gateway.networking.k8s.io_$crd.yaml
	install -m 0644 "$src" manifests/crds/gateway-api/
done
