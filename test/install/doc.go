// Package install tests Warren's install manifests: the Helm chart manifests/charts/warren (the
// single source), the plain YAML in manifests/install that `make generate` renders from it, and
// the kustomization manifests/kustomization.yaml. The tests render the chart with the helm CLI
// that test/tools/build.sh builds and with kubectl, compare what they produce, check how values
// change it and how bad values fail, and apply the manifests to a real kube-apiserver (envtest):
// server-side dry run and apply, idempotent re-apply, Helm install/upgrade/uninstall, and the
// RBAC of each component checked by running warren-controller under its ServiceAccount and by
// SubjectAccessReviews.
//
// It holds only tests; nothing imports it.
package install
