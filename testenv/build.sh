#!/usr/bin/env bash
# Builds testenv/bin/testenv: etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the Go module
# proxy at the versions in go.mod, with the version ldflags set so /version reports the real release. Go's build
# cache makes a second build take seconds; a cold one takes 8-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# Go's default install location, for shells that did not read a profile adding it to PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
kube="$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' go.mod | head -1)"
if [ -z "$kube" ]; then
    echo "testenv/build.sh: no k8s.io/kubernetes version in go.mod" >&2
    exit 1
fi
minor="$(echo "$kube" | cut -d. -f2)"
pkg=k8s.io/component-base/version
go build -trimpath -buildvcs=false -o bin/testenv \
    -ldflags "-s -w -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitCommit=release-$kube -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
    ./cmd/testenv
