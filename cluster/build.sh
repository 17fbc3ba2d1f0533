#!/bin/sh
# Builds the cluster binaries of a runtime = "kubernetes" image into OUT_DIR,
# from the modules pinned in go.sum only. The same go.sum, Go toolchain and
# flags give the same bytes, in any directory and with any GOCACHE.
#
#   cluster/build.sh OUT_DIR
#
# Environment (all optional): GOCACHE, GOMODCACHE (the caller's caches);
# GOPROXY=off for an offline build (the module cache must hold every module:
# `go mod download` with a proxy fills it). GOFLAGS is set to -mod=readonly
# here: a build never edits go.mod or go.sum.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")"

export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOOS=linux GOARCH=amd64
# The version the components report (kubectl version, node status): what
# upstream's hack/lib/version.sh stamps, without a commit or a build date.
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
version_flags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	version_flags="$version_flags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

go build -trimpath -buildvcs=false -ldflags="-s -w -buildid= $version_flags" \
	-o "$out/kube" ./cmd/kube
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
	ln -sf kube "$out/$name"
done
