//go:build tools

// Package tools pins the helm CLI in this module's go.mod; ../build.sh builds
// helm.sh/helm/v3/cmd/helm from it.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
