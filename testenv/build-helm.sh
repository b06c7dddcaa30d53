#!/usr/bin/env bash
# Builds testenv/bin/helm: Helm 4 (helm.sh/helm/v4/cmd/helm) from the Go module proxy at the version pinned in
# testenv/helm/go.mod (a module of its own, so Helm's dependencies never move testenv's Kubernetes versions). phoenix
# runs it for chart components (`helm template`); tests and the demo find it through PHOENIX_HELM. Go's build cache
# makes a second build take seconds; cold, fetching its modules took 4 min and compiling them 2 min on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/helm"
# Go's default install location, for shells that did not read a profile adding it to PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
helm="$(sed -n 's/^\thelm.sh\/helm\/v4 \(v[0-9.]*\).*$/\1/p' go.mod | head -1)"
if [ -z "$helm" ]; then
    echo "testenv/build-helm.sh: no helm.sh/helm/v4 version in testenv/helm/go.mod" >&2
    exit 1
fi
# `helm version` reports the exact release, as a downloaded Helm would.
go build -trimpath -buildvcs=false -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm" \
    -o ../bin/helm helm.sh/helm/v4/cmd/helm
