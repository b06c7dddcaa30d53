#!/usr/bin/env bash
# Builds testenv/bin/helm: Helm 4 (helm.sh/helm/v4/cmd/helm) from the Go module proxy at the version pinned in
# testenv/helm/go.mod (a module of its own, so Helm's dependencies never move testenv's Kubernetes versions). phoenix
# runs it for chart components (`helm template`); tests and the demo find it through PHOENIX_HELM. Go's build cache
# makes a second build take seconds; a cold one takes about 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/helm"
# Go's default install location, for shells that did not read a profile adding it to PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
go build -trimpath -buildvcs=false -ldflags "-s -w" -o ../bin/helm helm.sh/helm/v4/cmd/helm
